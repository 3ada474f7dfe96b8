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


def test_children_started_in_a_thread_end_when_the_run_is_stopped() -> None:
    """Only the main thread hears Ctrl-C: a build or flake check in a thread of its own is ended through its ChildProcesses."""
    import threading
    import time

    from deploy.ui import Emitter

    children = process.ChildProcesses()
    runner = LocalRunner(Emitter(), children=children)
    results: list[process.Result] = []
    worker = threading.Thread(target=lambda: results.append(runner.run(["sleep", "30"])))
    started = time.monotonic()
    worker.start()
    while not children._running and time.monotonic() - started < 10:
        time.sleep(0.01)
    running = list(children._running)
    children.stop()
    # Ended, not only signalled, once stop() returns: the run may end right after it, and nothing may outlive it.
    assert [child.poll() is not None for child in running] == [True]
    worker.join(timeout=10)
    assert not worker.is_alive() and results[0].returncode != 0 and time.monotonic() - started < 10
    assert runner.run(["sleep", "30"]).returncode != 0  # stopped: what starts later is ended at once
    assert time.monotonic() - started < 10
