"""Events as plain lines on the terminal: the renderer used everywhere, prefixed with the host's name in a fleet.

Threads render into one Console; it only ever takes complete lines, and all
of one event's lines at once, under one lock, so two hosts never share a line.
What is shown follows the console's OutputPolicy (deploy.ui.policy); no line
carries an ANSI code (only rich, on a terminal, draws in colour).
"""
from __future__ import annotations

import shlex
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, TextIO

from deploy.ui import events
from deploy.ui.events import CommandRun, Event, Events, Failure, Note, OutputText, Step
from deploy.ui.policy import OutputPolicy

# As colmena shows a failed node's "last 20 lines of logs".
TAIL_LINES = 20


class _Terminal:
    """What consoles on one stream share: the lock that keeps lines whole, and the live table's printer while it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.printer: Callable[[str], None] | None = None
        self.policy = OutputPolicy()


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

    @property
    def policy(self) -> OutputPolicy:
        """What its renderers show; the CLI edge sets the process's (STDERR's) once, from -v/-q."""
        return self._terminal.policy

    @policy.setter
    def policy(self, policy: OutputPolicy) -> None:
        self._terminal.policy = policy

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


SCRIPT_SHOWN_ABOVE = "<the script shown above>"


class Scripts:
    """Shows each script (an argument that spans lines, sent with `sh -c`) in full once; again, as one short line.

    A confirmation polled once a second then costs one line per attempt, not its whole script.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def command_lines(self, event: CommandRun) -> list[str]:
        with self._lock:
            argv = tuple(SCRIPT_SHOWN_ABOVE if "\n" in item and item in self._seen else item for item in event.argv)
            self._seen.update(item for item in event.argv if "\n" in item)
        return command_line(CommandRun(argv, event.where, event.env)).split("\n")


def duration(seconds: float) -> str:
    """`0.2 s`, `12.4 s`, `3 min 05 s`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def step_line(event: Step) -> str:
    return event.text if event.seconds is None else f"{event.text} in {duration(event.seconds)}"


def indented(text: str, by: str = "  ") -> list[str]:
    return [by + line for line in text.rstrip("\n").split("\n")]


def failure_lines(event: Failure) -> list[str]:
    return [f"error: {event.text}", *(indented(event.details) if event.details else [])]


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
        case Step():
            return step_line(event).split("\n")
        case Failure():
            return failure_lines(event)
        case OutputText(text=text):
            return output_lines(text)
        case _:
            return []


class PlainRenderer:
    """Events as lines on a Console, each with `prefix` in front (`alpha | ` in a fleet), as its policy says.

    Captured command output is never shown. A fleet host's renderer (`host`,
    by default when there is a prefix) shows what its commands print only
    when the policy says so; it keeps the last lines of what it did not show,
    and shows them under the host's error (a Failure without details), as
    colmena does. `show_commands` True or False overrides the policy for the
    `+ command` lines (the log keeps them all).
    """

    def __init__(
        self, console: Console | None = None, prefix: str = "", *, show_commands: bool | None = None, host: bool | None = None
    ) -> None:
        self.console = console or STDERR
        self.prefix = prefix
        self.show_commands = show_commands
        self.host = bool(prefix) if host is None else host
        self._scripts = Scripts()
        self._unshown: deque[str] = deque(maxlen=TAIL_LINES)

    def shows(self, event: Event) -> bool:
        policy = self.console.policy
        match event:
            case CommandRun():
                return policy.commands if self.show_commands is None else self.show_commands
            case OutputText(captured=True):
                return False
            case OutputText():
                return policy.hosts_print if self.host else policy.progress
            case Note() | Step():
                return policy.progress
            case _:
                return True  # warnings and failures, at every verbosity

    def emit(self, event: Event, /) -> None:
        if isinstance(event, Step):
            self._unshown.clear()  # what the host printed since its last step is what a failure is about
        if not self.shows(event):
            if self.host and isinstance(event, OutputText) and not event.captured:
                self._unshown.extend(output_lines(event.text))
            return
        if isinstance(event, CommandRun):
            lines = self._scripts.command_lines(event)
        elif isinstance(event, Failure) and event.details is None and self._unshown:
            lines = failure_lines(Failure(event.text, "\n".join([f"last {len(self._unshown)} lines of output:", *indented("\n".join(self._unshown))])))
        else:
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
