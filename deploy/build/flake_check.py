"""`nix flake check` on request, beside the build, once per locked flake.

The check evaluates every output of the flake (every system, not only the
selected ones) and builds its checks, so it is off unless asked for
(`--check`, or `check: true` in hosts.yaml's defaults). When it runs, it runs
in the background while the systems build and copy; a host waits for it only
before activation, and a failed check stops every host there. A flake whose
check passed is remembered by what identifies it locked (its narHash and its
inputs' locks, the extra Nix options and the Nix: locked_flake), so an
unchanged flake is not checked again.
"""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from deploy.build.locked_flake import LockedFlake, Memory
from deploy.errors import BuildError, NixfabError, StoppedByInterrupt
from deploy.nix.flake_ops import flake_check
from deploy.transport.process import ChildProcesses, LocalRunner

PASSED_DIRECTORY = "flake-checks"  # under the state directory: one empty file per passed locked flake (its key)
KEEP_PASSED = 50  # the passes used last kept; older ones only cost a check again


class PassedChecks(Memory):
    """The locked flakes whose check passed on this machine: an empty file each, named by its LockedFlake key."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, KEEP_PASSED)

    def passed(self, key: str) -> bool:
        return self.recall(key) is not None


class FlakeCheck:
    """One `nix flake check`, started at once in a thread; wait() before activating.

    show_progress: as flake_ops.flake_check's (Nix's lines are shown only with -v).
    """

    def __init__(self, runner: LocalRunner, locked: LockedFlake, passed: PassedChecks, *, show_progress: bool = True) -> None:
        self.flake = locked.flake
        self._locked = locked
        self._show_progress = show_progress
        self._children = ChildProcesses()
        self._runner = dataclasses.replace(runner, children=self._children)
        self._passed = passed
        self._error: BuildError | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._check, name="flake-check", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            key = self._locked.key(self._runner)
            if key is not None and self._passed.passed(key):
                self._runner.echo.note(f"==> nix flake check: passed before for this locked {self.flake}; not run again")
                return
            self._runner.echo.note(f"==> checking {self.flake} (nix flake check) while building; hosts activate once it passes")
            flake_check(self._runner, self.flake, self._locked.extra, show_progress=self._show_progress)
            if key is not None and not self._runner.dry_run:
                self._passed.remember(key)
        except BuildError as error:
            self._error = error
        except Exception as error:  # noqa: BLE001 - a host waiting for the check must hear of it, never wait forever
            self._error = BuildError(f"nix flake check {self.flake} failed: {type(error).__name__}: {error}")
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stop(self) -> None:
        """Interrupted: end the check; hosts waiting for it go no further."""
        self._children.stop()

    def failure(self) -> NixfabError | None:
        """What a host says when the check has already failed (its own error is the run's, said once at the end); else None."""
        if self._children.stopped:
            return StoppedByInterrupt(f"not activated: the run was interrupted during nix flake check {self.flake}")
        if not self._done.is_set() or self._error is None:
            return None
        return BuildError(f"not activated: nix flake check {self.flake} failed")

    def outcome(self) -> BuildError | None:
        """Wait for the check to end: its error, or None when it passed."""
        self._done.wait()
        return self._error

    def wait(self) -> None:
        """Return once the check has passed; raise failure()'s error if it failed or was stopped."""
        self._done.wait()
        error = self.failure()
        if error is not None:
            raise error
