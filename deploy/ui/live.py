"""The live table: each host's phase and elapsed time, drawn by rich above the scrolling lines.

It is kept from PhaseStarted and HostFinished events, and drawn only when
stderr is a terminal; pipes and CI get the plain prefixed lines alone.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from deploy.model import Phase, Result
from deploy.ui.events import Event, HostFinished, PhaseStarted
from deploy.ui.plain import Console

RESULT_STYLES: dict[Result, str] = {
    Result.OK: "green",
    Result.UP_TO_DATE: "green",
    Result.BUILT: "green",
    Result.DIFFED: "green",
    Result.PLANNED: "cyan",
    Result.SKIPPED: "yellow",
    Result.FAILED: "bold red",
    Result.ROLLED_BACK: "bold yellow",
    Result.INTERRUPTED: "yellow",
    Result.NOT_STARTED: "dim",
    Result.UNFINISHED: "bold red",
}


@dataclass
class HostProgress:
    name: str
    phase: Phase | None = None  # None: not started yet
    started: float | None = None
    finished: float | None = None
    result: Result | None = None

    @property
    def shown(self) -> str:
        """The progress table's phase column: the result once there is one, else the phase, else waiting."""
        return self.result or self.phase or "waiting"

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or now) - self.started


@dataclass
class Progress:
    """Each host's phase and elapsed time, kept from the events; live_display draws it when there is a terminal."""

    names: Sequence[str]
    hosts: dict[str, HostProgress] = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hosts = {name: HostProgress(name) for name in self.names}

    def emit(self, event: Event, /) -> None:
        match event:
            case PhaseStarted(host=name, phase=phase):
                with self.lock:
                    host = self.hosts[name]
                    if host.started is None:
                        host.started = time.monotonic()
                    host.phase = phase
            case HostFinished(host=name, result=result):
                with self.lock:
                    host = self.hosts[name]
                    host.finished = time.monotonic()
                    if host.started is None:
                        host.started = host.finished
                    host.result = result
            case _:
                pass

    def phase(self, name: str, phase: Phase) -> None:
        """emit(PhaseStarted(name, phase)): the fleet hands this to each host's HostRun as its on_phase."""
        self.emit(PhaseStarted(name, phase))

    def finish(self, name: str, result: Result) -> None:
        """emit(HostFinished(name, result))."""
        self.emit(HostFinished(name, result))


def progress_table(progress: Progress) -> Any:
    from rich.table import Table

    now = time.monotonic()
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    table.add_column("host")
    table.add_column("phase")
    table.add_column("elapsed", justify="right")
    with progress.lock:
        rows = list(progress.hosts.values())
    for host in rows:
        style = (RESULT_STYLES.get(host.result) if host.result else None) or ("cyan" if host.started else "dim")
        table.add_row(host.name, f"[{style}]{host.shown}[/]", f"{host.elapsed(now):.1f}s" if host.started else "")
    return table


@contextmanager
def live_display(console: Console, progress: Progress, *, enabled: bool) -> Iterator[None]:
    """A rich live table of phases above which the console's lines scroll; a no-op without a terminal."""
    if not enabled:
        yield
        return
    from rich.console import Console as RichConsole
    from rich.live import Live
    from rich.text import Text

    rich_console = RichConsole(file=sys.stderr)

    class Renderable:
        def __rich__(self) -> Any:
            return progress_table(progress)

    with Live(Renderable(), console=rich_console, refresh_per_second=8, transient=True):
        console.printer = lambda line: rich_console.print(Text(line), soft_wrap=True)
        try:
            yield
        finally:
            console.printer = None
