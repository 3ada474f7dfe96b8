"""Everything nixfab shows: the steps emit events (deploy.ui.events); renderers here draw them.

- plain: lines on stderr, prefixed with the host's name in a fleet (PlainRenderer, Console)
- live: the rich table of each fleet host's phase, when stderr is a terminal (Progress, live_display)
- log: each fleet host's full log file (LogSink)

Steps hold an Emitter and never format a line themselves. Importing it is cheap
(rich loads only when a table is drawn), since tab completion imports tasks.
"""
from __future__ import annotations

from deploy.ui.emitter import Emitter, LineWriter, host_emitter
from deploy.ui.events import CommandRun, Event, Events, HostFinished, Note, OutputText, PhaseStarted
from deploy.ui.live import PHASES, RESULT_STYLES, Progress, live_display, progress_table
from deploy.ui.log import LogSink, open_log
from deploy.ui.plain import STDERR, Console, PlainRenderer, Tee, command_line, event_lines, stream_prefix

__all__ = [
    "PHASES", "RESULT_STYLES", "STDERR", "CommandRun", "Console", "Emitter", "Event", "Events", "HostFinished", "LineWriter",
    "LogSink", "Note", "OutputText", "PhaseStarted", "PlainRenderer", "Progress", "Tee", "command_line", "event_lines",
    "host_emitter", "live_display", "open_log", "progress_table", "stream_prefix",
]
