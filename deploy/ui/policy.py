"""How much a run shows: the output policy the CLI edge sets once, from -v/-q (and Invoke's --echo/--hide).

    quiet    errors (each with the last lines of what failed), warnings, the summary
    normal   plus one line per host per step (`alpha | copied 3 paths, 64 KiB in 0.2 s`),
             nixfab's notes, and what Nix prints while it builds and checks on this machine
    verbose  plus every command, local and remote (`+ cmd`, `+ [alpha] cmd`), and
             everything the commands on the hosts print

The per-host log holds everything whatever the policy (deploy.ui.log).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from deploy.errors import UsageError


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


@dataclass(frozen=True)
class OutputPolicy:
    verbosity: Verbosity = Verbosity.NORMAL
    # A dry run's commands are its answer (the plan), so they show at every verbosity.
    dry_run: bool = False
    # What the hosts' commands print is the answer of dry-activate: shown at normal verbosity too.
    host_output: bool = False

    @property
    def commands(self) -> bool:
        """The `+ command` lines."""
        return self.dry_run or self.verbosity >= Verbosity.VERBOSE

    @property
    def progress(self) -> bool:
        """Notes, step lines, and what Nix prints on this machine."""
        return self.verbosity >= Verbosity.NORMAL

    @property
    def hosts_print(self) -> bool:
        """What commands print on a fleet's hosts (switch-to-configuration, a build on the target, GC)."""
        return self.verbosity >= Verbosity.VERBOSE or (self.host_output and self.progress)


def verbosity_of(*, verbose: bool, quiet: bool, echo: bool = False, hide: object = None) -> Verbosity:
    """-v/-q, and Invoke's own --echo (which means -v) and --hide (which hides: -q).

    `hide` is Invoke's run.hide setting: None or False when unset, else the stream(s) named.
    The task's own flags win over Invoke's; -v and -q together contradict each other (UsageError).
    """
    if verbose and quiet:
        raise UsageError("-v/--verbose and -q/--quiet contradict each other; give one")
    if verbose:
        return Verbosity.VERBOSE
    if quiet:
        return Verbosity.QUIET
    if echo:
        return Verbosity.VERBOSE
    if hide not in (None, False, "", "none"):
        return Verbosity.QUIET
    return Verbosity.NORMAL
