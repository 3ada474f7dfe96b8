"""The operations (tasks that are not deploys), status and the CLI's refusals, end to end through `inv` against the lab.

Every test runs the real `inv` as a subprocess and asserts on what the lab
hosts' disks and memory say afterwards (profiles, boot entries, the running
system, the activation log), never only on what nixfab printed.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.lab import Lab, nix_system, set_fixture_revision, write_fixture_flake
from lab_helpers import (
    BIN,
    REPO,
    git,
    inv,
    locked_input,
    ok,
    toplevel_of,
    write_input_flake,
    write_inventory,
    write_two_input_flake,
)

pytestmark = pytest.mark.usefixtures("state_directory")



# --- helpers -----------------------------------------------------------------








def refused(result: subprocess.CompletedProcess[str], code: int, *, only_line: bool = False) -> str:
    """The one-line error of a failed run; only_line: nothing else was printed (refused before any work)."""
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("nixfab: error: "), result.stderr
    if only_line:
        assert result.stderr.count("\n") == 1, result.stderr
    return last






def host_error(result: subprocess.CompletedProcess[str], code: int, host: str) -> str:
    """A deploy's failure: the host's error, said once under its name; the run's last line gives the totals."""
    last = refused(result, code)
    assert re.match(rf"nixfab: error: .*\b1 (failed|rolled back) \({host}\) in ", last), result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith(f"{host} | error: ")]
    assert len(said) == 1, result.stderr
    return said[0]


