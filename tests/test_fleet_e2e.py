"""Fleets end to end: many lab hosts at once, and what each host looks like afterwards.

Every test asserts on the hosts' own state (profile generations, the running
system, the boot default, activations, SSH logins) and on exit codes and the
result JSON; output text is checked only where the output itself is the
feature (prefixed lines, log files, the lock holder's name).
"""
from __future__ import annotations

import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from deploy.lab.lab import process_start_time

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOSTS = ("alpha", "beta", "gamma")
LOCK_DIR = "/run/nixfab/deploy.engine.lock"


def inv_argv(*args: str) -> list[str]:
    return [str(BIN / "inv"), "--search-root", str(REPO), *args]


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(inv_argv(*args), cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def exits(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, f"expected exit {code}, got {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def results_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:  # type: ignore[type-arg]
    """--json output, by host."""
    document = json.loads(result.stdout)
    hosts = document["hosts"]
    assert len({entry["host"] for entry in hosts}) == len(hosts), "one entry per host"
    assert document["exit_code"] == result.returncode
    return {entry["host"]: entry for entry in hosts}


def toplevel_of(flake: Path, attr: str) -> str:
    out = subprocess.run(
        ["nix", "eval", "--raw", f'{flake}#nixosConfigurations."{attr}".config.system.build.toplevel.outPath'],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def generations(lab: Lab, name: str) -> list[tuple[int, str]]:
    return [(g.number, g.path) for g in lab.state(name).generations]


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll until predicate holds; the timeout only keeps a broken run from hanging."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


class Fleet:
    """A lab of hosts, a fixture flake for them, and inventories pointing at the lab."""

    def __init__(self, lab: Lab, directory: Path, names: Sequence[str], *, slow_seconds: int = 4) -> None:
        self.lab = lab
        self.directory = directory
        lab.up(list(names), reboot_delay=0.3)
        self.flake = write_fixture_flake(directory / "flake", names, slow_seconds=slow_seconds)

    def inventory(self, body: str, name: str = "hosts.yaml") -> Path:
        path = self.directory / name
        path.write_text(f"ssh_config: {self.lab.ssh_config}\n{body}")
        return path

    def args(self, inventory: Path) -> list[str]:
        return ["--flake", str(self.flake), "--inventory", str(inventory)]

    def logins(self) -> dict[str, int]:
        return {host.name: self.lab.accepted_ssh_logins(host.name) for host in self.lab.hosts()}

    def commands(self) -> dict[str, int]:
        return {host.name: self.lab.remote_commands(host.name) for host in self.lab.hosts()}

    def activations(self) -> dict[str, int]:
        return {host.name: len(self.lab.activations(host.name)) for host in self.lab.hosts()}


@pytest.fixture
def make_fleet(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Fleet]:
    # The journal and default log directory go to the test's own directory, never the repository.
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "state"))

    def make(names: Sequence[str] = HOSTS, **kwargs: int) -> Fleet:
        return Fleet(lab, tmp_path, names, **kwargs)

    return make


def start_in_background(started: list[subprocess.Popen[bytes]], args: Sequence[str], output: Path) -> subprocess.Popen[bytes]:
    with open(output.with_suffix(".out"), "wb") as stdout, open(output, "wb") as stderr:
        process = subprocess.Popen(
            inv_argv(*args), cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
            # A suite started in the background by a non-interactive shell inherits SIGINT ignored,
            # and Python then never raises KeyboardInterrupt: the deploy must see Ctrl-C as a user's would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    started.append(process)
    return process


def finished(process: subprocess.Popen[bytes], output: Path) -> subprocess.CompletedProcess[str]:
    process.wait(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, output.with_suffix(".out").read_text(), output.read_text())


def lock_present(lab: Lab, name: str) -> bool:
    return lab.inside(name, ["test", "-d", LOCK_DIR], check=False).returncode == 0


PREFIXED = re.compile(r"^(?P<host>[a-z]+) *\| (?P<rest>.*)$")


def assert_lines_belong_to_one_host(stderr: str, names: Sequence[str]) -> dict[str, list[str]]:
    """Every line about a host carries that host's prefix, and no line carries two hosts."""
    by_host: dict[str, list[str]] = {name: [] for name in names}
    for line in stderr.splitlines():
        match = PREFIXED.match(line)
        if match and match["host"] in names:
            others = [other for other in names if other != match["host"] and re.search(rf"\b{other}\b", match["rest"])]
            assert not others, f"a {match['host']} line mentions {others}: {line!r}"
            by_host[match["host"]].append(match["rest"])
        else:
            for name in names:
                assert f"[{name}]" not in line, f"a command on {name} without its prefix: {line!r}"
    return by_host


# ---- 1. selection, parallel output, logs, JSON ----------------------------------------------------------------------


def test_parallel_deploy_by_names_all_tags_and_globs(make_fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    lab = fleet.lab
    inventory = fleet.inventory("hosts:\n  alpha: { tags: [web] }\n  beta: { tags: [web] }\n  gamma: { tags: [db] }\n")
    logs = tmp_path / "logs"
    first = ok(inv("switch-push", "--host", "alpha,beta", "--host", "gamma", *fleet.args(inventory),
                   "--skip-checks", "--json", "--log-dir", str(logs), "-v"))  # -v: every command, each with its host's prefix
    results = results_of(first)
    assert list(results) == list(HOSTS)
    for name in HOSTS:
        path = toplevel_of(fleet.flake, name)
        state = lab.state(name)
        assert generations(lab, name) == [(1, path)] and state.current_generation == 1
        assert state.current_system == path and state.boot_default == "nixos-generation-1.conf"
        assert results[name]["result"] == "ok" and results[name]["generation"] == 1 and results[name]["path"] == path

    by_host = assert_lines_belong_to_one_host(first.stderr, HOSTS)
    for name in HOSTS:
        assert any(line.startswith(f"' sh {toplevel_of(fleet.flake, name)} /nix/var/nix/profiles/system 1 ") for line in by_host[name])
        log = (logs / f"{name}.log").read_text()
        assert results[name]["log"] == str(logs / f"{name}.log")
        assert f"' sh {toplevel_of(fleet.flake, name)} /nix/var/nix/profiles/system 1 " in log  # the activation's arguments
        for other in HOSTS:
            if other != name:
                assert f"[{other}]" not in log and f"{other} |" not in log and f"-{other}" not in log

    # --all deploys every inventory host: a new revision gives each one generation 2.
    set_fixture_revision(fleet.flake, "2")
    everything = ok(inv("switch-push", "--all", *fleet.args(inventory), "--skip-checks", "--json"))
    assert list(results_of(everything)) == list(HOSTS)
    for name in HOSTS:
        assert [number for number, _ in generations(lab, name)] == [1, 2]
        assert lab.state(name).current_system == toplevel_of(fleet.flake, name)

    # --tag and a glob select from hosts.yaml; hosts left out are not even connected to.
    logins = fleet.logins()
    tagged = results_of(ok(inv("switch-push", "--tag", "web", *fleet.args(inventory), "--skip-checks", "--json")))
    assert list(tagged) == ["alpha", "beta"]
    assert fleet.logins()["gamma"] == logins["gamma"]
    globbed = results_of(ok(inv("switch-push", "--host", "al*", *fleet.args(inventory), "--skip-checks", "--json")))
    assert list(globbed) == ["alpha"]
    after = fleet.logins()
    assert after["beta"] == logins["beta"] + 1 and after["gamma"] == logins["gamma"]
    for name in HOSTS:
        assert [number for number, _ in generations(lab, name)] == [1, 2]


def test_each_selected_system_is_evaluated_once_and_a_failing_one_fails_alone(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    lab = fleet.lab
    write_fixture_flake(fleet.flake, HOSTS, trace_evaluation=True)
    inventory = fleet.inventory("hosts:\n  alpha: {}\n  beta: {}\n  gamma: {}\n")
    result = ok(inv("switch-push", "--all", *fleet.args(inventory)))
    # Nix prints the trace each time a process evaluates a toplevel: no flake check, no second evaluation to pair results.
    assert sorted(re.findall(r"lab: evaluating the toplevel of (\S+)", result.stderr)) == sorted(HOSTS)
    assert "flake check" not in result.stderr
    for name in HOSTS:
        assert lab.state(name).current_system == toplevel_of(fleet.flake, name)

    set_fixture_revision(fleet.flake, "2")
    broken = fleet.inventory("hosts:\n  alpha: { attr: alpha-unbuildable }\n  beta: { attr: nosuch }\n  gamma: {}\n", "broken.yaml")
    logins, commands = fleet.logins(), fleet.commands()
    failed = exits(inv("switch-push", "--all", *fleet.args(broken), "--json"), 3)
    results = results_of(failed)
    assert {name: entry["result"] for name, entry in results.items()} == {"alpha": "failed", "beta": "failed", "gamma": "ok"}
    assert results["alpha"]["error"].startswith("building alpha-unbuildable failed: error: builder for ")
    assert results["beta"]["error"].startswith(f'{fleet.flake} has no nixosConfigurations."nosuch"; it has: alpha, ')
    # Each host's connection opened while its system built; a host whose system failed ran nothing.
    after, commands_after = fleet.logins(), fleet.commands()
    assert after["alpha"] <= logins["alpha"] + 1 and after["beta"] <= logins["beta"] + 1
    assert commands_after["alpha"] == commands["alpha"] and commands_after["beta"] == commands["beta"]
    assert lab.state("gamma").current_system == toplevel_of(fleet.flake, "gamma")


def test_an_unchanged_flake_is_not_evaluated_again_and_no_build_waits_on_nix_s_evaluation_cache(  # type: ignore[no-untyped-def]
    make_fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nix 2.8 keeps an evaluation cache for a path: flake, which every build process of a fleet writes to and
    waits on (a system that evaluates in 1.4 s took 3 s). nixfab remembers the systems it built instead."""
    fleet = make_fleet()
    lab = fleet.lab
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # Systems of this test's own (other tests root the usual ones), so that one can be collected below.
    revision = f"memory-{os.getpid()}-{time.time_ns()}"
    write_fixture_flake(fleet.flake, HOSTS, trace_evaluation=True, revision=revision)
    inventory = fleet.inventory("hosts:\n  alpha: {}\n  beta: {}\n  gamma: {}\n")
    first = ok(inv("switch-push", "--all", *fleet.args(inventory)))
    assert sorted(re.findall(r"lab: evaluating the toplevel of (\S+)", first.stderr)) == sorted(HOSTS)
    assert list(cache.glob("nix/eval-cache-*/*.sqlite")) == []  # before toplevel_of below evaluates with the cache
    systems = {name: lab.state(name).current_system for name in HOSTS}

    again = ok(inv("switch-push", "--all", *fleet.args(inventory), "-v"))
    assert "lab: evaluating" not in again.stderr
    assert not re.search(r"^\+ nix .* (build|eval) ", again.stderr, re.MULTILINE)
    assert "==> alpha, beta, gamma: built before from this locked flake; not evaluated again" in again.stderr
    assert "==> building" not in again.stderr  # nothing is built, so nothing says it is
    assert {name: lab.state(name).current_system for name in HOSTS} == systems == {name: toplevel_of(fleet.flake, name) for name in HOSTS}

    # Collected from this machine's store since: built again, and still the same system.
    subprocess.run(["nix-store", "--delete", systems["alpha"]], capture_output=True, check=True)
    rebuilt = ok(inv("switch-push", "alpha", *fleet.args(inventory)))
    assert re.findall(r"lab: evaluating the toplevel of (\S+)", rebuilt.stderr) == ["alpha"]
    assert lab.state("alpha").current_system == systems["alpha"]

    # Another revision is another locked flake.
    set_fixture_revision(fleet.flake, f"{revision}-2")
    changed = ok(inv("switch-push", "--all", *fleet.args(inventory)))
    assert sorted(re.findall(r"lab: evaluating the toplevel of (\S+)", changed.stderr)) == sorted(HOSTS)
    assert all(lab.state(name).current_system != systems[name] for name in HOSTS)


def test_the_flake_check_runs_when_asked_beside_the_build_and_stops_every_host_before_activation(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    lab = fleet.lab
    inventory = fleet.inventory("hosts:\n  alpha: {}\n  beta: {}\n  gamma: {}\n")
    write_fixture_flake(fleet.flake, HOSTS, failing_check=True)
    result = exits(inv("switch-push", "--all", *fleet.args(inventory), "--check", "--json"), 3)
    results = results_of(result)
    for name in HOSTS:
        assert results[name]["result"] == "failed" and results[name]["error"] == f"not activated: nix flake check {fleet.flake} failed"
        assert lab.state(name).generations == () and lab.state(name).current_system is None and lab.activations(name) == []
    # Nix's error is said once, on the last line, with the totals.
    assert result.stderr.splitlines()[-1].startswith(f"nixfab: error: nix flake check {fleet.flake} failed: error:")
    assert "3 failed" in result.stderr.splitlines()[-1]

    # hosts.yaml can ask for it; --skip-checks still skips it.
    checked = fleet.inventory("defaults:\n  check: true\nhosts:\n  alpha: {}\n", "checked.yaml")
    exits(inv("switch-push", "alpha", *fleet.args(checked)), 3)
    assert lab.activations("alpha") == []
    ok(inv("switch-push", "alpha", *fleet.args(checked), "--skip-checks"))
    assert lab.state("alpha").current_system == toplevel_of(fleet.flake, "alpha")

    # A flake whose check passed is not checked again until it changes.
    write_fixture_flake(fleet.flake, HOSTS, revision="2")
    first = ok(inv("switch-push", "alpha", *fleet.args(checked)))
    assert "==> checking " in first.stderr
    again = ok(inv("switch-push", "alpha", *fleet.args(checked), "--force"))
    assert "==> checking " not in again.stderr and "passed before for this locked" in again.stderr
    assert [line.split()[1] for line in lab.activations("alpha")] == ["switch", "switch", "switch"]


# ---- 2. one failing host among healthy ones -------------------------------------------------------------------------


def test_failing_host_is_rolled_back_and_others_deploy(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    lab = fleet.lab
    good = fleet.inventory("hosts:\n  alpha: {}\n  beta: {}\n  gamma: {}\n")
    ok(inv("switch-push", "--all", *fleet.args(good), "--skip-checks"))
    first = {name: lab.state(name) for name in HOSTS}

    set_fixture_revision(fleet.flake, "2")
    broken = fleet.inventory("hosts:\n  alpha: {}\n  beta: { attr: beta-broken }\n  gamma: {}\n", "broken.yaml")
    result = exits(inv("switch-push", "--all", *fleet.args(broken), "--skip-checks", "--json"), 6)
    results = results_of(result)
    assert {name: entry["result"] for name, entry in results.items()} == {"alpha": "ok", "beta": "rolled-back", "gamma": "ok"}
    assert results["beta"]["exit_code"] == 6
    assert re.search(r"^beta +rolled-back\b", result.stderr, re.MULTILINE), result.stderr
    for name in ("alpha", "gamma"):
        state = lab.state(name)
        assert [number for number, _ in generations(lab, name)] == [1, 2]
        assert state.current_system == toplevel_of(fleet.flake, name) and state.boot_default == "nixos-generation-2.conf"
    beta = lab.state("beta")
    assert generations(lab, "beta") == [(1, first["beta"].current_system)] and beta.current_generation == 1
    assert beta.current_system == first["beta"].current_system and beta.boot_default == "nixos-generation-1.conf"

    # --fail-fast --parallel 1: beta fails first, so alpha and gamma never start, though revision 3 awaits them.
    set_fixture_revision(fleet.flake, "3")
    logins, activations = fleet.logins(), fleet.activations()
    before = {name: lab.state(name) for name in HOSTS}
    fast = exits(inv("switch-push", "--host", "beta,alpha,gamma", *fleet.args(broken), "--skip-checks", "--json",
                     "--fail-fast", "--parallel", "1"), 6)
    results = results_of(fast)
    assert list(results) == ["beta", "alpha", "gamma"]
    assert {name: entry["result"] for name, entry in results.items()} == {"beta": "rolled-back", "alpha": "not started", "gamma": "not started"}
    after_logins, after_activations = fleet.logins(), fleet.activations()
    for name in ("alpha", "gamma"):
        assert lab.state(name) == before[name]
        assert after_logins[name] == logins[name] and after_activations[name] == activations[name]
    assert generations(lab, "beta") == [(1, first["beta"].current_system)]
    assert lab.state("beta").current_system == first["beta"].current_system


# ---- 3. magic rollback ----------------------------------------------------------------------------------------------


def test_cut_off_host_rolls_itself_back(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    good = fleet.inventory("hosts:\n  alpha: {}\n")
    logins = lab.accepted_ssh_logins("alpha")
    ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks"))
    # The deploy's own connection, and the new one that confirms it.
    assert lab.accepted_ssh_logins("alpha") == logins + 2
    gen1 = toplevel_of(fleet.flake, "alpha")
    assert generations(lab, "alpha") == [(1, gen1)]
    logins = lab.accepted_ssh_logins("alpha")
    ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks", "--force", "--no-magic-rollback"))
    assert lab.accepted_ssh_logins("alpha") == logins + 1

    cutoff = fleet.inventory("hosts:\n  alpha: { attr: alpha-cutoff }\n", "cutoff.yaml")
    result = exits(inv("switch-push", "alpha", *fleet.args(cutoff), "--skip-checks", "--confirm-timeout", "3"), 15)
    assert "rolled itself back" in result.stderr
    state = lab.state("alpha")
    assert state.current_system == gen1 and state.current_generation == 1
    assert generations(lab, "alpha") == [(1, gen1)] and state.boot_default == "nixos-generation-1.conf"
    # The cut-off variant really was activated (and reverted), and SSH answers again.
    assert [line.split()[1:] for line in lab.activations("alpha")][-2:] == [["switch", toplevel_of(fleet.flake, "alpha-cutoff")], ["test", gen1]]
    assert lab.ssh("alpha", ["true"], check=False).returncode == 0


def nixfab_processes(lab: Lab, name: str) -> dict[int, str]:
    """What nixfab left running on the host: not the lab's own processes (their paths name the checkout, /work/nixfab in a fresh root)."""
    return {pid: command for pid, command in lab.processes(name).items() if "nixfab" in command and "/deploy/lab/" not in command}


def test_a_confirmed_deploy_leaves_no_nixfab_process_on_the_host(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    good = fleet.inventory("hosts:\n  alpha: {}\n")
    for revision in ("1", "2"):
        set_fixture_revision(fleet.flake, revision)
        ok(inv("switch-push", "alpha", *fleet.args(good)))
        assert lab.state("alpha").current_system == toplevel_of(fleet.flake, "alpha")
        # The confirmation is the watchdog's verdict: it ends (within its one-second poll) instead of
        # looping for the activation limit (30 minutes) and then finding nothing to decide.
        try:
            wait_for("the watchdog to end after the confirmation", lambda: not nixfab_processes(lab, "alpha"), timeout=15)
        except AssertionError:
            raise AssertionError(f"still on the host: {nixfab_processes(lab, 'alpha')}") from None
    listed = lab.ssh("alpha", ["sh", "-c", "cat /nix/var/nix/nixfab/verdicts/*"]).stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in listed if line.startswith("verdict\t")] == ["confirmed", "confirmed"]


# ---- 4. health checks and canaries ----------------------------------------------------------------------------------


def test_failed_health_check_rolls_back_and_halts_the_canary(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet()
    lab = fleet.lab
    defaults = "defaults:\n  health: { command: 'grep -qx ok /run/current-system/lab-health', retries: 1, interval: 0.2 }\n"
    gamma_url = f"{{ health: {{ url: '{lab.http_url('gamma')}', retries: 0 }} }}"
    good = fleet.inventory(f"{defaults}hosts:\n  alpha: {{}}\n  beta: {{}}\n  gamma: {gamma_url}\n")
    healthy = results_of(ok(inv("switch-push", "--host", "alpha,gamma", *fleet.args(good), "--skip-checks", "--json")))
    assert healthy["alpha"]["result"] == healthy["gamma"]["result"] == "ok"
    gen1 = {name: toplevel_of(fleet.flake, name) for name in ("alpha", "gamma")}
    assert lab.state("gamma").current_system == gen1["gamma"] and lab.http_status("gamma")[0] == 200

    sick = fleet.inventory(f"{defaults}hosts:\n  alpha: {{ attr: alpha-sick }}\n  beta: {{}}\n  gamma: {gamma_url}\n", "sick.yaml")
    logins, before = fleet.logins(), {name: lab.state(name) for name in HOSTS}
    canary = exits(inv("switch-push", "--canary", "--host", "alpha,beta,gamma", *fleet.args(sick), "--skip-checks", "--json"), 16)
    results = results_of(canary)
    assert {name: entry["result"] for name, entry in results.items()} == {"alpha": "rolled-back", "beta": "not started", "gamma": "not started"}
    assert "health check failed" in results["alpha"]["error"]
    alpha = lab.state("alpha")
    assert alpha.current_system == gen1["alpha"] and generations(lab, "alpha") == [(1, gen1["alpha"])]
    assert alpha.boot_default == "nixos-generation-1.conf"
    # The sick system did run before the check caught it.
    assert toplevel_of(fleet.flake, "alpha-sick") in [line.split()[2] for line in lab.activations("alpha")]
    after = fleet.logins()
    for name in ("beta", "gamma"):
        assert lab.state(name) == before[name] and after[name] == logins[name]

    # The URL check is real too: a sick gamma answers 503 and is rolled back.
    gamma_sick = fleet.inventory(f"{defaults}hosts:\n  gamma: {{ attr: gamma-sick, health: {{ url: '{lab.http_url('gamma')}' }} }}\n", "gamma.yaml")
    result = exits(inv("switch-push", "gamma", *fleet.args(gamma_sick), "--skip-checks"), 16)
    assert "503" in result.stderr
    gamma = lab.state("gamma")
    assert gamma.current_system == gen1["gamma"] and generations(lab, "gamma") == [(1, gen1["gamma"])]
    assert lab.http_status("gamma")[0] == 200


# ---- 5. the per-host lock -------------------------------------------------------------------------------------------


def test_second_deploy_is_refused_while_the_first_holds_the_lock(make_fleet, background, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Slow enough that the second deploy reaches the lock while the first still activates.
    fleet = make_fleet(["alpha"], slow_seconds=7)
    lab = fleet.lab
    slow = fleet.inventory("hosts:\n  alpha: { attr: alpha-slow }\n", "slow.yaml")
    good = fleet.inventory("hosts:\n  alpha: {}\n")
    output = tmp_path / "slow.err"
    first = start_in_background(background, ["switch-push", "alpha", *fleet.args(slow), "--skip-checks"], output)
    wait_for("the first deploy to take alpha's lock", lambda: lock_present(lab, "alpha") or first.poll() is not None)
    assert first.poll() is None, output.read_text()

    busy = exits(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks"), 14)
    assert f"{getpass.getuser()}@{socket.gethostname()} (pid {first.pid}, switch" in busy.stderr

    ok(finished(first, output))
    slow_path, good_path = toplevel_of(fleet.flake, "alpha-slow"), toplevel_of(fleet.flake, "alpha")
    # Only the lock holder's system was ever activated, and it released the lock.
    assert generations(lab, "alpha") == [(1, slow_path)] and lab.state("alpha").current_system == slow_path
    assert [line.split()[2] for line in lab.activations("alpha")] == [slow_path]
    assert not lock_present(lab, "alpha")

    ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks"))
    assert generations(lab, "alpha") == [(1, slow_path), (2, good_path)] and lab.state("alpha").current_system == good_path


def test_stale_lock_of_a_dead_process_is_cleared(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    good = fleet.inventory("hosts:\n  alpha: {}\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = {"user": "ghost", "machine": socket.gethostname(), "pid": dead.pid, "start": "1", "action": "switch",
              "since": int(time.time()), "token": "0000"}
    lab.inside("alpha", ["sh", "-c", 'mkdir -p "$1" && printf "%s\\n" "$2" > "$1/holder"', "sh", LOCK_DIR, json.dumps(holder)])
    assert lock_present(lab, "alpha")
    result = ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks"))
    assert f"cleared a stale deploy lock left by ghost@{socket.gethostname()} (pid {dead.pid}" in result.stderr
    path = toplevel_of(fleet.flake, "alpha")
    assert generations(lab, "alpha") == [(1, path)] and lab.state("alpha").current_system == path
    assert not lock_present(lab, "alpha")


# ---- 6. up to date --------------------------------------------------------------------------------------------------


def test_up_to_date_host_is_skipped_unless_forced(make_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    inventory = fleet.inventory("hosts:\n  alpha: {}\n")
    ok(inv("switch-push", "alpha", *fleet.args(inventory)))  # with `nix flake check`, which passes
    path = toplevel_of(fleet.flake, "alpha")
    assert generations(lab, "alpha") == [(1, path)] and len(lab.activations("alpha")) == 1
    logins = lab.accepted_ssh_logins("alpha")

    again = ok(inv("switch-push", "alpha", *fleet.args(inventory), "--skip-checks", "--json"))
    assert results_of(again)["alpha"]["result"] == "up-to-date"
    assert len(lab.activations("alpha")) == 1 and generations(lab, "alpha") == [(1, path)]
    # One login (the deploy's own: no copy over nix's ssh, no confirmation) and no import into alpha's store.
    assert lab.accepted_ssh_logins("alpha") == logins + 1
    assert "nix-store --import" not in again.stderr and "copying the closure" not in again.stderr

    forced = ok(inv("switch-push", "alpha", *fleet.args(inventory), "--skip-checks", "--json", "--force"))
    assert results_of(forced)["alpha"]["result"] == "ok"
    assert [line.split()[1:] for line in lab.activations("alpha")] == [["switch", path], ["switch", path]]
    assert lab.state("alpha").current_system == path


# ---- 7. Ctrl-C ------------------------------------------------------------------------------------------------------


def test_ctrl_c_finishes_the_running_host_and_starts_no_other(make_fleet, background, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha", "beta"], slow_seconds=5)
    lab = fleet.lab
    inventory = fleet.inventory("hosts:\n  alpha: { attr: alpha-slow }\n  beta: {}\n")
    output = tmp_path / "interrupted.err"
    beta_logins = lab.accepted_ssh_logins("beta")
    deploy = start_in_background(
        background, ["switch-push", "--host", "alpha,beta", "--parallel", "1", *fleet.args(inventory), "--skip-checks", "--json", "-v"], output
    )  # -v: the switch's own output says when it is under way
    wait_for("alpha to be activating", lambda: "alpha | activating slowly" in output.read_text() or deploy.poll() is not None)
    assert deploy.poll() is None, output.read_text()
    os.kill(deploy.pid, signal.SIGINT)
    # An impatient second Ctrl-C must not abandon alpha halfway either.
    wait_for("the first Ctrl-C to be noticed", lambda: "==> interrupted" in output.read_text() or deploy.poll() is not None)
    if deploy.poll() is None:
        os.kill(deploy.pid, signal.SIGINT)
    result = finished(deploy, output)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    results = results_of(result)
    assert results["beta"]["result"] == "interrupted"
    assert re.search(r"^beta +interrupted\b", result.stderr, re.MULTILINE), result.stderr  # the summary was printed

    alpha = lab.state("alpha")
    slow_path = toplevel_of(fleet.flake, "alpha-slow")
    if results["alpha"]["result"] == "ok":
        assert generations(lab, "alpha") == [(1, slow_path)] and alpha.current_system == slow_path
        assert alpha.boot_default == "nixos-generation-1.conf"
    else:
        assert results["alpha"]["result"] == "rolled-back"
        assert generations(lab, "alpha") == [] and alpha.current_generation is None
    assert not lock_present(lab, "alpha")
    beta = lab.state("beta")
    assert beta.generations == () and beta.current_system is None
    assert lab.accepted_ssh_logins("beta") == beta_logins


# ---- 8. the journal of a killed run; what a run holds ---------------------------------------------------------------


def test_a_killed_run_leaves_an_unfinished_row_in_history(make_fleet, background, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(["alpha"], slow_seconds=20)
    inventory = fleet.inventory("hosts:\n  alpha: { attr: alpha-slow }\n")
    output = tmp_path / "killed.err"
    deploy = start_in_background(background, ["switch-push", "alpha", *fleet.args(inventory), "--skip-checks", "-v"], output)
    wait_for("alpha to be activating", lambda: "alpha | activating slowly" in output.read_text() or deploy.poll() is not None)
    assert deploy.poll() is None, output.read_text()
    os.killpg(deploy.pid, signal.SIGKILL)  # no handler runs: only what was written before is left
    deploy.wait(timeout=30)
    history = ok(inv("history", "--flake", str(fleet.flake)))
    rows = [line.split() for line in history.stdout.splitlines()[1:]]
    assert [(row[2], row[3], row[4]) for row in rows] == [("alpha", "switch", "unfinished")], history.stdout


def sample_usage(pid: int, usage: dict[str, int]) -> None:
    """The process's open fds, sockets and threads right now; the most seen so far stay in usage."""
    try:
        fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return  # it just ended
    now = {"fds": len(fds), "sockets": sum(link.startswith("socket:") for link in fds), "threads": threads}
    for key, value in now.items():
        usage[key] = max(usage.get(key, 0), value)


def deploy_sampled(background: list[subprocess.Popen[bytes]], args: Sequence[str], output: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    deploy = start_in_background(background, args, output)
    usage: dict[str, int] = {}
    while deploy.poll() is None:
        sample_usage(deploy.pid, usage)
        time.sleep(0.02)
    return finished(deploy, output), usage


EIGHT = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


def test_what_a_run_holds_is_bounded_by_parallel_not_by_the_fleet(make_fleet, background, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = make_fleet(list(EIGHT))
    inventory = fleet.inventory("hosts:\n" + "".join(f"  {name}: {{}}\n" for name in EIGHT))
    args = ["switch-push", "--all", "--parallel", "2", *fleet.args(inventory), "--skip-checks", "--json", "--no-magic-rollback"]
    result, usage = deploy_sampled(background, args, tmp_path / "eight.err")
    assert {host["result"] for host in results_of(ok(result)).values()} == {"ok"}
    # Two hosts at once: two SSH connections (and their transport threads), whatever the size of the fleet.
    assert usage["sockets"] <= 4, usage
    # Each open connection costs a transport thread and a keepalive watcher, each running command three
    # stream threads: two hosts' worth stays under 18, where eight open connections would pass 40. The
    # systems build meanwhile, one Nix process per core, each a worker thread and two stream threads.
    from deploy.build.build import evaluation_processes

    assert usage["threads"] <= 18 + 3 * evaluation_processes(len(EIGHT)), usage


def test_running_out_of_file_descriptors_ends_in_one_line_and_the_summary(make_fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import resource

    fleet = make_fleet(["alpha", "beta"])
    inventory = fleet.inventory("hosts:\n  alpha: {}\n  beta: {}\n")
    # Low enough that the run surely runs out: with 14, a fresh Debian 12 root once deployed both hosts (how many
    # descriptors the run holds at once depends on how its builds and connections overlap).
    limit = int(os.environ.get("NIXFAB_TEST_FD_LIMIT", "12"))
    result = subprocess.run(
        inv_argv("switch-push", "--host", "alpha,beta", *fleet.args(inventory), "--skip-checks"),
        cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("nixfab: error: "), result.stderr
    assert "out of file descriptors" in result.stderr, result.stderr
    assert re.search(r"^host +result\b", result.stderr, re.MULTILINE), result.stderr  # the summary


# ---- 9. the activation protocol: after every fault the host agrees with what nixfab said ------------------------------


def profile_target(lab: Lab, name: str) -> str:
    return lab.inside(name, ["readlink", "-f", "/nix/var/nix/profiles/system"]).stdout.strip()


def assert_consistent(lab: Lab, name: str, path: str) -> None:
    """Running system, profile and boot default all name `path`."""
    state = lab.state(name)
    assert state.current_system == path, state
    assert profile_target(lab, name) == path
    assert state.boot_default == f"nixos-generation-{state.current_generation}.conf", state
    assert dict(generations(lab, name))[state.current_generation] == path


def test_a_session_dropped_mid_switch_is_asked_about_not_rolled_back(make_fleet) -> None:  # type: ignore[no-untyped-def]
    # It used to be reported "rolled back" (exit 6) while the new system ran, with the profile back on generation 1
    # and generation 2 deleted: undo ran against the switch still going on in its unit.
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    ok(inv("switch-push", "alpha", *fleet.args(fleet.inventory("hosts:\n  alpha: {}\n")), "--skip-checks"))
    netdrop = fleet.inventory("hosts:\n  alpha: { attr: alpha-netdrop }\n", "netdrop.yaml")
    result = ok(inv("switch-push", "alpha", *fleet.args(netdrop), "--skip-checks", "--json"))
    assert results_of(result)["alpha"]["result"] == "ok"
    assert "lost the connection during activation" in result.stderr and "the switch finished (exit 0)" in result.stderr
    path = toplevel_of(fleet.flake, "alpha-netdrop")
    assert [number for number, _ in generations(lab, "alpha")] == [1, 2]
    assert_consistent(lab, "alpha", path)
    time.sleep(4)  # past the watchdog's window: it was confirmed, so nothing changes
    assert_consistent(lab, "alpha", path)


def test_a_killed_deploy_is_settled_by_its_watchdog_before_the_next_one(make_fleet, background, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The killed deploy's lock is stale at once, but its watchdog used to live on and, after the next deploy
    # succeeded, revert it; or the next deploy collided with the still running switch's fixed unit name.
    fleet = make_fleet(["alpha"], slow_seconds=4)
    lab = fleet.lab
    good = fleet.inventory("hosts:\n  alpha: {}\n")
    ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks"))
    first = toplevel_of(fleet.flake, "alpha")
    slow = fleet.inventory("hosts:\n  alpha: { attr: alpha-slow }\n", "slow.yaml")
    output = tmp_path / "killed.err"
    killed = start_in_background(background, ["switch-push", "alpha", *fleet.args(slow), "--skip-checks", "--confirm-timeout", "3", "-v"], output)
    wait_for("the switch to be under way", lambda: "alpha | activating slowly" in output.read_text() or killed.poll() is not None)
    assert killed.poll() is None, output.read_text()
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)

    set_fixture_revision(fleet.flake, "2")
    second = ok(inv("switch-push", "alpha", *fleet.args(good), "--skip-checks", "--json"))
    assert results_of(second)["alpha"]["result"] == "ok"
    path = toplevel_of(fleet.flake, "alpha")
    assert_consistent(lab, "alpha", path)
    time.sleep(8)  # longer than the killed deploy's watchdog would have waited
    assert_consistent(lab, "alpha", path)
    assert generations(lab, "alpha") == [(1, first), (2, path)]
    assert "rolled back by the watchdog" in second.stderr
    verdicts = lab.inside("alpha", ["sh", "-c", "cat /nix/var/nix/nixfab/verdicts/*"]).stdout
    assert "rolled back by the watchdog: profile and boot default back to generation 1" in verdicts
    # The next deploy saw that verdict: the killed deploy's row says what became of it.
    rows = json.loads(ok(inv("history", "--json", "--flake", str(fleet.flake))).stdout)
    assert [row["result"] for row in rows] == ["ok", "rolled-back", "ok"], rows
    assert rows[1]["verdict"].startswith("rolled back by the watchdog: profile and boot default back to generation 1"), rows[1]


@pytest.mark.parametrize("task", ["switch-push", "boot"])
def test_an_unguarded_activation_that_loses_its_channel_asks_the_host_how_it_ended(make_fleet, task: str) -> None:  # type: ignore[no-untyped-def]
    # Without a watchdog (--no-magic-rollback, or `boot`), a lost channel used to end at once in exit 18, "cannot tell",
    # although the switch had finished and the host could have said so.
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    ok(inv("switch-push", "alpha", *fleet.args(fleet.inventory("hosts:\n  alpha: {}\n")), "--skip-checks"))
    first = toplevel_of(fleet.flake, "alpha")
    netdrop = fleet.inventory("hosts:\n  alpha: { attr: alpha-netdrop }\n", "netdrop.yaml")
    result = ok(inv(task, "alpha", *fleet.args(netdrop), "--skip-checks", "--json", "--no-magic-rollback"))
    assert results_of(result)["alpha"]["result"] == "ok" and results_of(result)["alpha"]["generation"] == 2
    assert "lost the connection during activation" in result.stderr and "the switch finished (exit 0)" in result.stderr
    path = toplevel_of(fleet.flake, "alpha-netdrop")
    assert generations(lab, "alpha") == [(1, first), (2, path)]
    if task == "switch-push":
        assert_consistent(lab, "alpha", path)
    else:  # boot: the new generation is the profile and the boot default; the old system still runs
        state = lab.state("alpha")
        assert profile_target(lab, "alpha") == path and state.boot_default == "nixos-generation-2.conf"
        assert state.current_system == first
    # The switch's record was read and removed; none is left in /run.
    assert lab.inside("alpha", ["find", "/run/nixfab/switches", "-mindepth", "1"], check=False).stdout == ""


@pytest.mark.parametrize("task", ["rollback", "switch-generation"])
def test_a_rollback_that_loses_its_channel_asks_the_host_how_it_ended(make_fleet, task: str) -> None:  # type: ignore[no-untyped-def]
    # Going back to a generation whose switch restarts the network (the usual reason to roll back by hand) used to
    # end in exit 18, "cannot tell whether it finished", while the host ran that generation and could have said so.
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    netdrop = fleet.inventory("hosts:\n  alpha: { attr: alpha-netdrop }\n", "netdrop.yaml")
    ok(inv("switch-push", "alpha", *fleet.args(netdrop), "--skip-checks"))
    first = toplevel_of(fleet.flake, "alpha-netdrop")
    plain = fleet.inventory("hosts:\n  alpha: {}\n")
    ok(inv("switch-push", "alpha", *fleet.args(plain), "--skip-checks"))
    back = ["rollback", "alpha"] if task == "rollback" else ["switch-generation", "alpha", "1"]
    result = ok(inv(*back, "--inventory", str(plain)))
    assert "lost the connection during" in result.stderr and "the switch finished (exit 0)" in result.stderr, result.stderr
    assert f"alpha: generation 1 is current and running ({first})" in result.stderr or f"rolled back to generation 1 ({first})" in result.stderr
    assert_consistent(lab, "alpha", first)
    assert lab.inside("alpha", ["find", "/run/nixfab/switches", "-mindepth", "1"], check=False).stdout == ""


def test_no_magic_rollback_and_a_host_the_switch_cut_off_says_so_and_what_to_check(make_fleet) -> None:  # type: ignore[no-untyped-def]
    # It used to end with "check `journalctl -u …` on the host": a host nixfab had just lost, and did not try to reach again.
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    ok(inv("switch-push", "alpha", *fleet.args(fleet.inventory("hosts:\n  alpha: {}\n")), "--skip-checks"))
    cutoff = fleet.inventory("hosts:\n  alpha: { attr: alpha-cutoff }\n", "cutoff.yaml")
    result = exits(inv("switch-push", "alpha", *fleet.args(cutoff), "--skip-checks", "--no-magic-rollback", "--confirm-timeout", "2"), 18)
    # Said once, under the host's name; the run's last line gives the totals.
    said = [line for line in result.stderr.splitlines() if line.startswith("alpha | error: ")]
    assert len(said) == 1 and result.stderr.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 failed (alpha) in "), result.stderr
    last = said[0]
    assert last.startswith("alpha | error: lost the connection during switch-to-configuration switch of "), last
    assert "no new SSH connection reaches the host" in last and "Connection refused" in last, last
    assert "may have cut it off" in last and "nothing on the host undoes it" in last and "From the host's console, check" in last, last
    assert "--switch-generation 1`" in last, last  # how to go back, to what was current before
    # What the message says is so: the cut-off system runs, as profile and boot default, and nothing was undone.
    path = toplevel_of(fleet.flake, "alpha-cutoff")
    assert_consistent(lab, "alpha", path)
    assert [number for number, _ in generations(lab, "alpha")] == [1, 2]
    record = re.search(r"`cat (/run/nixfab/switches/[0-9a-f]+)/activated`", last)
    assert record is not None and lab.inside("alpha", ["cat", f"{record[1]}/activated"]).stdout.strip() == "0"


def status_row(fleet: Fleet, inventory: Path, name: str) -> dict:  # type: ignore[type-arg]
    rows = json.loads(ok(inv("status", name, "--json", *fleet.args(inventory))).stdout)
    return next(row for row in rows if row["host"] == name)


def history_rows(fleet: Fleet) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(ok(inv("history", "--json", "--flake", str(fleet.flake))).stdout)


def verdict_file(lab: Lab, name: str, token: str) -> str:
    return lab.inside(name, ["cat", f"/nix/var/nix/nixfab/verdicts/{token}"], check=False).stdout


def test_a_deployer_killed_during_the_health_checks_is_rolled_back_by_its_watchdog_and_status_and_history_say_so(  # type: ignore[no-untyped-def]
    make_fleet, background, tmp_path: Path
) -> None:
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    health = "{ command: 'touch /run/lab-health-started; sleep 4; grep -qx ok /run/current-system/lab-health', timeout: 6, retries: 0 }"
    inventory = fleet.inventory(f"hosts:\n  alpha: {{ health: {health} }}\n")
    ok(inv("switch-push", "alpha", *fleet.args(inventory), "--skip-checks"))
    first = toplevel_of(fleet.flake, "alpha")
    lab.inside("alpha", ["rm", "-f", "/run/lab-health-started"])

    set_fixture_revision(fleet.flake, "2")
    output = tmp_path / "killed.err"
    deploy = start_in_background(background, ["switch-push", "alpha", *fleet.args(inventory), "--skip-checks", "--confirm-timeout", "2"], output)
    started = lambda: lab.inside("alpha", ["test", "-e", "/run/lab-health-started"], check=False).returncode == 0  # noqa: E731
    wait_for("the health check to run", lambda: started() or deploy.poll() is not None)
    assert deploy.poll() is None, output.read_text()
    os.killpg(deploy.pid, signal.SIGKILL)  # unhealthy or not, nobody will confirm it now
    deploy.wait(timeout=30)
    # The killed run's row is unfinished; the host has what the new switch made, until its watchdog decides.
    unfinished = history_rows(fleet)[-1]
    assert unfinished["result"] == "unfinished", unfinished
    token = unfinished["token"]
    wait_for("the watchdog's verdict", lambda: "by\twatchdog" in verdict_file(lab, "alpha", token))

    assert_consistent(lab, "alpha", first)
    assert generations(lab, "alpha") == [(1, first)]
    row = status_row(fleet, inventory, "alpha")
    assert row["watchdogs_pending"] == {}
    assert row["last_verdict"]["token"] == token and row["last_verdict"]["generation"] == 2 and row["last_verdict"]["undid"]
    assert row["watchdog"].startswith("watchdog rolled back generation 2 at "), row
    table = ok(inv("status", "alpha", *fleet.args(inventory))).stdout
    assert "watchdog rolled back generation 2 at " in table.splitlines()[1], table
    # `status` saw the verdict: the killed deploy's row now says what became of it.
    killed = history_rows(fleet)[-1]
    assert (killed["result"], killed["token"]) == ("rolled-back", token)
    assert killed["verdict"].startswith("rolled back by the watchdog: profile and boot default back to generation 1"), killed
    text = ok(inv("history", "--flake", str(fleet.flake))).stdout
    assert "    watchdog: rolled back by the watchdog: profile and boot default back to generation 1" in text, text


def test_a_deployer_killed_between_arming_the_watchdog_and_setting_the_profile_changes_nothing(  # type: ignore[no-untyped-def]
    make_fleet, background, tmp_path: Path
) -> None:
    fleet = make_fleet(["alpha"])
    lab = fleet.lab
    inventory = fleet.inventory("hosts:\n  alpha: {}\n")
    ok(inv("switch-push", "alpha", *fleet.args(inventory), "--skip-checks"))
    first = toplevel_of(fleet.flake, "alpha")

    set_fixture_revision(fleet.flake, "2")
    lab.hold("alpha", "nixfab-watchdog-")  # the lab's systemd-run waits after starting the watchdog, before it returns
    output = tmp_path / "killed.err"
    deploy = start_in_background(background, ["switch-push", "alpha", *fleet.args(inventory), "--skip-checks"], output)
    wait_for("the watchdog to be armed", lambda: lab.held("alpha", "nixfab-watchdog-") is not None or deploy.poll() is not None)
    assert deploy.poll() is None, output.read_text()
    unit = lab.held("alpha", "nixfab-watchdog-")
    assert unit is not None
    token = unit.removeprefix("nixfab-watchdog-")
    os.killpg(deploy.pid, signal.SIGKILL)
    deploy.wait(timeout=30)
    lab.release("alpha", "nixfab-watchdog-")

    # The profile was never set: everything still is generation 1, and nixfab's status says a watchdog waits.
    assert_consistent(lab, "alpha", first)
    assert generations(lab, "alpha") == [(1, first)]
    row = status_row(fleet, inventory, "alpha")
    assert list(row["watchdogs_pending"]) == [token] and row["watchdog"].startswith(f"pending ({token} armed "), row
    assert [(entry["result"], entry["token"]) for entry in history_rows(fleet)][-1] == ("unfinished", token)

    # The next deploy lets that watchdog decide first: it finds nothing of its own to undo.
    second = ok(inv("switch-push", "alpha", *fleet.args(inventory), "--skip-checks", "--json"))
    assert f"watchdog {token}: the watchdog undid nothing" in second.stderr
    path = toplevel_of(fleet.flake, "alpha")
    assert_consistent(lab, "alpha", path)
    assert generations(lab, "alpha") == [(1, first), (2, path)]
    assert "undid\t0" in verdict_file(lab, "alpha", token)
    killed, deployed = history_rows(fleet)[-2:]
    assert (killed["token"], killed["result"]) == (token, "interrupted") and killed["verdict"].startswith("the watchdog undid nothing"), killed
    assert deployed["result"] == "ok"
    assert status_row(fleet, inventory, "alpha")["watchdog"].startswith("confirmed at ")


def raw_command_line(pid: int) -> bytes:
    """/proc/PID/cmdline, or nothing for a process that ended since it was listed (the deploy's short-lived children)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def command_line(pid: int) -> str:
    return raw_command_line(pid).replace(b"\0", b" ").decode(errors="replace") or "(ended meanwhile)"


@pytest.mark.parametrize("phase", ["check", "build"])
def test_sighup_before_the_hosts_deploy_stops_like_ctrl_c_with_one_line(make_fleet, background, tmp_path: Path, phase: str) -> None:  # type: ignore[no-untyped-def]
    # During `nix flake check` (asked for with --check), SIGHUP used to end the process on the spot (its default): no line,
    # no exit code of ours, and the check left running.
    fleet = make_fleet(["alpha"])
    flake_nix = fleet.flake / "flake.nix"
    nonce = f"{os.getpid()}-{time.time_ns()}"  # never built before, so never a cache hit
    if phase == "check":
        # The fixture's check, slow and never built before.
        slow_check = flake_nix.read_text().replace('name = "lab-check";', f'name = "lab-check-{nonce}";', 1).replace(
            '"echo ok > $out"', '"PATH=/usr/bin:/bin; sleep 60; echo ok > $out"', 1
        )
        flake_nix.write_text(slow_check)
        running, args = b"flake\0check", ["switch-push", "alpha", "--check"]
    else:
        slow = f'name = "lab-sw"; nonce = "{nonce}"; args = [ "-c" "sleep 60; . ${{./build-sw.sh}}" ];'
        flake_nix.write_text(flake_nix.read_text().replace('name = "lab-sw";', slow, 1).replace("args = [ ./build-sw.sh ];", "", 1))
        running, args = b"\0build\0", ["switch-push", "alpha", "--skip-checks"]
    inventory = fleet.inventory("hosts:\n  alpha: {}\n")
    logins, commands = fleet.logins(), fleet.commands()
    output = tmp_path / "hangup.err"
    deploy = start_in_background(background, [*args, *fleet.args(inventory)], output)

    def nix_runs() -> bool:
        return any(running in raw_command_line(pid) for pid in children_of(deploy.pid))

    wait_for(f"nix to {phase}", lambda: nix_runs() or deploy.poll() is not None)
    assert deploy.poll() is None, output.read_text()
    # The live children (a child that has ended and awaits its reaping has no start time, and must not count as
    # "still the same process" once it is gone).
    nix = {pid: started for pid in children_of(deploy.pid) if (started := process_start_time(pid)) is not None}
    os.kill(deploy.pid, signal.SIGHUP)
    result = finished(deploy, output)
    assert result.returncode == 129, result.stderr
    assert "Traceback" not in result.stderr
    left = {pid: command_line(pid) for pid, started in nix.items() if process_start_time(pid) == started}
    assert not left, left  # nix went with it, gone before the run ended
    assert fleet.lab.state("alpha").generations == ()
    if phase == "build":
        # The host's connection opens while its system builds; no command runs there before the system is built.
        assert fleet.commands() == commands and fleet.logins()["alpha"] <= logins["alpha"] + 1
    # The check runs beside the build and the copy (the host may have its closure by now), inside the fleet's run:
    # either way the fleet's own handling, the summary, then the one line.
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert re.search(r"^alpha +interrupted\b", result.stderr, re.MULTILINE), result.stderr
    assert last.startswith("nixfab: error: hung up (SIGHUP)"), result.stderr


def children_of(pid: int) -> list[int]:
    """pid's children, whichever of its threads started them (the build and the flake check run in threads of their own)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(child) for child in (task / "children").read_text().split())
    except (OSError, ValueError):
        pass  # it ended, or a thread did, while we looked
    return found
