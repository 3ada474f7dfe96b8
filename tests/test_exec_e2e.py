"""`inv exec`: one command on the selected hosts, end to end through `inv` against the lab.

What the command did is read back from each host (a file it wrote in the
host's private /run), never only from what nixfab printed; the pure rules
(which words are the command, the run's exit code) are checked first.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.cli import arguments
from deploy.cli.options import ExecOptions
from deploy.engine.fleet import HostResult
from deploy.engine.remote_command import exit_code
from deploy.errors import UsageError
from deploy.lab import Lab, write_fixture_flake
from lab_helpers import inv, write_inventory

MARK = "/run/nixfab-exec-mark"

# --- the rules, without a lab ---------------------------------------------------------------------------


def options(machine: str | None = None, *, hosts: tuple[str, ...] = (), everything: bool = False, command: str | None = None) -> ExecOptions:
    return ExecOptions(machine, hosts, (), everything, "/flake", "hosts.yaml", command, False, 10, False)


def test_the_command_is_the_words_after_dashes_or_one_shell_string() -> None:
    selection, argv = arguments.exec_selection_and_command(options("alpha"), ["printf", "%s\\n", "a b", "it's"])
    assert (selection.machine, argv) == ("alpha", ("printf", "%s\\n", "a b", "it's"))
    selection, argv = arguments.exec_selection_and_command(options("alpha", command="uptime | cut -d, -f1"), [])
    assert (selection.machine, argv) == ("alpha", ("sh", "-c", "uptime | cut -d, -f1"))
    # With --host, --tag or --all naming the hosts, the MACHINE slot holds the shell string (`inv exec --all 'uptime'`).
    selection, argv = arguments.exec_selection_and_command(options("uptime", everything=True), [])
    assert (selection.machine, selection.everything, argv) == (None, True, ("sh", "-c", "uptime"))
    selection, argv = arguments.exec_selection_and_command(options("beta", hosts=("alpha",)), ["true"])
    assert (selection.machine, selection.hosts, argv) == ("beta", ("alpha",), ("true",))


@pytest.mark.parametrize(("given", "after"), [(options("alpha"), []), (options(everything=True), []), (options("alpha", command="true"), ["true"])])
def test_no_command_or_two_commands_is_one_usage_line(given: ExecOptions, after: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        arguments.exec_selection_and_command(given, after)
    assert "\n" not in str(refused.value) and refused.value.exit_code == 2


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0, 0], 0), ([3, 3], 3), ([0, 3], 1), ([2, 5], 1), ([4], 4)],
)
def test_the_run_exits_with_the_hosts_common_code_else_1(codes: list[int], expected: int) -> None:
    results = [HostResult(f"h{index}", "ok" if code == 0 else "failed", 0.1, exit_code=code) for index, code in enumerate(codes)]
    assert exit_code(results, interrupted=False) == expected
    assert exit_code(results, interrupted=True) == 130
    assert exit_code(results, interrupted=True, hangup=True) == 129


# --- against the lab -----------------------------------------------------------------------------------


@dataclass
class Site:
    lab: Lab
    flake: Path
    inventory: Path

    def exec(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - as subprocess calls it
        # The options first: whatever follows `--` is the command.
        return inv("exec", "--flake", str(self.flake), "--inventory", str(self.inventory), *args, input=input)

    def mark(self, name: str) -> str | None:
        """What the command left in the host's /run (private to the host), or None."""
        found = self.lab.inside(name, ["cat", MARK], check=False)
        return found.stdout if found.returncode == 0 else None


