"""The output policy, end to end against the lab: what a run says in a pipe and on a terminal, and how much.

Default: one line per host per step, Nix's own output from this machine, the
summary; never an internal script. -v (or Invoke's --echo): every command,
local and remote. -q (or Invoke's --hide): errors and the summary. Each
error once, with the output that shows why. No ANSI code in a pipe; NO_COLOR
honoured on a terminal. Old runs' logs pruned to --log-keep. Every test also
checks the hosts' state, so a run that printed well but deployed nothing fails.
"""
from __future__ import annotations

import os
import pty
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from lab_helpers import BIN, REPO, inv, ok, toplevel_of, write_inventory

HOSTS = ("alpha", "beta", "gamma")
TOTALS = re.compile(r"^(?:nixfab: error: )?\d+ [a-z ]+.* in \d+\.\d s; logs: (?P<logs>\S+)$")
# Any escape sequence at all: a pipe gets none.
ESCAPE = "\x1b"
# The SGR parameters that set a colour (foreground, background, 256 and true colour); bold and dim are no colour.
COLOUR = re.compile(r"\x1b\[(?P<parameters>[0-9;]*)m")


def colours(text: str) -> list[str]:
    found = []
    for match in COLOUR.finditer(text):
        numbers = [int(part) for part in match["parameters"].split(";") if part.isdigit()]
        if any(30 <= number <= 49 or 90 <= number <= 107 for number in numbers):
            found.append(match.group())
    return found


