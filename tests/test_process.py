"""deploy.transport.process: a local command that is interrupted never leaves its child running."""
from __future__ import annotations

import io
import os
import signal
import subprocess
from typing import Any

import pytest

from deploy.lab.lab import process_start_time
from deploy.transport import process
from deploy.transport.process import LocalRunner
from deploy.ui import Emitter


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_an_interrupt_while_the_child_is_being_started_still_stops_the_child(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    # Python raises KeyboardInterrupt wherever the main thread is: inside Popen, after the fork, nobody held the child.
    started: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        child = real_popen(*args, **kwargs)
        started.append(child)
        os.kill(os.getpid(), signum)  # arrives before Popen has returned to the runner
        return child

    monkeypatch.setattr(process.subprocess, "Popen", popen_then_signal)

    def interrupted(number: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGHUP, interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            LocalRunner(Emitter.plain(io.StringIO())).run(["sleep", "30"])
        assert len(started) == 1
        assert started[0].returncode is not None and process_start_time(started[0].pid) is None  # stopped and reaped
    finally:
        signal.signal(signal.SIGHUP, previous)
        for child in started:  # a test's own child is stopped, by its pid, whatever happened
            if child.poll() is None:
                child.kill()
                child.wait()
