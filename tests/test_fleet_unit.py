"""deploy.engine.fleet without hosts: waves, canary and batch stops, --fail-fast, the parallel limit, Ctrl-C, exit codes and JSON.

Fleet calls pipeline.deploy_host once per host; here that is FakeDeploys,
which records the order and overlap of the calls and answers each host as the
test says (an outcome status, or an error to raise).
"""
from __future__ import annotations

import concurrent.futures
import errno
import io
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.config.inventory import HostSpec, Inventory, SshTarget
from deploy.engine import fleet
from deploy.engine.fleet import Fleet, FleetOptions, HostResult, exit_code, results_json, waves
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.request import DeployRequest
from deploy.engine.session import Session
from deploy.errors import ActivationFailed, HealthCheckFailed, HostBusy, HostUnreachable, JournalError, NixfabError, NotConfirmed
from deploy.ui import Emitter
from deploy.ui.plain import Console

Behaviour = str | NixfabError | Exception | Callable[[], str]


class FakeDeploys:
    """Stands in for pipeline.deploy_host: one call per host, `hold` seconds each.

    With `together`, the first deploys also wait (up to 2 s) until that many
    have run at once, so that overlap does not depend on the machine's speed.
    """

    def __init__(self, behaviour: dict[str, Behaviour] | None = None, *, hold: float = 0.0, together: int | None = None) -> None:
        self.behaviour = behaviour or {}
        self.hold = hold
        self.together = together
        self.started: list[str] = []
        self.built_here: dict[str, str | None] = {}
        self.active = 0
        self.most_at_once = 0
        self.lock = threading.Lock()

    def __call__(self, session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
        name = run.spec.name
        with self.lock:
            self.started.append(name)
            self.built_here[name] = built_here
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        try:
            if self.together is not None:
                wait_for(lambda: self.most_at_once >= self.together, timeout=2.0)  # type: ignore[operator]
            time.sleep(self.hold)
            what = self.behaviour.get(name, "ok")
            if callable(what) and not isinstance(what, BaseException):
                what = what()
            if isinstance(what, BaseException):
                raise what
            return DeployOutcome(name, f"/nix/store/{name}-system", "target", what, generation=7)
        finally:
            with self.lock:
                self.active -= 1


def hosts(*names: str, build_on: str = "target") -> Inventory:
    return Inventory(
        hosts={name: HostSpec(name=name, ssh=SshTarget(f"{name}.example"), attr=name, build_on=build_on, tags=(), sudo=False, declared=True) for name in names}
    )


class Run:
    """A Fleet over named hosts with FakeDeploys in place of deploy_host; quiet."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, names: str, deploys: FakeDeploys, build_on: str = "target", **options: object) -> None:
        self.deploys = deploys
        self.machines = names.split()
        self.echo_stream = io.StringIO()
        inventory = hosts(*{machine.partition("@")[2] or machine for machine in self.machines}, build_on=build_on)
        self.session = Session(inventory, echo=Emitter.plain(self.echo_stream))
        self.seen: list[tuple[str, str]] = []
        monkeypatch.setattr(fleet, "deploy_host", deploys)
        self.fleet = Fleet(
            self.session, DeployRequest(flake="/flake", action="switch"), self.machines, FleetOptions(**options),  # type: ignore[arg-type]
            console=Console(io.StringIO()), on_result=lambda result, run: self.seen.append((result.host, run.spec.name)),
        )

    def __call__(self) -> dict[str, HostResult]:
        try:
            results = self.fleet.run()
        except KeyboardInterrupt:
            pytest.fail("a KeyboardInterrupt escaped Fleet.run")
        assert [result.host for result in results] == self.machines  # in the order asked, whatever the order of finishing
        return {result.host: result for result in results}

    @property
    def notes(self) -> str:
        return self.echo_stream.getvalue()


def outcomes(results: dict[str, HostResult]) -> dict[str, str]:
    return {name: result.result for name, result in results.items()}


# ---- waves ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canary", "batch", "planned"),
    [
        (False, None, [["a", "b", "c", "d", "e"]]),
        (True, None, [["a"], ["b", "c", "d", "e"]]),
        (False, 2, [["a", "b"], ["c", "d"], ["e"]]),
        (True, 2, [["a"], ["b", "c"], ["d", "e"]]),
        (False, 1, [["a"], ["b"], ["c"], ["d"], ["e"]]),
        (False, 9, [["a", "b", "c", "d", "e"]]),
        (True, 9, [["a"], ["b", "c", "d", "e"]]),
    ],
)
def test_waves(canary: bool, batch: int | None, planned: list[list[str]]) -> None:
    assert waves(["a", "b", "c", "d", "e"], canary=canary, batch=batch) == planned


def test_waves_of_one_host_and_of_none() -> None:
    assert waves(["a"], canary=True, batch=None) == [["a"]]
    assert waves(["a"], canary=True, batch=3) == [["a"]]
    assert waves([], canary=True, batch=2) == []
    assert waves([], canary=False, batch=None) == []


# ---- canary, batch, fail-fast -------------------------------------------------------------------------------------------


def test_a_canary_that_does_not_come_out_healthy_stops_the_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"a": ActivationFailed("a: switch-to-configuration switch failed (exit 1); rolled back: ...")})
    run = Run(monkeypatch, "a b c", deploys, canary=True)
    results = run()
    assert outcomes(results) == {"a": "rolled-back", "b": "not started", "c": "not started"}
    assert deploys.started == ["a"]
    assert results["a"].exit_code == 6 and exit_code(list(results.values()), interrupted=False) == 6
    assert "==> stopping the rollout: a did not come out healthy" in run.notes


def test_a_healthy_canary_lets_the_rest_go_on_together(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"a": "up-to-date"}, hold=0.05)
    results = Run(monkeypatch, "a b c", deploys, canary=True)()
    assert outcomes(results) == {"a": "up-to-date", "b": "ok", "c": "ok"}
    assert deploys.started[0] == "a" and sorted(deploys.started[1:]) == ["b", "c"]
    assert exit_code(list(results.values()), interrupted=False) == 0


def test_a_batch_stops_after_the_first_wave_with_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"d": NotConfirmed("d: not confirmed within 30s after activation")})
    results = Run(monkeypatch, "a b c d e f g", deploys, batch=2)()
    assert outcomes(results) == {
        "a": "ok", "b": "ok", "c": "ok", "d": "rolled-back", "e": "not started", "f": "not started", "g": "not started",
    }
    assert sorted(deploys.started) == ["a", "b", "c", "d"]
    assert exit_code(list(results.values()), interrupted=False) == 15


def test_a_batch_that_stays_healthy_deploys_every_wave_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys(hold=0.01)
    results = Run(monkeypatch, "a b c d e", deploys, batch=2)()
    assert set(outcomes(results).values()) == {"ok"}
    assert [sorted(deploys.started[i : i + 2]) for i in (0, 2, 4)] == [["a", "b"], ["c", "d"], ["e"]]


def test_without_canary_or_batch_one_failure_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"a": HostUnreachable("a: no answer")})
    results = Run(monkeypatch, "a b c", deploys, parallel=1)()
    assert outcomes(results) == {"a": "failed", "b": "ok", "c": "ok"}
    assert deploys.started == ["a", "b", "c"]
    assert exit_code(list(results.values()), interrupted=False) == 4


def test_fail_fast_starts_no_new_host_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"b": HostBusy("b: another deploy is running")})
    results = Run(monkeypatch, "a b c d", deploys, parallel=1, fail_fast=True)()
    assert outcomes(results) == {"a": "ok", "b": "failed", "c": "not started", "d": "not started"}
    assert deploys.started == ["a", "b"]
    assert exit_code(list(results.values()), interrupted=False) == 14


def test_fail_fast_holds_across_waves(monkeypatch: pytest.MonkeyPatch) -> None:
    # The canary succeeds; in the next wave a failure stops what has not started, even without --batch's own stop.
    deploys = FakeDeploys({"b": HealthCheckFailed("b: health check failed")})
    results = Run(monkeypatch, "a b c", deploys, canary=True, parallel=1, fail_fast=True)()
    assert outcomes(results) == {"a": "ok", "b": "rolled-back", "c": "not started"}


def test_a_bug_in_one_hosts_deploy_is_that_hosts_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    deploys = FakeDeploys({"a": KeyError("boom")})
    results = Run(monkeypatch, "a b", deploys)()
    assert outcomes(results) == {"a": "failed", "b": "ok"}
    assert results["a"].error == "a: internal error: KeyError: 'boom'" and results["a"].exit_code == 1


def test_each_result_is_reported_once_with_its_run(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, "a b c", FakeDeploys({"a": NixfabError("a: no")}), canary=True)
    run()
    assert sorted(run.seen) == [("a", "a"), ("b", "b"), ("c", "c")]


def test_the_same_host_twice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NixfabError, match="a is selected twice"):
        Run(monkeypatch, "a root@a", FakeDeploys())


# ---- the parallel limit -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("parallel", "most"), [(1, 1), (2, 2), (3, 3), (10, 6)])
def test_no_more_hosts_at_once_than_parallel_allows(monkeypatch: pytest.MonkeyPatch, parallel: int, most: int) -> None:
    # Each deploy lasts 20 ms, time enough for a host beyond the limit to start if the pool let it.
    deploys = FakeDeploys(hold=0.02, together=most)
    results = Run(monkeypatch, "a b c d e f", deploys, parallel=parallel)()
    assert set(outcomes(results).values()) == {"ok"}
    assert deploys.most_at_once == most


def test_a_canary_runs_alone_whatever_parallel_says(monkeypatch: pytest.MonkeyPatch) -> None:
    seen_alone: list[bool] = []
    deploys = FakeDeploys(hold=0.02)

    def canary() -> str:
        seen_alone.append(deploys.active == 1)
        deploys.together = 3  # the next wave: b, c and d at once
        return "ok"

    deploys.behaviour["a"] = canary
    Run(monkeypatch, "a b c d", deploys, canary=True, parallel=10)()
    assert seen_alone == [True] and deploys.most_at_once == 3


# ---- Ctrl-C ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt() -> Iterator[None]:
    """Ctrl-C as under a terminal, even in a suite started with SIGINT ignored (the background of a non-interactive shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c() -> None:
    """What the terminal does on Ctrl-C: SIGINT to the main thread."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


@pytest.fixture
def main_thread_waiting(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once the main thread waits for a wave's deploys (all of them submitted): the moment a Ctrl-C is meant for."""
    waiting = threading.Event()
    real_wait = concurrent.futures.wait

    def wait(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "wait", wait)
    return waiting


def ctrl_c_then_finish(run: Run, waiting: threading.Event, *, twice: bool = False) -> Callable[[], str]:
    """A deploy during which the user presses Ctrl-C (once or twice), and which still finishes."""

    def deploy() -> str:
        assert waiting.wait(5)
        ctrl_c()
        assert wait_for(run.fleet.stop.is_set), "the fleet never noticed the interrupt"
        if twice:
            ctrl_c()
            assert wait_for(lambda: "still waiting for running deploys" in run.notes)
        return "ok"

    return deploy


def finish_after_the_interrupt(run: Run) -> Callable[[], str]:
    def deploy() -> str:
        assert wait_for(run.fleet.stop.is_set)
        return "ok"

    return deploy


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("twice", [False, True])
def test_ctrl_c_lets_running_deploys_finish_starts_no_other_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, main_thread_waiting: threading.Event, twice: bool
) -> None:
    deploys = FakeDeploys()
    run = Run(monkeypatch, "a b c d", deploys, parallel=2)
    deploys.behaviour["a"] = ctrl_c_then_finish(run, main_thread_waiting, twice=twice)
    deploys.behaviour["b"] = finish_after_the_interrupt(run)
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "ok", "c": "interrupted", "d": "interrupted"}
    assert sorted(deploys.started) == ["a", "b"]
    assert run.fleet.interrupted is True
    assert exit_code(list(results.values()), interrupted=True) == 130
    assert "==> interrupted: no new host starts; waiting for running deploys to finish or roll back" in run.notes


