"""Every task, end to end against simulated hosts; assertions are on the hosts' state."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from lab_helpers import BIN, REPO, git, inv, ok, tool, toplevel_of, write_inventory


@pytest.fixture
def fleet(lab: Lab, tmp_path: Path):  # type: ignore[no-untyped-def]
    lab.up(["alpha", "beta"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: {}\n  beta: {}\n")
    return lab, flake, inventory




def test_switch_push_makes_generations_current_and_default(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    first = toplevel_of(flake, "alpha")
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    state = lab.state("alpha")
    assert [g.number for g in state.generations] == [1] and state.current_generation == 1
    assert state.current_system == first and state.boot_default_path == first
    set_fixture_revision(flake, "2")
    second = toplevel_of(flake, "alpha")
    result = ok(inv("switch-push", "--host", "alpha", "--flake", str(flake), "--inventory", str(inventory), "-v"))
    # -v shows every command: the activation's sets the profile to the new system (activate.sh's arguments).
    assert "+ [alpha] sh -c " in result.stderr and f" sh {second} /nix/var/nix/profiles/system 1 " in result.stderr
    state = lab.state("alpha")
    assert [g.path for g in state.generations] == [first, second]
    assert state.current_system == second and state.boot_default == "nixos-generation-2.conf"
    assert lab.state("beta").generations == ()


def test_a_hosts_connection_is_opened_while_its_system_builds_and_no_command_runs_before_it_is_built(
    fleet, tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """The handshake (some five round trips: TCP, SSH's versions, key exchange, authentication) overlaps the build,
    instead of following it; the host still learns of the deploy only once its system is built."""
    lab, flake, inventory = fleet
    gate = tmp_path / "gate"
    write_fixture_flake(flake, ["alpha", "beta"], revision="2", build_gate=gate)
    logins, commands = lab.accepted_ssh_logins("alpha"), lab.remote_commands("alpha")
    process = subprocess.Popen(
        [str(BIN / "inv"), "--search-root", str(REPO), "switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while lab.accepted_ssh_logins("alpha") == logins and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        logged_in_while_building = lab.accepted_ssh_logins("alpha") == logins + 1
        commands_while_building = lab.remote_commands("alpha") - commands
        gate.touch()
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == 0, err
    assert logged_in_while_building, err
    assert commands_while_building == 0
    assert lab.state("alpha").current_system == toplevel_of(flake, "alpha")
    assert lab.accepted_ssh_logins("alpha") == logins + 2  # the deploy's connection and the confirmation's, as ever


def test_a_deploy_makes_three_commands_and_a_confirmation_and_a_no_op_one_command(fleet) -> None:  # type: ignore[no-untyped-def]
    """The lock's round trip asks the rest (state, space, what the host lacks, systemd-run); the import; one activation
    (watchdog, profile, switch). The confirmation comes over a connection of its own, and with nothing left to do it
    releases the lock (with the revision) in the same round trip; without magic rollback, the release is the fourth."""
    lab, flake, inventory = fleet
    args = ("--flake", str(flake), "--inventory", str(inventory))

    def asked(deploy: tuple[str, ...]) -> tuple[int, int]:
        commands, connections = lab.remote_commands("alpha"), lab.accepted_ssh_logins("alpha")
        ok(inv(*deploy))
        return lab.remote_commands("alpha") - commands, lab.accepted_ssh_logins("alpha") - connections

    assert asked(("switch-push", "alpha", *args)) == (3 + 1, 2)  # a fresh host
    set_fixture_revision(flake, "2")
    assert asked(("switch-push", "alpha", *args)) == (3 + 1, 2)
    assert lab.inside("alpha", ["test", "-e", "/run/nixfab/deploy.engine.lock"], check=False).returncode != 0  # released
    assert asked(("switch-push", "alpha", *args, "--no-magic-rollback")) == (1, 1)  # already current: the lock's round trip says so
    set_fixture_revision(flake, "3")
    assert asked(("switch-push", "alpha", *args, "--no-magic-rollback")) == (4, 1)  # no watchdog, no confirmation
    assert lab.state("alpha").current_system == toplevel_of(flake, "alpha")
    assert len(lab.state("alpha").generations) == 3
    assert lab.ssh("alpha", ["sh", "-c", "ls /run/nixfab/switches 2>/dev/null | wc -l"]).stdout.strip() == "0"  # the release removed its record



def test_a_half_written_path_on_the_host_is_sent_again_and_the_deploy_goes_on(fleet) -> None:  # type: ignore[no-untyped-def]
    """The preflight takes a path that is in the host's store directory as valid (no nix-store process per deploy);
    a build or an import that died can leave one there half-written and invalid. The import then refuses what refers
    to it, and the deploy asks nix-store which paths the host really lacks, and sends them."""
    lab, flake, inventory = fleet
    system = toplevel_of(flake, "alpha")
    closure = subprocess.run(["nix-store", "--query", "--requisites", system], check=True, capture_output=True, text=True).stdout.split()
    half_written = next(path for path in closure if path.endswith("-etc-alpha"))
    lab.inside("alpha", ["sh", "-c", 'mkdir -p "$1" && echo partial > "$1/leftover"', "sh", half_written])
    assert lab.inside("alpha", ["nix-store", "--check-validity", half_written], check=False).returncode != 0
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    state = lab.state("alpha")
    assert state.current_system == system and [g.path for g in state.generations] == [system]
    assert lab.inside("alpha", ["nix-store", "--check-validity", *closure], check=False).returncode == 0
    assert not lab.store_has("alpha", f"{half_written}/leftover")  # Nix wrote the path afresh


def test_systemd_is_asked_by_a_test_not_by_starting_a_unit_and_a_host_without_it_gets_none(fleet) -> None:  # type: ignore[no-untyped-def]
    """sd_booted(3), as nixos-rebuild-ng asks it: /run/systemd/system. A unit started only to see whether one starts
    cost a systemd-run on every deploy. Without systemd, the watchdog runs under setsid and the switch in a clean
    environment, and magic rollback still confirms."""
    lab, flake, inventory = fleet
    args = ("--flake", str(flake), "--inventory", str(inventory))

    def units(host: str) -> list[str]:
        listed = lab.inside(host, ["ls", "/run/nixfab-lab/units"]).stdout.split()
        return sorted({name.split(".")[0].rsplit("-", 1)[0] for name in listed})

    ok(inv("switch-push", "alpha", *args))
    assert units("alpha") == ["nixfab-switch", "nixfab-watchdog"]  # the switch and its watchdog, and nothing else
    lab.inside("beta", ["rmdir", "/run/systemd/system"])
    result = ok(inv("switch-push", "beta", *args))
    assert "beta | confirmed over a new SSH connection" in result.stderr, result.stderr
    assert units("beta") == []
    assert lab.state("beta").current_system == toplevel_of(flake, "beta")
    assert lab.inside("beta", ["sh", "-c", "ls /run/nixfab/magic-rollback 2>/dev/null | wc -l"]).stdout.strip() == "0"

@pytest.mark.parametrize("where", ["outside git", "a git checkout named with path:"])
def test_a_path_flake_keeps_no_state_inside_itself(fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:  # type: ignore[no-untyped-def]
    """A path: flake is every file in its directory, tracked or not, git or not: state kept there (logs, the journal)
    would make every run's flake a new one (another narHash, no evaluation cache, the flake check again, the logs
    copied into the store). A directory outside git is a path: flake even without the scheme."""
    lab, flake_dir, inventory = fleet
    monkeypatch.delenv("NIXFAB_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    flake = str(flake_dir)
    if where != "outside git":
        git(flake_dir, "init", "-q")
        git(flake_dir, "add", "-A")
        git(flake_dir, "commit", "-q", "-m", "flake")
        flake = f"path:{flake_dir}"

    def nar_hash() -> str:
        metadata = subprocess.run(["nix", "flake", "metadata", "--json", flake], capture_output=True, text=True, check=True)
        return str(json.loads(metadata.stdout)["locked"]["narHash"])

    before = nar_hash()
    ok(inv("switch-push", "alpha", "--flake", flake, "--inventory", str(inventory), "--check"))
    assert not (flake_dir / ".nixfab").exists() and nar_hash() == before
    assert lab.state("alpha").current_system == toplevel_of(flake_dir, "alpha")
    states = list((tmp_path / "xdg-state" / "nixfab").iterdir())
    assert [state.name.split("-")[0] for state in states] == ["flake"] and (states[0] / "history.sqlite").exists()
    assert list((states[0] / "logs").glob("*/alpha.log"))
    # The same flake again: its check is remembered, the host is up to date, and history finds the deploy.
    again = ok(inv("switch-push", "alpha", "--flake", flake, "--inventory", str(inventory), "--check"))
    assert "alpha | up to date" in again.stderr and "nix flake check: passed before" in again.stderr, again.stderr
    assert not (flake_dir / ".nixfab").exists() and nar_hash() == before
    listed = ok(inv("history", "--flake", flake, "--json"))
    assert [entry["host"] for entry in json.loads(listed.stdout)] == ["alpha", "alpha"]


def test_build_leaves_result_and_touches_no_host(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    logins = lab.accepted_ssh_logins("alpha")
    result = ok(inv("build", "alpha", "--flake", str(flake), "--inventory", str(inventory), cwd=tmp_path))
    path = toplevel_of(flake, "alpha")
    assert result.stdout.strip().endswith(path)
    assert os.readlink(tmp_path / "result") == path
    assert lab.accepted_ssh_logins("alpha") == logins and not lab.store_has("alpha", path)


def test_extra_nix_options_reach_nix(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _lab, flake, inventory = fleet
    result = ok(inv("build", "alpha", "--flake", str(flake), "--inventory", str(inventory), "-v", "--", "--show-trace", cwd=tmp_path))
    assert "--show-trace" in result.stderr.split("\n", 1)[1]
    bad = inv("build", "alpha", "--flake", str(flake), "--inventory", str(inventory), "--", "--no-such-option", cwd=tmp_path)
    assert bad.returncode == 3
    assert bad.stderr.count("alpha | error: building alpha failed") == 1, bad.stderr
    assert "--show-trace" not in bad.stderr  # an unknown flag is no evaluation error: Nix's trace would not help
    assert "Traceback" not in bad.stderr


def test_build_there_builds_in_the_targets_store(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    ok(inv("build-there", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    path = toplevel_of(flake, "alpha")
    assert lab.store_has("alpha", path)
    assert lab.state("alpha").generations == ()
    # The temporary GC root on the builder is gone once the deploy ends.
    assert lab.ssh("alpha", ["sh", "-c", "ls -d /tmp/nixfab.* 2>/dev/null | wc -l"]).stdout.strip() == "0"


def test_switch_pull_builds_and_activates_on_the_target(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    result = ok(inv("switch-pull", "beta", "--flake", str(flake), "--inventory", str(inventory), "-v"))
    assert "nix-store --realise" in result.stderr and "copy --to ssh://beta /nix/store" not in result.stderr
    state = lab.state("beta")
    assert state.current_system == toplevel_of(flake, "beta") and state.current_generation == 1


def test_build_on_one_host_deploy_to_another(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha", "beta"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: { build_on: beta }\n  beta: {}\n")
    result = ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory), "-v"))
    path = toplevel_of(flake, "alpha")
    assert "copy --from ssh://beta --to ssh://alpha " + path in result.stderr
    assert lab.store_has("beta", path) and lab.state("alpha").current_system == path
    assert lab.state("beta").generations == ()


def test_failing_activation_leaves_previous_generation_current(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    good = lab.state("alpha")
    broken_inventory = write_inventory(lab, inventory.parent / "broken.yaml", "  alpha: { attr: alpha-broken }\n")
    result = inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(broken_inventory))
    assert result.returncode == 6, result.stderr
    assert "broken-lab.service" in result.stderr and "rolled back" in result.stderr
    assert "Traceback" not in result.stderr
    after = lab.state("alpha")
    assert after.current_generation == 1 and [g.number for g in after.generations] == [1]
    assert after.boot_default == good.boot_default and after.current_system == good.current_system


def test_sudo_path_with_a_non_root_user(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    sudo_inventory = write_inventory(lab, inventory.parent / "sudo.yaml", "  alpha: { ssh: deploy@alpha }\n")
    wrong = inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(sudo_inventory), input="wrong-password\n")
    assert wrong.returncode == 8 and "sudo refused the password" in wrong.stderr
    assert lab.state("alpha").generations == ()
    right = ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(sudo_inventory), "-v", input=lab.sudo_password + "\n"))
    assert lab.sudo_password not in right.stdout + right.stderr
    state = lab.state("alpha")
    assert state.current_generation == 1 and state.current_system == toplevel_of(flake, "alpha")
    assert re.search(r"\+ \[alpha\] sudo sh -c '\nalpha +\| path=\$1 profile=\$2 set_profile=\$3 ", right.stderr)  # the activation


def test_dry_run_changes_nothing_and_connects_nowhere(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    logins = lab.accepted_ssh_logins("alpha")
    result = ok(inv("switch-push-reset", "alpha", "--flake", str(flake), "--inventory", str(inventory), "--dry-run"))
    for expected in ("nix --extra-experimental-features 'nix-command flakes' build", "[alpha] nix-store --import '<' '(the export of the ",
                     "[alpha] sh -c '\nalpha | path=$1 profile=$2 set_profile=$3 ", "/bin/switch-to-configuration' boot",
                     "systemctl reboot", "[alpha] nix-collect-garbage"):
        assert expected in result.stderr
    assert lab.accepted_ssh_logins("alpha") == logins
    state = lab.state("alpha")
    assert state.generations == () and state.current_system is None


def test_switch_push_reset_reboots_and_collects_garbage(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    old = lab.state("alpha")
    set_fixture_revision(flake, "2")
    new_path = toplevel_of(flake, "alpha")
    ok(inv("switch-push-reset", "alpha", "--flake", str(flake), "--inventory", str(inventory),
           "--delete-older-than", "all", "--reboot-timeout", "60"))
    state = lab.state("alpha")
    assert state.boot_id != old.boot_id
    assert state.current_system == new_path == state.booted_system
    assert [g.number for g in state.generations] == [2]
    assert not lab.store_has("alpha", old.current_system or "")


def test_switch_pull_reset_boots_the_new_generation(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    before = lab.state("beta").boot_id
    ok(inv("switch-pull-reset", "beta", "--flake", str(flake), "--inventory", str(inventory), "--reboot-timeout", "60"))
    state = lab.state("beta")
    assert state.boot_id != before and state.booted_system == toplevel_of(flake, "beta")


def test_switch_activates_the_machine_it_runs_on(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    # Run inside the simulated host, so "this machine" is alpha and never the real one.
    command = [str(BIN / "inv"), "--search-root", str(REPO), "switch", "alpha", "--flake", str(flake), "--inventory", str(inventory)]
    result = lab.ssh("alpha", command, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[alpha]" not in result.stderr and "copy --to" not in result.stderr
    state = lab.state("alpha")
    assert state.current_generation == 1 and state.current_system == toplevel_of(flake, "alpha")


def test_ssh_wait_runs_the_command_once_the_host_answers(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab, _flake, inventory = fleet
    result = ok(inv("ssh-wait", "alpha", "uname -s", "--inventory", str(inventory)))
    assert result.stdout.strip() == "Linux"
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(f"ssh_config: {lab.ssh_config}\nhosts:\n  ghost: {{ ssh: 'root@127.0.0.1:1' }}\n")
    late = inv("ssh-wait", "ghost", "true", "--inventory", str(ghost), "--timeout", "2", "--interval", "0.5")
    assert late.returncode == 7 and "gave up after 2s" in late.stderr and "Traceback" not in late.stderr


def test_unknown_host_key_stops_the_deploy(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    lab.known_hosts.write_text("")
    result = inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory))
    assert result.returncode == 5 and "unknown SSH host key" in result.stderr
    assert lab.state("alpha").generations == ()


@pytest.mark.parametrize("task", ["switch-push", "switch-pull"])
def test_a_changed_host_key_stops_the_deploy_with_exit_5(fleet, tmp_path: Path, task: str) -> None:  # type: ignore[no-untyped-def]
    # switch-pull's first contact is nix's own ssh (`nix copy --derivation`), push's is paramiko: both refuse alike.
    lab, flake, inventory = fleet
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    before = lab.state("alpha")
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    port = lab.host("alpha").port
    known = [line for line in lab.known_hosts.read_text().splitlines() if not line.startswith(f"[127.0.0.1]:{port} ")]
    lab.known_hosts.write_text("\n".join([*known, f"[127.0.0.1]:{port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}"]) + "\n")
    set_fixture_revision(flake, "2")
    result = inv(task, "alpha", "--flake", str(flake), "--inventory", str(inventory))
    assert result.returncode == 5, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("alpha | error: ")]  # once, under the host's name
    assert len(said) == 1 and "host key" in said[0].lower() and "changed" in said[0].lower(), result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 failed (alpha) in "), result.stderr
    assert "Traceback" not in result.stderr
    assert lab.state("alpha") == before


def test_accept_new_records_the_key(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab, flake, _inventory = fleet
    lab.known_hosts.write_text("")
    config = tmp_path / "accept_new_ssh_config"
    config.write_text(lab.ssh_config.read_text().replace("StrictHostKeyChecking yes", "StrictHostKeyChecking accept-new"))
    accept = tmp_path / "accept.yaml"
    accept.write_text(f"ssh_config: {config}\nhosts:\n  alpha: {{}}\n")
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(accept)))
    assert f"[127.0.0.1]:{lab.host('alpha').port} ssh-ed25519" in lab.known_hosts.read_text()


def test_fab_with_host_flag(fleet) -> None:  # type: ignore[no-untyped-def]
    lab, flake, inventory = fleet
    ok(tool("fab", "-H", "root@alpha", "switch-push", "--flake", str(flake), "--inventory", str(inventory)))
    assert lab.state("alpha").current_system == toplevel_of(flake, "alpha")
    before = lab.state("alpha").boot_id
    ok(tool("fab", "-H", "alpha", "reset", "--inventory", str(inventory), "--reboot-timeout", "60"))
    assert lab.state("alpha").boot_id != before
    assert lab.state("alpha").current_system == toplevel_of(flake, "alpha")


def test_bad_input_is_one_line_and_exit_2(fleet) -> None:  # type: ignore[no-untyped-def]
    _lab, flake, inventory = fleet
    for args in (["switch-push", "a;touch /tmp/pwned"], ["switch-push", "alpha", "--action", "explode"]):
        result = inv(*args, "--flake", str(flake), "--inventory", str(inventory))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("nixfab: error:")
    assert not Path("/tmp/pwned").exists()