@dataclass
class Site:
    lab: Lab
    flake: Path
    inventory: Path
    tmp: Path
    started: float  # time.monotonic() before its hosts booted

    def deploy(self, task: str, host: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return inv(task, host, "--flake", str(self.flake), "--inventory", str(self.inventory), "--skip-checks", *args, **kwargs)

    def task(self, task: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return inv(task, *args, "--inventory", str(self.inventory), **kwargs)

    def path(self, revision: str, attr: str = "alpha") -> str:
        set_fixture_revision(self.flake, revision)
        return toplevel_of(self.flake, attr)


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Site:
    started = time.monotonic()
    lab.up(["alpha", "beta"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: {}\n  beta: {}\n")
    return Site(lab, flake, inventory, tmp_path, started)


# --- A: operations ------------------------------------------------------------


def test_check_passes_on_the_fixture_and_a_syntax_error_is_exit_3(tmp_path: Path) -> None:
    good = write_fixture_flake(tmp_path / "good", ["alpha"])
    assert "nix flake check passed" in ok(inv("check", "--flake", f"path:{good}")).stderr
    bad = write_fixture_flake(tmp_path / "bad", ["alpha"])
    (bad / "flake.nix").write_text("{ outputs = { self }: { ; }\n")
    message = refused(inv("check", "--flake", f"path:{bad}"), 3)
    assert "nix flake check" in message and "-- --show-trace" in message


def test_generations_with_revisions_switch_generation_rollback_and_history(site: Site, state_directory: Path) -> None:
    lab = site.lab
    git(site.flake, "init", "-q")
    git(site.flake, "add", "-A")
    git(site.flake, "commit", "-q", "-m", "one")
    commit = git(site.flake, "rev-parse", "HEAD")
    first = toplevel_of(site.flake, "alpha")
    ok(site.deploy("switch-push", "alpha"))
    second = site.path("2")  # uncommitted: the second generation comes from a dirty tree
    ok(site.deploy("switch-push", "alpha"))
    ok(site.deploy("switch-push", "beta"))

    table = ok(site.task("generations", "alpha")).stdout.splitlines()
    assert table[0].split()[:2] == ["GEN", "DATE"]
    one, two = table[1], table[2]
    assert one.split()[0] == "1" and commit[:12] in one and "-dirty" not in one and one.endswith(first)
    assert two.split()[:2] == ["*", "2"] and f"{commit[:12]}-dirty" in two and "current,running" in two and two.endswith(second)
    listed = json.loads(ok(site.task("generations", "--host", "alpha", "--json")).stdout)
    assert [(g["number"], g["current"], g["running"], g["path"], g["revision"], g["nixos_version"]) for g in listed] == [
        (1, False, False, first, commit, "24.11.lab.1"),
        (2, True, True, second, f"{commit}-dirty", "24.11.lab.2"),
    ]

    ok(site.task("switch-generation", "alpha", "1"))
    state = lab.state("alpha")
    assert (state.current_generation, state.current_system, state.boot_default_path) == (1, first, first)
    assert [g.number for g in state.generations] == [1, 2]
    activations = len(lab.activations("alpha"))
    message = refused(site.task("switch-generation", "alpha", "7"), 2)
    assert "no system generation 7; it has: 1, 2" in message
    refused(site.task("switch-generation", "alpha", "x"), 2, only_line=True)
    refused(site.task("switch-generation", "alpha", "--generation", "-1"), 2, only_line=True)
    assert lab.state("alpha") == state and len(lab.activations("alpha")) == activations

    ok(site.task("switch-generation", "--host", "alpha", "--generation", "2"))
    assert lab.state("alpha").current_system == second
    ok(site.task("rollback", "alpha"))
    state = lab.state("alpha")
    assert (state.current_generation, state.current_system, state.boot_default) == (1, first, "nixos-generation-1.conf")

    records = json.loads(ok(inv("history", "--json")).stdout)
    alpha = [r for r in records if r["host"] == "alpha"]
    assert [(r["action"], r["result"], r["store_path"]) for r in alpha] == [
        ("switch", "ok", first), ("switch", "ok", second), ("switch-generation", "ok", first),
        ("switch-generation", "ok", second), ("rollback", "ok", first),
    ]
    assert all(isinstance(r["duration_seconds"], (int, float)) and r["duration_seconds"] >= 0 for r in records)
    assert alpha[0]["revision"] == commit and alpha[0]["dirty"] is False and alpha[1]["dirty"] is True
    assert [r["host"] for r in json.loads(ok(inv("history", "--host", "beta", "--json")).stdout)] == ["beta"]
    assert len(json.loads(ok(inv("history", "alpha", "--json")).stdout)) == 5
    text = ok(inv("history", "--host", "alpha")).stdout
    assert "rollback" in text and "beta" not in text
    assert (state_directory / "history.sqlite").exists()


def test_diff_shows_changes_and_activates_nothing_then_diff_and_ask(site: Site) -> None:
    lab = site.lab
    ok(site.deploy("switch-push", "alpha"))
    first = lab.state("alpha")
    second = site.path("2")
    activations = lab.activations("alpha")

    shown = ok(site.deploy("diff", "alpha")).stdout  # the task's result (tests/test_cli_e2e.py: stdout, not stderr)
    assert f"alpha: {first.current_system} -> {second}" in shown
    assert "nixos-system-alpha-lab.1" in shown and "nixos-system-alpha-lab.2" in shown
    assert lab.activations("alpha") == activations and lab.state("alpha") == first
    assert lab.store_has("alpha", second)  # copied, so the diff could run there

    result = ok(site.deploy("switch-push", "alpha", "--diff"))
    assert f"alpha: {first.current_system} -> {second}" in result.stderr
    assert lab.state("alpha").current_system == second and lab.state("alpha").current_generation == 2

    third = site.path("3")
    before = lab.state("alpha")
    activations = lab.activations("alpha")
    no = site.deploy("switch-push", "alpha", "--ask", input="n\n")
    assert no.returncode == 0 and "Traceback" not in no.stderr  # a no is "skipped", not a failure
    assert f"activate {third}?" in no.stderr and "skipped: not activated" in no.stderr
    assert lab.activations("alpha") == activations and lab.state("alpha") == before
    ok(site.deploy("switch-push", "alpha", "--ask", input="y\n"))
    after = lab.state("alpha")
    assert after.current_system == third and after.current_generation == 3 and len(lab.activations("alpha")) == len(activations) + 1


@pytest.fixture
def update_flake(tmp_path: Path) -> Path:
    return write_two_input_flake(tmp_path)


def test_update_all_inputs_one_input_and_an_unknown_one(update_flake: Path) -> None:
    main = update_flake
    one, two = locked_input(main, "one")["narHash"], locked_input(main, "two")["narHash"]
    write_input_flake(main.parent / "one", "2")
    write_input_flake(main.parent / "two", "2")
    ok(inv("update", "--flake", f"path:{main}", "--input", "one"))
    assert locked_input(main, "one")["narHash"] != one and locked_input(main, "two")["narHash"] == two
    lock = (main / "flake.lock").read_text()
    message = refused(inv("update", "--flake", f"path:{main}", "--input", "nixpkgs"), 2)
    assert "no input 'nixpkgs'; its inputs are: one, two" in message
    assert (main / "flake.lock").read_text() == lock
    ok(inv("update", "--flake", str(main)))
    assert locked_input(main, "two")["narHash"] != two


def test_boot_test_and_dry_activate(site: Site) -> None:
    lab = site.lab
    ok(site.deploy("switch-push", "alpha"))
    first = lab.state("alpha")

    second = site.path("2")
    ok(site.deploy("boot", "alpha"))
    state = lab.state("alpha")
    assert state.current_generation == 2 and state.boot_default_path == second
    assert state.current_system == first.current_system  # the running system waits for a reboot

    third = site.path("3")
    ok(site.deploy("test", "alpha"))
    state = lab.state("alpha")
    assert state.current_system == third
    assert state.current_generation == 2 and state.boot_default_path == second and len(state.generations) == 2

    site.path("4")
    activations = lab.activations("alpha")
    result = ok(site.deploy("dry-activate", "alpha"))
    assert "would activate" in result.stderr
    assert lab.state("alpha") == state and lab.activations("alpha") == activations


def test_switch_push_without_a_host_inside_a_lab_host_deploys_it_locally(site: Site) -> None:
    lab = site.lab
    assert lab.ssh("alpha", ["hostname"]).stdout.strip() == "alpha"
    state_dir = site.tmp / "alpha-state"
    command = ["env", f"NIXFAB_STATE_DIR={state_dir}", str(BIN / "inv"), "--search-root", str(REPO),
               "switch-push", "--flake", str(site.flake), "--skip-checks"]
    result = lab.ssh("alpha", ["sh", "-c", f"cd {shlex.quote(str(site.tmp))} && exec \"$@\"", "sh", *command], check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "nix-store --import" not in result.stderr and "copy --to" not in result.stderr and "[alpha]" not in result.stderr
    state = lab.state("alpha")
    assert state.current_generation == 1 and state.current_system == toplevel_of(site.flake, "alpha")
    assert lab.state("beta").generations == ()
    assert (state_dir / "history.sqlite").exists()


def test_home_manager_tasks_against_a_lab_host(site: Site) -> None:
    lab = site.lab
    flake = f"path:{site.flake}"
    built = ok(inv("hm.build", "alpha", "--user", "deploy", "--flake", flake, cwd=site.tmp)).stdout.strip().splitlines()[-1]
    assert os.readlink(site.tmp / "result") == built and not lab.store_has("alpha", built)

    ok(inv("hm.push", "alpha", "--user", "deploy", "--flake", flake, "--inventory", str(site.inventory)))
    assert lab.store_has("alpha", built)
    linked = lab.inside("alpha", ["readlink", "/home/deploy/.nixfab-lab-home"]).stdout.strip()
    assert linked == f"{built}/home-files/.nixfab-lab-home"
    assert lab.inside("alpha", ["cat", "/home/deploy/.nixfab-lab-home"]).stdout.strip() == "1"

    set_fixture_revision(site.flake, "hm-2")
    ok(inv("hm.pull", "--host", "alpha", "--user", "deploy", "--flake", flake, "--inventory", str(site.inventory)))
    assert lab.inside("alpha", ["cat", "/home/deploy/.nixfab-lab-home"]).stdout.strip() == "hm-2"
    assert lab.state("alpha").generations == ()  # homes only; the system profile is untouched


def test_low_disk_space_is_a_warning_and_the_deploy_goes_on(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIXFAB_MIN_FREE_NIX_MIB", str(10**9))
    result = ok(site.deploy("switch-push", "alpha"))
    assert any(line.startswith("alpha | warning: alpha: only ") and " free on /nix " in line for line in result.stderr.splitlines()), result.stderr
    assert "nixfab: error" not in result.stderr
    assert site.lab.state("alpha").current_generation == 1


def test_a_full_nix_store_is_exit_13_and_leaves_the_host_alone(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"], nix_size_mib={"alpha": 24})
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"], payload_kib=48 * 1024)
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: {}\n")
    result = inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory), "--skip-checks")
    assert "out of disk space" in host_error(result, 13, "alpha")
    state = lab.state("alpha")
    assert state.generations == () and state.current_system is None and state.current_generation is None


def store_entries(lab: Lab, name: str) -> tuple[list[str], list[str]]:
    """What the host's /nix/store holds, and what its garbage collector would delete, less the lock files Nix leaves."""
    listing = lab.inside(name, ["ls", "/nix/store"]).stdout.split()
    dead = lab.inside(name, ["nix-store", "--gc", "--print-dead"]).stdout.split()
    return sorted(e for e in listing if not e.endswith(".lock")), sorted(d for d in dead if not d.endswith(".lock"))


def test_a_full_nix_store_keeps_nothing_of_the_failed_import(lab: Lab, tmp_path: Path) -> None:
    # A failed import used to leave its paths behind: the small ones whole and unreferenced, the big one half-written,
    # and /nix as full as the failure left it.
    lab.up(["alpha"], nix_size_mib={"alpha": 24})
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: {}\n")
    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory), "--skip-checks"))
    first, before = lab.state("alpha"), store_entries(lab, "alpha")
    settings = json.loads((flake / "lab.json").read_text())
    (flake / "lab.json").write_text(json.dumps({**settings, "revision": "2", "payloadKiB": 48 * 1024}))
    bigger = toplevel_of(flake, "alpha")

    result = inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory), "--skip-checks")
    message = host_error(result, 13, "alpha")
    assert "out of disk space" in message and "nothing it imported was kept" in message, message
    assert store_entries(lab, "alpha") == before
    assert not lab.store_has("alpha", bigger)
    assert lab.state("alpha") == first