def test_ctrl_c_while_a_deploy_thread_starts_stops_the_run_before_the_builds_are_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen as a flaky SIGHUP test: the signal came while the wave started its first thread, outside the wave's own
    # handling, so the builds were stopped before the run was; the host's deploy then met its killed build and
    # reported the host "failed: building alpha failed: no output" instead of interrupted.
    real_submit = concurrent.futures.ThreadPoolExecutor.submit
    stopped_when: list[bool] = []

    def submit_then_ctrl_c(pool: concurrent.futures.ThreadPoolExecutor, *args: Any, **kwargs: Any) -> Any:
        future = real_submit(pool, *args, **kwargs)
        ctrl_c()  # as if it came while the thread started: the handler runs here, in submit
        return future

    run = Run(monkeypatch, "a b", FakeDeploys(hold=0.05), parallel=2)
    real_stop_background = run.fleet.stop_background

    def stop_background() -> None:
        stopped_when.append(run.fleet.stop.is_set())
        real_stop_background()

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", submit_then_ctrl_c)
    monkeypatch.setattr(run.fleet, "stop_background", stop_background)
    results = run()  # Ctrl-C raises KeyboardInterrupt here (the autouse fixture)
    assert stopped_when and all(stopped_when)  # no deploy can take the stopped builds for its own failure
    assert run.fleet.interrupted
    assert set(outcomes(results).values()) <= {"ok", "interrupted"}


