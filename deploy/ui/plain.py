"""Events as plain lines on the terminal: the renderer used everywhere, prefixed with the host's name in a fleet.

Threads render into one Console; it only ever takes complete lines, and all
of one event's lines at once, under one lock, so two hosts never share a line.
"""
from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar, TextIO

from deploy.ui import events
from deploy.ui.events import CommandRun, Event, Events, Note, OutputText


class _Terminal:
    """What consoles on one stream share: the lock that keeps lines whole, and the live table's printer while it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.printer: Callable[[str], None] | None = None


class Console:
    """The one place lines reach the user's terminal (stderr); the live table swaps in its own printer while it runs.

    Every console on the process's stderr (stream None) shares one _Terminal,
    so a fleet's hosts and the run's own notes never mix, and all of them
    scroll above the live table while it is drawn.
    """

    _stderr: ClassVar[_Terminal] = _Terminal()

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream  # None: whatever sys.stderr is when a line is written
        self._terminal = _Terminal() if stream is not None else Console._stderr

    @property
    def lock(self) -> threading.Lock:
        return self._terminal.lock

    @property
    def printer(self) -> Callable[[str], None] | None:
        return self._terminal.printer

    @printer.setter
    def printer(self, printer: Callable[[str], None] | None) -> None:
        self._terminal.printer = printer

    def write_lines(self, lines: Sequence[str]) -> None:
        with self.lock:
            printer = self.printer
            if printer is not None:
                for line in lines:
                    printer(line)
                return
            stream = self.stream or sys.stderr
            try:
                stream.write("".join(line + "\n" for line in lines))
                stream.flush()
            except (OSError, ValueError):
                pass


STDERR = Console()


def command_line(event: CommandRun) -> str:
    """`+ [alpha] NIX_SSHOPTS='-F ssh_config' nix copy …`: pasteable, as flakem's `set -x` showed it."""
    prefix = f"+ [{event.where}] " if event.where else "+ "
    assignments = [f"{key}={shlex.quote(value)}" for key, value in event.env]
    return prefix + " ".join([*assignments, shlex.join(event.argv)])


def output_lines(text: str) -> list[str]:
    """Whole lines of command output; a missing last newline is implied, a carriage return at a line's end dropped."""
    if not text:
        return []
    body = text[:-1] if text.endswith("\n") else text
    return [line.rstrip("\r") for line in body.split("\n")]


def event_lines(event: Event) -> list[str]:
    """The lines an event reads as, without any host prefix; [] for events that are no line (phases, results)."""
    match event:
        case CommandRun():
            return command_line(event).split("\n")  # a script sent with `sh -c` spans lines; each is prefixed
        case Note(text=text):
            return text.split("\n")  # as print() would: an empty note is an empty line
        case events.Warning(text=text):
            return f"warning: {text}".split("\n")
        case OutputText(text=text):
            return output_lines(text)
        case _:
            return []


class PlainRenderer:
    """Events as lines on a Console, each with `prefix` in front (`alpha | ` in a fleet).

    Captured command output is never shown; `show_commands=False` leaves out
    the `+ command` lines too (the log keeps both).
    """

    def __init__(self, console: Console | None = None, prefix: str = "", *, show_commands: bool = True) -> None:
        self.console = console or STDERR
        self.prefix = prefix
        self.show_commands = show_commands

    def emit(self, event: Event, /) -> None:
        if isinstance(event, CommandRun) and not self.show_commands:
            return
        if isinstance(event, OutputText) and event.captured:
            return
        lines = event_lines(event)
        if lines:
            self.console.write_lines([self.prefix + line for line in lines])


def stream_prefix(name: str, width: int) -> str:
    return f"{name.ljust(width)} | "


class Tee:
    """Every event to each of several sinks, in order (a host's lines and its log)."""

    def __init__(self, *sinks: Events) -> None:
        self.sinks = sinks

    def emit(self, event: Event, /) -> None:
        for sink in self.sinks:
            sink.emit(event)
