"""The lab itself: simulated hosts behave like machines, and leave nothing behind."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy.confirm.magic_rollback import detached
from deploy.lab import Lab, write_fixture_flake
from deploy.lab.lab import LAB_FILES
from deploy.nix import commands


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_host_starts_with_its_own_empty_store(lab: Lab) -> None:
    lab.up(["alpha", "beta"])
    listing = lab.ssh("alpha", ["sh", "-c", "ls -A /nix/store 2>/dev/null | wc -l; ls /nix/var/nix/profiles 2>/dev/null | wc -l"]).stdout.split()
    assert listing == ["0", "0"]
    # What alpha adds to its store is not visible to beta or to this machine.
    added = lab.ssh("alpha", ["sh", "-c", "echo hi > /tmp/lab-probe; nix-store --add /tmp/lab-probe"]).stdout.strip()
    assert added.startswith("/nix/store/")
    assert lab.ssh("alpha", ["test", "-e", added], check=False).returncode == 0
    assert lab.ssh("beta", ["test", "-e", added], check=False).returncode != 0
    assert not Path(added).exists()
    state = lab.state("alpha")
    assert state.current_system is None and state.generations == ()


def test_hosts_have_distinct_boot_ids_and_not_ours(lab: Lab) -> None:
    lab.up(["alpha", "beta"])
    ours = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    ids = {name: lab.ssh(name, ["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip() for name in ("alpha", "beta")}
    assert len(set(ids.values())) == 2 and ours not in ids.values()
    assert ids["alpha"] == lab.state("alpha").boot_id


def test_ssh_config_alias_works_with_plain_openssh(lab: Lab) -> None:
    lab.up(["alpha"])
    result = subprocess.run(["ssh", "-F", str(lab.ssh_config), "alpha", "uname", "-s"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Linux"


def test_unknown_host_key_is_refused(lab: Lab) -> None:
    lab.up(["alpha"])
    lab.known_hosts.write_text("")
    result = subprocess.run(["ssh", "-F", str(lab.ssh_config), "alpha", "true"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_system_commands_are_fakes_inside_the_host(lab: Lab) -> None:
    lab.up(["alpha"])
    paths = lab.ssh("alpha", ["sh", "-c", "command -v systemctl reboot shutdown systemd-run"]).stdout.split()
    assert all(p.startswith("/usr/local/sbin/") for p in paths)
    assert lab.ssh("alpha", ["test", "-d", "/run/systemd/system"], check=False).returncode == 0


def test_sudo_user_exists_only_inside_the_host(lab: Lab) -> None:
    lab.up(["alpha"])
    whoami = lab.ssh("alpha", ["sudo", "-S", "-p", "", "id", "-u"], user="deploy", input=lab.sudo_password + "\n")
    assert whoami.stdout.strip() == "0"
    wrong = lab.ssh("alpha", ["sudo", "-S", "-p", "", "id", "-u"], user="deploy", input="not-the-password\n", check=False)
    assert wrong.returncode != 0
    assert "deploy" not in Path("/etc/passwd").read_text().split(":")[0::6]
    assert subprocess.run(["id", "deploy"], capture_output=True).returncode != 0


def test_reboot_drops_sessions_and_changes_boot_id(lab: Lab) -> None:
    lab.up(["alpha"], reboot_delay=0.5)
    before = lab.state("alpha").boot_id
    session = subprocess.Popen(lab.ssh_argv("alpha", ["sleep", "120"]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert session.poll() is None
        lab.ssh("alpha", ["reboot"], check=False)
        assert session.wait(timeout=15) == 255
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    lab.wait_for_ssh("alpha", timeout=20)
    after = lab.ssh("alpha", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
    assert after != before and after == lab.state("alpha").boot_id
    # A fresh boot has a fresh /run.
    assert lab.ssh("alpha", ["test", "-e", "/tmp/never"], check=False).returncode != 0
    assert sorted(lab.ssh("alpha", ["ls", "/run"]).stdout.split()) == ["lock", "nixfab-lab", "sshd", "systemd"]


def test_reboot_boots_the_default_boot_entry(lab: Lab, tmp_path: Path) -> None:
    from deploy.lab import write_fixture_flake

    lab.up(["alpha"], reboot_delay=0.2)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    toplevel = subprocess.run(
        ["nix", "build", "--no-link", "--json", f'path:{flake}#nixosConfigurations."alpha".config.system.build.toplevel'],
        capture_output=True, text=True, check=True,
    )
    import json

    path = json.loads(toplevel.stdout)[0]["outputs"]["out"]
    subprocess.run(["nix", "copy", "--to", "ssh://alpha", path], env=dict(os.environ, NIX_SSHOPTS=f"-F {lab.ssh_config}"), check=True, capture_output=True)
    lab.ssh("alpha", ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", path])
    lab.ssh("alpha", [f"{path}/bin/switch-to-configuration", "boot"])
    state = lab.state("alpha")
    assert state.current_system is None and state.boot_default == "nixos-generation-1.conf"
    lab.ssh("alpha", ["reboot"], check=False)
    assert wait_until(lambda: lab.state("alpha").current_system == path)
    assert lab.state("alpha").booted_system == path


def test_down_stops_every_process_by_pid(lab: Lab) -> None:
    hosts = lab.up(["alpha", "beta"])
    lab.ssh("alpha", ["systemd-run", "--unit=long", "sleep", "300"])
    inner = [int(p) for p in lab.inside("alpha", ["sh", "-c", "echo /proc/[0-9]*"]).stdout.replace("/proc/", "").split()]
    assert len(inner) >= 3  # supervisor, nix-daemon, sshd, the unit
    outer_children = [h.supervisor_pid for h in hosts]
    lab.down()
    assert not any(alive(pid) for pid in outer_children)
    assert lab.hosts() == []
    leftovers = subprocess.run(["pgrep", "-f", str(lab.root)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_teardown_stops_hosts_when_a_test_fails_midway(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(f"""
        from pathlib import Path

        def test_fails_midway(lab):
            hosts = lab.up(["alpha"])
            Path({str(pid_file)!r}).write_text(" ".join(str(h.supervisor_pid) for h in hosts) + " " + str(lab.root))
            assert False, "failing on purpose"
    """))
    env = dict(os.environ)
    env.pop("NIXFAB_REQUIRE_LAB", None)
    # The plugin lives in tests/, which is not on the nested run's sys.path by itself.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "lab_plugin", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert "1 failed" in result.stdout, result.stdout + result.stderr
    *pids, root = pid_file.read_text().split()
    assert pids and not any(alive(int(pid)) for pid in pids)
    assert subprocess.run(["pgrep", "-f", root], capture_output=True, text=True).stdout == ""


# --- fixture variants, the health endpoint, small disks ---------------------


def build(flake: Path, *attrs: str) -> list[str]:
    # One build per attr: Nix 2.8's `build --json` does not list results in the order of the installables.
    paths = []
    for attr in attrs:
        installable = f'path:{flake}#nixosConfigurations."{attr}".config.system.build.toplevel'
        result = subprocess.run(["nix", "build", "--no-link", "--json", installable], capture_output=True, text=True, check=True)
        paths.append(json.loads(result.stdout)[0]["outputs"]["out"])
    return paths


def copy_to(lab: Lab, name: str, *paths: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix", "copy", "--to", f"ssh://{name}", *paths],
        env=dict(os.environ, NIX_SSHOPTS=f"-F {lab.ssh_config}"), capture_output=True, text=True, check=check,
    )


def ssh_answers(lab: Lab, name: str) -> bool:
    return lab.ssh(name, ["true"], check=False, timeout=10).returncode == 0


def test_every_toplevel_says_whether_it_is_healthy(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    variants = ["alpha", "alpha-broken", "alpha-cutoff", "alpha-slow", "alpha-sick"]
    health = {attr: Path(path, "lab-health").read_text() for attr, path in zip(variants, build(flake, *variants))}
    assert health == {"alpha": "ok\n", "alpha-broken": "ok\n", "alpha-cutoff": "ok\n", "alpha-slow": "ok\n", "alpha-sick": "sick\n"}


def test_health_endpoint_follows_the_running_system(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"], reboot_delay=0.2)
    assert lab.http_url("alpha").startswith("http://127.0.0.1:")
    assert lab.http_status("alpha") == (503, "no current system")
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    good, sick = build(flake, "alpha", "alpha-sick")
    copy_to(lab, "alpha", good, sick)
    lab.ssh("alpha", [f"{good}/bin/switch-to-configuration", "test"])
    assert lab.http_status("alpha") == (200, "ok")
    lab.ssh("alpha", [f"{sick}/bin/switch-to-configuration", "test"])
    assert lab.state("alpha").current_system == sick
    assert lab.http_status("alpha") == (503, "sick")
    # The endpoint is part of the host: a reboot restarts it, on the booted system.
    lab.ssh("alpha", ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", good])
    lab.ssh("alpha", [f"{good}/bin/switch-to-configuration", "boot"])
    before = lab.state("alpha").boot_id
    lab.ssh("alpha", ["reboot"], check=False)
    assert wait_until(lambda: lab.state("alpha").boot_id != before and ssh_answers(lab, "alpha"))
    lab.wait_for_http("alpha")
    assert lab.state("alpha").current_system == good
    assert lab.http_status("alpha") == (200, "ok")


def test_detached_processes_survive_an_ssh_cut_off(lab: Lab) -> None:
    lab.up(["alpha"])
    # Both wait for a gate opened only once SSH is observed dead, so they
    # provably outlive the cut-off, however slow this machine is.
    gated = "while ! test -e /run/gate; do sleep 0.05; done; touch {}"
    lab.ssh("alpha", ["systemd-run", "--unit", "x", "--", "sh", "-c", gated.format("/run/x")])
    lab.ssh("alpha", ["sh", "-c", f"setsid sh -c '{gated.format('/run/y')}' </dev/null >/dev/null 2>&1 &"])
    lab.ssh("alpha", ["lab-sshd", "cut-off"], check=False)
    assert wait_until(lambda: not ssh_answers(lab, "alpha"))
    assert lab.inside("alpha", ["systemctl", "is-active", "x"], check=False).stdout.strip() == "active"
    lab.inside("alpha", ["touch", "/run/gate"])
    assert wait_until(lambda: lab.inside("alpha", ["test", "-e", "/run/x"], check=False).returncode == 0)
    assert wait_until(lambda: lab.inside("alpha", ["test", "-e", "/run/y"], check=False).returncode == 0)
    assert not ssh_answers(lab, "alpha")
    lab.inside("alpha", ["lab-sshd", "start"])
    lab.wait_for_ssh("alpha", timeout=20)


def test_fakes_refuse_to_signal_from_outside_the_hosts_pid_namespace(lab: Lab) -> None:
    lab.up(["alpha"])
    host = lab.host("alpha")
    outside_pid_namespace = subprocess.run(
        ["nsenter", "--target", str(lab.init_pid(host)), "--mount", "--", "lab-sshd", "cut-off"], capture_output=True, text=True
    )
    assert outside_pid_namespace.returncode != 0 and "refusing" in outside_pid_namespace.stderr
    assert ssh_answers(lab, "alpha")


def test_magic_rollback_from_a_detached_watchdog_reopens_ssh(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    good, cutoff = build(flake, "alpha", "alpha-cutoff")
    copy_to(lab, "alpha", good, cutoff)
    lab.ssh("alpha", [f"{good}/bin/switch-to-configuration", "test"])
    watchdog = f"while ! test -e /run/gate; do sleep 0.05; done; exec {good}/bin/switch-to-configuration test"
    lab.ssh("alpha", ["systemd-run", "--unit", "rollback", "--", "sh", "-c", watchdog])
    lab.ssh("alpha", [f"{cutoff}/bin/switch-to-configuration", "test"], check=False)
    assert wait_until(lambda: not ssh_answers(lab, "alpha"))
    assert lab.state("alpha").current_system == cutoff
    lab.inside("alpha", ["touch", "/run/gate"])
    assert wait_until(lambda: ssh_answers(lab, "alpha"))
    assert lab.state("alpha").current_system == good
    assert lab.inside("alpha", ["cat", "/run/nixfab-lab/units/rollback.status"]).stdout.strip() == "0"


def test_slow_variant_is_still_activating_while_it_waits(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"], slow_seconds=600)
    good, slow = build(flake, "alpha", "alpha-slow")
    assert build(write_fixture_flake(tmp_path / "other", ["alpha"], slow_seconds=5), "alpha") == [good]
    copy_to(lab, "alpha", good, slow)
    lab.ssh("alpha", [f"{good}/bin/switch-to-configuration", "test"])
    lab.ssh("alpha", ["systemd-run", "--unit", "slow", "--", f"{slow}/bin/switch-to-configuration", "test"])
    assert wait_until(lambda: "waiting 600s" in lab.inside("alpha", ["journalctl", "-u", "slow"]).stdout)
    assert lab.inside("alpha", ["systemctl", "is-active", "slow"], check=False).stdout.strip() == "active"
    assert lab.state("alpha").current_system == good
    lab.inside("alpha", ["systemctl", "stop", "slow"])
    assert wait_until(lambda: lab.inside("alpha", ["systemctl", "is-active", "slow"], check=False).returncode != 0)
    assert lab.state("alpha").current_system == good


def test_small_nix_and_boot_fill_up(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha", "beta"], nix_size_mib={"alpha": 32}, boot_size_mib={"alpha": 4})

    def total_kib(name: str, mount_point: str) -> int:
        return int(lab.ssh(name, ["df", "-Pk", mount_point]).stdout.splitlines()[1].split()[1])

    assert total_kib("alpha", "/nix") <= 32 * 1024
    assert total_kib("alpha", "/boot") <= 4 * 1024
    assert total_kib("beta", "/nix") > 32 * 1024
    for name in ("alpha", "beta"):
        assert lab.ssh(name, ["stat", "-c", "%a", "/run/lock"]).stdout.strip() == "1777"
    # A small system still fits, and the lab reads the tmpfs disks' state.
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    (small,) = build(flake, "alpha")
    copy_to(lab, "alpha", small)
    lab.ssh("alpha", ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", small])
    lab.ssh("alpha", [f"{small}/bin/switch-to-configuration", "switch"])
    state = lab.state("alpha")
    assert state.current_generation == 1 and state.current_system == small and state.boot_default_path == small
    assert lab.store_has("alpha", small) and len(lab.activations("alpha")) == 1
    big_flake = write_fixture_flake(tmp_path / "big", ["alpha"], payload_kib=64 * 1024)
    (big,) = build(big_flake, "alpha")
    failed = copy_to(lab, "alpha", big, check=False)
    assert failed.returncode != 0 and "No space left on device" in failed.stderr, failed.stderr
    # Nix may leave the partial path on disk, but never registers it as valid.
    assert lab.ssh("alpha", ["nix-store", "--check-validity", big], check=False).returncode != 0


def test_size_options_must_name_lab_hosts(lab: Lab) -> None:
    from deploy.errors import LabError

    with pytest.raises(LabError, match="not one of the lab hosts"):
        lab.up(["alpha"], nix_size_mib={"beta": 32})
    with pytest.raises(LabError, match="positive number of MiB"):
        lab.up(["alpha"], boot_size_mib={"alpha": 0})


# --- what a session costs: no start-up files of this machine, systemd-run as the real one ---------------------


def test_ssh_sessions_run_none_of_this_machines_start_up_files(lab: Lab) -> None:
    lab.up(["alpha"])
    # sshd runs each command through the login shell; bash (root's) reads /etc/bash.bashrc and ~/.bashrc even for -c.
    probe = 'echo "$HOME"; for f in .bashrc .bash_profile .bash_login .profile; do test -e "$HOME/$f" && echo "has $f"; done; cat /etc/bash.bashrc 2>/dev/null'
    machines_own = Path("/etc/bash.bashrc").read_text() if Path("/etc/bash.bashrc").exists() else None
    for user in ("root", "deploy"):
        home, *rest = lab.ssh("alpha", ["sh", "-c", probe], user=user).stdout.splitlines()
        assert [line for line in rest if line.startswith("has ")] == [], (user, home)
        sessions_own = "".join(line + "\n" for line in rest)
        assert machines_own is None or sessions_own != machines_own
    # root's home is the host's own directory, not this machine's /root.
    inside = lab.ssh("alpha", ["sh", "-c", 'stat -c %d:%i "$HOME"']).stdout.strip()
    assert inside != f"{os.stat('/root').st_dev}:{os.stat('/root').st_ino}"


def test_systemd_run_pipe_waits_for_its_unit_and_hands_it_the_callers_stdio(lab: Lab) -> None:
    lab.up(["alpha"])
    unit = ["sh", "-c", "sleep 0.5; echo out; echo err >&2; exit 3"]
    for wait in ([], ["--wait"]):
        piped = lab.ssh("alpha", ["systemd-run", "--pipe", "--quiet", *wait, "--unit", "piped", "--", *unit], check=False)
        assert (piped.returncode, piped.stdout, piped.stderr) == (3, "out\n", "err\n")
        assert lab.inside("alpha", ["systemctl", "is-active", "piped"], check=False).returncode != 0
        # With --pipe the output went to the caller, not to the journal.
        assert "out" not in lab.inside("alpha", ["journalctl", "-u", "piped"]).stdout
    # Without --pipe the output goes to the journal, and only --wait waits.
    journaled = lab.ssh("alpha", ["systemd-run", "--quiet", "--wait", "--unit", "journaled", "--", *unit], check=False)
    assert (journaled.returncode, journaled.stdout) == (3, "")
    assert "out" in lab.inside("alpha", ["journalctl", "-u", "journaled"]).stdout


def test_a_waiting_systemd_run_ends_when_its_unit_is_stopped(lab: Lab) -> None:
    # The fake's client waited for its unit's status file, which a unit stopped before its command ended never wrote:
    # it polled for ever, where real systemd-run says the unit failed.
    lab.up(["alpha"])
    client = subprocess.Popen(
        lab.ssh_argv("alpha", ["systemd-run", "--pipe", "--wait", "--quiet", "--unit", "stopped", "--", "sleep", "300"]),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert wait_until(lambda: lab.inside("alpha", ["systemctl", "is-active", "stopped"], check=False).returncode == 0)
        lab.inside("alpha", ["systemctl", "stop", "stopped"])
        assert client.wait(timeout=20) != 0
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait(timeout=30)


def test_the_fake_systemd_run_costs_no_less_cpu_than_its_floor_for_each_shape_a_deploy_uses(lab: Lab) -> None:
    """The floors are real systemd-run's cost (bench/systemd_run_cost.sh): a cheaper fake would flatter a tool that
    calls it twice per host against the hand steps, which never do. A Python fork-based fake cost 23 ms a call."""
    source = (LAB_FILES / "fakes" / "lab-fake").read_text()
    floors = re.search(r'SYSTEMD_RUN_CPU_SECONDS = \{"waits": ([0-9.]+), "returns at once": ([0-9.]+)\}', source)
    assert floors, "lab-fake names no floors"
    lab.up(["alpha"])
    calls = 3
    # The two shapes a deploy uses, from the builders it uses: the switch's call waits, the watchdog's does not.
    shapes = {
        "waits": [commands.systemd_run(["true"], unit=f"floor-switch-{n}", install_bootloader=False) for n in range(calls)],
        "returns at once": [detached(["true"], unit=f"floor-watchdog-{n}", use_systemd=True) for n in range(calls)],
    }
    for (shape, argvs), floor in zip(shapes.items(), map(float, floors.groups())):
        probe = (f"import resource, subprocess\nfor argv in {argvs!r}: subprocess.run(argv, check=True)\n"
                 "used = resource.getrusage(resource.RUSAGE_CHILDREN)\nprint(used.ru_utime + used.ru_stime)")
        spent = float(lab.inside("alpha", [sys.executable, "-IS", "-c", probe]).stdout)
        assert spent / calls >= floor, (shape, spent / calls, floor)


def test_hosts_listen_on_ports_no_other_socket_can_be_given(lab: Lab) -> None:
    # Ports picked by bind(0) and closed were handed again to the next host, or to any outgoing connection, before
    # the host had bound them: one host's sshd then answered on another's health port. The lab's ports are distinct
    # and below the kernel's ephemeral range, which no bind(0) and no connect() ever picks.
    lab.up(["alpha", "beta", "gamma"])
    ports = [port for host in lab.hosts() for port in (host.port, host.http_port)]
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert len(set(ports)) == len(ports) and all(1024 < port < ephemeral_start for port in ports), ports
    for host in lab.hosts():
        assert lab.http_status(host.name)[0] == 503  # its own endpoint: no system runs yet


def test_forgetting_generations_keeps_the_newest_and_the_one_the_profile_points_at(lab: Lab) -> None:
    """What the benchmark does between its cells, so that no round's activations list more generations than another's."""
    lab.up(["alpha"])
    profile = "/nix/var/nix/profiles/system"
    script = f"for n in 1 2 3 4 5 6; do echo $n > /tmp/lab-probe; nix-env -p {profile} --set $(nix-store --add /tmp/lab-probe); done"
    lab.ssh("alpha", ["sh", "-c", script])
    lab.ssh("alpha", ["nix-env", "-p", profile, "--switch-generation", "2"])
    lab.forget_generations("alpha", 3)
    assert [generation.number for generation in lab.state("alpha").generations] == [2, 4, 5, 6]
    assert lab.state("alpha").current_generation == 2
