"""What a deploy asks its host in the round trip that takes the host's lock (scripts/preflight.sh).

The system profile and the running system, the free space, which paths of
the closure the host lacks (read off its store directory) and whether
systemd is its init: each used to be a command of its own, and every
command over SSH costs a round trip. Asked
under the lock, the answers stay true while the deploy holds it (only an
earlier deploy's watchdog could still change the system, and then the state
is asked again). A host that already has the system where the deploy would
put it says so, and releases the lock in the same round trip: a no-op
redeploy is one command.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deploy.activate.activation import SystemState, parse_system_state
from deploy.model import Action
from deploy.nix import commands
from deploy.plan.disk import DiskSpace, parse_df
from deploy.scripts import script


@dataclass(frozen=True)
class Questions:
    """What to ask besides the lock. `wanted`: the system the deploy brings, when the lock may be let go at once
    if the host already has it where `action` puts it (None: keep the lock whatever the host has)."""

    action: Action
    wanted: str | None = None
    space: tuple[str, ...] = ()  # paths to ask df about
    closure: tuple[str, ...] = ()  # the system's closure: which of these paths does the host lack?
    ask_systemd: bool = True

    def argv(self) -> list[str]:
        """preflight.sh's arguments after the lock's (pure)."""
        return [
            script("run_first"), script("system_state"), commands.SYSTEM_PROFILE, self.wanted or "",
            "1" if self.action.changes_boot_default else "0", "1" if self.action.changes_running_system else "0",
            script("free_space"), str(len(self.space)), *self.space,
            "1" if self.ask_systemd else "0",
            *self.closure,
        ]


@dataclass(frozen=True)
class Answers:
    """The host's answers. `current`: it already had the wanted system, and the lock was let go at once."""

    state: SystemState | None
    current: bool = False
    spaces: Mapping[str, DiskSpace] | None = None  # None: not asked
    missing: tuple[str, ...] | None = None  # the closure's paths not in the host's store directory, dependencies first; None: not asked
    systemd: bool | None = None  # systemd is the host's init (so systemd-run works); None: not asked


def missing_from(closure: Sequence[str], invalid: Sequence[str]) -> tuple[str, ...]:
    """The closure's paths that the host said it lacks, in the closure's order (dependencies first) (pure)."""
    lacking = set(invalid)
    return tuple(path for path in closure if path in lacking)


def parse_answers(lines: Sequence[str], questions: Questions, label: str, *, dry_run: bool = False) -> Answers:
    """preflight.sh's lines after "acquired" and the pending watchdogs (pure)."""
    tagged: dict[str, list[str]] = {}
    for line in lines:
        key, _, value = line.partition("\t")
        tagged.setdefault(key, []).append(value)
    state_lines = [line for line in lines if line.partition("\t")[0] in ("profile", "generation", "running")]
    if not state_lines:
        return Answers(None)  # the questions went unanswered (a dry run): each is asked on its own, as before
    systemd = tagged.get("systemd")
    return Answers(
        state=parse_system_state("\n".join(state_lines), label, dry_run=dry_run),
        current="current" in lines,
        spaces=parse_df("\n".join(tagged.get("df", []))) if questions.space and "current" not in lines else None,
        missing=missing_from(questions.closure, tagged.get("invalid", [])) if "closure-checked" in lines else None,
        systemd=systemd[0] == "1" if systemd else None,
    )
