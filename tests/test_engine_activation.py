"""deploy.activate.activation against RecordingHost: the exact commands of a switch, and of putting a host back after a failed one.

Expected argv are written out word for word rather than rebuilt with
deploy.nix.commands, so that a changed builder shows up here. Comparisons go
through fake_host.shown(), which only abbreviates a remote script's *exact*
text to <name.sh>, to keep failure diffs readable.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from deploy.activate import activation as activation_module
from deploy.activate.activation import Activation, SystemState, activate, rollback_steps, system_state, undo
from deploy.errors import ActivationFailed, ActivationUnknown, NixfabError, NotInStore, RemoteCommandFailed
from deploy.scripts import script
from fake_host import LOST, RecordingHost, Reply, sh, shown

PROFILE = "/nix/var/nix/profiles/system"
OLD_GEN = "/nix/store/0000000000000000000000000000000a-nixos-system-web1-41"
OLD_RUNNING = "/nix/store/0000000000000000000000000000000b-nixos-system-web1-running"
NEW = "/nix/store/0000000000000000000000000000000c-nixos-system-web1-42"


def probe(generation: int | None = 41, generation_path: str | None = OLD_GEN, running: str | None = OLD_RUNNING) -> str:
    """What system_state.sh prints."""
    link = f"system-{generation}-link" if generation is not None else ""
    lines = [f"profile\t{link}"] + ([f"generation\t{generation_path or ''}"] if link else []) + [f"running\t{running or ''}"]
    return "\n".join(lines) + "\n"


TOKEN = "0123456789ab"
UNIT = f"nixfab-switch-{TOKEN}"


@pytest.fixture(autouse=True)
def fixed_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each activation's unit is named after a random token: make it this one."""
    monkeypatch.setattr(activation_module, "secrets", SimpleNamespace(token_hex=lambda n: TOKEN))


def unit(path: str, action: str, *, bootloader: bool, name: str = "") -> tuple[str, ...]:
    """switch-to-configuration under systemd-run, as activation runs it where systemd-run works: in the run's own unit, or its undo's."""
    name = name or (UNIT if path == NEW else f"{UNIT}-undo-{action}")
    return (
        "systemd-run", "-E", "LOCALE_ARCHIVE", "-E", f"NIXOS_INSTALL_BOOTLOADER={'1' if bootloader else ''}", "--collect",
        "--no-ask-password", "--pipe", "--quiet", "--service-type=exec", f"--unit={name}", "--wait",
        f"{path}/bin/switch-to-configuration", action,
    )


def switching_to(path: str) -> object:
    def matches(argv: object) -> bool:
        return f"{path}/bin/switch-to-configuration" in argv  # type: ignore[operator]

    matches.__name__ = f"switch-to-configuration of {path}"
    return matches


def steps(host: RecordingHost) -> list[tuple[tuple[str, ...], bool]]:
    return [(call.shown, call.sudo) for call in host.calls]


def expect(*pairs: tuple[tuple[str, ...], bool]) -> list[tuple[tuple[str, ...], bool]]:
    return [(shown(argv), sudo) for argv, sudo in pairs]


STATE = (sh("system_state", PROFILE), False)
JOURNAL = (("journalctl", "--no-pager", "-n", "30", "-u", UNIT), False)
# What activate.sh prints before the switch's own output when it set the profile.
ACTIVATED = "nixfab-activate\tprofile\tsystem-42-link\n"


def activating(action: str, *, arming: tuple[str, ...] = (), switch: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool]:
    """The one activation command (activate.sh, as root): check, arm the watchdog, set the profile (switch, boot), switch."""
    sets_profile = action in ("switch", "boot")
    switch = switch or unit(NEW, action, bootloader=sets_profile)
    return (sh("activate", NEW, PROFILE, "1" if sets_profile else "0", script("run_first"), str(len(arming)), *arming, *switch), True)


def web1(**facts: bool) -> RecordingHost:
    """A host on generation 41 that runs OLD_RUNNING; setting the profile makes generation 42."""
    return RecordingHost(facts={"systemd": True, **facts}).on("system_state", probe()).on("activate", ACTIVATED)


# ---- a switch that works ------------------------------------------------------------------------------------------------


def test_switch_sets_the_profile_then_runs_switch_to_configuration_in_a_unit() -> None:
    host = web1()
    activation = activate(host, NEW, "switch")
    assert steps(host) == expect(STATE, activating("switch"))
    assert [call.stream for call in host.calls] == [False, True]
    assert activation == Activation(NEW, "switch", 42, SystemState(41, OLD_GEN, OLD_RUNNING))


