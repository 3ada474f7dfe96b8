"""The systems built here before, by locked flake and name, so that an unchanged flake is not evaluated again.

nixfab remembers each toplevel it built under its locked flake's identity
(locked_flake) and the system's name. A later run of the same locked flake
takes the toplevel from memory, roots it for the run with one `nix-store
--realise --add-root` (nothing is built: the path is in the store), and
evaluates nothing; a system whose toplevel is no longer in the store (collected
since) is built again. Nothing is kept alive beyond the run that roots it.

This is what Nix's evaluation cache does for a `nix build` of a locked flake,
done once per run rather than per Nix process. It also lets the builds run
without Nix's cache: Nix 2.8 keeps one for a path: flake, and two Nix processes
evaluating one flake at once both write to it and wait on each other's locks
(a system that evaluates in 1.4 s took 3 s when that happened).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.build.locked_flake import LockedFlake, Memory
from deploy.nix import commands
from deploy.transport.process import LocalRunner

BUILT_DIRECTORY = "built-systems"  # under the state directory: a file per locked flake and system, holding its toplevel
KEEP_BUILT = 400  # the ones used last (a fleet of forty, ten deploys back); older ones only cost an evaluation again
# Given to the builds when the memory answers for the flake: Nix's own cache would only add the waiting above.
WITHOUT_EVALUATION_CACHE = ("--option", "eval-cache", "false")
STORE_PREFIX = "/nix/store/"


class BuiltSystems:
    """The toplevels built here from `locked`, by system name, kept in the state directory."""

    def __init__(self, state_directory: Path, locked: LockedFlake) -> None:
        self.locked = locked
        self._memory = Memory(state_directory / BUILT_DIRECTORY, KEEP_BUILT)

    @staticmethod
    def _key(flake_key: str, attr: str) -> str:
        return hashlib.sha256(f"{flake_key}\n{attr}".encode()).hexdigest()

    def known(self, runner: LocalRunner) -> bool:
        """Whether the flake has an identity, so that what is built from it is remembered (asks Nix once per run)."""
        return self.locked.key(runner) is not None

    def toplevels(self, runner: LocalRunner, attrs: Sequence[str]) -> dict[str, str]:
        """The toplevels of those attrs built before from this locked flake (whether still in the store or not)."""
        flake_key = self.locked.key(runner)  # None in a dry run
        if flake_key is None:
            return {}
        known = {attr: self._memory.recall(self._key(flake_key, attr)) for attr in attrs}
        return {attr: path for attr, path in known.items() if path and path.startswith(STORE_PREFIX)}

    def recall(self, runner: LocalRunner, attrs: Sequence[str], gc_root: Path) -> dict[str, str]:
        """The toplevels of attrs built before from this locked flake and still in the store, rooted as gc_root,
        gc_root-2, … until the run's roots go; {} when none is (or rooting them failed: then all are built)."""
        recalled = {attr: path for attr, path in self.toplevels(runner, attrs).items() if os.path.lexists(path)}
        if recalled:
            rooted = runner.run(commands.nix_store_realise_many(list(recalled.values()), gc_root), show_stderr=False)
            if not rooted.ok:
                return {}  # collected between the look and the root, say
        return recalled

    def remember(self, runner: LocalRunner, built: Mapping[str, str]) -> None:
        flake_key = self.locked.key(runner)
        if flake_key is None:
            return
        self._memory.remember_all({self._key(flake_key, attr): path for attr, path in built.items()})
