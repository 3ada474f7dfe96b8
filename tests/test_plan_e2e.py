"""`inv plan`: what a deploy would do, read from the hosts, end to end against the lab.

Every test takes a snapshot of each host before the plan (profile
generations, the running and booted system, the boot entry, every store
path, every GC root, the activation log, staging directories) and checks that
the plan changed none of it; what the plan says is then checked against what
a real deploy does (the paths it copies, the units the lab's
switch-to-configuration names).
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.lab import HostState, Lab, set_fixture_kernel, set_fixture_revision, set_fixture_units, write_fixture_flake
from deploy.plan.deploy_plan import UnitChanges, parse_dry_activate, parse_facts
from lab_helpers import inv, ok, toplevel_of, write_inventory

# --- what the scripts print, read without a lab ------------------------------------------------------------


def test_dry_activate_lines_as_nixos_prints_them() -> None:
    lines = [
        "would stop the following units: old.service, gone.socket",
        "would NOT stop the following changed units: display-manager.service",
        "would activate the configuration...",
        "setting up /etc...",
        "would restart systemd",
        "would reload the following units: dbus.service",
        "would restart the following units: nginx.service, sshd.service",
        "would start the following units: new.service",
    ]
    assert parse_dry_activate(lines) == UnitChanges(
        stop=("old.service", "gone.socket"), start=("new.service",), restart=("nginx.service", "sshd.service"),
        reload=("dbus.service",), skip=("display-manager.service",), restart_systemd=True,
    )
    assert parse_dry_activate(["would activate the configuration..."]).empty


def test_facts_lines() -> None:
    facts = parse_facts(
        "profile\tsystem-3-link\nboot\t/nix/store/b\ncurrent\t/nix/store/c\nbooted\t\nbooted-kernel\t\ncurrent-kernel\t/k\n"
        "warning: a Nix warning, not a fact\nmissing\t/nix/store/x\nmissing\t/nix/store/y\nstaging\t/tmp/nixfab-plan.1\n"
    )
    assert (facts.profile, facts.boot_default, facts.current, facts.booted) == ("system-3-link", "/nix/store/b", "/nix/store/c", None)
    assert (facts.missing, facts.staging, facts.locked) == (("/nix/store/x", "/nix/store/y"), "/tmp/nixfab-plan.1", False)
    assert facts.current_kernel == ("/k", "", "")


# --- against the lab -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    state: HostState
    store: frozenset[str]
    gcroots: tuple[tuple[str, str], ...]
    activations: tuple[str, ...]


def snapshot(lab: Lab, name: str) -> Snapshot:
    nix = lab.disk_path(name, "/nix")
    roots = []
    for directory, _dirs, files in os.walk(nix / "var/nix/gcroots"):
        roots.append((directory, ""))
        roots += [(os.path.join(directory, file), os.readlink(os.path.join(directory, file))) for file in files]
    return Snapshot(lab.state(name), frozenset(os.listdir(nix / "store")), tuple(sorted(roots)), tuple(lab.activations(name)))


def staging_directories() -> list[str]:
    # Lab hosts share this machine's /tmp, where a plan stages.
    return sorted(path.name for path in Path("/tmp").glob("nixfab-plan.*"))


def closure(path: str) -> set[str]:
    listed = subprocess.run(["nix-store", "--query", "--requisites", path], capture_output=True, text=True, check=True)
    return {Path(item).name for item in listed.stdout.split()}


def nar_size(paths: list[str]) -> int:
    if not paths:
        return 0
    sizes = subprocess.run(["nix-store", "--query", "--size", *paths], capture_output=True, text=True, check=True).stdout.split()
    return sum(int(size) for size in sizes)


@dataclass
class Site:
    lab: Lab
    flake: Path
    inventory: Path

    def run(self, task: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - as subprocess calls it
        return inv(task, *args, "--flake", str(self.flake), "--inventory", str(self.inventory), input=input)

    def plan(self, *args: str, input: str | None = None) -> dict[str, dict]:  # type: ignore[type-arg]  # noqa: A002
        result = self.run("plan", *args, "--json", input=input)
        document = json.loads(result.stdout)
        assert document["exit_code"] == result.returncode, result.stderr
        return {host["host"]: host for host in document["hosts"]}


HOSTS = ["alpha", "beta", "gamma"]


@pytest.fixture
def site(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "state"))
    lab.up(HOSTS, reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", HOSTS)
    inventory = write_inventory(
        lab, tmp_path / "hosts.yaml",
        "  alpha: {}\n  beta: {}\n  gamma: {}\n  ghost: { ssh: 'root@127.0.0.1:1', attr: alpha }\n"
        "  sudoer: { ssh: 'deploy@beta', attr: beta }\n",
    )
    return Site(lab, flake, inventory)


WEB = "[Service]\nExecStart=/bin/lab-web\n"
NGINX = "[Service]\nExecStart=/bin/nginx\nX-ReloadIfChanged=true\n"


def test_plan_says_what_a_switch_would_do_and_changes_nothing(site: Site) -> None:
    lab = site.lab
    set_fixture_units(site.flake, {"sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n", "nginx.service": NGINX, "old.service": WEB})
    ok(site.run("switch-push", "--host", "alpha,beta,gamma", "--skip-checks"))
    first = {name: toplevel_of(site.flake, name) for name in HOSTS}
    # alpha: units change, and so does its kernel; beta: a new revision, same units and kernel; gamma: nothing.
    set_fixture_units(site.flake, {
        "sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D -e\n", "nginx.service": NGINX + "# new\n", "web.service": WEB,
    }, host="alpha")
    set_fixture_kernel(site.flake, "6.7.lab", host="alpha")
    set_fixture_revision(site.flake, "2", host="beta")
    new = {name: toplevel_of(site.flake, name) for name in HOSTS}
    assert new["gamma"] == first["gamma"] and new["alpha"] != first["alpha"] and new["beta"] != first["beta"]
    before = {name: snapshot(lab, name) for name in HOSTS}

    plans = site.plan("--host", "alpha,beta,gamma")

    assert {name: snapshot(lab, name) for name in HOSTS} == before
    assert staging_directories() == []
    alpha, beta, gamma = plans["alpha"], plans["beta"], plans["gamma"]
    for name, plan in plans.items():
        assert (plan["result"], plan["system"], plan["current_system"], plan["generation"]) == ("ok", new[name], first[name], 1)
        # What it would copy is exactly what the host lacks of the new closure, and its NAR size.
        lacks = closure(new[name]) - before[name].store
        assert {Path(path).name for path in plan["copy"]["paths"]} == lacks and plan["copy"]["count"] == len(lacks)
        assert plan["copy"]["bytes"] == nar_size(plan["copy"]["paths"])
    assert (alpha["up_to_date"], alpha["boot_default_changes"], alpha["running_system_changes"]) == (False, True, True)
    assert alpha["units"] == {
        "stop": ["old.service"], "start": ["web.service"], "restart": ["sshd.service"], "reload": ["nginx.service"], "skip": [],
        "restart_systemd": False,
    }
    assert (alpha["reboot_needed"], alpha["reboot_because"]) == (True, ["kernel", "initrd", "kernel-modules"])
    assert (beta["up_to_date"], beta["running_system_changes"], beta["reboot_needed"]) == (False, True, False)
    assert beta["units"] == {"stop": [], "start": [], "restart": [], "reload": [], "skip": [], "restart_systemd": False}
    assert (gamma["up_to_date"], gamma["copy"]["count"], gamma["units"], gamma["reboot_needed"]) == (True, 0, None, False)

    # The table says the same.
    table = ok(site.run("plan", "--host", "alpha,beta,gamma")).stdout.splitlines()
    assert table[0].split()[:3] == ["host", "plan", "copy"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert "restart sshd.service" in rows["alpha"] and "yes (kernel, initrd, kernel-modules)" in rows["alpha"]
    assert "gen 1 -> new" in rows["beta"] and "none" in rows["beta"]
    assert rows["gamma"].split()[1:4] == ["up", "to", "date"]
    assert {name: snapshot(lab, name) for name in HOSTS} == before

    # A real deploy copies exactly the paths the plan named, and its switch restarts what the plan said.
    deployed = ok(site.run("switch-push", "alpha", "--skip-checks"))
    assert lab.state("alpha").current_system == new["alpha"]
    assert snapshot(lab, "alpha").store - before["alpha"].store == {Path(path).name for path in alpha["copy"]["paths"]}
    assert deployed.returncode == 0


def test_a_host_that_has_the_system_is_dry_activated_without_copying(site: Site) -> None:
    """After `boot`, the profile is the new system and the running one the old: nothing to copy, units still change."""
    lab = site.lab
    ok(site.run("switch-push", "alpha", "--skip-checks"))
    set_fixture_units(site.flake, {"sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n", "web.service": WEB}, host="alpha")
    ok(site.run("boot", "alpha", "--skip-checks"))
    before = snapshot(lab, "alpha")
    plan = site.plan("alpha")["alpha"]
    assert snapshot(lab, "alpha") == before
    assert (plan["copy"]["count"], plan["boot_default_changes"], plan["running_system_changes"], plan["generation"]) == (0, False, True, 2)
    assert (plan["units"]["start"], plan["units"]["stop"], plan["units"]["restart"]) == (["web.service"], [], ["sshd.service"])
    # --action boot: the boot default is already this system, so a boot deploy would have nothing to do.
    booting = site.plan("alpha", "--action", "boot")["alpha"]
    assert (booting["up_to_date"], booting["units"], booting["running_system_changes"]) == (True, None, False)
    # --action test on a host that never ran a system: everything to copy, every unit to start; still nothing changes.
    lab.ssh("gamma", ["nix-store", "--gc", "--print-roots"])  # the lab makes a host's store on first use; a real host has one
    fresh = snapshot(lab, "gamma")
    tested = site.plan("gamma", "--action", "test")["gamma"]
    assert snapshot(lab, "gamma") == fresh and staging_directories() == []
    assert (tested["current_system"], tested["generation"], tested["boot_default_changes"], tested["reboot_needed"]) == (None, None, False, None)
    assert tested["units"]["start"] == ["sshd.service"] and tested["copy"]["count"] == len(closure(tested["system"]))


def test_a_sudo_login_stages_and_cleans_up_too(site: Site) -> None:
    """As deploy@beta with sudo: the staged paths must not stay alive through sudo's SUDO_COMMAND, which the GC reads."""
    lab = site.lab
    ok(site.run("switch-push", "beta", "--skip-checks"))
    set_fixture_units(site.flake, {"sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n", "web.service": WEB}, host="beta")
    before = snapshot(lab, "beta")
    plan = site.plan("sudoer", input=lab.sudo_password + "\n")["sudoer"]
    after = snapshot(lab, "beta")
    assert (after.state, after.store, after.activations) == (before.state, before.store, before.activations)
    # Nix files a user's per-user roots directory the first time that user uses the store; nothing else may appear.
    per_user = (str(lab.disk_path("beta", "/nix") / "var/nix/gcroots/per-user/deploy"), "")
    assert set(after.gcroots) - set(before.gcroots) <= {per_user} and set(before.gcroots) <= set(after.gcroots)
    assert plan["units"]["start"] == ["web.service"] and plan["copy"]["count"] > 0 and plan["warnings"] == []
    assert staging_directories() == []