def test_a_failed_activation_shows_the_switch_s_own_last_lines(site: Site) -> None:
    """Under systemd-run --pipe, as nixos-rebuild runs it, the switch's output comes back over SSH: it says why."""
    ok(site.deploy("switch-push", "alpha"))
    good = site.lab.state("alpha")
    broken = write_inventory(site.lab, site.tmp / "broken.yaml", "  alpha: { attr: alpha-broken }\n")
    result = inv("switch-push", "alpha", "--flake", str(site.flake), "--inventory", str(broken), "--skip-checks")
    assert "rolled back" in host_error(result, 6, "alpha")
    assert "switch-to-configuration switch (last lines):" in result.stderr and "broken-lab.service" in result.stderr
    assert site.lab.state("alpha") == good


# --- B: status, hosts, refusals ----------------------------------------------


def status_of(site: Site, inventory: Path, *args: str) -> dict[str, dict[str, object]]:
    rows = json.loads(ok(inv("status", *args, "--json", "--flake", str(site.flake), "--inventory", str(inventory))).stdout)
    return {row["host"]: row for row in rows}


def test_status_reachable_generation_drift_reboot_pending_and_an_unreachable_row(site: Site) -> None:
    ghost = write_inventory(
        site.lab, site.tmp / "ghost.yaml", "  alpha: {}\n  beta: {}\n  ghost: { ssh: 'root@127.0.0.1:1' }\n"
    )
    ok(site.deploy("switch-push", "alpha"))
    rows = status_of(site, ghost, "--all")
    assert set(rows) == {"alpha", "beta", "ghost"}
    alpha = rows["alpha"]
    # A lab host deployed from nothing was never booted into a system: whether a reboot is pending is unknown
    # (tests/test_cli_e2e.py has booted hosts, same and other kernels).
    assert (alpha["reachable"], alpha["generation"], alpha["drift"], alpha["reboot_pending"]) == (True, 1, False, None)
    assert alpha["current_system"] == site.lab.state("alpha").current_system
    # The host booted when the lab started it, this machine hours before: its uptime is the host's own.
    assert 0 < alpha["uptime_seconds"] < time.monotonic() - site.started
    assert (rows["beta"]["reachable"], rows["beta"]["generation"], rows["beta"]["current_system"]) == (True, None, None)
    assert rows["ghost"]["reachable"] is False and rows["ghost"]["error"]

    table = ok(inv("status", "--all", "--flake", str(site.flake), "--inventory", str(ghost))).stdout
    assert [line.split()[:2] for line in table.splitlines()[1:]] == [["alpha", "up"], ["beta", "up"], ["ghost", "unreachable"]]
    assert "in sync" in table.splitlines()[1]

    site.path("2")
    assert status_of(site, ghost, "alpha")["alpha"]["drift"] is True
    ok(site.deploy("boot", "alpha"))
    alpha = status_of(site, ghost, "--host", "alpha")["alpha"]
    assert alpha["generation"] == 2 and alpha["reboot_pending"] is None
    assert site.lab.state("alpha").current_generation == 2