@pytest.fixture
def site(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "state"))
    lab.up(["alpha", "beta", "gamma"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta", "gamma"])
    inventory = write_inventory(
        lab, tmp_path / "hosts.yaml",
        "  alpha: { tags: [web] }\n  beta: { tags: [web] }\n  gamma: {}\n"
        "  ghost: { ssh: 'root@127.0.0.1:1', attr: alpha }\n"
        "  sudoer: { ssh: 'deploy@gamma', attr: gamma }\n",
    )
    return Site(lab, flake, inventory)


def test_an_argv_runs_on_each_selected_host_exactly_as_given(site: Site) -> None:
    """Spaces, quotes, $ and * in the words after `--` reach the host unchanged: no shell splits or expands them."""
    words = ["a b", "it's", '"quoted"', "$HOME", "*", "x;touch /tmp/nixfab-exec-injected"]
    result = site.exec("--tag", "web", "--json", "--", "sh", "-c", f'printf "%s\\n" "$@" > {MARK}; cat {MARK}; hostname', "sh", *words)
    assert result.returncode == 0, result.stderr
    expected = "".join(f"{word}\n" for word in words)
    for name in ("alpha", "beta"):
        assert site.mark(name) == expected
    assert site.mark("gamma") is None  # not selected, not touched
    assert not Path("/tmp/nixfab-exec-injected").exists()

    document = json.loads(result.stdout)
    assert document["exit_code"] == 0 and document["interrupted"] is False
    assert document["command"][:2] == ["sh", "-c"] and document["command"][-len(words):] == words
    hosts = {host["host"]: host for host in document["hosts"]}
    assert list(hosts) == ["alpha", "beta"]
    for name, host in hosts.items():
        assert set(host) == {"host", "result", "exit_code", "ran", "stdout", "stderr", "duration_seconds", "error", "log"}
        assert (host["result"], host["exit_code"], host["ran"], host["error"]) == ("ok", 0, True, None)
        assert host["stdout"] == expected + f"{name}\n"
        assert Path(host["log"]).read_text().count("it's") >= 1
    # Each host's lines come prefixed with its name, as a deploy's do.
    assert "alpha | x;touch /tmp/nixfab-exec-injected" in result.stderr and "beta  | $HOME" in result.stderr
    # The deploy tasks' selection, colmena's words included.
    tagged = json.loads(site.exec("--on", "@web", "--json", "--", "hostname").stdout)["hosts"]
    assert [(host["host"], host["stdout"]) for host in tagged] == [("alpha", "alpha\n"), ("beta", "beta\n")]


def test_a_shell_string_and_the_exit_code_rules(site: Site) -> None:
    # One shell string, in the MACHINE slot since --host names the hosts: the same code everywhere is the run's code.
    same = site.exec("--host", "alpha,beta,gamma", f"echo $(hostname) > {MARK}; exit 7")
    assert same.returncode == 7, same.stderr
    assert [site.mark(name) for name in ("alpha", "beta", "gamma")] == ["alpha\n", "beta\n", "gamma\n"]
    assert "the command exited 7 on every host" in same.stderr.splitlines()[-1]
    # Codes that differ make 1; the summary gives each host's.
    mixed = site.exec("--host", "alpha,beta", '[ "$(hostname)" = alpha ] || exit 5')
    assert mixed.returncode == 1
    assert mixed.stderr.splitlines()[-1] == "nixfab: error: the hosts' exit codes differ: alpha 0, beta 5"
    summary = [line.split() for line in mixed.stderr.splitlines() if line.startswith(("alpha ", "beta ")) and " | " not in line]
    assert summary[0][:2] == ["alpha", "0"] and summary[1][:2] == ["beta", "5"]
    # A host it cannot reach never ran the command: the others still do, and its own code (4) counts.
    with_ghost = site.exec("--host", "alpha,ghost", "--json", "--", "sh", "-c", f"echo ran > {MARK}")
    assert with_ghost.returncode == 1
    ghost = json.loads(with_ghost.stdout)["hosts"][1]
    assert (ghost["host"], ghost["ran"], ghost["exit_code"], ghost["stdout"]) == ("ghost", False, 4, None)
    assert "cannot reach" in ghost["error"]
    assert site.mark("alpha") == "ran\n"
    alone = site.exec("ghost", "--", "true")
    assert alone.returncode == 4 and "ghost" in alone.stderr.splitlines()[-1]


def test_sudo_as_the_host_says(site: Site) -> None:
    """deploy@gamma logs in as deploy and runs the command through sudo, as its deploys do; the password once, on stdin."""
    as_root = site.exec("sudoer", "--json", "--", "sh", "-c", f"id -un > {MARK}; id -u", input=site.lab.sudo_password + "\n")
    assert as_root.returncode == 0, as_root.stderr
    assert json.loads(as_root.stdout)["hosts"][0]["stdout"] == "0\n"
    assert site.mark("gamma") == "root\n"
    assert site.lab.sudo_password not in as_root.stdout + as_root.stderr
    wrong = site.exec("sudoer", "--", "true", input="wrong\n")
    assert wrong.returncode == 8 and "sudo refused the password" in wrong.stderr.splitlines()[-1]
    # A root login needs no sudo, and asks for no password.
    root = site.exec("gamma", "--json", "--", "id", "-u")
    assert root.returncode == 0 and json.loads(root.stdout)["hosts"][0]["stdout"] == "0\n"


def test_no_command_is_refused_before_any_host_is_asked(site: Site) -> None:
    logins = site.lab.accepted_ssh_logins("alpha")
    for args in (["alpha"], ["--all"], ["alpha", "uptime", "--", "uptime"]):
        refused = site.exec(*args)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith("nixfab: error: ")
    assert site.lab.accepted_ssh_logins("alpha") == logins
