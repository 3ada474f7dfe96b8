"""Where a fleet's output goes: whole prefixed lines on the console, a full log per host, a live table.

Threads write into per-host streams; a stream only ever hands complete lines
to the console, under one lock, so two hosts never share a line. The rich
live table is used only when stderr is a terminal; pipes and CI get plain
prefixed lines, which is also what the log files hold (without the prefix).
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from deploy.model import Phase, Result


class Console:
    """The one place lines reach the user's terminal; replaced by the live display's console when it runs."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.printer: Callable[[str], None] | None = None

    def emit(self, line: str) -> None:
        with self.lock:
            if self.printer is not None:
                self.printer(line)
                return
            stream = self.stream or sys.stderr
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass


class HostStream:
    """A text stream for one host: complete lines go to the console with its name in front, and to its log."""

    def __init__(self, console: Console, prefix: str, log: TextIO | None = None) -> None:
        self.console = console
        self.prefix = prefix
        self.log = log
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self.log is not None:
                self.log.write(text)
                self.log.flush()
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            self.console.emit(self.prefix + line.rstrip("\r"))
        return len(text)

    def record(self, text: str) -> None:
        """Keep text in the log without showing it (captured command output)."""
        if self.log is not None and text:
            with self._lock:
                self.log.write(text if text.endswith("\n") else text + "\n")
                self.log.flush()

    def flush(self) -> None:
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial:
            self.console.emit(self.prefix + partial)

    def isatty(self) -> bool:
        return False


def stream_prefix(name: str, width: int) -> str:
    return f"{name.ljust(width)} | "


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
    """Each host's phase and elapsed time; rendered live by FleetDisplay when there is a terminal."""

    names: Sequence[str]
    hosts: dict[str, HostProgress] = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hosts = {name: HostProgress(name) for name in self.names}

    def phase(self, name: str, phase: Phase) -> None:
        with self.lock:
            host = self.hosts[name]
            if host.started is None:
                host.started = time.monotonic()
            host.phase = phase

    def finish(self, name: str, result: Result) -> None:
        with self.lock:
            host = self.hosts[name]
            host.finished = time.monotonic()
            if host.started is None:
                host.started = host.finished
            host.result = result


RESULT_STYLES: dict[Result, str] = {
    Result.OK: "green",
    Result.UP_TO_DATE: "green",
    Result.BUILT: "green",
    Result.FAILED: "bold red",
    Result.ROLLED_BACK: "bold yellow",
    Result.INTERRUPTED: "yellow",
    Result.NOT_STARTED: "dim",
}


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
    """A rich live table of phases above which host lines scroll; a no-op without a terminal."""
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


def open_log(log_dir: Path | None, name: str) -> TextIO | None:
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / f"{name}.log", "a", encoding="utf-8", errors="replace")