def test_ctrl_c_during_the_canary_leaves_every_later_wave_interrupted(monkeypatch: pytest.MonkeyPatch, main_thread_waiting: threading.Event) -> None:
    deploys = FakeDeploys()
    run = Run(monkeypatch, "a b c", deploys, canary=True)
    deploys.behaviour["a"] = ctrl_c_then_finish(run, main_thread_waiting)
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "interrupted", "c": "interrupted"}
    assert deploys.started == ["a"]
    payload = json.loads(results_json(list(results.values()), interrupted=run.fleet.interrupted))
    assert payload["exit_code"] == 130 and payload["interrupted"] is True


# ---- exit codes and JSON --------------------------------------------------------------------------------------------------


def result(host: str, outcome: str, code: int = 0) -> HostResult:
    return HostResult(host, outcome, 1.0, exit_code=code)


@pytest.mark.parametrize(
    ("results", "code"),
    [
        ([], 0),
        ([result("a", "ok"), result("b", "up-to-date"), result("c", "built"), result("d", "diffed")], 0),
        ([result("a", "ok"), result("b", "rolled-back", 6), result("c", "rolled-back", 6)], 6),
        ([result("a", "failed", 4), result("b", "not started")], 4),
        ([result("a", "failed", 4), result("b", "rolled-back", 6)], 1),
        ([result("a", "failed", 3), result("b", "failed", 15)], 1),
        # Unhealthy without a code of its own (a host that never started): still not a success.
        ([result("a", "ok"), result("b", "not started")], 1),
        ([result("a", "interrupted")], 1),
    ],
)
def test_exit_code(results: list[HostResult], code: int) -> None:
    assert exit_code(results, interrupted=False) == code


