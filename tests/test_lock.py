"""deploy.engine.lock: when a holder is stale, and what acquire() sends and makes of the answers."""
from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest

from deploy.engine import lock
from deploy.engine.lock import LOCK_DIR, STALE_AFTER_SECONDS, acquire, describe_holder, is_stale, process_start_time
from deploy.errors import HostBusy, HostUnreachable, NixfabError
from deploy.scripts import script
from fake_host import LOST, RecordingHost, Reply, sh

WATCHDOGS = "/run/nixfab/magic-rollback"

ME = "deployer"
OUR_HOLDER = '{"action": "switch", "machine": "deployer", "pid": 4242, "since": 1700000000, "start": "777", "token": "0badf00d", "user": "alice"}'


class Processes:
    """process_start_time as a table: pids in `alive` run and started then; the rest do not exist. `asked` logs lookups."""

    def __init__(self) -> None:
        self.alive: dict[int, str] = {}
        self.asked: list[int] = []

    def start_time(self, pid: int) -> str | None:
        self.asked.append(pid)
        return self.alive.get(pid)


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch) -> Processes:
    table = Processes()
    monkeypatch.setattr(lock, "process_start_time", table.start_time)
    return table


@pytest.fixture
def deployer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Who acquire() says it is: alice@deployer, pid 4242 started at 777, at 1700000000.5, token 0badf00d."""
    monkeypatch.setattr(lock, "getpass", SimpleNamespace(getuser=lambda: "alice"))
    monkeypatch.setattr(lock, "socket", SimpleNamespace(gethostname=lambda: ME))
    monkeypatch.setattr(lock, "os", SimpleNamespace(getpid=lambda: 4242))
    monkeypatch.setattr(lock, "process_start_time", lambda pid: "777" if pid == 4242 else None)
    monkeypatch.setattr(lock, "secrets", SimpleNamespace(token_hex=lambda n: "0badf00d"))
    monkeypatch.setattr(lock, "time", SimpleNamespace(time=lambda: 1700000000.5, strftime=time.strftime, localtime=time.localtime))


def holder(**fields: object) -> dict[str, object]:
    return {"user": "bob", "machine": "laptop", "pid": 99, "start": "12345", "action": "switch", "since": 1700000000, **fields}


def held(age: int | str, holder_line: str) -> str:
    return f"held\n{age}\n{holder_line}\n"


# ---- is_stale -----------------------------------------------------------------------------------------------------------


def test_a_holder_on_this_machine_whose_process_is_gone_is_stale(processes: Processes) -> None:
    assert is_stale(holder(machine=ME, pid=99, start="12345"), 0, ME) is True
    assert processes.asked == [99]


def test_a_live_holder_on_this_machine_is_not_stale(processes: Processes) -> None:
    processes.alive[99] = "12345"
    assert is_stale(holder(machine=ME, pid=99, start="12345"), 0, ME) is False


def test_a_reused_pid_on_this_machine_is_stale(processes: Processes) -> None:
    processes.alive[99] = "99999"  # another process got the pid since
    assert is_stale(holder(machine=ME, pid=99, start="12345"), 0, ME) is True


def test_the_real_process_start_time_tells_us_from_a_reused_pid() -> None:
    ours = process_start_time(os.getpid())
    assert ours is not None and ours.isdigit()
    assert is_stale(holder(machine=ME, pid=os.getpid(), start=ours), 0, ME) is False
    assert is_stale(holder(machine=ME, pid=os.getpid(), start=str(int(ours) + 1)), 0, ME) is True
    assert process_start_time(2**22 + 1) is None  # above pid_max: no such process


def test_another_machines_holder_is_judged_by_its_heartbeat_only(processes: Processes) -> None:
    # Its pid means nothing here: never looked up, however dead it would be locally.
    assert is_stale(holder(machine="laptop"), 0, ME) is False
    assert is_stale(holder(machine="laptop"), STALE_AFTER_SECONDS, ME) is False
    assert is_stale(holder(machine="laptop"), STALE_AFTER_SECONDS + 1, ME) is True
    assert processes.asked == []


def test_a_silent_holder_is_stale_after_the_limit_even_on_this_machine_and_alive(processes: Processes) -> None:
    processes.alive[99] = "12345"
    assert STALE_AFTER_SECONDS == 90
    assert is_stale(holder(machine=ME), STALE_AFTER_SECONDS, ME) is False
    assert is_stale(holder(machine=ME), STALE_AFTER_SECONDS + 1, ME) is True


@pytest.mark.parametrize("pid", [True, False, "99", 99.0, None, [99]])
def test_a_pid_that_is_not_an_int_names_no_process(processes: Processes, pid: object) -> None:
    # Were it looked up, the missing process would make the lock stale.
    assert is_stale(holder(machine=ME, pid=pid), 0, ME) is False
    assert is_stale(holder(machine=ME, pid=pid), STALE_AFTER_SECONDS + 1, ME) is True
    assert processes.asked == []


@pytest.mark.parametrize("fields", [{}, {"machine": None}, {"machine": 7, "pid": 1}, {"pid": 99}])
def test_a_holder_without_a_usable_machine_is_busy_until_the_limit(processes: Processes, fields: dict[str, object]) -> None:
    assert is_stale(fields, 0, ME) is False
    assert is_stale(fields, STALE_AFTER_SECONDS + 1, ME) is True


def test_describe_holder_names_who_what_and_since() -> None:
    since = 1700000000
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    assert describe_holder(holder(since=since)) == f"bob@laptop (pid 99, switch, since {when})"
    assert describe_holder({}) == "?@? (pid ?, deploy, since ?)"
    assert describe_holder({"since": "yesterday"}) == "?@? (pid ?, deploy, since ?)"


# ---- acquire ------------------------------------------------------------------------------------------------------------


def test_acquire_sends_the_lock_script_with_who_we_are_and_release_clears_only_our_own(deployer: None) -> None:
    host = RecordingHost().on("preflight", "acquired\n")
    taken = acquire(host, "switch")
    try:
        assert host.argvs == [sh("preflight", "/run/nixfab/deploy.engine.lock", OUR_HOLDER, "/run/nixfab/magic-rollback", script("watchdogs_pending"))]
        assert [call.sudo for call in host.calls] == [True]
        assert json.loads(OUR_HOLDER)["since"] == 1700000000
        assert taken.holder_text == OUR_HOLDER and taken.cleared_stale is None
    finally:
        taken.release()
    assert host.argvs[-1] == sh("lock_release", LOCK_DIR, OUR_HOLDER, script("lock_clear_if_held_by"), "", "", "", "")
    assert host.calls[-1].sudo is True


def test_a_fresh_foreign_holder_makes_the_host_busy_with_exit_14(deployer: None) -> None:
    theirs = json.dumps(holder())
    host = RecordingHost().on("preflight", held(5, theirs))
    with pytest.raises(HostBusy) as busy:
        acquire(host, "switch")
    assert busy.value.exit_code == 14
    assert f"web1: another deploy is running: {describe_holder(holder())}; lock {LOCK_DIR}" == str(busy.value)
    assert host.argvs == [sh("preflight", LOCK_DIR, OUR_HOLDER, WATCHDOGS, script("watchdogs_pending"))]  # nothing cleared


def test_a_stale_holder_is_cleared_by_its_exact_line_and_the_lock_taken(deployer: None) -> None:
    theirs = json.dumps(holder())
    host = RecordingHost().on("preflight", held(STALE_AFTER_SECONDS + 1, theirs), "acquired\n")
    taken = acquire(host, "boot")
    taken.release()
    ours = OUR_HOLDER.replace('"switch"', '"boot"')
    assert host.argvs == [
        sh("preflight", LOCK_DIR, ours, WATCHDOGS, script("watchdogs_pending")),
        sh("lock_clear_if_held_by", LOCK_DIR, theirs),
        sh("preflight", LOCK_DIR, ours, WATCHDOGS, script("watchdogs_pending")),
        sh("lock_release", LOCK_DIR, ours, script("lock_clear_if_held_by"), "", "", "", ""),
    ]
    assert taken.cleared_stale == describe_holder(holder())


def test_our_own_dead_process_on_this_machine_is_cleared_at_once(deployer: None) -> None:
    # pid 31337 on this machine does not exist (lock.process_start_time answers None for it).
    theirs = json.dumps(holder(machine=ME, pid=31337))
    host = RecordingHost().on("preflight", held(0, theirs), "acquired\n")
    taken = acquire(host, "switch")
    taken.release()
    assert host.argvs[1] == sh("lock_clear_if_held_by", LOCK_DIR, theirs)
    assert taken.cleared_stale is not None and "bob@deployer (pid 31337" in taken.cleared_stale


def test_a_lock_that_stays_stale_after_clearing_changed_hands(deployer: None) -> None:
    theirs = json.dumps(holder())
    host = RecordingHost().on("preflight", held(500, theirs))
    with pytest.raises(HostBusy, match="changed hands while a stale one was cleared; try again") as busy:
        acquire(host, "switch")
    assert busy.value.exit_code == 14
    assert [call.script for call in host.calls] == ["preflight", "lock_clear_if_held_by", "preflight", "lock_clear_if_held_by"]


def test_after_clearing_a_fresh_holder_that_won_the_race_makes_the_host_busy(deployer: None) -> None:
    old, new = json.dumps(holder(pid=1)), json.dumps(holder(pid=2))
    host = RecordingHost().on("preflight", held(500, old), held(1, new))
    with pytest.raises(HostBusy, match="another deploy is running: bob@laptop \\(pid 2,"):
        acquire(host, "switch")
    assert [call.script for call in host.calls] == ["preflight", "lock_clear_if_held_by", "preflight"]


@pytest.mark.parametrize(
    ("answer", "stale"),
    [
        ("held\n", False),  # no age, no holder: the lock directory exists, its holder file not yet
        ("held\nabc\nnot json\n", False),
        ("held\n-3\n[1, 2]\n", False),  # a clock running backwards is not a stale lock
        (held(STALE_AFTER_SECONDS + 1, "not json"), True),
        (held(STALE_AFTER_SECONDS + 1, '"a string"'), True),
    ],
)
def test_malformed_answers_are_judged_by_age_alone(deployer: None, answer: str, stale: bool) -> None:
    host = RecordingHost().on("preflight", answer, "acquired\n")
    if not stale:
        with pytest.raises(HostBusy, match=r"another deploy is running: \?@\? \(pid \?, deploy, since \?\)"):
            acquire(host, "switch")
        assert len(host.calls) == 1
        return
    acquire(host, "switch").release()
    holder_line = answer.splitlines()[2]
    assert host.argvs[1] == sh("lock_clear_if_held_by", LOCK_DIR, holder_line)


READ_ONLY = Reply(1, "", "some noise\nmkdir: cannot create directory '/run/nixfab': Read-only file system\n")


@pytest.mark.parametrize(("failure", "last_line"), [(READ_ONLY, "mkdir: cannot create directory '/run/nixfab': Read-only file system"), (LOST, "")])
def test_a_failing_lock_script_is_an_error_with_its_last_line(deployer: None, failure: Reply, last_line: str) -> None:
    host = RecordingHost().on("preflight", failure)
    with pytest.raises(NixfabError) as error:
        acquire(host, "switch")
    assert type(error.value) is NixfabError and error.value.exit_code == 1
    assert str(error.value) == f"web1: cannot take the deploy lock {LOCK_DIR}: {last_line}"
    assert len(host.calls) == 1


def test_release_on_a_host_that_went_away_is_quiet(deployer: None) -> None:
    host = RecordingHost().on("preflight", "acquired\n").on("lock_release", HostUnreachable("web1: gone"))
    acquire(host, "switch").release()
    assert [call.script for call in host.calls] == ["preflight", "lock_release"]


def test_dry_run_takes_the_lock_without_a_heartbeat(deployer: None) -> None:
    host = RecordingHost(dry_run=True)
    taken = acquire(host, "switch")
    assert taken._stop is None and host.sent == []
    assert host.argvs == [sh("preflight", LOCK_DIR, OUR_HOLDER, WATCHDOGS, script("watchdogs_pending"))]


def test_the_heartbeat_touches_the_lock_until_release(deployer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.005)
    host = RecordingHost().on("preflight", "acquired\n")
    before = set(threading.enumerate())
    taken = acquire(host, "switch")
    (beat,) = [thread for thread in set(threading.enumerate()) - before if thread.name == "lock-heartbeat-web1"]
    deadline = time.monotonic() + 5
    while sum(call.argv == ("touch", "-c", "--", LOCK_DIR) for call in host.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    taken.release()
    beats = [call for call in host.calls if call.argv[0] == "touch"]
    assert len(beats) >= 2 and all(call.argv == ("touch", "-c", "--", LOCK_DIR) and call.sudo for call in beats)
    assert taken._stop is not None and taken._stop.is_set()
    beat.join(timeout=5)
    assert not beat.is_alive()
    after = len(host.calls)
    time.sleep(0.03)
    assert len(host.calls) == after  # stopped


def test_the_heartbeat_stops_when_the_host_goes_away(deployer: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.005)
    host = RecordingHost().on("preflight", "acquired\n").on(["touch"], HostUnreachable("web1: gone"))
    before = set(threading.enumerate())
    taken = acquire(host, "switch")
    (beat,) = [thread for thread in set(threading.enumerate()) - before if thread.name == "lock-heartbeat-web1"]
    beat.join(timeout=5)
    assert not beat.is_alive()
    assert [call.argv[0] for call in host.calls] == ["sh", "touch"]
    taken.release()


@pytest.mark.parametrize("since", ["1e300", "NaN"])
def test_a_malformed_since_still_makes_the_host_busy(deployer: None, since: str) -> None:
    theirs = json.dumps(holder()).replace('"since": 1700000000', f'"since": {since}')
    host = RecordingHost().on("preflight", held(5, theirs))
    with pytest.raises(HostBusy):
        acquire(host, "switch")


def test_taking_the_lock_lists_the_watchdogs_that_have_no_verdict_yet(deployer: None) -> None:
    host = RecordingHost().on("preflight", "acquired\npending\t0123456789ab\t42\npending\tfedcba987654\t7\n")
    taken = acquire(host, "switch")
    assert taken.pending_watchdogs == {"0123456789ab": 42, "fedcba987654": 7}
    taken.release()