def test_an_unreachable_host_a_locked_host_and_a_failed_build_are_rows(site: Site, tmp_path: Path) -> None:
    lab = site.lab
    ok(site.run("switch-push", "--host", "alpha,beta", "--skip-checks"))
    set_fixture_revision(site.flake, "2")
    # Another deploy holds beta's lock: nothing is staged there, and the plan says why the units are unknown.
    lab.inside("beta", ["mkdir", "-p", "/run/nixfab/deploy.engine.lock"])
    before = {name: snapshot(lab, name) for name in ("alpha", "beta")}
    result = site.run("plan", "--on", "alpha,beta", "--host", "ghost", "--json")
    assert result.returncode == 4, result.stderr
    plans = {host["host"]: host for host in json.loads(result.stdout)["hosts"]}
    assert {name: snapshot(lab, name) for name in ("alpha", "beta")} == before
    assert plans["alpha"]["units"] is not None and plans["alpha"]["result"] == "ok"
    assert plans["beta"]["units"] is None and "another deploy holds the host's lock" in plans["beta"]["units_note"]
    assert plans["beta"]["copy"]["count"] > 0
    assert (plans["ghost"]["result"], plans["ghost"]["exit_code"]) == ("failed", 4) and "cannot reach" in plans["ghost"]["error"]
    assert "up_to_date" not in plans["ghost"]
    # A flake that does not build: exit 3, and no host is asked anything.
    (site.flake / "flake.nix").write_text("{ outputs = { self }: { nixosConfigurations = throw \"broken\"; }; }\n")
    logins = lab.accepted_ssh_logins("alpha")
    broken = site.run("plan", "alpha")
    assert broken.returncode == 3 and broken.stderr.splitlines()[-1].startswith("nixfab: error: ")
    assert lab.accepted_ssh_logins("alpha") == logins
