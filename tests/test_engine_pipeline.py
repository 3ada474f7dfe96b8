"""deploy.engine.pipeline against RecordingHost: one host's deploy, step by step, with the exact commands it sends.

RecordingHost is not a RemoteHost, so activate_with_rollback() guards it with
the magic-rollback watchdog only where a test makes pipeline.RemoteHost the
fake's class (the `guarded` fixture); fresh connections are then
RecordingHost.reconnect(), which shares the transcript, and each Call says
which connection sent it.
"""
from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from deploy.activate import activation
from deploy.activate.activation import Activation, SystemState
from deploy.config.inventory import HealthCheck, HostSpec, Inventory, SshTarget
from deploy.confirm import magic_rollback
from deploy.engine import lock, pipeline
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.pipeline import Built, activate_with_rollback, deploy_host, finish, up_to_date
from deploy.engine.request import DeployRequest
from deploy.engine.session import Session
from deploy.errors import ActivationFailed, ActivationUnknown, HealthCheckFailed, HostBusy, HostUnreachable, NotConfirmed
from deploy.nix import commands
from deploy.record import history
from deploy.scripts import script
from deploy.ui import Emitter
from fake_host import LOST, Call, RecordingHost, RecordingRunner, Reply, sh, shown

PROFILE = "/nix/var/nix/profiles/system"
OLD_GEN = "/nix/store/0000000000000000000000000000000a-nixos-system-web1-41"
OLD_RUNNING = "/nix/store/0000000000000000000000000000000b-nixos-system-web1-running"
NEW = "/nix/store/0000000000000000000000000000000c-nixos-system-web1-42"
TOKEN = "0123456789ab"
DIR = f"/run/nixfab/magic-rollback/{TOKEN}"
LOCK = "/run/nixfab/deploy.engine.lock"
HOLDER = '{"action": "switch", "machine": "deployer", "pid": 4242, "since": 1700000000, "start": "777", "token": "0badf00d", "user": "alice"}'
REVISION = '{"deployed_by": "alice@deployer", "dirty": false, "revision": "abc123", "time": "2024-01-02T03:04:05+00:00"}'


def probe(generation: int = 41, generation_path: str = OLD_GEN, running: str = OLD_RUNNING) -> str:
    return f"profile\tsystem-{generation}-link\ngeneration\t{generation_path}\nrunning\t{running}\n"


def preflight(*closure: str, wanted: str | None = NEW, space: tuple[str, ...] = ("/nix", "/boot")) -> tuple[str, ...]:
    """The deploy's first command: the lock, and a switch's questions (the system state, free space, systemd, the closure)."""
    return sh(
        "preflight", LOCK, HOLDER, WATCHDOGS, script("watchdogs_pending"), script("run_first"), script("system_state"), PROFILE, wanted or "",
        "1", "1", script("free_space"), str(len(space)), *space, "1", *closure,
    )


def release(*record: str, leftovers: tuple[str, ...] = ()) -> tuple[str, ...]:
    revision = (script("write_revision"), *record) if record else ("", "", "", "")
    return sh("lock_release", LOCK, HOLDER, script("lock_clear_if_held_by"), *revision, *leftovers)


UNIT = f"nixfab-switch-{TOKEN}"
VERDICTS = "/nix/var/nix/nixfab/verdicts"
WATCHDOGS = "/run/nixfab/magic-rollback"


def unit(*argv: str, bootloader: bool, name: str = UNIT) -> tuple[str, ...]:
    return (
        "systemd-run", "-E", "LOCALE_ARCHIVE", "-E", f"NIXOS_INSTALL_BOOTLOADER={'1' if bootloader else ''}", "--collect",
        "--no-ask-password", "--pipe", "--quiet", "--service-type=exec", f"--unit={name}", "--wait", *argv,
    )


def stc(path: str, action: str) -> tuple[str, str]:
    return (f"{path}/bin/switch-to-configuration", action)


def switching_to(path: str) -> object:
    def matches(argv: object) -> bool:
        return f"{path}/bin/switch-to-configuration" in argv  # type: ignore[operator]

    return matches


def steps(calls: list[Call]) -> list[tuple[int, tuple[str, ...], bool]]:
    return [(call.connection, call.shown, call.sudo) for call in calls]


def expect(*triples: tuple[int, tuple[str, ...], bool]) -> list[tuple[int, tuple[str, ...], bool]]:
    return [(connection, shown(argv), sudo) for connection, argv, sudo in triples]


STATE = (0, sh("system_state", PROFILE), False)
READ_PROFILE = (0, ("readlink", PROFILE), False)
# What activate.sh prints before the switch's own output when it set the profile.
ACTIVATED = "nixfab-activate\tprofile\tsystem-42-link\n"


