"""One host's part of a run (its spec, output and phases) and what its deploy came to.

Apart from pipeline.py, so that the fleet can set its hosts up, and start
their builds, before the engine's steps are imported.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy.activate.activation import new_token
from deploy.config.inventory import HostSpec
from deploy.model import Phase, Result
from deploy.transport.process import LocalRunner
from deploy.ui import Emitter

if TYPE_CHECKING:
    from deploy.confirm.magic_rollback import Verdict
    from deploy.copy.closure import Closure


@dataclass(frozen=True)
class DeployOutcome:
    host: str
    path: str | None  # None: `keys`, which deploys no system
    built_on: str
    status: Result  # ok, built, up-to-date or diffed: a deploy that fails raises instead
    copied: bool = False
    generation: int | None = None
    boot_id: str | None = None
    warnings: tuple[str, ...] = ()
    diff: str | None = None  # the `diff` task's result

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "status", Result(self.status))


@dataclass
class HostRun:
    """One host's part of a run: its spec, its output, its phases."""

    spec: HostSpec
    echo: Emitter
    runner: LocalRunner
    on_phase: Callable[[Phase], None] = lambda phase: None
    ask_lock: threading.Lock | None = None  # questions to the user, one host at a time
    warnings: list[str] = field(default_factory=list)
    path: str | None = None  # what is known so far, for the journal of a deploy that fails later: the system built
    closure_size: int | None = None  # its closure's size, when the preflight listed the closure here
    closure: Closure | None = None  # its closure, once listed (by the build, or beside the handshake)
    generation: int | None = None  # and the generation it activated
    # The run's name on the host: its switch's unit, its watchdog and verdict, and its row in the journal.
    token: str = field(default_factory=new_token)
    # Verdicts of earlier deploys' watchdogs this deploy saw (they settled before it went on), for the journal.
    verdicts_seen: list[Verdict] = field(default_factory=list)

    def phase(self, phase: Phase) -> None:
        self.on_phase(phase)

    def note(self, message: str) -> None:
        self.echo.note(message.removeprefix(f"{self.spec.name}: "))  # its lines already carry the host's name

    def step(self, text: str, started: float) -> None:
        """A step done, with how long it took since `started` (time.monotonic()); a dry run did nothing, and says its plan."""
        if not self.runner.dry_run:
            self.echo.step(text, seconds=time.monotonic() - started)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.echo.warning(message)
