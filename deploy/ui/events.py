"""What a run says, as data: the steps emit these events and the renderers of deploy.ui draw them.

A step never formats a line for a terminal; it says that a command runs, that
something is worth noting, what a command printed, which phase a host is in.
Whether that becomes a prefixed line, a row of the live table or a line of a
host's log is the renderers' business, and so is how much of it is shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias

from deploy.model import Phase, Result


@dataclass(frozen=True)
class CommandRun:
    """A command about to run (with --dry-run: that would run), shown as `+ [where] NAME=value argv`."""

    argv: tuple[str, ...]
    where: str | None = None  # the host's label when it runs there; None on this machine
    env: tuple[tuple[str, str], ...] = ()  # variables set for it, shown as assignments in front


@dataclass(frozen=True)
class Note:
    """Something for the human: `==> alpha: activating (switch)`, a line of a diff, an error; may hold several lines."""

    text: str


@dataclass(frozen=True)
class Warning:  # shadows the builtin here only: modules say events.Warning and never import it bare
    """Something that did not stop the run but should be read; the renderers put `warning: ` in front."""

    text: str


@dataclass(frozen=True)
class Step:
    """A step of a host's deploy is done: what it did and how much (`copied 3 paths, 64 KiB`), and how long it took."""

    text: str
    seconds: float | None = None


@dataclass(frozen=True)
class Failure:
    """A host's deploy failed: its one-line error, and the output that shows why (the last lines, or None).

    Each failure is said once; the renderers add the last lines of what the host's
    commands printed when `details` is None and they did not show it already.
    """

    text: str
    details: str | None = None


@dataclass(frozen=True)
class OutputText:
    """What a command printed, in whole lines (a last newline is implied).

    Live output (captured=False) is shown and logged. Captured output, which
    nixfab reads and parses instead of showing, only the host's log keeps.
    """

    text: str
    captured: bool = False


@dataclass(frozen=True)
class PhaseStarted:
    """A host entered a phase of its deploy."""

    host: str
    phase: Phase


@dataclass(frozen=True)
class HostFinished:
    """A host is done, with its result."""

    host: str
    result: Result


Event: TypeAlias = CommandRun | Note | Warning | Step | Failure | OutputText | PhaseStarted | HostFinished


class Events(Protocol):
    """Anything events can be sent to: a renderer, a log, several of them (Tee), or an Emitter in front of them."""

    def emit(self, event: Event, /) -> None: ...
