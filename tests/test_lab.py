"""The lab itself: simulated hosts behave like machines, and leave nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deploy.lab import Lab


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
    assert sorted(lab.ssh("alpha", ["ls", "/run"]).stdout.split()) == ["nixfab-lab", "sshd", "systemd"]


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
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "deploy.lab_pytest", "-p", "no:cacheprovider", str(test_file)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert "1 failed" in result.stdout, result.stdout + result.stderr
    *pids, root = pid_file.read_text().split()
    assert pids and not any(alive(int(pid)) for pid in pids)
    assert subprocess.run(["pgrep", "-f", root], capture_output=True, text=True).stdout == ""
