"""nixfab's domain values, one list of each: the activation actions, a host's result, a deploy's phases, when a key goes up.

They are StrEnums, so each member is its string: f-strings, `json.dumps`, the
SQLite journal and the summary print the same text as the plain strings they
replace ("dry-activate", "not started", …). What the code asks about a value
is a property here, never a tuple of strings somewhere else.

Standard library only: tasks.py imports this (through deploy.cli.options) on every TAB.
"""
from __future__ import annotations

from enum import StrEnum, unique


@unique
class Action(StrEnum):
    """What switch-to-configuration does with a system (nixos-rebuild's actions)."""

    SWITCH = "switch"
    BOOT = "boot"
    TEST = "test"
    DRY_ACTIVATE = "dry-activate"

    @property
    def changes_boot_default(self) -> bool:
        """It sets the system profile (a new generation) and installs the boot loader: switch, boot."""
        return self in (Action.SWITCH, Action.BOOT)

    @property
    def changes_running_system(self) -> bool:
        """It makes the system the running one: switch, test."""
        return self in (Action.SWITCH, Action.TEST)

    @property
    def changes_system(self) -> bool:
        """It changes the host at all; dry-activate only shows what would change."""
        return self.changes_boot_default or self.changes_running_system


@unique
class Result(StrEnum):
    """How one host came out of a run: the summary's and --json's `result`, the journal's `result` column."""

    OK = "ok"
    BUILT = "built"
    DIFFED = "diffed"
    UP_TO_DATE = "up-to-date"
    PLANNED = "planned"  # --dry-run: what would be done was shown; nothing was
    SKIPPED = "skipped"  # --ask answered no: nothing was activated, as asked
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"
    UNFINISHED = "unfinished"  # the journal's row while a host deploys; one left so means the run was killed

    @property
    def healthy(self) -> bool:
        """The host did what was asked (or had nothing to do); anything else counts against the run."""
        return self in (Result.OK, Result.BUILT, Result.DIFFED, Result.UP_TO_DATE, Result.PLANNED, Result.SKIPPED)


@unique
class Phase(StrEnum):
    """Where one host's deploy is, for the live progress table."""

    CHECK = "check"
    BUILD = "build"
    LOCK = "lock"
    COPY = "copy"
    DIFF = "diff"
    KEYS = "keys"
    ACTIVATE = "activate"
    CONFIRM = "confirm"
    HEALTH = "health"
    REBOOT = "reboot"
    GC = "gc"


@unique
class KeyUpload(StrEnum):
    """When a key (hosts.yaml `keys`) goes to its host, relative to switch-to-configuration (colmena's uploadAt)."""

    PRE_ACTIVATION = "pre-activation"  # after the copy, before the switch: the new system's services find it when they start
    POST_ACTIVATION = "post-activation"  # after the confirmation and the health checks (after the reboot, for the -reset tasks)
