"""Everything nixfab shows: the steps emit events (deploy.ui.events); renderers here draw them.

- plain: lines on stderr, prefixed with the host's name in a fleet (PlainRenderer, Console)
- live: the rich table of each fleet host's phase, when stderr is a terminal (Progress, live_display)
- log: each fleet host's full log file (LogSink)
- results: a task's result on stdout, and the fleet's summary (stdout_result, show_summary)
- prompt: questions to the user (ask, read_secret)

No module outside this package prints (tests/test_static.py checks): they
hold an Emitter, or call one of the functions here. Importing it is cheap
(rich loads only when a table is drawn), since tab completion imports tasks.
"""
from __future__ import annotations

from deploy.ui.emitter import Emitter, LineWriter, host_emitter
from deploy.ui.events import CommandRun, Event, Events, HostFinished, Note, OutputText, PhaseStarted
from deploy.ui.live import RESULT_STYLES, Progress, live_display, progress_table
from deploy.ui.log import LogSink, open_log
from deploy.ui.plain import STDERR, Console, PlainRenderer, Tee, command_line, event_lines, stream_prefix
from deploy.ui.prompt import ask, read_secret
from deploy.ui.results import show_summary, stderr_passthrough, stdout_result


def note(text: str) -> None:
    """A note on stderr from code that has no run's Emitter at hand (the day-2 tasks' closing lines)."""
    Emitter().note(text)


__all__ = [
    "RESULT_STYLES", "STDERR", "CommandRun", "Console", "Emitter", "Event", "Events", "HostFinished", "LineWriter",
    "LogSink", "Note", "OutputText", "PhaseStarted", "PlainRenderer", "Progress", "Tee", "ask", "command_line", "event_lines",
    "host_emitter", "live_display", "note", "open_log", "progress_table", "read_secret", "show_summary", "stderr_passthrough", "stdout_result",
    "stream_prefix",
]