@dataclass
class Site:
    lab: Lab
    flake: Path
    inventory: Path
    state: Path

    def deploy(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_inv(*args, "--flake", str(self.flake), "--inventory", str(self.inventory), env=env)

    def logs(self) -> Path:
        return self.state / "logs"


def run_inv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is None:
        return inv(*args)
    return subprocess.run(
        [str(BIN / "inv"), "--search-root", str(REPO), *args], cwd=REPO, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300, env={**os.environ, **env},
    )


@pytest.fixture
def site(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    state = tmp_path / "state"
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(state))
    monkeypatch.delenv("NO_COLOR", raising=False)
    lab.up(list(HOSTS), reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", HOSTS)
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "".join(f"  {name}: {{}}\n" for name in HOSTS))
    return Site(lab, flake, inventory, state)


def lines_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    return (result.stdout + result.stderr).splitlines()


def no_internal_script(text: str) -> None:
    assert "sh -c" not in text and "\n+ " not in f"\n{text}" and "| + " not in text, text
    for script_line in ("lock=$1", "dir=$1", "profile=$1", "for path do", "marker=$1"):
        assert script_line not in text, text


def deployed(site: Site, name: str, generation: int) -> None:
    state = site.lab.state(name)
    assert state.current_generation == generation and state.current_system == toplevel_of(site.flake, name), state


# ---- the default: a line per host per step --------------------------------------------------------------------------


def test_a_one_host_switch_push_says_at_most_15_lines_and_no_script(site: Site) -> None:
    result = ok(site.deploy("switch-push", "alpha"))
    deployed(site, "alpha", 1)
    lines = lines_of(result)
    assert len(lines) <= 15, "\n".join(lines)
    no_internal_script(result.stderr)
    assert ESCAPE not in result.stdout + result.stderr
    assert re.search(r"^alpha \| copied \d+ paths?, [\d.]+ KiB in \d+\.\d s$", result.stderr, re.MULTILINE), result.stderr
    assert re.search(r"^alpha \| activated generation 1 \(switch\) in \d+\.\d s$", result.stderr, re.MULTILINE), result.stderr
    assert re.search(r"^alpha \| confirmed over a new SSH connection in \d+\.\d s$", result.stderr, re.MULTILINE), result.stderr
    # The summary: the table, then totals, the overall time and where the logs are.
    assert re.search(r"^alpha +ok +1 +\d+\.\ds$", result.stderr, re.MULTILINE), result.stderr
    totals = TOTALS.match(lines[-1])
    assert totals and lines[-1].startswith("1 ok in "), lines[-1]
    # The per-host log holds everything the terminal did not show: every command, whole scripts, what they printed.
    log = (Path(totals["logs"]) / "alpha.log").read_text()
    assert "+ [alpha] sh -c '\nlock=$1 holder=$2 " in log  # the lock's round trip, whole
    assert f"' sh {toplevel_of(site.flake, 'alpha')} /nix/var/nix/profiles/system 1 " in log  # the activation's arguments
    assert "activating the configuration...\n" in log and "acquired\n" in log
    assert "nix --extra-experimental-features 'nix-command flakes' build --json" in (Path(totals["logs"]) / "run.log").read_text()

    again = ok(site.deploy("switch-push", "alpha"))  # nothing to do: even fewer lines
    assert len(lines_of(again)) <= 15 and "alpha | up to date" in again.stderr and lines_of(again)[-1].startswith("1 up to date in ")
    no_internal_script(again.stderr)


def test_a_three_host_switch_push_says_at_most_25_lines(site: Site) -> None:
    ok(site.deploy("switch-push", "alpha", "--skip-checks"))
    set_fixture_revision(site.flake, "2")
    result = ok(site.deploy("switch-push", "--all"))
    for name, generation in (("alpha", 2), ("beta", 1), ("gamma", 1)):
        deployed(site, name, generation)
    lines = lines_of(result)
    assert len(lines) <= 25, "\n".join(lines)
    no_internal_script(result.stderr)
    assert ESCAPE not in result.stdout + result.stderr
    for name in HOSTS:
        mine = [line.split(" | ", 1)[1] for line in lines if line.startswith(f"{name.ljust(5)} | ")]
        assert len(mine) == 3, "\n".join(mine)  # one line per step
        assert re.fullmatch(r"copied \d+ paths?, [\d.]+ KiB in \d+\.\d s", mine[0]), mine
        assert re.fullmatch(rf"activated generation {2 if name == 'alpha' else 1} \(switch\) in \d+\.\d s", mine[1]), mine
        assert re.fullmatch(r"confirmed over a new SSH connection in \d+\.\d s", mine[2]), mine
    assert lines[-1].startswith("3 ok in ") and TOTALS.match(lines[-1]), lines[-1]


def test_waves_are_announced(site: Site) -> None:
    result = ok(site.deploy("switch-push", "--all", "--skip-checks", "--canary", "--batch", "1"))
    for name in HOSTS:
        deployed(site, name, 1)
    announced = [line for line in result.stderr.splitlines() if line.startswith("==> wave ")]
    assert announced == ["==> wave 1/3: alpha (the canary)", "==> wave 2/3: beta", "==> wave 3/3: gamma"], result.stderr


# ---- -v, -q, and Invoke's own --echo and --hide ---------------------------------------------------------------------


def test_verbose_shows_every_command_local_and_remote_and_echo_means_verbose(site: Site) -> None:
    for flags, name in ((["-v"], "alpha"), (["--verbose"], "beta")):
        result = ok(site.deploy("switch-push", name, "--skip-checks", *flags))
        deployed(site, name, 1)
        assert f"{name} | + [{name}] sh -c '\n{name} | lock=$1 holder=$2 " in result.stderr  # a whole remote script
        assert f"{name} | ' sh {toplevel_of(site.flake, name)} /nix/var/nix/profiles/system 1 " in result.stderr
        assert "\n+ nix --extra-experimental-features 'nix-command flakes' build --json " in result.stderr  # a local one
        # The closure's export, written here (no nix-store --export), into the host's import.
        imports = [line for line in result.stderr.splitlines() if "nix-store --import" in line]
        assert len(imports) == 1 and re.fullmatch(
            rf"{name} \| \+ \[{name}\] nix-store --import '<' '\(the export of the \d+ paths? it lacks, written here\)'", imports[0]
        ), imports
        assert "+ nix-store --serve\n" in result.stderr  # the run's store server, which lists the closure
        assert f"{name} | activating the configuration..." in result.stderr  # and what the commands on the host print
    echoed = run_inv("--echo", "switch-push", "gamma", "--skip-checks", "--flake", str(site.flake), "--inventory", str(site.inventory))
    ok(echoed)
    deployed(site, "gamma", 1)
    assert "gamma | + [gamma] sh -c '\ngamma | lock=$1 holder=$2 " in echoed.stderr


def test_quiet_says_only_the_summary_and_hide_means_quiet(site: Site) -> None:
    result = ok(site.deploy("switch-push", "alpha", "-q"))
    deployed(site, "alpha", 1)
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["host", "result", "gen", "time"], result.stderr
    assert lines[1].split()[:3] == ["alpha", "ok", "1"] and lines[2].startswith("1 ok in ") and TOTALS.match(lines[2])
    hidden = run_inv("--hide", "both", "switch-push", "--host", "beta,gamma", "--skip-checks",
                     "--flake", str(site.flake), "--inventory", str(site.inventory))
    ok(hidden)
    deployed(site, "beta", 1)
    lines = hidden.stderr.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("2 ok in "), hidden.stderr
    refused = site.deploy("switch-push", "alpha", "-q", "-v")
    assert refused.returncode == 2 and refused.stderr.splitlines() == [
        "nixfab: error: -v/--verbose and -q/--quiet contradict each other; give one"
    ], refused.stderr


def test_quiet_still_says_an_error_once_with_what_shows_why(site: Site) -> None:
    ok(site.deploy("switch-push", "alpha", "--skip-checks", "-q"))
    good = site.lab.state("alpha")
    broken = write_inventory(site.lab, site.inventory.parent / "broken.yaml", "  alpha: { attr: alpha-broken }\n")
    result = run_inv("switch-push", "alpha", "--skip-checks", "-q", "--flake", str(site.flake), "--inventory", str(broken))
    assert result.returncode == 6, result.stderr
    assert site.lab.state("alpha") == good  # rolled back
    lines = result.stderr.splitlines()
    assert lines[0].startswith("alpha | error: switch-to-configuration switch failed (exit 4): "), result.stderr
    # What shows why: the switch's own output (under systemd-run --pipe it comes to us, not to its unit's journal).
    assert lines[1] == "alpha |   switch-to-configuration switch (last lines):" and any("broken-lab.service" in line for line in lines[2:-3])
    assert lines[-3].split() == ["host", "result", "gen", "time"] and lines[-2].split()[:2] == ["alpha", "rolled-back"]
    assert lines[-1].startswith("nixfab: error: 1 rolled back (alpha) in ") and TOTALS.match(lines[-1]), result.stderr
    assert not any("copied" in line or "activated" in line for line in lines)


# ---- errors once ----------------------------------------------------------------------------------------------------


def test_an_error_is_said_once_with_its_journal_and_no_useless_hint(site: Site) -> None:
    ok(site.deploy("switch-push", "--host", "alpha,beta", "--skip-checks"))
    broken = write_inventory(site.lab, site.inventory.parent / "broken.yaml", "  alpha: { attr: alpha-broken }\n  beta: {}\n")
    result = run_inv("switch-push", "--host", "alpha,beta", "--skip-checks", "--flake", str(site.flake), "--inventory", str(broken))
    assert result.returncode == 6, result.stderr
    deployed(site, "alpha", 1)  # back on its first generation
    assert result.stderr.count("switch-to-configuration switch failed") == 1, result.stderr
    assert result.stderr.count("rolled back: profile and boot default back to generation 1") == 1, result.stderr
    assert result.stderr.count("switch-to-configuration switch (last lines):") == 1, result.stderr  # the failed switch's output, once
    assert result.stderr.count("warning: the following units failed: broken-lab.service") == 2  # in the error, and its output
    assert "show-trace" not in result.stderr  # no Nix hint for an activation
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 up to date, 1 rolled back (alpha) in ")
    no_internal_script(result.stderr)


def test_an_unreachable_host_is_one_error_without_a_hint(site: Site, tmp_path: Path) -> None:
    inventory = write_inventory(site.lab, tmp_path / "gone.yaml", "  alpha: {}\n  ghost: { attr: beta, ssh: 'root@127.0.0.1:1' }\n")
    result = run_inv("switch-push", "--all", "--skip-checks", "--flake", str(site.flake), "--inventory", str(inventory))
    assert result.returncode == 4, result.stderr
    deployed(site, "alpha", 1)
    errors = [line for line in result.stderr.splitlines() if "cannot reach" in line]
    assert len(errors) == 1 and errors[0].startswith("ghost | error: "), result.stderr
    assert "show-trace" not in result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 ok, 1 failed (ghost) in ")


# ---- logs -----------------------------------------------------------------------------------------------------------


def test_old_runs_logs_are_pruned_to_log_keep(site: Site) -> None:
    logs = site.logs()
    logs.mkdir(parents=True)
    (logs / "notes").mkdir()  # not a run's directory: never touched
    seen = []
    for revision in ("2", "3", "4"):
        set_fixture_revision(site.flake, revision)
        result = ok(site.deploy("switch-push", "alpha", "--skip-checks", "--log-keep", "2"))
        totals = TOTALS.match(result.stderr.splitlines()[-1])
        assert totals, result.stderr
        seen.append(Path(totals["logs"]).name)
    deployed(site, "alpha", 3)
    assert sorted(entry.name for entry in logs.iterdir()) == sorted([*seen[1:], "notes"])
    set_fixture_revision(site.flake, "5")
    ok(site.deploy("switch-push", "alpha", "--skip-checks", "--log-keep", "0"))  # 0 keeps them all
    assert len([entry for entry in logs.iterdir() if entry.name != "notes"]) == 3
    set_fixture_revision(site.flake, "6")
    ok(site.deploy("switch-push", "alpha", "--skip-checks"))  # the default keeps 20
    assert len([entry for entry in logs.iterdir() if entry.name != "notes"]) == 4


# ---- a terminal: the live table, colours, NO_COLOR ------------------------------------------------------------------


def in_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run argv with stderr on a pseudo-terminal (stdout a pipe): its exit status, stdout, and all the terminal got."""
    controller, terminal = pty.openpty()
    received: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return  # the terminal side closed
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.run(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, timeout=300,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40", **env},
        )
    finally:
        os.close(terminal)
        reader.join(timeout=30)
        os.close(controller)
    return process.returncode, process.stdout.decode(), b"".join(received).decode("utf-8", "replace")


def test_on_a_terminal_the_live_table_shows_queued_hosts_and_the_wave_and_no_color_is_honoured(site: Site) -> None:
    argv = [str(BIN / "inv"), "--search-root", str(REPO), "switch-push", "--all", "--skip-checks", "--batch", "2",
            "--flake", str(site.flake), "--inventory", str(site.inventory)]
    code, _, drawn = in_a_terminal(argv, {})
    assert code == 0, drawn
    for name in HOSTS:
        deployed(site, name, 1)
    assert "queued" in drawn and "wave 1/2" in drawn and "wave 2/2" in drawn, drawn  # the live table's rows and title
    assert colours(drawn), drawn  # a terminal gets colour...
    set_fixture_revision(site.flake, "2")
    code, _, drawn = in_a_terminal(argv, {"NO_COLOR": "1"})
    assert code == 0, drawn
    deployed(site, "gamma", 2)
    assert "queued" in drawn and not colours(drawn), drawn  # ...unless NO_COLOR says otherwise
    set_fixture_revision(site.flake, "3")
    piped = ok(site.deploy("switch-push", "--all", "--skip-checks", "--batch", "2"))
    assert ESCAPE not in piped.stdout + piped.stderr and "queued" not in piped.stderr  # a pipe: plain lines, no table
