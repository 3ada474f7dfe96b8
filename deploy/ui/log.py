"""The per-host log (`--log-dir DIR`, by default .nixfab/logs/<run>/<host>.log): everything, unprefixed.

It holds every line the host showed and, unlike the terminal, the output of
commands that nixfab captured to parse, and every `+ command` line whatever
the terminal's verbosity (a script sent again is written as one line, not
again in full). The run's own lines (the flake check, the shared build) go
to <run>/run.log. Only the last runs' directories are kept (prune_runs).
"""
from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import TextIO

from deploy.ui.events import CommandRun, Event
from deploy.ui.plain import Scripts, event_lines

# The default number of runs whose logs are kept (--log-keep).
LOG_KEEP = 20
# What run directories are named (cli.run_stamp): only such directories are ever pruned.
# A run's directory: when it started (to the microsecond: pids wrap, so within one second only that orders runs; older
# runs were named to the second) and its pid.
RUN_DIRECTORY = re.compile(r"(?P<second>\d{8}-\d{6})(?:\.(?P<microsecond>\d{6}))?-(?P<pid>\d+)")
RUN_LOG = "run"


class LogSink:
    """Writes each event's lines to one host's log file."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._scripts = Scripts()

    def emit(self, event: Event, /) -> None:
        lines = self._scripts.command_lines(event) if isinstance(event, CommandRun) else event_lines(event)
        if not lines:
            return
        with self._lock:
            if self.file.closed:
                return  # its host is done; a connection it opened, shared with a host still deploying, may still speak
            self.file.write("".join(line + "\n" for line in lines))
            self.file.flush()


class RunLog:
    """The run's own lines, appended to <run>/run.log; the file is opened for each event, so a run holds no descriptor
    for it (a fleet's descriptors grow with --parallel only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._scripts = Scripts()
        self._failed = False

    def emit(self, event: Event, /) -> None:
        lines = self._scripts.command_lines(event) if isinstance(event, CommandRun) else event_lines(event)
        if not lines or self._failed:
            return
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8", errors="replace") as file:
                    file.write("".join(line + "\n" for line in lines))
            except OSError:
                self._failed = True  # the fleet warns about a log directory it cannot write; this log just stops


def open_log(log_dir: Path | None, name: str) -> TextIO | None:
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / f"{name}.log", "a", encoding="utf-8", errors="replace")


def prune_runs(logs: Path, keep: int, *, current: Path | None = None) -> list[Path]:
    """Remove all but the newest `keep` run directories under `logs` (never `current`); returns those removed.

    Only directories named as nixfab names runs are touched, so a --log-dir of
    the user's own is never pruned, nor anything else that lives beside them.
    """
    if keep < 1 or not logs.is_dir():
        return []
    named = ((entry, RUN_DIRECTORY.fullmatch(entry.name)) for entry in logs.iterdir() if entry.is_dir() and not entry.is_symlink())
    started = {entry: (match["second"], int(match["microsecond"] or -1), int(match["pid"])) for entry, match in named if match}
    runs = sorted(started, key=started.__getitem__)
    if current is not None:
        runs = [entry for entry in runs if entry.resolve() != current.resolve()]
        keep -= 1
    removed = runs[: max(0, len(runs) - keep)]
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
    return removed
