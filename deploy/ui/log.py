"""The per-host log (`--log-dir DIR`, by default .nixfab/logs/<run>/<host>.log): everything, unprefixed.

It holds every line the host showed and, unlike the terminal, the output of
commands that nixfab captured to parse, and every `+ command` line whatever
the terminal's verbosity.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TextIO

from deploy.ui.events import Event
from deploy.ui.plain import event_lines


class LogSink:
    """Writes each event's lines to one host's log file."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self._lock = threading.Lock()

    def emit(self, event: Event, /) -> None:
        lines = event_lines(event)
        if not lines:
            return
        with self._lock:
            if self.file.closed:
                return  # its host is done; a connection it opened, shared with a host still deploying, may still speak
            self.file.write("".join(line + "\n" for line in lines))
            self.file.flush()


def open_log(log_dir: Path | None, name: str) -> TextIO | None:
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    return open(log_dir / f"{name}.log", "a", encoding="utf-8", errors="replace")
