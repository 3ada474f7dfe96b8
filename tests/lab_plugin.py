"""pytest fixtures for the lab; tests/conftest.py loads this as a plugin.

A module of its own rather than conftest.py, so that a nested pytest run can
load exactly this fixture with `-p lab_plugin` (tests/test_lab.py does).

With NIXFAB_REQUIRE_LAB=1 (CI sets it) a lab test that cannot run fails
instead of being skipped, and any skip at all fails the session.
"""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.lab import Lab, lab_prerequisites


def lab_required() -> bool:
    return os.environ.get("NIXFAB_REQUIRE_LAB") == "1"


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """An empty lab; call lab.up([...]). Every host is stopped by pid afterwards."""
    problems = lab_prerequisites()
    if problems:
        reason = "lab unavailable: " + "; ".join(problems)
        if lab_required():
            pytest.fail(reason)
        pytest.skip(reason)
    lab = Lab(Path(tmp_path_factory.mktemp("lab", numbered=True)))
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    """inv processes a test starts in the background; each is stopped by its pid (and its own session) afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the session start_new_session made for this process
            except ProcessLookupError:
                pass
        process.wait(timeout=30)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not lab_required():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"NIXFAB_REQUIRE_LAB=1: {skipped} test(s) skipped; a skip is a failure here", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The journal, logs and caches of every run go here, never into the repository (modules opt in with usefixtures)."""
    directory = tmp_path / "state"
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(directory))
    return directory


@pytest.fixture(autouse=True)
def state_outside_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flake outside git keeps its state under $XDG_STATE_HOME: a test's, never this machine's ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-state"))
