"""Everything nixfab shows: the steps emit events (deploy.ui.events); renderers here draw them.

- policy: how much is shown (-q, default, -v), set once by the CLI edge (OutputPolicy, set_policy)
- plain: lines on stderr, prefixed with the host's name in a fleet (PlainRenderer, Console)
- live: the rich table of each fleet host's phase, when stderr is a terminal (Progress, live_display)
- log: each fleet host's full log file, whatever is shown (LogSink), and pruning old runs' logs
- results: a task's result on stdout, and the fleet's summary (stdout_result, show_summary)
- prompt: questions to the user (ask, read_secret)

No module outside this package prints (tests/test_static.py checks): they
hold an Emitter, or call one of the functions here. Importing it is cheap
(rich loads only when a table is drawn), since tab completion imports tasks.
"""
from __future__ import annotations

from deploy.ui.emitter import Emitter, LineWriter, host_emitter
from deploy.ui.events import CommandRun, Event, Events, Failure, HostFinished, Note, OutputText, PhaseStarted, Step
from deploy.ui.live import RESULT_STYLES, HostLine, Progress, live_display, progress_table
from deploy.ui.log import LOG_KEEP, RUN_LOG, LogSink, RunLog, open_log, prune_runs
from deploy.ui.plain import STDERR, Console, PlainRenderer, Tee, command_line, event_lines, stream_prefix
from deploy.ui.policy import OutputPolicy, Verbosity, verbosity_of
from deploy.ui.prompt import ask, read_secret
from deploy.ui.results import exit_message, show_summary, stderr_passthrough, stdout_result, summary_line


def note(text: str) -> None:
    """A note on stderr from code that has no run's Emitter at hand (the operations' closing lines)."""
    Emitter().note(text)


def set_policy(policy: OutputPolicy) -> None:
    """What this process shows on stderr from now on (the CLI edge calls it once per task)."""
    STDERR.policy = policy


def policy() -> OutputPolicy:
    return STDERR.policy


__all__ = [
    "LOG_KEEP",
    "RESULT_STYLES",
    "RUN_LOG",
    "STDERR",
    "CommandRun",
    "Console",
    "Emitter",
    "Event",
    "Events",
    "Failure",
    "HostFinished",
    "HostLine",
    "LineWriter",
    "LogSink",
    "Note",
    "OutputPolicy",
    "OutputText",
    "PhaseStarted",
    "PlainRenderer",
    "Progress",
    "RunLog",
    "Step",
    "Tee",
    "Verbosity",
    "ask",
    "command_line",
    "event_lines",
    "exit_message",
    "host_emitter",
    "live_display",
    "note",
    "open_log",
    "policy",
    "progress_table",
    "prune_runs",
    "read_secret",
    "set_policy",
    "show_summary",
    "stderr_passthrough",
    "stdout_result",
    "stream_prefix",
    "summary_line",
    "verbosity_of",
]
