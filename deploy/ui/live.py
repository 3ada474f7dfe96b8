"""The live table: each host's phase, elapsed time and latest line, drawn by rich below the scrolling lines.

It is kept from PhaseStarted and HostFinished events (and each host's lines,
through HostLine), and drawn only when stderr is a terminal; pipes and CI get
the plain prefixed lines alone. Hosts not started yet are `queued`; a staged
rollout (--canary, --batch) names the wave in the table's title.
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
from deploy.ui.events import CommandRun, Event, Failure, HostFinished, Note, OutputText, PhaseStarted, Step
from deploy.ui.plain import Console, event_lines

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
    latest: str = ""  # the host's latest line: a step, a note, or what its command printed

    @property
    def shown(self) -> str:
        """The progress table's phase column: the result once there is one, else the phase, else queued."""
        return self.result or self.phase or "queued"

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
    wave: str | None = None  # `wave 2/3` during a staged rollout

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

    def queued(self, name: str) -> None:
        """Waiting for its turn (after the shared build, behind --parallel or a wave): its clock starts when it does."""
        with self.lock:
            host = self.hosts[name]
            if host.result is None:
                host.phase, host.started = None, None

    def line(self, name: str, text: str) -> None:
        with self.lock:
            if name in self.hosts and text.strip():
                self.hosts[name].latest = text.strip()


class HostLine:
    """One host's events to the live table: its latest line (never a command's, nor captured output)."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress = progress
        self.name = name

    def emit(self, event: Event, /) -> None:
        match event:
            case CommandRun() | OutputText(captured=True):
                return
            case Step() | Note() | Failure() | OutputText():
                lines = event_lines(event)
                if lines:
                    self.progress.line(self.name, lines[0] if isinstance(event, Failure) else lines[-1])
            case _:
                return


def progress_table(progress: Progress) -> Any:
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2), title=progress.wave, title_justify="left")
    table.add_column("host", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    table.add_column("elapsed", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True, overflow="ellipsis")
    with progress.lock:
        rows = [(host, host.latest) for host in progress.hosts.values()]
    for host, latest in rows:
        style = (RESULT_STYLES.get(host.result) if host.result else None) or ("cyan" if host.started else "dim")
        table.add_row(
            host.name, f"[{style}]{host.shown}[/]", f"{host.elapsed(now):.1f}s" if host.started else "", Text(latest, style="dim")
        )
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