def test_an_interrupted_run_exits_130_whatever_the_hosts_did() -> None:
    assert exit_code([result("a", "ok")], interrupted=True) == 130
    assert exit_code([result("a", "failed", 4)], interrupted=True) == 130


def test_results_json_shape() -> None:
    results = [
        HostResult("a", "ok", 12.345, "/nix/store/a-system", 7, log="/logs/a.log"),
        HostResult("b", "rolled-back", 3.0, error="b: health check failed", exit_code=16),
    ]
    assert json.loads(results_json(results, interrupted=False)) == {
        "exit_code": 16,
        "interrupted": False,
        "hosts": [
            {"host": "a", "result": "ok", "generation": 7, "path": "/nix/store/a-system", "duration_seconds": 12.345,
             "error": None, "exit_code": 0, "log": "/logs/a.log"},
            {"host": "b", "result": "rolled-back", "generation": None, "path": None, "duration_seconds": 3.0,
             "error": "b: health check failed", "exit_code": 16, "log": None},
        ],
    }


def test_results_of_a_fleet_run_as_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    deploys = FakeDeploys({"b": ActivationFailed("b: switch-to-configuration switch failed (exit 1)")})
    results = Run(monkeypatch, "a b", deploys, log_dir=tmp_path)()
    payload = json.loads(results_json(list(results.values()), interrupted=False))
    for host in payload["hosts"]:
        assert isinstance(host.pop("duration_seconds"), float)
    assert payload == {
        "exit_code": 6,
        "interrupted": False,
        "hosts": [
            {"host": "a", "result": "ok", "generation": 7, "path": "/nix/store/a-system", "error": None, "exit_code": 0,
             "log": str(tmp_path / "a.log")},
            {"host": "b", "result": "rolled-back", "generation": None, "path": None,
             "error": "b: switch-to-configuration switch failed (exit 1)", "exit_code": 6, "log": str(tmp_path / "b.log")},
        ],
    }
    assert "error: switch-to-configuration switch failed (exit 1)" in (tmp_path / "b.log").read_text()  # its log: no need to name it


# ---- the journal: a warning and a mark on the run, never a host's failure ---------------------------------------------------