def activating(switch: tuple[str, ...], arming: tuple[str, ...] = (), connection: int = 0) -> tuple[int, tuple[str, ...], bool]:
    """The one activation command (activate.sh): check the system, arm the watchdog, set the profile, switch."""
    return (connection, sh("activate", NEW, PROFILE, "1", script("run_first"), str(len(arming)), *arming, *switch), True)


ACTIVATE = activating(unit(*stc(NEW, "switch"), bootloader=True))
RECORD_REVISION = (0, sh("write_revision", "/nix/var/nix/nixfab/generations", REVISION, "42"), True)
WATCHDOG = (*sh("rollback_watchdog", DIR, "1800", "30"), VERDICTS, PROFILE, NEW, "41", OLD_GEN, OLD_RUNNING, "1", "1", "1")
ARM = sh("mkdir_then_exec", DIR, "systemd-run", "--collect", "--quiet", "--no-ask-password", f"--unit=nixfab-watchdog-{TOKEN}", *WATCHDOG)
GUARDED_ACTIVATE = activating(unit(*sh("mark_activated", f"{DIR}/activated", *stc(NEW, "switch")), bootloader=True), ARM)
UNDO = (
    (0, ("journalctl", "--no-pager", "-n", "30", "-u", UNIT), False),
    (0, ("nix-env", "-p", PROFILE, "--switch-generation", "41"), True),
    (0, unit(*stc(OLD_GEN, "boot"), bootloader=True, name=f"{UNIT}-undo-boot"), True),
    (0, ("nix-env", "-p", PROFILE, "--delete-generations", "42"), True),
    (0, unit(*stc(OLD_RUNNING, "test"), bootloader=False, name=f"{UNIT}-undo-test"), True),
)
ROLLED_BACK = f"rolled back: profile and boot default back to generation 41; running system back to {OLD_RUNNING}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert len(self.sleeps) < 1000, "a loop that never ends"
        self.sleeps.append(seconds)
        self.now += seconds


def spec(*, build_on: str = "target", health: HealthCheck | None = None) -> HostSpec:
    return HostSpec(name="web1", ssh=SshTarget("web1.example"), attr="web1", build_on=build_on, tags=(), sudo=False, declared=True, health=health)


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Fixed lock holder, watchdog token and revision record; magic rollback's waits on a fake clock."""
    monkeypatch.setattr(lock, "getpass", SimpleNamespace(getuser=lambda: "alice"))
    monkeypatch.setattr(lock, "socket", SimpleNamespace(gethostname=lambda: "deployer"))
    monkeypatch.setattr(lock, "os", SimpleNamespace(getpid=lambda: 4242))
    monkeypatch.setattr(lock, "process_start_time", lambda pid: "777" if pid == 4242 else None)
    monkeypatch.setattr(lock, "secrets", SimpleNamespace(token_hex=lambda n: "0badf00d"))
    monkeypatch.setattr(lock, "time", SimpleNamespace(time=lambda: 1700000000.5, strftime=lock.time.strftime, localtime=lock.time.localtime))
    monkeypatch.setattr(magic_rollback, "secrets", SimpleNamespace(token_hex=lambda n: TOKEN))
    monkeypatch.setattr(activation, "secrets", SimpleNamespace(token_hex=lambda n: TOKEN))
    monkeypatch.setattr(history, "deployed_by", lambda: "alice@deployer")
    monkeypatch.setattr(history, "utc_now", lambda: "2024-01-02T03:04:05+00:00")
    clock = Clock()
    monkeypatch.setattr(magic_rollback, "confirm", functools.partial(magic_rollback.confirm, sleep=clock.sleep, clock=clock))
    monkeypatch.setattr(magic_rollback, "await_self_rollback", functools.partial(magic_rollback.await_self_rollback, sleep=clock.sleep))
    monkeypatch.setattr(magic_rollback, "activation_status", functools.partial(magic_rollback.activation_status, sleep=clock.sleep, clock=clock))
    monkeypatch.setattr(magic_rollback, "settle_leftovers", functools.partial(magic_rollback.settle_leftovers, sleep=clock.sleep, clock=clock))
    monkeypatch.setattr(magic_rollback, "time", SimpleNamespace(monotonic=clock, sleep=clock.sleep))
    return clock


class World:
    """One host's deploy: the session, its run, the target (connection 0) and the local runner."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, dry_run: bool = False, host_spec: HostSpec | None = None) -> None:
        self.spec = host_spec or spec()
        self.session = Session(Inventory(hosts={"web1": self.spec}), echo=Emitter.plain(io.StringIO()), dry_run=dry_run)
        self.runner = RecordingRunner(dry_run=dry_run)
        self.run = HostRun(self.spec, self.runner.echo, self.runner)  # type: ignore[arg-type]
        self.host = RecordingHost(dry_run=dry_run, facts={"systemd": True})
        self.host.on("system_state", probe()).on(["readlink", PROFILE], "system-42-link\n").on("activate", ACTIVATED)
        self.host.on("preflight", "acquired\n").on("confirm_activation", "confirmed\n")
        monkeypatch.setattr(self.session, "target", lambda spec, echo=None: self.host)
        monkeypatch.setattr(self.session, "fresh_target", lambda spec, echo=None: self.host.reconnect())

    @property
    def notes(self) -> str:
        return self.runner.notes.getvalue()


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, deterministic: Clock) -> World:
    return World(monkeypatch)


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat RecordingHost as the remote host that magic rollback guards."""
    monkeypatch.setattr(pipeline, "RemoteHost", RecordingHost)