def test_the_state_the_host_gave_under_the_lock_is_not_asked_again() -> None:
    host = web1()
    assert activate(host, NEW, "switch", previous=SystemState(41, OLD_GEN, OLD_RUNNING)).generation == 42
    assert steps(host) == expect(activating("switch"))


def test_boot_sets_the_profile_and_installs_the_bootloader() -> None:
    host = web1()
    assert activate(host, NEW, "boot").generation == 42
    assert steps(host) == expect(STATE, activating("boot"))


@pytest.mark.parametrize("action", ["test", "dry-activate"])
def test_test_and_dry_activate_leave_the_profile_alone(action: str) -> None:
    host = web1().on("activate", "")
    assert activate(host, NEW, action) == Activation(NEW, action, 41, SystemState(41, OLD_GEN, OLD_RUNNING))
    assert steps(host) == expect(STATE, activating(action))


def test_without_systemd_the_switch_runs_in_a_clean_environment() -> None:
    host = RecordingHost().on("system_state", probe()).on("activate", ACTIVATED).on(["test", "-d"], 1)
    activate(host, NEW, "switch")
    clean = ("env", "-i", "NIXOS_INSTALL_BOOTLOADER=1", f"{NEW}/bin/switch-to-configuration", "switch")
    assert steps(host) == expect(STATE, (("test", "-d", "/run/systemd/system"), False), activating("switch", switch=clean))
    assert host.facts == {"systemd": False}


def test_a_path_that_is_not_a_system_here_is_refused_before_anything_changes() -> None:
    host = web1().on("activate", Reply(1, "nixfab-activate\tnot-nixos\n"))
    with pytest.raises(NotInStore) as refused:
        activate(host, NEW, "switch")
    assert refused.value.exit_code == 12 and str(refused.value).startswith(f"web1: {NEW} is not a NixOS system on this host")
    assert steps(host) == expect(STATE, activating("switch"))  # activate.sh checked it first, and went no further


def test_a_profile_that_cannot_be_set_stops_before_the_switch() -> None:
    unset = "nixfab-activate\tunset\terror: opening lock file '/nix/var/nix/profiles/system.lock': Permission denied\n"
    host = web1().on("activate", Reply(1, unset))
    undone: list[bool] = []
    with pytest.raises(RemoteCommandFailed, match=r"^web1: nix-env --set failed: error: opening lock file") as failed:
        activate(host, NEW, "switch", before_undo=lambda: undone.append(True))
    assert failed.value.exit_code == 9
    assert steps(host) == expect(STATE, activating("switch"))
    assert undone == [True]  # a watchdog armed before it is told to stand down: nothing changed


def test_a_watchdog_that_cannot_start_stops_the_deploy_before_anything_changes() -> None:
    host = web1().on("activate", Reply(1, "nixfab-activate\tunarmed\tmkdir: Permission denied\n"))
    with pytest.raises(NixfabError, match=r"^web1: cannot start the rollback watchdog: mkdir: Permission denied$"):
        activate(host, NEW, "switch", arm=lambda prepared: ["start", "watchdog"])
    assert steps(host) == expect(STATE, activating("switch", arming=("start", "watchdog")))


def test_arm_sees_the_prepared_activation_before_the_profile_changes_and_wrap_wraps_the_argv() -> None:
    # The watchdog once started after `nix-env --set` (seeing generation 42): a deployer killed in between left a never-activated
    # generation as the boot default with no watchdog to put it back. activate.sh starts it first; the generation is not known yet.
    host = web1()
    seen: list[Activation] = []

    def arm(prepared: Activation) -> list[str]:
        seen.append(prepared)
        return ["start", "watchdog"]

    activate(host, NEW, "switch", arm=arm, wrap=lambda argv: ["wrapped", *argv])
    assert seen == [Activation(NEW, "switch", None, SystemState(41, OLD_GEN, OLD_RUNNING))]
    assert seen[0].token == TOKEN and seen[0].unit == UNIT
    assert host.argvs[-1][-3:] == ("wrapped", f"{NEW}/bin/switch-to-configuration", "switch")
    assert host.argvs[-1][9:11] == ("start", "watchdog")  # activate.sh's words that arm it: run before the profile is set


