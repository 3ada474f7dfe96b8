"""preflight.sh and activate.sh run by /bin/sh here, with stand-ins for nix-store and nix-env on PATH.

Each folds several questions or steps into one round trip, and passes lists
among other values by count: these tests check that logic itself (what is
asked, in which order, where a failure stops), which the lab's deploys only
see as a whole. Nothing outside tmp_path is touched: the lock, the profile
and the watchdogs' directory are the test's own.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.engine.preflight import Questions, parse_answers
from deploy.model import Action
from deploy.scripts import script

STORE_SYSTEM = "/nix/store/0000000000000000000000000000000c-nixos-system-web1"


def run(name: str, *args: str, path: Path | None = None, systemd: bool | None = None) -> subprocess.CompletedProcess[str]:
    """systemd: run in a mount namespace of the test's own, with an empty /run that has /run/systemd/system or not."""
    env = {"PATH": f"{path}:/usr/bin:/bin" if path else "/usr/bin:/bin"}
    argv = ["/bin/sh", "-c", script(name), "sh", *args]
    if systemd is not None:
        booted = 'mount -t tmpfs tmpfs /run && { [ "$0" = 0 ] || mkdir -p /run/systemd/system; } && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", booted, "1" if systemd else "0", *argv]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)


def stand_in(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    tool = directory / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A profile on generation 3 (whose system is STORE_SYSTEM), and room for the lock and the watchdogs."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "system-3-link").symlink_to(STORE_SYSTEM)
    (profiles / "system").symlink_to("system-3-link")
    return tmp_path


def preflight(host: Path, *questions: str, path: Path | None = None, systemd: bool | None = None) -> subprocess.CompletedProcess[str]:
    lock = host / "run" / "deploy.lock"
    return run("preflight", str(lock), '{"me": 1}', str(host / "watchdogs"), script("watchdogs_pending"), *questions, path=path, systemd=systemd)


def asked(host: Path, wanted: str, *, boot: str = "1", running: str = "0", space: tuple[str, ...] = (),
          ask_systemd: bool = False, closure: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (
        script("run_first"), script("system_state"), str(host / "profiles" / "system"), wanted, boot, running,
        script("free_space"), str(len(space)), *space, "1" if ask_systemd else "0", *closure,
    )


# ---- preflight.sh -------------------------------------------------------------------------------------------------------


def test_the_lock_alone_is_taken_and_its_holder_written(host: Path) -> None:
    result = preflight(host)
    assert (result.returncode, result.stdout) == (0, "acquired\n")
    assert (host / "run" / "deploy.lock" / "holder").read_text() == '{"me": 1}\n'


def test_a_held_lock_answers_its_age_and_holder_and_nothing_else(host: Path) -> None:
    preflight(host)
    result = preflight(host, *asked(host, STORE_SYSTEM))
    lines = result.stdout.splitlines()
    assert lines[0] == "held" and lines[1].isdigit() and lines[2] == '{"me": 1}' and len(lines) == 3


def test_a_host_that_has_the_system_says_current_and_lets_the_lock_go(host: Path) -> None:
    result = preflight(host, *asked(host, STORE_SYSTEM, space=("/",), ask_systemd=True, closure=("/nix/store/x",)))
    assert result.stdout.splitlines() == ["acquired", "profile\tsystem-3-link", f"generation\t{STORE_SYSTEM}", "running\t", "current"]
    assert not (host / "run" / "deploy.lock").exists()  # nothing else asked: the deploy ends here


def test_a_pending_watchdog_keeps_the_lock_even_when_the_host_looks_current(host: Path) -> None:
    (host / "watchdogs" / "0123456789ab").mkdir(parents=True)
    result = preflight(host, *asked(host, STORE_SYSTEM))
    lines = result.stdout.splitlines()
    assert lines[1].startswith("pending\t0123456789ab\t") and "current" not in lines
    assert (host / "run" / "deploy.lock").is_dir()


def test_an_older_system_is_asked_the_rest_each_list_passed_by_its_count(host: Path) -> None:
    tools = host / "bin"
    # What the host lacks is read off its store directory: no nix-store process (it costs 15 ms a deploy).
    stand_in(tools, "nix-store", f'touch {host}/nix-store-ran; exit 1')
    store = host / "store"
    (store / "a").mkdir(parents=True)
    (store / "d").symlink_to("nowhere")  # a store path may be a symlink, dangling here
    closure = tuple(str(store / name) for name in ("a", "b", "c", "d"))
    result = preflight(host, *asked(host, "/nix/store/new", space=("/", str(host)), ask_systemd=True, closure=closure), path=tools, systemd=True)
    lines = result.stdout.splitlines()
    assert lines[:4] == ["acquired", "profile\tsystem-3-link", f"generation\t{STORE_SYSTEM}", "running\t"]
    assert [line.split("\t")[:2] for line in lines if line.startswith("df\t")] == [["df", "/"], ["df", str(host)]]
    assert lines[-4:] == ["systemd\t1", "closure-checked", f"invalid\t{store}/b", f"invalid\t{store}/c"]
    assert (host / "run" / "deploy.lock").is_dir()
    assert not (host / "nix-store-ran").exists()
    questions = Questions(Action.SWITCH, "/nix/store/new", space=("/", str(host)), closure=closure)
    answers = parse_answers(lines[1:], questions, "web1")
    assert answers.state is not None and answers.state.generation == 3 and not answers.current
    assert answers.spaces is not None and set(answers.spaces) == {"/", str(host)}
    assert (answers.missing, answers.systemd) == ((f"{store}/b", f"{store}/c"), True)


def test_a_host_without_systemd_is_an_answer_too(host: Path) -> None:
    result = preflight(host, *asked(host, "/nix/store/new", ask_systemd=True, closure=(str(host / "absent"),)), systemd=False)
    assert result.stdout.splitlines()[-3:] == ["systemd\t0", "closure-checked", f"invalid\t{host / 'absent'}"]


# ---- lock_release.sh ---------------------------------------------------------------------------------------------------


def test_the_release_records_the_revision_removes_the_leftovers_and_then_the_lock(host: Path) -> None:
    preflight(host)
    leftover = host / "run" / "switches" / "0123456789ab"
    leftover.mkdir(parents=True)
    revisions = host / "generations"
    lock = str(host / "run" / "deploy.lock")
    result = run("lock_release", lock, '{"me": 1}', script("lock_clear_if_held_by"), script("write_revision"), str(revisions), '{"r": 1}', "4",
                 str(leftover))
    assert result.returncode == 0, result.stderr
    assert (revisions / "4.json").read_text() == '{"r": 1}' and not leftover.exists() and not (host / "run" / "deploy.lock").exists()


def test_a_release_without_a_revision_leaves_someone_else_s_lock_alone(host: Path) -> None:
    preflight(host)
    lock = str(host / "run" / "deploy.lock")
    result = run("lock_release", lock, '{"them": 2}', script("lock_clear_if_held_by"), "", "", "", "")
    assert result.returncode == 1 and (host / "run" / "deploy.lock").is_dir()


# ---- confirm_activation.sh, with the release ------------------------------------------------------------------------


def release_args(host: Path, revision: str = "7") -> tuple[str, ...]:
    lock = str(host / "run" / "deploy.lock")
    return ("sh", "-c", script("lock_release"), "sh", lock, '{"me": 1}', script("lock_clear_if_held_by"),
            script("write_revision"), str(host / "generations"), '{"r": 1}', revision)


@pytest.mark.parametrize("activated", ["0", "4", None])
def test_the_confirmation_releases_the_lock_only_once_it_confirmed(host: Path, activated: str | None) -> None:
    """The deploy's last command rides on the confirmation: the revision and the lock's release happen only for a
    confirmed activation; a failed or unfinished one leaves both to the deployer (no revision, its own release)."""
    preflight(host)
    watchdog = host / "watchdogs" / "0123456789ab"
    watchdog.mkdir(parents=True)
    if activated is not None:
        (watchdog / "activated").write_text(activated)
    result = run("confirm_activation", str(watchdog), str(host / "verdicts"), *release_args(host))
    assert result.returncode == 0, result.stderr
    if activated == "0":
        assert result.stdout == "confirmed\nended\n"
        assert (host / "generations" / "7.json").read_text() == '{"r": 1}' and not (host / "run" / "deploy.lock").exists()
        assert not watchdog.exists() and "confirmed" in (host / "verdicts" / "0123456789ab").read_text()
    else:
        assert result.stdout == ("failed 4\n" if activated else "pending\n")
        assert not (host / "generations").exists() and (host / "run" / "deploy.lock").is_dir()


def test_a_confirmation_whose_release_fails_says_so_by_not_saying_ended(host: Path) -> None:
    preflight(host)
    (host / "run" / "deploy.lock" / "holder").write_text('{"them": 2}\n')  # someone else's now: not ours to clear
    watchdog = host / "watchdogs" / "0123456789ab"
    watchdog.mkdir(parents=True)
    (watchdog / "activated").write_text("0")
    result = run("confirm_activation", str(watchdog), str(host / "verdicts"), *release_args(host))
    assert result.stdout == "confirmed\n" and (host / "run" / "deploy.lock").is_dir()
    assert run("confirm_activation", str(watchdog), str(host / "verdicts")).stdout == "pending\n"  # its directory went with the claim


# ---- activate.sh --------------------------------------------------------------------------------------------------------


@pytest.fixture
def system(tmp_path: Path) -> Path:
    toplevel = tmp_path / "system"
    toplevel.mkdir()
    (toplevel / "nixos-version").write_text("24.11\n")
    return toplevel


def activate(host: Path, toplevel: Path, set_profile: str, arming: tuple[str, ...], *switch: str) -> subprocess.CompletedProcess[str]:
    tools = host / "bin"
    # nix-env -p PROFILE --set PATH: a new generation 4, as nix-env makes it; each step notes itself in order.
    stand_in(tools, "nix-env", f'echo nix-env >> {host}/order; ln -s "$4" "$2-4-link" && ln -sfn system-4-link "$2"')
    profile = str(host / "profiles" / "system")
    return run("activate", str(toplevel), profile, set_profile, script("run_first"), str(len(arming)), *arming, *switch, path=tools)


def test_it_arms_then_sets_the_profile_then_runs_the_switch_with_its_exit_status(host: Path, system: Path) -> None:
    arm = ("sh", "-c", f"echo armed >> {host}/order")
    result = activate(host, system, "1", arm, "sh", "-c", f"echo switched >> {host}/order; echo switching; exit 4")
    assert result.returncode == 4
    assert result.stdout == "nixfab-activate\tarmed\nnixfab-activate\tprofile\tsystem-4-link\nswitching\n"
    assert (host / "order").read_text().split() == ["armed", "nix-env", "switched"]


def test_test_and_dry_activate_neither_arm_nor_set_the_profile(host: Path, system: Path) -> None:
    result = activate(host, system, "0", (), "sh", "-c", "echo switched")
    assert (result.returncode, result.stdout) == (0, "switched\n")
    assert not (host / "order").exists() and (host / "profiles" / "system").resolve().name != "system-4-link"


def test_what_is_no_nixos_system_is_refused_before_anything(host: Path, tmp_path: Path) -> None:
    result = activate(host, tmp_path / "nothing", "1", ("sh", "-c", f"echo armed >> {host}/order"), "sh", "-c", "echo switched")
    assert (result.returncode, result.stdout) == (1, "nixfab-activate\tnot-nixos\n")
    assert not (host / "order").exists()


def test_a_watchdog_that_does_not_start_stops_it_before_the_profile_changes(host: Path, system: Path) -> None:
    arm = ("sh", "-c", "echo 'mkdir: Permission denied' >&2; exit 1")
    result = activate(host, system, "1", arm, "sh", "-c", "echo switched")
    assert (result.returncode, result.stdout) == (1, "nixfab-activate\tunarmed\tmkdir: Permission denied\n")
    assert not (host / "order").exists() and (host / "profiles" / "system").readlink() == Path("system-3-link")


def test_a_profile_that_cannot_be_set_stops_it_before_the_switch(host: Path, system: Path) -> None:
    stand_in(host / "bin", "nix-env", "echo 'error: opening lock file: Permission denied' >&2; exit 1")
    tools = host / "bin"
    profile = str(host / "profiles" / "system")
    result = run("activate", str(system), profile, "1", script("run_first"), "0", "sh", "-c", "echo switched", path=tools)
    assert (result.returncode, result.stdout) == (1, "nixfab-activate\tunset\terror: opening lock file: Permission denied\n")


def test_a_deployer_gone_after_the_watchdog_started_leaves_the_profile_and_the_system_alone(host: Path, system: Path) -> None:
    """Its closed stdout ends the script at the next line it writes, before the profile is set (the watchdog decides)."""
    import os

    tools = host / "bin"
    stand_in(tools, "nix-env", f"echo nix-env >> {host}/order")
    reader, writer = os.pipe()
    os.close(reader)  # the SSH channel, gone with its deployer
    argv = [
        "/bin/sh", "-c", script("activate"), "sh", str(system), str(host / "profiles" / "system"), "1", script("run_first"),
        "3", "sh", "-c", f"echo armed >> {host}/order", "sh", "-c", f"echo switched >> {host}/order",
    ]
    try:
        finished = subprocess.run(argv, stdout=writer, stderr=subprocess.DEVNULL, env={"PATH": f"{tools}:/usr/bin:/bin"}, timeout=30, check=False)
    finally:
        os.close(writer)
    assert finished.returncode != 0
    assert (host / "order").read_text().split() == ["armed"]