@pytest.fixture(autouse=True)
def lock_released() -> Iterator[None]:
    """Every path through deploy_host releases the lock, which ends its heartbeat thread."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith("lock-heartbeat-"):
            thread.join(timeout=2)
            assert not thread.is_alive(), f"{thread.name} still beats: the lock was never released"


def request(**fields: object) -> DeployRequest:
    return DeployRequest(**{"flake": "/flake", "action": "switch", **fields})  # type: ignore[arg-type]


# ---- finish: after the build ------------------------------------------------------------------------------------------


def test_switch_probes_activates_and_records_the_revision(world: World) -> None:
    outcome = finish(world.session, request(revision="abc123", dirty=False), world.run, world.host, Built(NEW, "target"))
    assert steps(world.host.calls) == expect(STATE, STATE, ACTIVATE, RECORD_REVISION)
    assert outcome == DeployOutcome("web1", NEW, "target", "ok", copied=False, generation=42)
    assert world.runner.calls == []
    assert "activated generation 42 (switch) in " in world.notes


def test_build_only_touches_nothing(world: World) -> None:
    outcome = finish(world.session, request(action=None), world.run, world.host, Built(NEW, "local"))
    assert outcome == DeployOutcome("web1", NEW, "local", "built")
    assert world.host.calls == [] and world.runner.calls == []


@pytest.mark.parametrize(
    ("action", "generation_path", "running", "skipped"),
    [
        ("switch", NEW, NEW, True),
        ("switch", NEW, OLD_RUNNING, False),
        ("switch", OLD_GEN, NEW, False),
        ("boot", NEW, OLD_RUNNING, True),
        ("boot", OLD_GEN, NEW, False),
        ("test", OLD_GEN, NEW, True),
        ("test", NEW, OLD_RUNNING, False),
        ("dry-activate", NEW, NEW, False),
    ],
)
def test_up_to_date_means_the_action_would_change_nothing(action: str, generation_path: str, running: str, skipped: bool) -> None:
    host = RecordingHost().on("system_state", probe(42, generation_path, running))
    state = up_to_date(request(action=action), host, NEW)
    assert (state is not None) == skipped
    assert state is None or state == SystemState(42, generation_path, running)
    assert host.argvs == [sh("system_state", PROFILE)]


def test_an_up_to_date_host_gets_the_state_probe_and_nothing_else(world: World) -> None:
    world.host.on("system_state", probe(42, NEW, NEW))
    outcome = finish(world.session, request(revision="abc123", dirty=False), world.run, world.host, Built(NEW, "local"))
    assert outcome == DeployOutcome("web1", NEW, "local", "up-to-date", generation=42)
    assert steps(world.host.calls) == expect(STATE)
    assert world.runner.calls == []  # not even a closure size or a copy


def test_force_activates_an_up_to_date_host_without_asking_whether_it_is(world: World) -> None:
    world.host.on("system_state", probe(42, NEW, NEW))
    outcome = finish(world.session, request(force=True), world.run, world.host, Built(NEW, "target"))
    assert outcome.status == "ok"
    assert steps(world.host.calls) == expect(STATE, ACTIVATE)


def test_a_push_checks_space_then_copies_what_the_target_lacks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NIXFAB_MIN_FREE_NIX_MIB", raising=False)
    world.runner.on(["nix", "--extra-experimental-features", "nix-command flakes", "path-info"], f'{{"{NEW}": {{"closureSize": 1073741824}}}}')
    world.host.on("free_space", "/nix\t/dev/vda1 10485760 9437184 1048576 90% /\n/boot\t/dev/vda2 524288 1024 523264 1% /boot\n")
    world.host.on(["nix-store", "--check-validity"], 1)
    outcome = finish(world.session, request(), world.run, world.host, Built(NEW, "local"))
    assert steps(world.host.calls) == expect(
        STATE,
        (0, sh("free_space", "/nix", "/boot"), False),
        (0, ("nix-store", "--check-validity", NEW), False),
        STATE, ACTIVATE,
    )
    assert [(call.argv, call.env) for call in world.runner.calls] == [
        (("nix", "--extra-experimental-features", "nix-command flakes", "path-info", "--json", "--closure-size", NEW), {}),
        (("nix", "--extra-experimental-features", "nix-command flakes", "copy", "--to", "ssh://web1.example", NEW), {"NIX_SSHOPTS": ""}),
    ]
    assert outcome.copied is True and outcome.status == "ok"
    assert outcome.warnings == ("web1: only 1.0 GiB free on /nix (/dev/vda1 on /); want at least 2.0 GiB (2 x the 1.0 GiB closure)",)


def test_a_failed_health_check_undoes_the_switch(world: World) -> None:
    world.run.spec = spec(health=HealthCheck(command="curl -fs localhost", retries=0))
    world.host.on(["timeout"], Reply(7, "", "curl: (7) Failed to connect\n"))
    with pytest.raises(HealthCheckFailed) as failed:
        finish(world.session, request(), world.run, world.host, Built(NEW, "target"))
    assert steps(world.host.calls) == expect(
        STATE, STATE, ACTIVATE,
        (0, ("timeout", "10", "sh", "-c", "curl -fs localhost"), False),
        *UNDO[1:],
    )
    assert failed.value.exit_code == 16
    assert str(failed.value) == f"web1: health check failed: `curl -fs localhost` exited 7: curl: (7) Failed to connect (after 1 attempts); {ROLLED_BACK}"


def test_boot_skips_the_health_check(world: World) -> None:
    world.run.spec = spec(health=HealthCheck(command="false", retries=0))
    world.host.on(["timeout"], 1)
    assert finish(world.session, request(action="boot"), world.run, world.host, Built(NEW, "target")).status == "ok"
    assert not any(call.argv[0] == "timeout" for call in world.host.calls)


# ---- magic rollback -----------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("guarded")
def test_a_guarded_switch_arms_the_watchdog_marks_the_activation_and_confirms_over_a_new_connection(world: World) -> None:
    outcome = finish(world.session, request(), world.run, world.host, Built(NEW, "target"))
    assert steps(world.host.calls) == expect(
        STATE, STATE, GUARDED_ACTIVATE,
        (1, sh("confirm_activation", DIR, VERDICTS), True),
    )
    assert outcome.status == "ok" and outcome.generation == 42
    assert [fresh.closed for fresh in world.host.opened] == [1] and world.host.closed == 0
    assert "\nconfirmed over a new SSH connection in " in world.notes


def local_build(world: World) -> None:
    """Built here, already on the host (streamed to: guarded makes RecordingHost a RemoteHost, so the closure is listed first)."""
    world.run.spec = spec(build_on="local")
    world.runner.on([*commands.NIX, "path-info", "--json", "--recursive", NEW], json.dumps({NEW: {"narSize": 1, "references": []}}))
    world.host.on(["nix-store", "--check-validity"], 0)


@pytest.mark.usefixtures("guarded")
def test_with_nothing_after_it_the_confirmation_also_releases_the_lock_with_the_revision(world: World) -> None:
    """The deploy's last command rides on the confirmation's round trip: nothing is left for the deploy's connection."""
    local_build(world)
    world.host.on("preflight", f"acquired\n{probe()}systemd\t1\n").on("confirm_activation", "confirmed\nended\n")
    outcome = deploy_host(world.session, request(revision="abc123", dirty=False), world.run, NEW)
    last = steps(world.host.calls)[-1]
    assert last == expect((1, sh("confirm_activation", DIR, VERDICTS, *release("/nix/var/nix/nixfab/generations", REVISION, "42")), True))[0]
    assert [call.script for call in world.host.calls if call.connection == 0 and call.script] == ["preflight", "activate"]
    assert outcome.status == "ok" and outcome.generation == 42