# ---- a switch that fails, and what is put back --------------------------------------------------------------------------


def test_a_failed_switch_restores_generation_boot_default_and_running_system() -> None:
    failing = Reply(4, ACTIVATED, "warning: the following units failed: nginx.service\n")
    host = web1().on(switching_to(NEW), failing).on(["journalctl"], "nginx: bad config\n")
    with pytest.raises(ActivationFailed) as failed:
        activate(host, NEW, "switch")
    assert steps(host) == expect(
        STATE, activating("switch"),
        (("nix-env", "-p", PROFILE, "--switch-generation", "41"), True),
        (unit(OLD_GEN, "boot", bootloader=True), True),
        (("nix-env", "-p", PROFILE, "--delete-generations", "42"), True),
        (unit(OLD_RUNNING, "test", bootloader=False), True),
    )
    assert failed.value.exit_code == 6
    assert str(failed.value) == (
        "web1: switch-to-configuration switch failed (exit 4): warning: the following units failed: nginx.service; "
        f"rolled back: profile and boot default back to generation 41; running system back to {OLD_RUNNING}"
    )
    # Shown once, under the error: the switch's own output (under systemd-run --pipe it came to us, not to the journal),
    # without activate.sh's lines.
    assert failed.value.details == "switch-to-configuration switch (last lines):\n  warning: the following units failed: nginx.service"


def test_a_failed_switch_that_printed_nothing_is_explained_by_its_unit_s_journal() -> None:
    host = web1().on(switching_to(NEW), Reply(4, ACTIVATED)).on(["journalctl"], "nginx: bad config\n")
    with pytest.raises(ActivationFailed) as failed:
        activate(host, NEW, "switch")
    assert steps(host)[2] == expect(JOURNAL)[0]
    assert failed.value.details == f"journalctl -u {UNIT} (last lines):\n  nginx: bad config"


def test_a_failed_boot_restores_the_profile_and_boot_default_but_not_the_running_system() -> None:
    host = web1().on(switching_to(NEW), Reply(1, ACTIVATED))
    with pytest.raises(ActivationFailed, match=r"; rolled back: profile and boot default back to generation 41$"):
        activate(host, NEW, "boot")
    assert steps(host)[3:] == expect(
        (("nix-env", "-p", PROFILE, "--switch-generation", "41"), True),
        (unit(OLD_GEN, "boot", bootloader=True), True),
        (("nix-env", "-p", PROFILE, "--delete-generations", "42"), True),
    )


def test_a_failed_test_only_brings_the_running_system_back() -> None:
    host = web1().on(switching_to(NEW), 1)
    with pytest.raises(ActivationFailed, match=f"; rolled back: running system back to {OLD_RUNNING}$"):
        activate(host, NEW, "test")
    assert steps(host)[2:] == expect(JOURNAL, (unit(OLD_RUNNING, "test", bootloader=False), True))


def test_on_a_host_without_a_profile_a_failed_switch_removes_the_new_one() -> None:
    installer = "/nix/store/0000000000000000000000000000000d-nixos-system-nixos-installer"
    host = RecordingHost(facts={"systemd": True}).on("system_state", probe(None, None, installer))
    host.on(switching_to(NEW), Reply(1, "nixfab-activate\tprofile\tsystem-1-link\n"))
    with pytest.raises(ActivationFailed, match=f"; rolled back: removed the new profile \\(the host had none\\); running system back to {installer}$"):
        activate(host, NEW, "switch")
    assert steps(host)[3:] == expect(
        (("rm", "-f", "--", PROFILE, f"{PROFILE}-1-link"), True),
        (unit(installer, "test", bootloader=False), True),
    )


def test_a_restore_that_fails_too_is_said_and_the_rest_still_runs() -> None:
    host = web1().on(switching_to(NEW), Reply(1, ACTIVATED)).on(switching_to(OLD_GEN), Reply(1, "", "Failed to install bootloader\n"))
    with pytest.raises(ActivationFailed) as failed:
        activate(host, NEW, "switch")
    assert (
        "rolled back: profile and boot default back to generation 41 (but its switch-to-configuration boot failed too: "
        "web1: switch-to-configuration boot failed (exit 1): Failed to install bootloader); running system back to"
    ) in str(failed.value)
    assert host.argvs[-1] == unit(OLD_RUNNING, "test", bootloader=False)