def test_status_evaluates_only_the_systems_never_built_from_this_locked_flake(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A system built before from the same locked flake is taken from the build's memory: on a flake that takes a
    minute to evaluate, status of a fleet deployed from it answers at once, and says the same."""
    wrapper, calls = site.tmp / "bin", site.tmp / "nix-calls"
    wrapper.mkdir()
    real_nix = subprocess.run(["sh", "-c", "command -v nix"], capture_output=True, text=True, check=True).stdout.strip()
    (wrapper / "nix").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(calls))}\nexec {shlex.quote(real_nix)} "$@"\n')
    (wrapper / "nix").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper}:{os.environ['PATH']}")  # for the deploy as for status: one nix identity
    ok(site.deploy("switch-push", "alpha"))

    calls.unlink()
    rows = status_of(site, site.inventory, "--all")
    assert (rows["alpha"]["drift"], rows["beta"]["drift"]) == (False, None)  # beta runs nothing yet
    assert rows["alpha"]["flake_system"] == site.lab.state("alpha").current_system
    assert rows["beta"]["flake_system"] == toplevel_of(site.flake, "beta")
    evaluations = [call for call in calls.read_text().splitlines() if " eval --json " in call]  # toplevel_of's is --raw
    assert len(evaluations) == 1 and '"beta"' in evaluations[0] and '"alpha"' not in evaluations[0]

    site.path("2")  # another locked flake: nothing of it was built
    calls.unlink()
    assert status_of(site, site.inventory, "alpha")["alpha"]["drift"] is True
    assert any(" eval --json " in call and '"alpha"' in call for call in calls.read_text().splitlines())


def test_hosts_flags_a_mismatch_between_systems_and_hosts_yaml(tmp_path: Path) -> None:
    flake = tmp_path / "homelab"
    for name, meta in (("alpha", '{ system = "x86_64-linux"; tags = [ "web" ]; }'), ("beta", '{ system = "x86_64-linux"; }')):
        (flake / "systems" / name).mkdir(parents=True)
        (flake / "systems" / name / "default.nix").write_text("{ ... }: { }\n")
        (flake / "systems" / name / "meta.nix").write_text(meta + "\n")
    (flake / "hosts.yaml").write_text("hosts:\n  alpha: { tags: [db] }\n  gamma: {}\n")
    listing = ok(inv("hosts", "--flake", str(flake), "--inventory", str(flake / "hosts.yaml"))).stdout
    assert "tags differ: hosts.yaml [db], meta.nix [web]" in listing
    assert "no systems/gamma/" in listing
    rows = {row["name"]: row for row in json.loads(ok(inv("hosts", "--json", "--flake", str(flake), "--inventory", str(flake / "hosts.yaml"))).stdout)}
    assert (rows["alpha"]["source"], rows["beta"]["source"], rows["gamma"]["source"]) == ("both", "systems/", "hosts.yaml")
    assert rows["beta"]["problems"] == []


def test_unknown_unreachable_refusing_and_wrong_sudo_password(site: Site) -> None:
    lab = site.lab
    message = refused(site.deploy("switch-push", "alpah"), 2, only_line=True)
    assert "did you mean 'alpha'" in message
    refused(site.task("generations", "--host", "betta"), 2, only_line=True)
    boot_id = lab.state("beta").boot_id
    assert "--delete-older-than" in refused(site.task("reset", "beta", "--delete-older-than", "2weeks"), 2, only_line=True)
    refused(site.deploy("switch-push-reset", "beta", "--delete-older-than", "-1d"), 2, only_line=True)
    assert lab.state("beta").boot_id == boot_id and lab.state("beta").generations == ()

    others = write_inventory(
        lab, site.tmp / "others.yaml",
        "  alpha: {}\n  ghost: { ssh: 'root@127.0.0.1:1', attr: alpha }\n  stranger: { ssh: 'nosuchuser@alpha', attr: alpha, sudo: false }\n"
        "  sudoer: { ssh: 'deploy@alpha' }\n",
    )
    unreachable = inv("switch-push", "ghost", "--flake", str(site.flake), "--inventory", str(others), "--skip-checks")
    assert "cannot reach root@127.0.0.1:1" in host_error(unreachable, 4, "ghost")
    assert "cannot reach root@127.0.0.1:1" in refused(inv("generations", "ghost", "--inventory", str(others)), 4)
    assert "refused our SSH key" in refused(inv("generations", "stranger", "--inventory", str(others)), 11)
    login = inv("switch-push", "stranger", "--flake", str(site.flake), "--inventory", str(others), "--skip-checks")
    assert "refused our SSH key" in host_error(login, 11, "stranger")

    ok(site.deploy("switch-push", "alpha"))
    site.path("2")
    ok(site.deploy("switch-push", "alpha"))
    before = lab.state("alpha")
    wrong = inv("rollback", "sudoer", "--inventory", str(others), input="wrong-password\n")
    assert "sudo refused the password" in refused(wrong, 8)
    assert lab.state("alpha") == before and before.current_generation == 2


# --- C: hostile values through every task ------------------------------------


def payloads(marks: Path, case: str) -> list[str]:
    """Values that run `touch marks/<case>-N` wherever one is pasted into a shell line, quoted or not."""
    mark = f"{marks}/{case}"
    return [
        # Command substitution, backticks, a command separator: unquoted or "double-quoted".
        f"x$(touch {mark}-1)`touch {mark}-2`;touch {mark}-3",
        # An option for ssh or nix, spaces, breaking out of '...' and "...", backticks again, and a new line.
        f"-oProxyCommand=touch {mark}-4 ';touch {mark}-5;' \"$(touch {mark}-6)`touch {mark}-8`\"\ntouch {mark}-7",
    ]


@dataclass(frozen=True)
class Case:
    name: str
    slot: str  # the option that carries the value; "yaml" for a hosts.yaml value
    argv: tuple[str, ...]
    inside_alpha: bool = False  # tasks that act on "this machine" run in a lab host, never here


ACCEPTED_AS_IS = ("extra", "log_dir")
# Tasks that run no Nix command, so Nix options after `--` go nowhere.
IGNORE_NIX_OPTIONS = ("reset", "ssh-wait", "generations", "switch-generation", "rollback", "history", "hosts")
HOST_OPTIONS = ("machine", "host", "tag", "flake", "inventory", "build_on", "action", "delete_older_than", "input", "generation", "user", "log_dir")


def task_options() -> dict[str, set[str]]:
    sys.path.insert(0, str(REPO))
    import tasks

    options = {}
    for name in tasks.ns.task_names:
        if name.startswith("lab.") or name == "demo":
            continue
        options[name] = {argument.name for argument in tasks.ns[name].get_arguments()}
    return options


def baseline(task: str, site: Site, update_flake: Path) -> tuple[list[str], bool]:
    """A valid command line for the task, and whether it must run inside alpha (it acts on this machine)."""
    flake, inventory = str(site.flake), str(site.inventory)
    if task in ("switch", "hm.switch"):
        rest = ["--flake", flake] + (["--skip-checks"] if task == "switch" else ["--user", "deploy"])
        return [task, *(["alpha"] if task == "switch" else []), *rest], True
    if task == "check":
        return [task, "--flake", flake], False
    if task == "update":
        return [task, "--flake", str(update_flake), "--input", "one"], False
    if task == "hosts":
        return [task, "--flake", flake, "--inventory", inventory], False
    if task == "history":
        return [task, "alpha", "--flake", flake], False
    if task == "status":
        return [task, "alpha", "--flake", flake, "--inventory", inventory], False
    if task == "reset":
        return [task, "beta", "--inventory", inventory, "--reboot-timeout", "60"], False
    if task == "ssh-wait":
        return [task, "alpha", "true", "--inventory", inventory, "--timeout", "10"], False
    if task == "switch-generation":
        return [task, "alpha", "--generation", "1", "--inventory", inventory], False
    if task in ("generations", "rollback"):
        return [task, "alpha", "--inventory", inventory], False
    if task.startswith("hm."):
        return [task, "alpha", "--user", "deploy", "--flake", flake, "--inventory", inventory], False
    if task in ("exec", "plan"):
        return [task, "alpha", "--flake", flake, "--inventory", inventory], False
    return [task, "alpha", "--flake", flake, "--inventory", inventory, "--skip-checks"], False


def with_value(argv: list[str], option: str, value: str) -> list[str] | None:
    """argv with one option set to value; None when the task has no such slot."""
    flag = "--" + option.replace("_", "-")
    if option == "machine":
        if len(argv) < 2 or argv[1] != "alpha":
            return None
        return [argv[0], value, *argv[2:]]
    if option == "host":
        if len(argv) < 2 or argv[1] != "alpha":
            return None
        return [argv[0], f"--host={value}", *argv[2:]]
    out, replaced = [], False
    iterator = iter(argv)
    for item in iterator:
        if item == flag:
            out.append(f"{flag}={value}")
            next(iterator)
            replaced = True
        else:
            out.append(item)
    return out if replaced else [*out, f"{flag}={value}"]


def hostile_cases(site: Site, update_flake: Path, marks: Path) -> list[Case]:
    cases = []
    for task, options in sorted(task_options().items()):
        argv, inside = baseline(task, site, update_flake)
        slots = [option for option in HOST_OPTIONS if option in options]
        for slot in [*slots, *(["extra"] if task not in IGNORE_NIX_OPTIONS else [])]:
            tag = f"{task}.{slot}".replace(".", "_")
            values = payloads(marks, tag)
            # Values these slots take as they are (a log directory, Nix options) go through no check that
            # either payload could trip first, so the one carrying every form is enough there.
            for number, value in enumerate(values[1:] if slot in ACCEPTED_AS_IS else values):
                if slot == "extra":
                    changed: list[str] | None = [*argv, "--", "--option", "nixfab-probe", value]
                else:
                    changed = with_value(argv, slot, value)
                    if changed is not None and task == "exec":
                        changed = [*changed, "--", "true"]  # exec's "extra" slot is the command itself, an argv run as given
                if changed is not None:
                    cases.append(Case(f"{tag}#{number}", slot, tuple(changed), inside))
    # hosts.yaml values reach tasks through the inventory.
    for key in ("attr", "ssh", "tags", "build_on"):
        for number, value in enumerate(payloads(marks, f"yaml_{key}")):
            inventory = site.tmp / f"hostile-{key}-{number}.yaml"
            entry = {key: [value] if key == "tags" else value}
            write_inventory(site.lab, inventory, f"  alpha: {json.dumps(entry)}\n  beta: {{}}\n")
            for task in ("switch-push", "generations", "status", "hosts", "hm.push"):
                argv, _inside = baseline(task, site, update_flake)
                changed = with_value(argv, "inventory", str(inventory))
                assert changed is not None
                cases.append(Case(f"yaml_{key}#{number}:{task}", "yaml", tuple(changed)))
    return cases


def run_case(case: Case, site: Site) -> subprocess.CompletedProcess[str]:
    if not case.inside_alpha:
        return inv(*case.argv, cwd=site.tmp)
    command = ["env", f"NIXFAB_STATE_DIR={site.tmp / 'alpha-state'}", str(BIN / "inv"), "--search-root", str(REPO), *case.argv]
    return site.lab.ssh("alpha", ["sh", "-c", f"cd {shlex.quote(str(site.tmp))} && exec \"$@\"", "sh", *command],
                        check=False, timeout=300)


def harmless(case: Case, result: subprocess.CompletedProcess[str]) -> str | None:
    """Why the outcome is not acceptable, or None."""
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        return "traceback"
    if result.returncode == 0:
        return None
    lines = result.stderr.rstrip("\n").splitlines()
    last = lines[-1] if lines else ""
    if last.startswith("nixfab: error: "):
        return None
    return f"exit {result.returncode} without a one-line nixfab error: {last!r}"


def test_hostile_values_run_nowhere(site: Site, update_flake: Path, tmp_path: Path) -> None:
    lab = site.lab
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # so a payload run as the host's `deploy` user could leave its mark too
    # Lab hosts have private /nix, /run, /boot, /etc/nix and /home, but share /tmp with this machine:
    # one directory shows marks left here, on the hosts, in their builds and in activation scripts.
    lab.inside("alpha", ["test", "-d", str(marks)])
    ok(site.deploy("switch-push", "alpha"))  # so deploys of an unchanged flake have nothing to do
    ok(inv("hm.build", "alpha", "--user", "deploy", "--flake", str(site.flake), cwd=tmp_path))
    before = lab.state("alpha")

    cases = hostile_cases(site, update_flake, marks)
    assert len({case.argv[0] for case in cases}) == len(task_options())
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda case: (case, run_case(case, site)), cases))

    problems = [f"{case.name}: {why}\n  argv: {list(case.argv)}\n  {result.stderr[-600:]}"
                for case, result in results if (why := harmless(case, result)) is not None]
    # No host, tag, builder, action, age, input, generation, user or inventory file has these names
    # (history only filters its journal by host name, and finds no rows).
    accepted = [case.name for case, result in results
                if result.returncode == 0 and case.slot not in ("flake", *ACCEPTED_AS_IS)
                and not (case.argv[0] == "history" and case.slot in ("machine", "host"))]
    left = sorted(path.name for path in marks.iterdir())
    assert not left and not lab.inside("alpha", ["ls", "-A", str(marks)]).stdout.split(), f"payloads ran: {left}"
    assert not problems, "\n".join(problems)
    assert not accepted, f"hostile values were accepted: {accepted}"
    after = lab.state("alpha")
    assert after.generations == before.generations and after.current_system == before.current_system


# --- one meaning for a host name ------------------------------------------------


def test_a_host_only_systems_knows_is_the_same_machine_for_every_task(lab: Lab, tmp_path: Path) -> None:
    """systems/foo/meta.nix says targetHost = alpha; no hosts.yaml entry names foo.

    Every task must reach alpha for foo, with hosts.yaml's defaults, whatever
    directory it is started from: never a machine called foo.
    """
    lab.up(["alpha"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["foo"])
    (flake / "systems" / "foo").mkdir(parents=True)
    (flake / "systems" / "foo" / "default.nix").write_text("{ ... }: { }\n")
    (flake / "systems" / "foo" / "meta.nix").write_text(f'{{ system = "{nix_system()}"; targetHost = "alpha"; }}\n')
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"ssh_config: {lab.ssh_config}\n")
    where = ("--flake", str(flake), "--inventory", str(inventory))

    first = toplevel_of(flake, "foo")
    ok(inv("switch-push", "foo", *where, "--skip-checks"))
    assert lab.state("alpha").current_system == first
    set_fixture_revision(flake, "2")
    second = toplevel_of(flake, "foo")
    ok(inv("switch-push", "foo", *where, "--skip-checks"))
    assert lab.state("alpha").current_system == second

    listed = json.loads(ok(inv("generations", "foo", *where, "--json")).stdout)
    assert [(g["number"], g["path"]) for g in listed] == [(1, first), (2, second)]
    assert ok(inv("ssh-wait", "foo", "hostname", *where, "--timeout", "10")).stdout.strip() == "alpha"
    ran = json.loads(ok(inv("exec", "foo", *where, "--json", "--", "hostname")).stdout)["hosts"]
    assert [(host["host"], host["stdout"]) for host in ran] == [("foo", "alpha\n")]
    planned = json.loads(ok(inv("plan", "foo", *where, "--json")).stdout)["hosts"]
    assert [(host["host"], host["up_to_date"], host["current_system"]) for host in planned] == [("foo", True, second)]
    ok(inv("rollback", "foo", *where))
    assert (lab.state("alpha").current_generation, lab.state("alpha").current_system) == (1, first)
    ok(inv("switch-generation", "foo", "2", *where))
    assert (lab.state("alpha").current_generation, lab.state("alpha").current_system) == (2, second)

    # hosts.yaml's defaults reach a host that only systems/ knows: here a health check that fails.
    sick = tmp_path / "sick.yaml"
    sick.write_text(f"ssh_config: {lab.ssh_config}\ndefaults:\n  health: {{ command: 'false', retries: 0 }}\n")
    set_fixture_revision(flake, "3")
    assert "health check failed" in host_error(inv("switch-push", "foo", "--flake", str(flake), "--inventory", str(sick), "--skip-checks"), 16, "foo")
    assert (lab.state("alpha").current_generation, lab.state("alpha").current_system) == (2, second)


# --- D: the journal never lies about a host ------------------------------------


def summary_result(stderr: str, host: str) -> str | None:
    """The result column of the fleet summary's row for host (the plain text table on stderr)."""
    for line in stderr.splitlines():
        cells = line.split()
        if len(cells) >= 2 and cells[0] == host and cells[1] in {"ok", "failed", "rolled-back", "up-to-date", "not", "interrupted"}:
            return cells[1]
    return None


def test_a_corrupt_journal_is_a_warning_and_exit_17_and_does_not_change_fail_fast(site: Site, state_directory: Path) -> None:
    state_directory.mkdir(parents=True)
    (state_directory / "history.sqlite").write_bytes(b"garbage, not an SQLite database\n" * 64)
    path = site.path("1")
    result = site.deploy("switch-push", "--host", "alpha,beta", "--parallel", "1", "--fail-fast", "--json")
    last = refused(result, 17)
    assert "every host deployed, but the deploy journal was not written" in last and "file is not a database" in last
    assert "warning: deploy journal" in result.stderr  # said when it happened, not only at the end
    assert summary_result(result.stderr, "alpha") == "ok" and summary_result(result.stderr, "beta") == "ok"  # the summary
    document = json.loads(result.stdout)
    # A journal failure is not a host failure: --fail-fast went on to beta.
    assert {host["host"]: host["result"] for host in document["hosts"]} == {"alpha": "ok", "beta": "ok"}
    assert document["exit_code"] == 17 and "file is not a database" in document["journal_error"]
    assert site.lab.state("alpha").current_system == path and site.lab.state("beta").current_generation == 1
    assert "file is not a database" in refused(inv("history"), 17, only_line=True)


def test_an_unusable_state_directory_is_a_warning_and_exit_17_not_a_traceback(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, a chmod'ed directory stays writable: a state directory below a regular file cannot be created by anyone.
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "a-file" / "state"))
    path = site.path("1")
    result = site.deploy("switch-push", "alpha")
    last = refused(result, 17)
    assert "cannot open the deploy journal" in last
    assert "warning: cannot write host logs in" in result.stderr
    assert summary_result(result.stderr, "alpha") == "ok"
    assert site.lab.state("alpha").current_system == path


def test_switch_generation_with_a_non_ascii_digit_is_a_usage_error(site: Site) -> None:
    assert "not '²'" in refused(site.task("switch-generation", "alpha", "²"), 2, only_line=True)
