"""What the steps hold to say what happens: an Emitter turns their calls into events for its renderers."""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from deploy.ui import events
from deploy.ui.events import CommandRun, Event, Events, Failure, Note, OutputText, Step
from deploy.ui.log import LogSink
from deploy.ui.plain import STDERR, Console, PlainRenderer, Tee


@dataclass(frozen=True)
class Emitter:
    """One deploy's (or one fleet host's) voice; `sink` decides where its events go.

    The default draws plain lines on stderr, as a single-host task shows them;
    a fleet host's emitter prefixes them with its name and keeps its log too
    (host_emitter).
    """

    sink: Events = field(default_factory=PlainRenderer)

    def emit(self, event: Event, /) -> None:
        self.sink.emit(event)

    def command(self, argv: Sequence[str], *, where: str | None = None, env: Mapping[str, str] | None = None) -> None:
        """A command is about to run (or, dry, would)."""
        self.emit(CommandRun(tuple(argv), where, tuple((env or {}).items())))

    def note(self, text: str) -> None:
        self.emit(Note(text))

    def warning(self, text: str) -> None:
        self.emit(events.Warning(text))

    def step(self, text: str, *, seconds: float | None = None) -> None:
        """A step is done: `copied 3 paths, 64 KiB`, and how long it took (`in 0.2 s` follows)."""
        self.emit(Step(text, None if seconds is None else round(seconds, 3)))

    def failure(self, text: str, details: str | None = None) -> None:
        """The host's error, said once; `details` is the output that shows why (None: the renderers add the last lines)."""
        self.emit(Failure(text, details))

    def output(self, text: str) -> None:
        """Whole lines a command printed, shown live (and logged)."""
        if text:
            self.emit(OutputText(text))

    def record(self, text: str) -> None:
        """A command's captured output: kept in the host's log, not shown."""
        if text:
            self.emit(OutputText(text, captured=True))

    def lines(self) -> LineWriter:
        """A text stream for code that wants one (Fabric's out_stream): each complete line becomes output."""
        return LineWriter(self)

    @classmethod
    def plain(cls, stream: TextIO | None = None, *, show_commands: bool | None = True) -> Emitter:
        """Plain lines on `stream` (default: stderr); show_commands: always (True), never (False), as the policy says (None)."""
        return cls(PlainRenderer(Console(stream) if stream is not None else STDERR, show_commands=show_commands))


def host_emitter(console: Console, prefix: str, log: TextIO | None = None, *, also: Events | None = None) -> Emitter:
    """A fleet host's emitter: lines on the shared console with the host's prefix, everything in its log, and `also`
    (the live table's HostLine) if given."""
    sinks: list[Events] = [PlainRenderer(console, prefix, host=True)]
    if log is not None:
        sinks.append(LogSink(log))
    if also is not None:
        sinks.append(also)
    return Emitter(sinks[0] if len(sinks) == 1 else Tee(*sinks))


class LineWriter:
    """A file-like writer that hands only complete lines on, as live output; close() hands on the rest.

    Invoke writes chunks as they arrive and flushes after each, so a line can
    come in pieces: flush() keeps a piece until its line is complete.
    """

    def __init__(self, events: Events) -> None:
        self._events = events
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str, /) -> int:
        with self._lock:
            complete, newline, self._partial = (self._partial + text).rpartition("\n")
            if newline:
                self._events.emit(OutputText(complete + newline))
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
            if rest:
                self._events.emit(OutputText(rest))

    def isatty(self) -> bool:
        return False