@pytest.mark.usefixtures("guarded")
def test_a_release_the_confirmation_could_not_make_is_made_on_the_deploy_s_connection(world: World) -> None:
    """Confirmed, but the release it carried failed (no "ended"): the deployer releases as ever, the revision with it."""
    local_build(world)
    world.host.on("preflight", f"acquired\n{probe()}systemd\t1\n").on("confirm_activation", "confirmed\n")
    deploy_host(world.session, request(revision="abc123", dirty=False), world.run, NEW)
    assert steps(world.host.calls)[-1] == expect((0, release("/nix/var/nix/nixfab/generations", REVISION, "42"), True))[0]


@pytest.mark.usefixtures("guarded")
def test_an_activation_not_confirmed_releases_the_lock_without_its_revision(world: World) -> None:
    local_build(world)
    world.host.on("preflight", f"acquired\n{probe()}systemd\t1\n").on("confirm_activation", "failed 4\n")
    world.host.on(["test", "-e", f"{DIR}/rolled-back"], 0).on(["readlink", "/run/current-system"], f"{OLD_RUNNING}\n")
    with pytest.raises(NotConfirmed):
        deploy_host(world.session, request(revision="abc123", dirty=False), world.run, NEW)
    assert steps(world.host.calls)[-1] == expect((0, release(), True))[0]
    assert not any(call.script == "write_revision" for call in world.host.calls)


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("fields", [{"magic_rollback": False}, {"action": "boot"}])
def test_no_watchdog_without_magic_rollback_or_for_boot(world: World, fields: dict[str, object]) -> None:
    finish(world.session, request(**fields), world.run, world.host, Built(NEW, "target"))
    assert world.host.opened == []
    assert not any(call.script == "confirm_activation" for call in world.host.calls)
    assert [call.argv[8] for call in world.host.calls if call.script == "activate"] == ["0"]  # activate.sh armed no watchdog