def failing_journal(*args: object) -> None:
    raise JournalError("deploy journal /state/history.sqlite: file is not a database")


def test_a_journal_that_cannot_be_written_is_a_warning_and_exit_17_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(monkeypatch, "a b", FakeDeploys())
    run.fleet.on_result = failing_journal
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "ok"}  # the hosts deployed: the journal is not their failure
    assert run.fleet.journal_errors and "file is not a database" in run.fleet.journal_errors[0]
    assert "warning: deploy journal /state/history.sqlite: file is not a database" in run.notes
    assert run.notes.count("file is not a database") == 1  # one warning per run, not one per host
    journal_failed = bool(run.fleet.journal_errors)
    assert exit_code(list(results.values()), interrupted=False, journal_failed=journal_failed) == 17 == JournalError.exit_code
    payload = json.loads(results_json(list(results.values()), interrupted=False, journal_errors=run.fleet.journal_errors))
    assert payload["exit_code"] == 17 and "file is not a database" in payload["journal_error"]
    # A host's own failure keeps its code; the journal's is only warned about then.
    assert exit_code([result("a", "failed", 4)], interrupted=False, journal_failed=True) == 4


def test_a_journal_that_runs_out_of_file_descriptors_is_the_same_warning_not_a_lost_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    def journal_out_of_descriptors(*args: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")  # as a lazy import in the callback meets it

    run = Run(monkeypatch, "a b", FakeDeploys())
    run.fleet.on_start = journal_out_of_descriptors
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "ok"}
    assert run.notes.count("warning: cannot write the deploy journal: Too many open files") == 1


@pytest.mark.parametrize("journal_fails_on", ["start", "result"])
def test_a_journal_failure_does_not_change_fail_fast(monkeypatch: pytest.MonkeyPatch, journal_fails_on: str) -> None:
    # a's journal fails: not a host failure, so fail-fast goes on; b's deploy fails: fail-fast stops, journal or not.
    deploys = FakeDeploys({"b": HostUnreachable("b: unreachable")})
    run = Run(monkeypatch, "a b c d", deploys, parallel=1, fail_fast=True)
    setattr(run.fleet, "on_" + journal_fails_on, failing_journal)
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "failed", "c": "not started", "d": "not started"}
    assert deploys.started == ["a", "b"]
    assert run.fleet.journal_errors


def test_the_journal_hears_of_a_host_when_it_starts_and_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    deploys = FakeDeploys({"b": lambda: events.append(("b", "deploying")) or "ok"})  # type: ignore[func-returns-value]
    run = Run(monkeypatch, "a b", deploys, parallel=1)
    run.fleet.on_start = lambda host_run: events.append((host_run.spec.name, "started"))
    run.fleet.on_result = lambda result, host_run: events.append((result.host, str(result.result)))
    run()
    assert events == [("a", "started"), ("a", "ok"), ("b", "started"), ("b", "deploying"), ("b", "ok")]