def test_no_journal_is_read_where_the_switch_did_not_run_under_systemd() -> None:
    host = RecordingHost(facts={"systemd": False}).on("system_state", probe()).on("activate", ACTIVATED)
    host.on(switching_to(NEW), 1)
    with pytest.raises(ActivationFailed):
        activate(host, NEW, "test")
    assert not any(call.argv[0] == "journalctl" for call in host.calls)


# ---- rollback_steps, the plan both undo() and the watchdog follow -------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "plan"),
    [
        (
            Activation(NEW, "switch", 42, SystemState(41, OLD_GEN, OLD_RUNNING)),
            [("nix-env", "-p", PROFILE, "--switch-generation", "41"), (f"{OLD_GEN}/bin/switch-to-configuration", "boot"),
             ("nix-env", "-p", PROFILE, "--delete-generations", "42"), (f"{OLD_RUNNING}/bin/switch-to-configuration", "test")],
        ),
        # switch-generation/rollback made an existing generation current: it must not be deleted.
        (
            Activation(NEW, "switch", 40, SystemState(41, OLD_GEN, OLD_RUNNING), created_generation=False),
            [("nix-env", "-p", PROFILE, "--switch-generation", "41"), (f"{OLD_GEN}/bin/switch-to-configuration", "boot"),
             (f"{OLD_RUNNING}/bin/switch-to-configuration", "test")],
        ),
        # Setting the profile to what it already was made no new generation: nothing to put back there.
        (Activation(NEW, "boot", 41, SystemState(41, OLD_GEN, OLD_RUNNING)), []),
        # Already running what we activated: nothing to bring back.
        (Activation(NEW, "test", 41, SystemState(41, OLD_GEN, NEW)), []),
        # Nothing known about what ran before.
        (Activation(NEW, "test", None, SystemState(None, None, None)), []),
        (Activation(NEW, "dry-activate", 41, SystemState(41, OLD_GEN, OLD_RUNNING)), []),
        # The generation number could not be read back after setting it: the profile still goes back, nothing is deleted.
        (
            Activation(NEW, "boot", None, SystemState(41, OLD_GEN, OLD_RUNNING)),
            [("nix-env", "-p", PROFILE, "--switch-generation", "41"), (f"{OLD_GEN}/bin/switch-to-configuration", "boot")],
        ),
    ],
)
def test_rollback_steps(activation: Activation, plan: list[tuple[str, ...]]) -> None:
    assert [tuple(step.argv()) for step in rollback_steps(activation)] == plan


def test_undo_with_nothing_to_undo_sends_nothing() -> None:
    host = RecordingHost()
    assert undo(host, Activation(NEW, "test", 41, SystemState(41, OLD_GEN, NEW))) == "nothing to roll back"
    assert host.calls == []


def test_system_state_reads_generation_path_and_running_system_in_one_round_trip() -> None:
    host = RecordingHost().on("system_state", probe())
    assert system_state(host) == SystemState(41, OLD_GEN, OLD_RUNNING)
    assert host.argvs == [sh("system_state", PROFILE)]
    assert system_state(RecordingHost().on("system_state", "profile\t\nrunning\t\n")) == SystemState(None, None, None)


@pytest.mark.parametrize("probe_failure", [LOST, Reply(1, "", "readlink: Input/output error\n")], ids=["lost", "error"])
def test_a_failed_state_probe_never_leads_to_removing_the_system_profile(probe_failure: Reply) -> None:
    host = RecordingHost(facts={"systemd": True}).on("system_state", probe_failure).on(switching_to(NEW), Reply(1, ACTIVATED))
    with pytest.raises(NixfabError):
        activate(host, NEW, "switch")
    assert not any(call.argv[:3] == ("rm", "-f", "--") and PROFILE in call.argv for call in host.calls), steps(host)
    assert steps(host) == expect(STATE)  # refused before anything changed


def test_a_lost_channel_during_the_switch_is_unknown_and_nothing_is_undone() -> None:
    # Fabric's exit -1 used to be "switch-to-configuration failed": undo then ran against a switch still going on in its unit.
    host = web1().on(switching_to(NEW), LOST)
    with pytest.raises(ActivationUnknown) as unknown:
        activate(host, NEW, "switch")
    assert unknown.value.exit_code == 18
    assert "cannot tell whether it finished and undid nothing" in str(unknown.value)
    assert f"journalctl -u {UNIT}" in str(unknown.value)
    assert steps(host) == expect(STATE, activating("switch"))
