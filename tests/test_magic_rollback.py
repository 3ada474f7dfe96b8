"""deploy.confirm.magic_rollback: the watchdog's exact argv, how it is started and stopped, and confirmation with a fake clock."""
from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest

from deploy.activate.activation import Activation, SystemState
from deploy.confirm import magic_rollback
from deploy.confirm.magic_rollback import (
    ACTIVATION_LIMIT_SECONDS,
    STATE_DIR,
    Verdict,
    Watchdog,
    arm_argv,
    await_self_rollback,
    confirm,
    detached,
    disarm,
    mark_activated,
    new_watchdog,
    parse_verdicts,
    read_verdicts,
    watchdog_argv,
)
from deploy.errors import HostUnreachable, LoginRefused, NotConfirmed
from deploy.transport.hosts import Host
from fake_host import LOST, RecordingHost, Reply, sh

PROFILE = "/nix/var/nix/profiles/system"
OLD_GEN = "/nix/store/0000000000000000000000000000000a-nixos-system-web1-41"
OLD_RUNNING = "/nix/store/0000000000000000000000000000000b-nixos-system-web1-running"
NEW = "/nix/store/0000000000000000000000000000000c-nixos-system-web1-42"
TOKEN = "0123456789ab"
DIR = f"/run/nixfab/magic-rollback/{TOKEN}"
WATCHDOG = Watchdog(DIR, f"nixfab-watchdog-{TOKEN}", 3)
SWITCH = Activation(NEW, "switch", 42, SystemState(41, OLD_GEN, OLD_RUNNING))
VERDICTS = "/nix/var/nix/nixfab/verdicts"
# What the watchdog guards and what it restores for SWITCH: it is armed before the profile changes, so it gets no
# generation number (it reads the profile when it acts) but the system it guards, then changes boot, running, created.
SWITCH_STEPS = (VERDICTS, PROFILE, NEW, "41", OLD_GEN, OLD_RUNNING, "1", "1", "1")
SYSTEMD_IS_INIT = ("test", "-d", "/run/systemd/system")