def test_a_host_that_fails_after_activation_keeps_its_path_and_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    def deploy_that_fails_its_health_check(session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
        run.path = "/nix/store/a-system"  # what pipeline.finish learns as it goes
        run.generation = 8
        raise HealthCheckFailed("a: health check failed")

    monkeypatch.setattr(fleet, "deploy_host", deploy_that_fails_its_health_check)
    run = Run(monkeypatch, "a", FakeDeploys())
    monkeypatch.setattr(fleet, "deploy_host", deploy_that_fails_its_health_check)
    results = run()
    assert results["a"].result == "rolled-back"
    assert (results["a"].path, results["a"].generation) == ("/nix/store/a-system", 8)


# ---- what a run holds grows with --parallel, not with the fleet ----------------------------------------------------------


class CountedRemote:
    """A RemoteHost stand-in that counts the connections open at once."""

    open_now = 0
    most = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        with CountedRemote.lock:
            CountedRemote.open_now += 1
            CountedRemote.most = max(CountedRemote.most, CountedRemote.open_now)
        self.closed = False

    def close(self) -> None:
        with CountedRemote.lock:
            if not self.closed:
                CountedRemote.open_now -= 1
            self.closed = True


def open_files_under(directory: Path) -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if str(fd.readlink()).startswith(str(directory)):
                count += 1
        except OSError:
            pass
    return count


def test_open_logs_and_connections_are_bounded_by_parallel_not_by_the_fleet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(CountedRemote, "open_now", 0)
    monkeypatch.setattr(CountedRemote, "most", 0)
    monkeypatch.setattr(Session, "new_remote", lambda self, *args, **kwargs: CountedRemote())
    most_logs = 0

    def deploy() -> str:
        nonlocal most_logs
        most_logs = max(most_logs, open_files_under(tmp_path))
        return "ok"

    names = [f"h{index:02d}" for index in range(32)]
    deploys = FakeDeploys({name: deploy for name in names}, hold=0.01, together=3)
    real_call = deploys.__call__

    def deploy_with_a_connection(session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
        session.target(run.spec, run.echo)  # the host's connection, opened and cached as pipeline.deploy_host does
        return real_call(session, request, run, built_here)

    run = Run(monkeypatch, " ".join(names), deploys, parallel=3, log_dir=tmp_path)
    monkeypatch.setattr(fleet, "deploy_host", deploy_with_a_connection)
    results = run()
    assert set(outcomes(results).values()) == {"ok"}
    assert deploys.most_at_once == 3
    assert 1 <= most_logs <= 3, f"{most_logs} host logs open at once with --parallel 3"
    assert 1 <= CountedRemote.most <= 3, f"{CountedRemote.most} connections open at once with --parallel 3"
    assert CountedRemote.open_now == 0 and open_files_under(tmp_path) == 0
    assert all((tmp_path / f"{name}.log").exists() for name in names)


def test_a_connection_shared_as_a_builder_stays_open_until_its_last_user_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []
    monkeypatch.setattr(Session, "release", lambda self, destination, port: closed.append(destination))
    inventory = Inventory(
        hosts={
            name: HostSpec(name=name, ssh=SshTarget(f"{name}.example"), attr=name, build_on=build_on, tags=(), sudo=False, declared=True)
            for name, build_on in [("a", "a"), ("b", "b"), ("c", "a")]
        }
    )
    deploys = FakeDeploys()
    monkeypatch.setattr(fleet, "deploy_host", deploys)
    session = Session(inventory, echo=Emitter.plain(io.StringIO()))
    order: list[str] = []
    run = Fleet(
        session, DeployRequest(flake="/flake", action="switch"), ["a", "b", "c"], FleetOptions(parallel=1),
        console=Console(io.StringIO()), on_result=lambda result, host_run: order.append(f"{result.host} done, closed {sorted(closed)}"),
    )
    run.run()
    # a's own connection is c's builder: b's closes once b is done, a's only once c is done too.
    assert order == ["a done, closed []", "b done, closed []", "c done, closed ['b.example']"]
    assert sorted(closed) == ["a.example", "b.example", "c.example"]


def test_running_out_of_file_descriptors_is_the_hosts_one_line_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    out_of_fds = OSError(errno.EMFILE, "Too many open files")
    results = Run(monkeypatch, "a b", FakeDeploys({"a": out_of_fds}))()
    assert outcomes(results) == {"a": "failed", "b": "ok"}
    assert results["a"].error == "a: out of file descriptors (Too many open files): raise the limit (`ulimit -n`) or lower --parallel"


class NoBuilds:
    """Stands in for ParallelBuild: every system "built" at once, no Nix started."""

    def __init__(self, runner: object, flake: str, attrs: list[str], **options: object) -> None:
        self.attrs = attrs

    def result(self, attr: str) -> str:
        return f"/nix/store/{attr}-system"

    def finish(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ImportsOutOfDescriptors:
    """A meta path finder: importing `name` meets EMFILE, as opening its file does once the descriptors ran out."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == self.name:
            raise OSError(errno.EMFILE, "Too many open files")


def test_running_out_of_file_descriptors_in_the_fleets_own_step_fails_each_host_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in a full suite: the descriptors ran out while the fleet itself (not a host's deploy) imported
    # what checks free space, lazily, after starting the builds; the run ended in one line with no summary.
    import sys

    monkeypatch.setattr(fleet, "ParallelBuild", NoBuilds)
    monkeypatch.delitem(sys.modules, "deploy.plan.disk", raising=False)
    monkeypatch.setattr(sys, "meta_path", [ImportsOutOfDescriptors("deploy.plan.disk"), *sys.meta_path])
    run = Run(monkeypatch, "a b", FakeDeploys(), build_on="local")
    results = run()
    assert outcomes(results) == {"a": "failed", "b": "failed"}
    assert results["a"].error == "a: out of file descriptors (Too many open files): raise the limit (`ulimit -n`) or lower --parallel"
    assert run.deploys.started == []  # no host is touched without its system


def test_running_out_of_file_descriptors_as_a_wave_starts_fails_each_host_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in a fresh Debian 12 root: the descriptors ran out as the first wave started its threads (a lazy import
    # of the pool's module, while the builds and the free-space check held pipes); the run ended in one line with no
    # summary, and the fleet neither stopped nor waited for the builds under way.
    import concurrent.futures

    def pool_out_of_descriptors(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    stopped: list[str] = []

    class Builds(NoBuilds):
        def stop(self) -> None:
            stopped.append("stop")

        def finish(self) -> None:
            stopped.append("finish")

    monkeypatch.setattr(fleet, "ParallelBuild", Builds)
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", pool_out_of_descriptors)
    run = Run(monkeypatch, "a b", FakeDeploys(), build_on="local")
    results = run()
    assert outcomes(results) == {"a": "failed", "b": "failed"}
    assert results["b"].error == "b: out of file descriptors (Too many open files): raise the limit (`ulimit -n`) or lower --parallel"
    assert run.deploys.started == []
    assert stopped == ["stop", "finish"]  # no build outlives the run: stopped, then waited for


def test_gc_roots_that_cannot_be_removed_are_a_warning_not_a_lost_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in a fresh Debian 12 root: the run's last step, removing its GC roots, met EMFILE (a connection opened
    # ahead was still held); the hosts' lines had been said, but the run ended in one line with no summary.
    import shutil

    removed: list[str] = []

    def rmtree_out_of_descriptors(path: object, *args: object, **kwargs: object) -> None:
        removed.append(str(path))
        raise OSError(errno.EMFILE, "Too many open files", str(path))

    monkeypatch.setattr(fleet, "ParallelBuild", NoBuilds)
    monkeypatch.setattr(shutil, "rmtree", rmtree_out_of_descriptors)
    run = Run(monkeypatch, "a b", FakeDeploys(), build_on="local")
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "ok"}
    assert len(removed) == 1 and "/nixfab-gcroot-" in removed[0]
    assert f"cannot remove {removed[0]}: out of file descriptors" in run.notes
    assert "never garbage-collected" in run.notes
    monkeypatch.undo()
    shutil.rmtree(removed[0])


def test_the_fleet_imports_its_thread_pool_before_any_descriptor_is_in_use() -> None:
    # concurrent.futures imports its ThreadPoolExecutor lazily, at its first use: in the middle of a run.
    import subprocess
    import sys

    code = "import sys, deploy.engine.fleet; print('concurrent.futures.thread' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_a_log_that_cannot_be_opened_is_a_warning_and_the_deploys_go_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_log(log_dir: Path | None, name: str) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(fleet, "open_log", no_log)
    run = Run(monkeypatch, "a b", FakeDeploys(), log_dir=tmp_path)
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "ok"}
    assert f"warning: cannot write host logs in {tmp_path}: Too many open files; going on without them" in run.notes
    assert results["a"].log is None


# ---- SIGHUP is an interruption, like Ctrl-C ----------------------------------------------------------------------------


@pytest.fixture
def sighup_caught() -> Iterator[list[int]]:
    """A SIGHUP handler of the test's own, so that a fleet that does not handle it cannot kill pytest."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: caught.append(signum))
    yield caught
    signal.signal(signal.SIGHUP, previous)


def test_sighup_lets_running_deploys_finish_starts_no_other_and_exits_129(
    monkeypatch: pytest.MonkeyPatch, main_thread_waiting: threading.Event, sighup_caught: list[int]
) -> None:
    deploys = FakeDeploys()
    run = Run(monkeypatch, "a b c", deploys, parallel=1)

    def hang_up() -> str:
        assert main_thread_waiting.wait(5)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGHUP)
        wait_for(run.fleet.stop.is_set)
        return "ok"

    deploys.behaviour["a"] = hang_up
    results = run()
    assert outcomes(results) == {"a": "ok", "b": "interrupted", "c": "interrupted"}
    assert sighup_caught == [], "the fleet's own handler took SIGHUP while it ran"
    assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL  # and gave the previous one back
    assert run.fleet.hangup and run.fleet.interrupted
    assert exit_code(list(results.values()), interrupted=True, hangup=True) == 129
    assert "==> hung up (SIGHUP): no new host starts" in run.notes