RECORD = f"/run/nixfab/switches/{TOKEN}"
RECORDED_ACTIVATE = activating(unit(*sh("mark_activated", f"{RECORD}/activated", *stc(NEW, "switch")), bootloader=True))
FORGET_RECORD = (0, ("rm", "-rf", "--", RECORD), True)


@pytest.mark.usefixtures("guarded")
def test_an_unguarded_remote_switch_records_its_exit_status_and_forgets_it_once_known(world: World) -> None:
    activate_with_rollback(world.session, request(magic_rollback=False), world.run, world.host, NEW)
    assert steps(world.host.calls) == expect(STATE, RECORDED_ACTIVATE, FORGET_RECORD)


@pytest.mark.usefixtures("guarded")
def test_an_unguarded_switch_whose_channel_was_lost_asks_the_host_and_goes_on(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", "running\n", "finished 0\n")
    activation = activate_with_rollback(world.session, request(magic_rollback=False), world.run, world.host, NEW)
    assert activation.generation == 42
    assert steps(world.host.calls) == expect(
        STATE, RECORDED_ACTIVATE,
        (1, sh("activation_status", RECORD), True), (2, sh("activation_status", RECORD), True), READ_PROFILE, FORGET_RECORD,
    )
    assert world.host.closed == 1 and "the switch finished (exit 0) while we were away" in world.notes


@pytest.mark.usefixtures("guarded")
def test_an_unguarded_switch_that_failed_while_we_were_away_is_undone(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", "finished 4\n")
    with pytest.raises(ActivationFailed) as failed:
        activate_with_rollback(world.session, request(magic_rollback=False), world.run, world.host, NEW)
    assert str(failed.value) == f"web1: switch-to-configuration switch failed (exit 4) after the connection dropped; {ROLLED_BACK}"
    assert steps(world.host.calls)[2:] == expect((1, sh("activation_status", RECORD), True), READ_PROFILE, *UNDO[1:], FORGET_RECORD)


@pytest.mark.usefixtures("guarded")
def test_an_unguarded_switch_on_a_host_that_stays_unreachable_says_it_may_be_cut_off(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", HostUnreachable("web1: cannot reach root@web1:22: Connection refused"))
    with pytest.raises(ActivationUnknown) as unknown:
        activate_with_rollback(world.session, request(magic_rollback=False, confirm_timeout=3), world.run, world.host, NEW)
    message = str(unknown.value)
    assert message.startswith(f"web1: lost the connection during switch-to-configuration switch of {NEW} (web1: the SSH channel closed")
    assert "and no new SSH connection reaches the host (web1: cannot reach root@web1:22: Connection refused): the new configuration may" in message
    assert "no rollback watchdog guards this activation" in message and f"From the host's console, check `cat {RECORD}/activated`" in message
    assert message.endswith(
        "generation 41 was current before: `nix-env -p /nix/var/nix/profiles/system --switch-generation 41`, "
        "then `/nix/var/nix/profiles/system/bin/switch-to-configuration switch` puts it back"
    )
    assert unknown.value.exit_code == 18
    # Nothing undone over a guess, and the record is left for the user to read.
    assert {call[1] for call in steps(world.host.calls)[2:]} == {shown(sh("activation_status", RECORD))}


@pytest.mark.usefixtures("guarded")
def test_a_failed_guarded_switch_is_undone_here_and_the_watchdog_disarmed(world: World) -> None:
    world.host.on(switching_to(NEW), Reply(1, ACTIVATED))
    with pytest.raises(ActivationFailed, match=f"; {ROLLED_BACK}$"):
        activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    # The verdict is claimed before undo, so that the watchdog cannot run the same steps meanwhile (it used to come after).
    assert steps(world.host.calls) == expect(
        STATE, GUARDED_ACTIVATE, UNDO[0],
        (0, ("mkdir", "-p", "--", f"{DIR}/verdict"), True),
        *UNDO[1:],
    )
    assert world.host.opened == []


@pytest.mark.usefixtures("guarded")
def test_a_connection_lost_during_the_switch_asks_the_host_then_confirms_over_a_new_one(world: World) -> None:
    world.host.on(switching_to(NEW), HostUnreachable("web1: connection lost while running systemd-run: Socket is closed"))
    world.host.on("activation_status", "running\n", "finished 0\n")
    activation = activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    assert activation == Activation(NEW, "switch", 42, SystemState(41, OLD_GEN, OLD_RUNNING))
    assert steps(world.host.calls) == expect(
        STATE, GUARDED_ACTIVATE,
        (1, sh("activation_status", DIR), True), (2, sh("activation_status", DIR), True),
        READ_PROFILE,  # the deploy's own connection, opened again
        (3, sh("confirm_activation", DIR, VERDICTS), True),
    )
    assert world.host.closed == 1  # the lost connection is dropped, not reused
    assert "lost the connection during activation; asking the host over a new one how the switch ended" in world.notes


@pytest.mark.usefixtures("guarded")
def test_a_connection_lost_before_the_watchdog_runs_is_just_an_error(world: World) -> None:
    world.host.on("system_state", HostUnreachable("web1: no answer"))
    with pytest.raises(HostUnreachable):
        activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    assert len(world.host.calls) == 1 and world.host.opened == []


@pytest.mark.usefixtures("guarded")
def test_no_confirmation_waits_for_the_host_to_roll_itself_back(world: World, deterministic: Clock) -> None:
    world.host.on("confirm_activation", HostUnreachable("web1: no answer"))
    world.host.on(["test", "-e", f"{DIR}/rolled-back"], HostUnreachable("web1: no answer"), 1, 0)
    world.host.on(["readlink", "/run/current-system"], f"{OLD_RUNNING}\n")
    with pytest.raises(NotConfirmed) as missed:
        activate_with_rollback(world.session, request(confirm_timeout=3), world.run, world.host, NEW)
    assert str(missed.value) == (
        "web1: not confirmed within 3s after activation (web1: no answer); the host rolled itself back and runs " + OLD_RUNNING + " again"
    )
    assert missed.value.exit_code == 15
    after_switch = steps(world.host.calls)[2:]
    assert after_switch == expect(
        *[(n, sh("confirm_activation", DIR, VERDICTS), True) for n in (1, 2, 3)],
        *[(n, ("test", "-e", f"{DIR}/rolled-back"), True) for n in (4, 5, 6)],
        (6, ("readlink", "/run/current-system"), False),
    )
    assert all(fresh.closed == 1 for fresh in world.host.opened)


@pytest.mark.usefixtures("guarded")
def test_a_self_rollback_that_cannot_be_seen_is_said_so(world: World, deterministic: Clock) -> None:
    world.host.on("confirm_activation", "pending\n")
    world.host.on(["test", "-e", f"{DIR}/rolled-back"], 1)
    with pytest.raises(NotConfirmed, match=r"\(the activation has not finished\); the host should have rolled itself back, but nixfab could not verify it$"):
        activate_with_rollback(world.session, request(confirm_timeout=3), world.run, world.host, NEW)
    assert sum(call.argv[:2] == ("test", "-e") and call.connection > 0 for call in world.host.calls) == 63


@pytest.mark.usefixtures("guarded")
def test_a_lost_channel_during_the_switch_is_confirmed_over_a_new_connection(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", "finished 0\n")
    activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    assert not any(call.argv[:1] == ("mkdir",) for call in world.host.calls)
    assert not any(switching_to(OLD_GEN)(call.argv) or switching_to(OLD_RUNNING)(call.argv) for call in world.host.calls)  # type: ignore[operator]


@pytest.mark.usefixtures("guarded")
def test_a_switch_that_failed_while_we_were_away_is_claimed_then_undone(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", "finished 4\n")
    with pytest.raises(ActivationFailed) as failed:
        activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    assert str(failed.value) == f"web1: switch-to-configuration switch failed (exit 4) after the connection dropped; {ROLLED_BACK}"
    assert steps(world.host.calls)[2:] == expect(
        (1, sh("activation_status", DIR), True), READ_PROFILE, (0, ("mkdir", "-p", "--", f"{DIR}/verdict"), True), *UNDO[1:],
    )
    assert failed.value.exit_code == 6


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize(("answer", "said"), [("running\n", "it is still running"), ("unknown\n", "the host has no record of how it ended")])
def test_a_switch_whose_end_cannot_be_told_is_never_undone_over_a_guess(world: World, answer: str, said: str) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", answer)
    with pytest.raises(ActivationUnknown) as unknown:
        activate_with_rollback(world.session, request(confirm_timeout=3), world.run, world.host, NEW)
    assert unknown.value.exit_code == 18
    message = str(unknown.value)
    assert "(web1: the SSH channel closed during switch-to-configuration switch without an exit status); asked" in message
    assert f"; asked over a new connection: {said}; nixfab cannot tell whether it finished and undid nothing; the rollback watchdog {TOKEN}" in message
    assert f"journalctl -u {UNIT}" in message and f"{VERDICTS}/{TOKEN}" in message and f"`cat {DIR}/activated`" in message
    after_switch = steps(world.host.calls)[2:]
    assert {call[1] for call in after_switch} == {shown(sh("activation_status", DIR))}  # no undo, no disarm, no confirmation


@pytest.mark.usefixtures("guarded")
def test_health_checks_run_before_the_confirmation(world: World) -> None:
    world.run.spec = spec(health=HealthCheck(command="true", retries=0))
    finish(world.session, request(), world.run, world.host, Built(NEW, "target"))
    scripts = [call.argv[0] if call.script is None else call.script for call in world.host.calls]
    assert scripts.index("timeout") < scripts.index("confirm_activation")
    # The watchdog's window covers the checks: 30 s for the confirmation, 15 for one attempt.
    activation = next(call.argv for call in world.host.calls if call.script == "activate")
    watchdog = activation.index(script("rollback_watchdog"))  # its words: sh -c SCRIPT sh DIR LIMIT WINDOW ...
    assert activation[watchdog + 2 : watchdog + 5] == (DIR, "1800", "45")


@pytest.mark.usefixtures("guarded")
def test_a_failed_health_check_claims_the_verdict_undoes_and_never_confirms(world: World) -> None:
    world.run.spec = spec(health=HealthCheck(command="false", retries=0))
    world.host.on(["timeout"], 1)
    with pytest.raises(HealthCheckFailed, match=f"; {ROLLED_BACK}$"):
        finish(world.session, request(), world.run, world.host, Built(NEW, "target"))
    assert steps(world.host.calls)[3:] == expect(
        (0, ("timeout", "10", "sh", "-c", "false"), False), (0, ("mkdir", "-p", "--", f"{DIR}/verdict"), True), *UNDO[1:],
    )
    assert world.host.opened == []


@pytest.mark.usefixtures("guarded")
def test_a_failed_guarded_switch_claims_the_verdict_before_undoing(world: World) -> None:
    world.host.on(switching_to(NEW), Reply(1, ACTIVATED))
    with pytest.raises(ActivationFailed):
        activate_with_rollback(world.session, request(), world.run, world.host, NEW)
    argvs = world.host.argvs
    claim = argvs.index(("mkdir", "-p", "--", f"{DIR}/verdict"))
    first_undo = argvs.index(("nix-env", "-p", PROFILE, "--switch-generation", "41"))
    assert claim < first_undo


# ---- deploy_host: the lock around it all -------------------------------------------------------------------------------


def test_deploy_host_takes_the_lock_first_and_releases_it_last(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on(["nix-store", "--check-validity"], 0)
    outcome = deploy_host(world.session, request(), world.run, NEW)
    assert steps(world.host.calls) == expect(
        (0, preflight(), True),
        STATE,
        (0, sh("free_space", "/nix", "/boot"), False),
        (0, ("nix-store", "--check-validity", NEW), False),
        STATE, ACTIVATE,
        (0, release(), True),
    )
    assert outcome.status == "ok" and outcome.copied is False


def test_the_lock_s_round_trip_answers_what_the_deploy_would_ask_one_command_at_a_time(world: World) -> None:
    """The state, the free space and systemd-run come with the lock; the revision goes with its release."""
    world.run.spec = spec(build_on="local")
    answers = f"acquired\n{probe()}df\t/nix\t/dev/vda 1000000 10 999990 1% /nix\nsystemd\t1\n"
    world.host.on("preflight", answers).on(["nix-store", "--check-validity"], 0)
    world.host.facts.clear()  # not yet asked: the answer says systemd is init
    outcome = deploy_host(world.session, request(revision="abc123", dirty=False), world.run, NEW)
    assert steps(world.host.calls) == expect(
        (0, preflight(), True),
        (0, ("nix-store", "--check-validity", NEW), False),  # nix copy's (RecordingHost is no RemoteHost to stream to)
        ACTIVATE,
        (0, release("/nix/var/nix/nixfab/generations", REVISION, "42"), True),
    )
    assert outcome.status == "ok" and outcome.generation == 42


@pytest.mark.usefixtures("guarded")
def test_an_unguarded_switch_under_the_lock_leaves_its_record_for_the_release_to_remove(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on("preflight", f"acquired\n{probe()}systemd\t1\n").on(["nix-store", "--check-validity"], 0)
    # Streamed to (guarded makes it a RemoteHost here): the preflight asks about the closure, listed here first.
    world.runner.on([*commands.NIX, "path-info", "--json", "--recursive", NEW], json.dumps({NEW: {"narSize": 1, "references": []}}))
    deploy_host(world.session, request(magic_rollback=False), world.run, NEW)
    assert FORGET_RECORD[1] not in world.host.argvs  # no command of its own
    assert world.host.argvs[-1] == release(leftovers=(RECORD,))


def test_a_host_that_already_has_the_system_answers_so_and_lets_go_of_the_lock_in_one_command(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on("preflight", f"acquired\n{probe(42, NEW, NEW)}current\n")
    outcome = deploy_host(world.session, request(), world.run, NEW)
    assert steps(world.host.calls) == expect((0, preflight(), True))
    assert outcome.status == "up-to-date" and outcome.generation == 42


def test_the_answers_state_is_asked_again_after_an_earlier_deploy_s_watchdog_decided(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on("preflight", f"acquired\npending\t{TOKEN}\t5\n{probe(42, NEW, NEW)}")
    world.host.on("system_state", probe())  # the watchdog put generation 41 back meanwhile
    world.host.on("read_verdicts", f"{TOKEN}\tverdict\trolled back by the watchdog\n")
    world.host.on(["nix-store", "--check-validity"], 0)
    outcome = deploy_host(world.session, request(), world.run, NEW)
    assert outcome.status == "ok"
    assert sh("system_state", PROFILE) in world.host.argvs


def test_deploy_host_releases_the_lock_when_the_switch_fails(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on(switching_to(NEW), Reply(1, ACTIVATED))
    with pytest.raises(ActivationFailed):
        deploy_host(world.session, request(), world.run, NEW)
    assert world.host.argvs[0] == preflight()
    assert world.host.argvs[-1] == release()


def test_a_busy_host_gets_nothing_but_the_lock_attempt(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on("preflight", 'held\n3\n{"machine": "laptop", "pid": 7, "user": "bob"}\n')
    with pytest.raises(HostBusy):
        deploy_host(world.session, request(), world.run, NEW)
    assert [call.script for call in world.host.calls] == ["preflight"]


def test_a_cleared_stale_lock_is_noted_on_the_hosts_output(world: World) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on("preflight", 'held\n600\n{"machine": "laptop", "pid": 7, "user": "bob"}\n', "acquired\n")
    world.host.on("system_state", probe(42, NEW, NEW))
    assert deploy_host(world.session, request(), world.run, NEW).status == "up-to-date"
    assert "==> web1: cleared a stale deploy lock left by bob@laptop (pid 7, deploy, since ?)" in world.host.output.getvalue()


@pytest.mark.parametrize("fields", [{"lock": False}, {"action": None}])
def test_no_lock_without_an_action_or_with_locking_off(world: World, fields: dict[str, object]) -> None:
    world.run.spec = spec(build_on="local")
    world.host.on(["nix-store", "--check-validity"], 0)
    deploy_host(world.session, request(**fields), world.run, NEW)
    assert not any(call.script in ("preflight", "lock_release") for call in world.host.calls)


# ---- dry run --------------------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("guarded")
def test_a_dry_run_sends_nothing_and_echoes_the_whole_plan(monkeypatch: pytest.MonkeyPatch, deterministic: Clock) -> None:
    dry = World(monkeypatch, dry_run=True, host_spec=spec(build_on="local"))
    before = set(threading.enumerate())
    outcome = deploy_host(dry.session, request(revision="abc123", dirty=False), dry.run, NEW)
    # What the dry answers lead to: "acquired", a running system but no readable profile, a confirmation.
    dry_running = "<running system>"
    watchdog = (*sh("rollback_watchdog", DIR, "1800", "30"), VERDICTS, PROFILE, NEW, "", "", dry_running, "1", "1", "1")
    assert steps(dry.host.calls) == expect(
        (0, preflight(), True),
        (0, sh("free_space", "/nix", "/boot"), False),
        (0, ("nix-store", "--check-validity", NEW), False),
        STATE,
        activating(
            unit(*sh("mark_activated", f"{DIR}/activated", *stc(NEW, "switch")), bootloader=True),
            sh("mkdir_then_exec", DIR, "systemd-run", "--collect", "--quiet", "--no-ask-password", f"--unit=nixfab-watchdog-{TOKEN}", *watchdog),
        ),
        (1, sh("confirm_activation", DIR, VERDICTS, *release()), True),  # nothing else to do there: it releases the lock too
    )
    assert dry.host.sent == [] and all(call.dry for call in dry.host.calls)
    assert all(call.dry for call in dry.runner.calls)
    assert [call.argv[3] for call in dry.runner.calls] == ["path-info", "copy"]
    assert outcome == DeployOutcome("web1", NEW, "local", "planned", copied=True, generation=None)
    assert deterministic.sleeps == []
    assert not any(thread.name.startswith("lock-heartbeat-") for thread in set(threading.enumerate()) - before)  # no heartbeat for a dry lock


@pytest.mark.usefixtures("guarded")
def test_a_host_that_cannot_be_reached_after_a_lost_switch_is_left_to_its_watchdog(world: World) -> None:
    world.host.on(switching_to(NEW), LOST).on("activation_status", HostUnreachable("web1: no answer"))
    world.host.on(["test", "-e", f"{DIR}/rolled-back"], 0).on(["readlink", "/run/current-system"], f"{OLD_RUNNING}\n")
    with pytest.raises(NotConfirmed) as missed:
        activate_with_rollback(world.session, request(confirm_timeout=3), world.run, world.host, NEW)
    assert str(missed.value) == (
        "web1: not confirmed within 3s after the connection dropped during activation (web1: no answer); "
        f"the host rolled itself back and runs {OLD_RUNNING} again"
    )
    assert not any(call.argv[:1] == ("mkdir",) for call in world.host.calls)
