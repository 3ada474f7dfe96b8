"""The command line as a NixOS user meets it (issue 13): help, peers' flags, one-line refusals, true lines.

Every test runs the real `inv`, `nixfab` or `fab` as a subprocess and asserts
exit codes and exact lines; where a host is concerned, on what the lab host's
disk says afterwards.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from deploy.lab import Lab, set_fixture_kernel, set_fixture_revision, write_fixture_flake
from lab_helpers import (
    BIN,
    REPO,
    git,
    inv,
    ok,
    toplevel_of,
    write_inventory,
)

NIXFAB = str(BIN / "nixfab")

pytestmark = pytest.mark.usefixtures("state_directory")


def nixfab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIXFAB, *args], cwd=cwd or REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def fab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fab"), "--search-root", str(REPO), *args], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )


def only_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """A refusal: exit `code`, and one line on stderr, nothing on stdout."""
    assert result.returncode == code, f"exit {result.returncode}, wanted {code}\n{result.stdout}\n{result.stderr}"
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


class Site:
    """Lab hosts alpha and beta, the fixture flake, and an inventory."""

    def __init__(self, lab: Lab, tmp: Path, inventory: str = "  alpha: {}\n  beta: {}\n") -> None:
        self.lab = lab
        self.tmp = tmp
        lab.up(["alpha", "beta"], reboot_delay=0.3)
        self.flake = write_fixture_flake(tmp / "flake", ["alpha", "beta"])
        self.inventory = write_inventory(lab, tmp / "hosts.yaml", inventory)

    def where(self) -> list[str]:
        return ["--flake", str(self.flake), "--inventory", str(self.inventory)]

    def deploy(self, task: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return inv(task, *args, *self.where(), "--skip-checks", **kwargs)

    def path(self, revision: str, attr: str = "alpha") -> str:
        set_fixture_revision(self.flake, revision)
        return toplevel_of(self.flake, attr)


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Site:
    return Site(lab, tmp_path)


def results(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {entry["host"]: entry for entry in json.loads(result.stdout)["hosts"]}


# --- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_task_help_shows_machine_nix_options_numbers_and_an_example(flag: str) -> None:
    shown = ok(inv("switch-push", flag))
    lines = shown.stdout.splitlines()
    assert lines[0] == "Usage: inv[oke] [--core-opts] switch-push [--options] [MACHINE] [-- NIX_OPTIONS]"
    assert "STRING" not in shown.stdout and shown.stderr == ""
    assert "  -j N, --parallel=N" in "\n".join(lines)
    assert any(line.startswith("  --confirm-timeout=SECONDS ") for line in lines)
    assert "    inv switch-push bigmachine" in lines
    assert nixfab("switch-push", flag).stdout.splitlines()[0] == "Usage: nixfab switch-push [--options] [MACHINE] [-- NIX_OPTIONS]"


def test_every_task_has_an_example_and_one_host_tasks_take_one_host() -> None:
    names = re.findall(r"^  (\S+)", ok(inv("--list")).stdout, re.MULTILINE)
    assert {"switch-push", "ssh-wait", "hm.push", "lab.up", "demo"} <= set(names)
    for name in names:
        shown = ok(inv(name, "--help")).stdout
        examples = shown.split("Examples:\n", 1)
        assert len(examples) == 2, f"{name} has no examples"
        assert re.search(r"^    (sudo )?(inv|fab) ", examples[1], re.MULTILINE), f"{name}'s examples run nothing"
    for name in ("generations", "rollback", "reset", "ssh-wait", "switch-generation", "hm.push"):
        host = [line for line in ok(inv(name, "--help")).stdout.splitlines() if "--host=NAME" in line]
        assert host and "a,b" not in host[0] and "repeatable" not in host[0], (name, host)
    assert ok(inv("ssh-wait", "--help")).stdout.splitlines()[0].endswith("ssh-wait [--options] [MACHINE] [COMMAND]")
    assert ok(inv("switch-generation", "--help")).stdout.splitlines()[0].endswith("switch-generation [--options] [MACHINE] GENERATION")


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "line"), [
    (["swich-push", "alpha"], "nixfab: error: no task named 'swich-push'; did you mean 'switch-push' or 'switch-pull' or 'switch-push-reset'?"),
    (["switch-push", "alpha", "--target-hots", "x"], "nixfab: error: switch-push has no option '--target-hots'; did you mean '--target-host'?"),
    (["switch-push", "--use-remote-sud"], "nixfab: error: switch-push has no option '--use-remote-sud'; did you mean '--use-remote-sudo'?"),
    (["generations", "--jsno"], "nixfab: error: generations has no option '--jsno'; did you mean '--json'?"),
    (["switch-push", "alpha", "beta"],
     "nixfab: error: 'beta' is not a task, and switch-push already has its MACHINE ('alpha'); several hosts: --host a,b"),
    (["switch-push", "--flake"], "nixfab: error: --flake needs a value"),
    (["--help", "swich-push"], "nixfab: error: no task named 'swich-push'; did you mean 'switch-push' or 'switch-pull' or 'switch-push-reset'?"),
    (["switch-push", "alpha", "--fail-fast", "--keep-going"], "nixfab: error: --fail-fast and --keep-going contradict each other; give one"),
])
def test_a_typo_is_one_line_with_did_you_mean_and_exit_2(argv: list[str], line: str, tmp_path: Path) -> None:
    assert only_line(inv(*argv, cwd=tmp_path), 2) == line
    assert only_line(nixfab(*argv, cwd=tmp_path), 2) == line


def test_the_invoke_pin_is_what_invoke_compat_was_tested_with() -> None:
    from deploy.cli import invoke_compat

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, ((low_major, low_minor), (high_major, high_minor)) in invoke_compat.TESTED.items():
        assert f"{package}>={low_major}.{low_minor},<{high_major}.{high_minor}" in dependencies, package
        assert invoke_compat.tested(package), f"the installed {package} is not a version invoke_compat was tested with"


def test_an_untested_invoke_is_left_as_it_is() -> None:
    probe = (
        "import invoke\n"
        "from invoke.parser.parser import ParseMachine\n"
        "handle = ParseMachine.handle\n"
        "invoke.__version_info__ = (3, 0, 3)\n"
        "from deploy.cli import invoke_compat\n"
        "print(invoke_compat.install(), ParseMachine.handle is handle)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout == "False True\n"


def test_a_closed_pipe_ends_quietly() -> None:
    for command in (f"{NIXFAB} --list | head -n 1", f"{NIXFAB} switch-push --help | head -n 1"):
        result = subprocess.run(["sh", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.count("\n") == 1, result
        assert result.stderr == "", result.stderr


def test_the_command_line_ends_at_once_yet_flushes_and_runs_exit_handlers(tmp_path: Path) -> None:
    """end_process skips the interpreter's teardown, not what a normal exit keeps: output, exit handlers, the code."""
    marker = tmp_path / "exit-handler-ran"
    program = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "from deploy.cli.cli import end_process\n"
        "print('said', end='')\n"
        "sys.stderr.write('warned')\n"
        "end_process(int(sys.argv[1]))\n"
    )
    ended = subprocess.run([sys.executable, "-c", program, "3"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (ended.returncode, ended.stdout, ended.stderr) == (3, "said", "warned")
    assert marker.read_text() == "ran"
    # A reader that went away before the last flush: 141 and nothing on stderr, as for any closed pipe.
    late = program.replace("print('said', end='')", "print('said', end=''); import time; time.sleep(0.5)")
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    cut = subprocess.run(["sh", "-c", '{ "$0" -c "$1" 0; echo "exit $?" >&2; } | true', sys.executable, late],
                         cwd=REPO, capture_output=True, text=True, timeout=60, env=buffered)
    assert cut.stderr == "warnedexit 141\n", cut.stderr


def test_inv_ends_with_the_task_s_exit_code_and_message(tmp_path: Path) -> None:
    """The command line's end (invoke_compat's execute) keeps Invoke's: an Exit's message on stderr and its code."""
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  alpha: {}\n")
    refused = inv("hosts", "--inventory", str(inventory), "--host", "nosuch")
    assert refused.returncode == 2 and refused.stderr.startswith("nixfab: error: "), refused
    listed = inv("hosts", "--inventory", str(inventory), "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout), listed


def test_invoke_s_dry_refuses_what_it_cannot_keep_from_running(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    environment = {**os.environ, "NIXFAB_LAB": str(lab_dir)}
    try:
        result = subprocess.run([str(BIN / "inv"), "--search-root", str(REPO), "--dry", "lab.up", "--hosts", "alpha"],
                                capture_output=True, text=True, env=environment, timeout=120)
    finally:
        started = Lab(lab_dir).down()  # by pid, should the refusal have failed and a lab started
    assert only_line(result, 2) == "nixfab: error: lab.up has no dry run (Invoke's --dry); nothing was done"
    assert started == [] and not lab_dir.exists()
    assert only_line(inv("--dry", "ssh-wait", "alpha", "true"), 2) == (
        "nixfab: error: ssh-wait has no dry run (Invoke's --dry): it would run COMMAND; nothing was done"
    )


def test_a_flake_git_does_not_track_gets_a_hint_about_path(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git(checkout, "init", "-q")
    (checkout / "README").write_text("x\n")
    git(checkout, "add", "README")
    git(checkout, "commit", "-q", "-m", "one")
    write_fixture_flake(checkout / "lab-flake", ["alpha"])
    line = only_line(inv("build", "alpha", "--flake", "lab-flake", cwd=checkout), 2)
    assert line == (
        f"nixfab: error: --flake lab-flake: its flake.nix is not tracked by the git checkout at {checkout}, and Nix sees only "
        "tracked files of a flake in git: `git add lab-flake`, or take the directory as it is with --flake path:lab-flake"
    )
    built = ok(inv("build", "alpha", "--flake", "path:lab-flake", cwd=checkout))
    assert built.stdout == toplevel_of(Path(f"path:{checkout / 'lab-flake'}"), "alpha") + "\n"


def test_a_missing_configuration_lists_the_ones_there_are(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  alpha: { attr: alpah }\n")
    result = inv("build", "alpha", "--flake", str(flake), "--inventory", str(inventory))
    assert result.returncode == 3, result.stderr
    said = f'alpha | error: {flake} has no nixosConfigurations."alpah"; it has: alpha, alpha-broken, alpha-cutoff, alpha-netdrop, alpha-sick, alpha-slow'
    assert result.stderr.count(said) == 1 and "show-trace" not in result.stderr, result.stderr  # once, and without a useless hint
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 failed (alpha) in "), result.stderr


# --- dry runs are plans ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", [["--dry"], ["switch-push", "--dry-run"]], ids=["invoke-dry", "dry-run"])
def test_a_dry_run_is_a_plan_and_changes_nothing(site: Site, how: list[str]) -> None:
    logins = site.lab.accepted_ssh_logins("alpha")
    argv = [*how, "switch-push", "alpha"] if how == ["--dry"] else [*how, "alpha"]
    result = ok(inv(*argv, *site.where(), "--skip-checks", "--json"))
    assert site.lab.state("alpha").generations == () and site.lab.activations("alpha") == []
    assert site.lab.accepted_ssh_logins("alpha") == logins
    assert results(result)["alpha"]["result"] == "planned"
    assert "confirmed over" not in result.stderr and "alpha | activated " not in result.stderr  # a plan claims no outcome
    assert "alpha | planned: switch <toplevel of alpha>; nothing was run" in result.stderr


def test_peers_words_select_and_pass_on(site: Site) -> None:
    """nixos-rebuild's --target-host, --build-host, --use-remote-sudo, --show-trace; colmena's --on and --keep-going; -j and -n."""
    plan = ok(inv("switch-push", "--target-host", "alpha", "--on", "beta", "--build-host", "local", "--use-remote-sudo", "--show-trace",
                  "--keep-going", "-j", "2", "-n", *site.where(), "--skip-checks", "--json"))
    assert set(results(plan)) == {"alpha", "beta"} and {row["result"] for row in results(plan).values()} == {"planned"}
    builds = [line for line in plan.stderr.splitlines() if line.startswith("+ nix ") and " build " in line]
    assert builds and all(line.endswith("--show-trace") for line in builds), builds
    for name in ("alpha", "beta"):
        # The activation (activate.sh), with sudo.
        assert re.search(rf"\+ \[{name}\] sudo sh -c '\n{name} +\| path=\$1 profile=\$2 set_profile=\$3 ", plan.stderr), plan.stderr

    tagged = write_inventory(site.lab, site.tmp / "tagged.yaml", "  alpha: { tags: [web] }\n  beta: {}\n")
    ok(inv("switch-push", "--on", "@web", "--flake", str(site.flake), "--inventory", str(tagged), "--skip-checks"))
    assert [g.number for g in site.lab.state("alpha").generations] == [1] and site.lab.state("beta").generations == ()


def name_of(path: str) -> str:
    """A store path's name, as the step lines say it: /nix/store/<hash>-nixos-system-alpha-lab.2 is nixos-system-alpha-lab.2."""
    return re.escape(path.rsplit("/", 1)[-1].split("-", 1)[-1])


# --- true lines --------------------------------------------------------------------------------------


def test_after_test_and_dry_activate_no_generation_is_claimed(site: Site) -> None:
    ok(site.deploy("switch-push", "alpha"))
    second = site.path("2")
    tested = ok(site.deploy("test", "alpha", "--json"))
    assert re.search(rf"^alpha \| activated {name_of(second)} \(test, generation 1 stays the boot default\) in [\d.]+ s$",
                     tested.stderr, re.MULTILINE), tested.stderr
    assert "generation 1 is" not in tested.stderr and results(tested)["alpha"]["generation"] is None
    state = site.lab.state("alpha")
    assert state.current_system == second and state.current_generation == 1

    third = site.path("3")
    shown = ok(site.deploy("dry-activate", "alpha", "--json"))
    assert re.search(rf"^alpha \| ran dry-activate of {name_of(third)} \(nothing changed\) in [\d.]+ s$", shown.stderr, re.MULTILINE)
    assert "alpha | would activate" in shown.stderr  # what it would do: its answer, shown without -v
    assert "generation 1 is" not in shown.stderr and results(shown)["alpha"]["generation"] is None
    assert site.lab.state("alpha") == state


def test_answering_no_to_ask_is_skipped_not_failed(site: Site, state_directory: Path) -> None:
    ok(site.deploy("switch-push", "alpha"))
    before = site.lab.state("alpha")
    site.path("2")
    answered = site.deploy("switch-push", "alpha", "--ask", "--json", input="n\n")
    assert answered.returncode == 0, answered.stderr
    assert results(answered)["alpha"]["result"] == "skipped"
    assert "alpha | skipped: not activated, as answered" in answered.stderr
    assert site.lab.state("alpha") == before
    journal = json.loads(ok(inv("history", "alpha", "--json", "--flake", str(site.flake))).stdout)
    assert [record["result"] for record in journal] == ["ok", "skipped"]


def test_diff_prints_the_difference_on_stdout_without_colour(site: Site) -> None:
    ok(site.deploy("switch-push", "alpha"))
    first = site.lab.state("alpha").current_system
    second = site.path("2")
    shown = ok(site.deploy("diff", "alpha"))
    lines = shown.stdout.splitlines()
    assert lines[0] == f"alpha: {first} -> {second} (nix store diff-closures)"
    assert any("nixos-system-alpha-lab" in line for line in lines[1:]) and "\x1b" not in shown.stdout
    assert f"{first} -> {second}" not in shown.stderr
    assert site.lab.state("alpha").current_system == first


def test_ssh_wait_exits_with_the_command_s_status_and_passes_its_stderr(site: Site) -> None:
    result = inv("ssh-wait", "alpha", "echo out; echo err >&2; exit 3", "--inventory", str(site.inventory), "--timeout", "30")
    assert (result.returncode, result.stdout) == (3, "out\n"), result.stderr
    assert "err\n" in result.stderr and "Traceback" not in result.stderr
    assert ok(inv("ssh-wait", "alpha", "true", "--inventory", str(site.inventory))).stdout == ""


def test_generations_ends_with_a_newline(site: Site) -> None:
    ok(site.deploy("switch-push", "alpha"))
    listed = ok(inv("generations", "alpha", "--inventory", str(site.inventory))).stdout
    assert listed.endswith("\n") and len(listed.splitlines()) == 2


def test_the_revision_recorded_is_the_deployed_flake_s(site: Site, tmp_path: Path) -> None:
    outer = tmp_path / "outer"  # a checkout the flake sits in without being part of it, as .lab/flake in nixfab's own
    outer.mkdir()
    git(outer, "init", "-q")
    (outer / ".gitignore").write_text("flake/\n")
    git(outer, "add", ".gitignore")
    git(outer, "commit", "-q", "-m", "outer")
    untracked = write_fixture_flake(outer / "flake", ["alpha", "beta"])
    ok(inv("switch-push", "alpha", "--flake", f"path:{untracked}", "--inventory", str(site.inventory), "--skip-checks"))
    listing = ok(inv("generations", "alpha", "--json", "--inventory", str(site.inventory))).stdout
    assert [generation["revision"] for generation in json.loads(listing)] == [None]
    journal = json.loads(ok(inv("history", "alpha", "--json", "--flake", str(untracked))).stdout)
    assert [record["revision"] for record in journal] == [None]

    own = tmp_path / "own"  # the flake's own checkout: its HEAD, and -dirty for an untracked file of a path: flake
    write_fixture_flake(own, ["alpha", "beta"])
    git(own, "init", "-q")
    git(own, "add", "-A")
    git(own, "commit", "-q", "-m", "own")
    set_fixture_revision(own, "2")
    git(own, "commit", "-q", "-am", "two")
    head = git(own, "rev-parse", "HEAD")
    (own / "notes.txt").write_text("untracked, but in a path: flake all the same\n")
    ok(inv("switch-push", "alpha", "--flake", f"path:{own}", "--inventory", str(site.inventory), "--skip-checks"))
    listing = ok(inv("generations", "alpha", "--json", "--inventory", str(site.inventory))).stdout
    assert [generation["revision"] for generation in json.loads(listing)] == [None, f"{head}-dirty"]


def test_reboot_pending_means_a_reboot_would_change_the_kernel(site: Site) -> None:
    def pending() -> object:
        rows = json.loads(ok(inv("status", "alpha", "--json", *site.where())).stdout)
        return rows[0]["reboot_pending"]

    ok(site.deploy("switch-push-reset", "alpha", "--reboot-timeout", "60"))  # booted into generation 1 (kernel 6.6.lab)
    assert pending() is False
    site.path("2")
    ok(site.deploy("switch-push", "alpha"))  # a new system, the same kernel: booted ≠ current, and no reboot needed
    state = site.lab.state("alpha")
    assert state.current_generation == 2 and state.current_system != state.booted_system
    assert pending() is False
    table = ok(inv("status", "alpha", *site.where())).stdout.splitlines()
    assert re.search(r"\bin sync\s+no\s", table[1]), table

    set_fixture_kernel(site.flake, "6.7.lab")
    site.path("3")
    ok(site.deploy("switch-push", "alpha"))
    assert pending() is True
    assert "reboot pending" in ok(inv("status", "alpha", *site.where())).stdout.splitlines()[1]

    ok(inv("reset", "alpha", "--inventory", str(site.inventory), "--reboot-timeout", "60"))
    assert pending() is False
    set_fixture_kernel(site.flake, "6.8.lab")
    site.path("4")
    ok(site.deploy("test", "alpha"))  # runs the new kernel's system, but a reboot would boot generation 3 again
    assert pending() is False
    site.path("5")
    ok(site.deploy("boot", "alpha"))  # the boot default has a new kernel: the next boot changes it
    assert pending() is True


# --- one fleet, one lab ------------------------------------------------------------------------------


def test_fab_with_two_hosts_is_one_fleet_run(site: Site) -> None:
    result = fab("-S", str(site.lab.ssh_config), "-H", "alpha,beta", "switch-push", *site.where(), "--check", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # one run, one document: two runs would print two
    assert {entry["host"]: entry["result"] for entry in document["hosts"]} == {"alpha": "ok", "beta": "ok"}
    assert result.stderr.count("==> checking ") == 1  # one flake check, one build, for both
    assert [g.number for g in site.lab.state("alpha").generations] == [1] == [g.number for g in site.lab.state("beta").generations]


def test_lab_up_on_a_running_lab_refuses_and_leaves_it_running(lab: Lab) -> None:
    environment = {**os.environ, "NIXFAB_LAB": str(lab.root)}

    def lab_up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "inv"), "--search-root", str(REPO), "lab.up", *args], capture_output=True, text=True,
                              env=environment, stdin=subprocess.DEVNULL, timeout=300)

    ok(lab_up("--hosts", "alpha"))
    boot_id = lab.state("alpha").boot_id
    refused = lab_up("--hosts", "alpha,beta")
    assert only_line(refused, 10) == (
        f"nixfab: error: a lab is already running at {lab.root} (alpha); starting again would wipe every host: "
        "use it as it is (`inv lab.status`), or stop it first (`inv lab.down`)"
    )
    assert lab.state("alpha").boot_id == boot_id and [host.name for host in lab.hosts()] == ["alpha"]


# --- ask before drawing --------------------------------------------------------------------------------


def read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 120.0) -> bool:
    """Read the pty into `seen` until `wanted` shows or it closes; the timeout only keeps a broken run from hanging."""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return False
        if not chunk:
            return False
        seen += chunk
    return True


def test_the_sudo_password_is_asked_before_the_live_table_is_drawn(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"], reboot_delay=0.3)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: { ssh: deploy@alpha }\n")
    main, terminal = pty.openpty()

    def controlling_terminal() -> None:
        import fcntl
        import termios

        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [str(BIN / "inv"), "--search-root", str(REPO), "switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory),
         "--skip-checks"],
        stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO, preexec_fn=controlling_terminal,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        assert read_until(main, b"password: ", seen), seen.decode(errors="replace")
        before = seen.decode(errors="replace")
        assert "alpha" not in before and "lock" not in before, before  # nothing of the table was drawn under the prompt
        os.write(main, (lab.sudo_password + "\n").encode())
        read_until(main, b"\x00never", seen)  # to the end of its output
        assert process.wait(timeout=300) == 0, seen.decode(errors="replace")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        os.close(main)
    assert lab.state("alpha").current_system == toplevel_of(flake, "alpha")


# --- the pure parts ----------------------------------------------------------------------------------


def test_at_names_a_tag_in_host_on_and_machine() -> None:
    from deploy.cli import arguments
    from deploy.errors import UsageError

    chosen = arguments.selection(machine="@db", host=["alpha,@web", "web-*"], tag=["edge"], all=False, flake="github:x/y",
                                 inventory="hosts.yaml")
    assert (chosen.machine, chosen.hosts, chosen.tags) == (None, ("alpha", "web-*"), ("edge", "db", "web"))
    plain = arguments.selection(machine="alpha", host=["beta"], tag=[], all=False, flake="github:x/y", inventory="hosts.yaml")
    assert (plain.machine, plain.hosts, plain.tags) == ("alpha", ("beta",), ())
    with pytest.raises(UsageError, match="@ names a tag"):
        arguments.selection(machine=None, host=["@"], tag=[], all=False, flake="github:x/y", inventory="hosts.yaml")


@pytest.mark.parametrize(("facts", "pending"), [
    ({"current": "/s/2", "booted": "/s/1", "boot": "/s/2", "booted-kernel": "/k/6.6", "boot-kernel": "/k/6.6"}, False),
    ({"current": "/s/2", "booted": "/s/1", "boot": "/s/2", "booted-kernel": "/k/6.6", "boot-kernel": "/k/6.7"}, True),
    ({"current": "/s/2", "booted": "/s/1", "boot": "/s/1", "booted-initrd": "/i/1", "boot-initrd": "/i/2"}, True),
    ({"current": "/s/2", "booted": "/s/1", "boot": "/s/1", "booted-kernel-modules": "/m/1", "boot-kernel-modules": "/m/1"}, False),
    ({"current": "/s/1", "booted": "", "boot": "/s/1"}, None),
    ({"current": "", "booted": "/s/1", "boot": "/s/1"}, None),
])
def test_reboot_pending_compares_kernel_initrd_and_modules(facts: dict[str, str], pending: bool | None) -> None:
    from deploy.plan.status import pending_reboot

    assert pending_reboot(facts) is pending


def test_the_activation_s_line_claims_a_generation_only_for_switch_and_boot() -> None:
    from deploy.activate.activation import Activation, SystemState
    from deploy.engine.pipeline import activated
    from deploy.model import Action

    before = SystemState(6, "/nix/store/a-nixos-system-x-6", "/nix/store/a-nixos-system-x-6")
    path = "/nix/store/b-nixos-system-x-8"
    assert activated(Activation(path, Action.SWITCH, 7, before)) == "activated generation 7 (switch)"
    assert activated(Activation(path, Action.BOOT, 7, before)) == "made generation 7 the boot default (boot, running after a reboot)"
    assert activated(Activation(path, Action.TEST, 6, before)) == "activated nixos-system-x-8 (test, generation 6 stays the boot default)"
    assert activated(Activation(path, Action.DRY_ACTIVATE, 6, before)) == "ran dry-activate of nixos-system-x-8 (nothing changed)"


def test_colour_goes_and_text_stays() -> None:
    from deploy.plan.diff import without_colour

    assert without_colour("\x1b[1mfoo\x1b[0m: \x1b[31;1m∅\x1b[0m → 1.0\n") == "foo: ∅ → 1.0\n"


def test_revision_of_a_flake_that_sits_in_a_checkout_without_being_part_of_it(tmp_path: Path) -> None:
    from deploy.record import history

    checkout = tmp_path / "checkout"
    (checkout / "ignored").mkdir(parents=True)
    (checkout / "own").mkdir()
    git(checkout, "init", "-q")
    (checkout / ".gitignore").write_text("ignored/\n")
    for directory in (checkout / "ignored", checkout / "own"):
        (directory / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    git(checkout, "add", ".gitignore", "own/flake.nix")
    git(checkout, "commit", "-q", "-m", "one")
    head = git(checkout, "rev-parse", "HEAD")
    assert history.flake_revision(f"path:{checkout / 'ignored'}") == (None, None)
    assert history.flake_revision(str(checkout / "ignored")) == (None, None)
    assert history.untracked_flake_checkout(checkout / "ignored") == checkout
    assert history.untracked_flake_checkout(checkout / "own") is None
    assert history.flake_revision(f"path:{checkout / 'own'}") == (head, False)
    (checkout / "own" / "notes.txt").write_text("untracked\n")
    assert history.flake_revision(f"path:{checkout / 'own'}") == (head, True)  # Nix copies it into a path: flake
    assert history.flake_revision(str(checkout / "own")) == (head, False)  # and leaves it out of a git flake