class Clock:
    """A monotonic clock that only moves when something sleeps (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < 1000, "still sleeping after 1000 naps: a loop that never ends"
        self.sleeps.append(seconds)
        self.now += seconds


# ---- the watchdog's argv ------------------------------------------------------------------------------------------------


def test_a_new_watchdog_names_its_directory_and_unit_after_one_token(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    monkeypatch.setattr(magic_rollback, "secrets", SimpleNamespace(token_hex=lambda n: asked.append(n) or TOKEN))
    assert new_watchdog(30.0) == Watchdog(f"{STATE_DIR}/{TOKEN}", f"nixfab-watchdog-{TOKEN}", 30)
    assert asked == [6]
    assert [new_watchdog(seconds).confirm_timeout for seconds in (0.0, 0.4, 1.6, 2.5, 29.9)] == [1, 1, 2, 2, 30]


def test_watchdogs_do_not_share_a_directory() -> None:
    first, second = new_watchdog(30), new_watchdog(30)
    assert first.directory != second.directory and first.unit != second.unit
    assert first.directory.rsplit("/", 1)[1] == first.unit.removeprefix("nixfab-watchdog-")
    assert (first.activated_marker, first.verdict) == (f"{first.directory}/activated", f"{first.directory}/verdict")


def test_watchdog_argv_is_the_script_its_limits_what_it_guards_and_what_it_restores() -> None:
    assert ACTIVATION_LIMIT_SECONDS == 1800
    assert watchdog_argv(WATCHDOG, SWITCH) == [*sh("rollback_watchdog", DIR, "1800", "3"), *SWITCH_STEPS]


def test_watchdog_argv_passes_paths_as_words_and_the_unknown_as_empty() -> None:
    odd = "/nix/store/0000000000000000000000000000000d-it's here"
    activation = Activation(NEW, "test", None, SystemState(None, None, odd))
    assert watchdog_argv(WATCHDOG, activation)[-7:] == [NEW, "", "", odd, "0", "1", "1"]


def test_the_watchdog_window_includes_the_health_checks() -> None:
    slow = Watchdog(DIR, f"nixfab-watchdog-{TOKEN}", 3, health_seconds=40)
    assert watchdog_argv(slow, SWITCH)[3:7] == ["sh", DIR, "1800", "43"]


def test_detached_under_systemd_is_a_transient_unit_that_returns_at_once() -> None:
    assert detached(["a", "b c"], unit="u1", use_systemd=True) == ["systemd-run", "--collect", "--quiet", "--no-ask-password", "--unit=u1", "a", "b c"]


def test_detached_without_systemd_is_setsid_with_no_stdio_left_on_the_channel() -> None:
    assert detached(["a", "b c"], unit="u1", use_systemd=False) == ["setsid", "-f", *sh("exec_without_stdio", "a", "b c")]


def test_mark_activated_wraps_the_activation_argv() -> None:
    argv = [f"{NEW}/bin/switch-to-configuration", "switch"]
    assert mark_activated(WATCHDOG.activated_marker, argv) == [*sh("mark_activated", f"{DIR}/activated"), *argv]


# ---- arm and disarm -----------------------------------------------------------------------------------------------------


def test_arming_asks_once_whether_systemd_is_init_then_starts_the_watchdog_as_a_unit_in_its_directory() -> None:
    host = RecordingHost()
    argv = arm_argv(host, WATCHDOG, SWITCH)
    watchdog = [*sh("rollback_watchdog", DIR, "1800", "3"), *SWITCH_STEPS]
    assert tuple(argv) == sh("mkdir_then_exec", DIR, "systemd-run", "--collect", "--quiet", "--no-ask-password", f"--unit=nixfab-watchdog-{TOKEN}", *watchdog)
    assert host.argvs == [SYSTEMD_IS_INIT]  # activate.sh runs the argv, before the profile changes
    assert host.facts == {"systemd": True}
    arm_argv(host, WATCHDOG, SWITCH)
    assert len(host.calls) == 1  # the answer is kept


def test_arming_without_systemd_uses_setsid() -> None:
    host = RecordingHost().on(["test", "-d"], 1)
    watchdog = [*sh("rollback_watchdog", DIR, "1800", "3"), *SWITCH_STEPS]
    assert tuple(arm_argv(host, WATCHDOG, SWITCH)) == sh("mkdir_then_exec", DIR, "setsid", "-f", *sh("exec_without_stdio", *watchdog))
    assert host.facts == {"systemd": False}


def test_disarm_claims_the_verdict_and_a_lost_host_is_left_to_its_watchdog() -> None:
    host = RecordingHost()
    disarm(host, WATCHDOG)
    assert host.argvs == [("mkdir", "-p", "--", f"{DIR}/verdict")] and host.calls[0].sudo
    gone = RecordingHost().on(["mkdir"], HostUnreachable("web1: gone"))
    disarm(gone, WATCHDOG)  # no exception
    assert len(gone.calls) == 1


# ---- confirm ------------------------------------------------------------------------------------------------------------


def confirming(host: RecordingHost, clock: Clock, *, connect_seconds: float = 0.0) -> Callable[[], Host]:
    def open_fresh() -> Host:
        clock.now += connect_seconds
        return host.reconnect()

    return open_fresh


def test_confirm_asks_over_new_connections_until_the_activation_has_finished() -> None:
    host = RecordingHost().on("confirm_activation", "pending\n", "pending\n", "confirmed\n")
    clock = Clock()
    confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert [(call.connection, call.argv, call.sudo) for call in host.calls] == [
        (1, sh("confirm_activation", DIR, VERDICTS), True),
        (2, sh("confirm_activation", DIR, VERDICTS), True),
        (3, sh("confirm_activation", DIR, VERDICTS), True),
    ]
    assert [fresh.closed for fresh in host.opened] == [1, 1, 1]
    assert clock.sleeps == [1.0, 1.0] and host.closed == 0  # the deploy's own connection is not used


def test_confirm_gives_up_at_the_deadline_with_the_last_problem() -> None:
    host = RecordingHost().on("confirm_activation", "pending\n")
    clock = Clock()
    with pytest.raises(NotConfirmed) as missed:
        confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert str(missed.value) == "web1: not confirmed within 3s after activation (the activation has not finished)"
    assert missed.value.exit_code == 15
    assert len(host.calls) == 3 and clock.sleeps == [1.0, 1.0, 1.0]


def test_confirm_counts_the_time_spent_connecting_against_the_deadline() -> None:
    host = RecordingHost().on("confirm_activation", HostUnreachable("web1: no answer from root@web1:22 within 10s"))
    clock = Clock()
    with pytest.raises(NotConfirmed, match=r"\(web1: no answer from root@web1:22 within 10s\)$"):
        confirm(confirming(host, clock, connect_seconds=2.5), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert len(host.calls) == 1 and host.opened[0].closed == 1


@pytest.mark.parametrize(
    ("verdict", "problem"),
    [("failed 4\n", "the activation exited 4"), ("too-late\n", "the watchdog had already decided to roll back")],
)
def test_confirm_stops_asking_once_the_host_has_decided(verdict: str, problem: str) -> None:
    host = RecordingHost().on("confirm_activation", verdict, "confirmed\n")
    clock = Clock()
    with pytest.raises(NotConfirmed) as missed:
        confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert str(missed.value) == f"web1: not confirmed within 3s after activation ({problem})"
    assert len(host.calls) == 1 and clock.sleeps == []


def test_confirm_retries_through_a_lost_channel_and_a_failing_command() -> None:
    host = RecordingHost().on("confirm_activation", LOST, Reply(1, "", "sudo: a password is required\n"), "what?\n")
    clock = Clock()
    with pytest.raises(NotConfirmed, match=r"\(what\?\)$"):
        confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert len(host.calls) == 3
    host, clock = RecordingHost().on("confirm_activation", "what?\n", Reply(1, "", "sudo: a password is required\n")), Clock()
    with pytest.raises(NotConfirmed, match=r"\(error sudo: a password is required\)$"):
        confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)


def test_a_refused_login_is_final() -> None:
    host = RecordingHost().on("confirm_activation", LoginRefused("web1: root@web1:22 refused our SSH key for user root"))
    clock = Clock()
    with pytest.raises(LoginRefused):
        confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert len(host.calls) == 1 and host.opened[0].closed == 1 and clock.sleeps == []


def test_confirm_in_a_dry_run_is_the_dry_answer() -> None:
    host = RecordingHost(dry_run=True)
    clock = Clock()
    confirm(confirming(host, clock), WATCHDOG, label="web1", sleep=clock.sleep, clock=clock)
    assert host.argvs == [sh("confirm_activation", DIR, VERDICTS)] and host.sent == []


# ---- await_self_rollback ------------------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """await_self_rollback reads time.monotonic itself: give the module this clock instead."""
    fake = Clock()
    monkeypatch.setattr(magic_rollback, "time", SimpleNamespace(monotonic=fake, sleep=fake.sleep))
    return fake


def test_await_self_rollback_waits_for_the_marker_then_reads_the_running_system(clock: Clock) -> None:
    host = RecordingHost().on(["test"], 1, 0).on(["readlink"], f"{OLD_RUNNING}\n")
    assert await_self_rollback(host.reconnect, WATCHDOG, timeout=63, sleep=clock.sleep) == OLD_RUNNING
    assert [(call.connection, call.argv, call.sudo) for call in host.calls] == [
        (1, ("test", "-e", f"{DIR}/rolled-back"), True),
        (2, ("test", "-e", f"{DIR}/rolled-back"), True),
        (2, ("readlink", "/run/current-system"), False),
    ]
    assert [fresh.closed for fresh in host.opened] == [1, 1] and clock.sleeps == [1.0]


def test_await_self_rollback_that_sees_no_running_system_says_none(clock: Clock) -> None:
    host = RecordingHost().on(["readlink"], 1)
    assert await_self_rollback(host.reconnect, WATCHDOG, timeout=63, sleep=clock.sleep) is None
    assert len(host.calls) == 2


def test_await_self_rollback_gives_up_after_its_timeout(clock: Clock) -> None:
    host = RecordingHost().on(["test"], 1, HostUnreachable("web1: gone"), LOST)
    assert await_self_rollback(host.reconnect, WATCHDOG, timeout=5, sleep=clock.sleep) is None
    assert len(host.calls) == 5 and clock.sleeps == [1.0] * 5
    assert all(call.argv == ("test", "-e", f"{DIR}/rolled-back") for call in host.calls)
    assert [fresh.closed for fresh in host.opened] == [1] * 5


def test_await_self_rollback_with_no_time_left_connects_nowhere(clock: Clock) -> None:
    host = RecordingHost()
    assert await_self_rollback(host.reconnect, WATCHDOG, timeout=0, sleep=clock.sleep) is None
    assert host.calls == [] and host.opened == []


def test_await_self_rollback_stops_at_a_refused_login(clock: Clock) -> None:
    host = RecordingHost().on(["test"], HostUnreachable("web1: gone"), LoginRefused("web1: refused"))
    with pytest.raises(LoginRefused):
        await_self_rollback(host.reconnect, WATCHDOG, timeout=60, sleep=clock.sleep)
    assert len(host.calls) == 2 and [fresh.closed for fresh in host.opened] == [1, 1]


# ---- after a lost channel: how did the switch end? ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replies", "answer", "asked"),
    [
        (["finished 0\n"], "finished 0", 1),
        (["finished 4\n"], "finished 4", 1),
        (["unknown\n"], "unknown", 1),
        ([HostUnreachable("web1: no answer"), "running\n", "finished 0\n"], "finished 0", 3),
        (["running\n"], "running", 4),
    ],
)
def test_activation_status_asks_until_the_switch_has_ended_or_the_deadline(replies: list[object], answer: str, asked: int) -> None:
    from deploy.confirm.magic_rollback import activation_status

    host = RecordingHost().on("activation_status", *replies)  # type: ignore[arg-type]
    clock = Clock()
    assert activation_status(confirming(host, clock), DIR, timeout=3, sleep=clock.sleep, clock=clock) == answer
    assert [call.argv for call in host.calls] == [sh("activation_status", DIR)] * asked
    assert all(fresh.closed == 1 for fresh in host.opened)


def test_settling_leftovers_hurries_each_watchdog_and_waits_for_its_verdict() -> None:
    from deploy.confirm.magic_rollback import settle_leftovers

    host = RecordingHost().on("watchdogs_pending", f"{TOKEN}\t30\n", "")
    words = "rolled back by the watchdog: profile and boot default back to generation 1"
    lines = [f"verdict\t{words}", "by\twatchdog", f"system\t{NEW}", "generation\t42", "undid\t1"]
    host.on("read_verdicts", "".join(f"{TOKEN}\t1700000000\t{line}\n" for line in lines))
    clock, notes = Clock(), []
    seen = settle_leftovers(host, {TOKEN: 30}, timeout=60, note=notes.append, sleep=clock.sleep, clock=clock)
    assert host.argvs == [
        ("touch", "--", f"{DIR}/hurry"),
        sh("watchdogs_pending", STATE_DIR),
        sh("watchdogs_pending", STATE_DIR),
        sh("read_verdicts", VERDICTS, TOKEN),
    ]
    assert notes[-1] == f"web1: watchdog {TOKEN}: {words}"
    assert seen == [Verdict(TOKEN, words, "watchdog", 1700000000, NEW, 42, undid=True)]
    assert seen[0].rolled_back and seen[0].summary() == "watchdog rolled back generation 42 at 2023-11-14 22:13:20Z"


def test_verdicts_are_read_in_todays_format_and_in_the_one_line_of_earlier_versions() -> None:
    today = "".join(f"aaaaaaaaaaaa\t100\t{line}\n" for line in ["verdict\tconfirmed", "by\tdeployer"])
    old_watchdog = "bbbbbbbbbbbb\t200\trolled back by the watchdog: running system back to /nix/store/x\n"
    nothing = "".join(f"cccccccccccc\t300\t{line}\n" for line in [
        "verdict\tthe watchdog undid nothing: the profile was not changed", "by\twatchdog", f"system\t{NEW}", "generation\t", "undid\t0",
    ])
    repeated = "aaaaaaaaaaaa\t100\tverdict\tconfirmed\n"  # the newest, also asked for by name
    hostile = "../../etc\t1\tverdict\tx\n"
    verdicts = parse_verdicts(today + old_watchdog + nothing + repeated + hostile)
    assert verdicts == [
        Verdict("aaaaaaaaaaaa", "confirmed", "deployer", 100),
        Verdict("bbbbbbbbbbbb", "rolled back by the watchdog: running system back to /nix/store/x", "watchdog", 200, undid=True),
        Verdict("cccccccccccc", "the watchdog undid nothing: the profile was not changed", "watchdog", 300, NEW, None, undid=False),
    ]
    assert [verdict.summary() for verdict in verdicts] == [
        "confirmed at 1970-01-01 00:01:40Z", "watchdog rolled back the activation at 1970-01-01 00:03:20Z",
        "watchdog undid nothing at 1970-01-01 00:05:00Z",
    ]


def test_only_tokens_are_ever_asked_for() -> None:
    host = RecordingHost().on("read_verdicts", "")
    assert read_verdicts(host, ["0123456789ab", "../x", "", "ABC"]) == []
    assert host.argvs == [sh("read_verdicts", VERDICTS, "0123456789ab")]


def test_a_leftover_watchdog_that_does_not_decide_keeps_the_host_busy() -> None:
    from deploy.confirm.magic_rollback import settle_leftovers
    from deploy.errors import HostBusy

    host = RecordingHost().on("watchdogs_pending", f"{TOKEN}\t30\n")
    clock = Clock()
    with pytest.raises(HostBusy, match=f"rollback watchdog {TOKEN} \\(armed 30s ago\\)"):
        settle_leftovers(host, {TOKEN: 30}, timeout=5, note=lambda message: None, sleep=clock.sleep, clock=clock)
