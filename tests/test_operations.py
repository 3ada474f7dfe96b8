"""Operations on deployed hosts: generations, switch-generation, rollback, diff, disk space, flake check and update.

Lab tests call the functions directly over deploy.transport.remote.RemoteHost and
assert on the simulated hosts' state; the rest run the real commands
(sh, df, nix) on this machine against temporary directories.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.activate.activation import activate
from deploy.activate.generations import (
    format_generations,
    generations_json,
    list_generations,
    parse_generation_listing,
    previous_generation,
    rollback,
    switch_generation,
)
from deploy.build.build import build_system
from deploy.copy.closure import Closure, closure_of, parse_closure
from deploy.errors import ActivationFailed, BuildError, DiskFull, UsageError
from deploy.lab import Lab, set_fixture_revision, write_fixture_flake
from deploy.nix import commands
from deploy.nix.flake_ops import flake_check, flake_update, inputs_are_arguments, nix_version, parse_nix_version
from deploy.plan.diff import DIFF_CLOSURES, NO_RUNNING_SYSTEM, NVD, closure_diff, confirm, format_diff, parse_diff_probe
from deploy.plan.disk import (
    DiskSpace,
    check_free_space,
    closure_size,
    df_argv,
    is_disk_full,
    parse_closure_size,
    parse_df,
    raise_if_disk_full,
    space_warnings,
)
from deploy.transport.process import LocalRunner, Result
from deploy.transport.remote import RemoteHost, SudoPassword
from deploy.ui import Emitter
from lab_helpers import locked_input, write_input_flake, write_two_input_flake

MIB = 1024 * 1024


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


# --- generations: the listing script and its parser ---------------------------


def test_listing_script_reads_links_versions_and_hostile_revisions(tmp_path: Path) -> None:
    profile = tmp_path / "profiles" / "system"
    revisions = tmp_path / "revisions"
    profile.parent.mkdir()
    revisions.mkdir()
    systems = []
    for number in (1, 2, 10):
        system = tmp_path / f"store-system-{number}"
        system.mkdir()
        systems.append(system)
        if number != 10:  # generation 10 is not a NixOS system
            (system / "nixos-version").write_text(f"24.11.lab.{number}\n")
        (profile.parent / f"system-{number}-link").symlink_to(system)
    (profile.parent / "system-x-link").symlink_to(systems[0])  # not a generation
    profile.symlink_to("system-2-link")
    hostile = '$(touch pwned)\t"quoted"\nnext line'
    (revisions / "1.json").write_text(json.dumps({"revision": hostile, "dirty": False}, indent=2))
    (revisions / "2.json").write_text(json.dumps({"revision": "abc123", "dirty": True}))
    argv = commands.list_generations(str(revisions))
    assert argv[4] == commands.SYSTEM_PROFILE
    argv[4] = str(profile)  # the same constant script, pointed at a temporary profile

    listing = parse_generation_listing(subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True).stdout)

    assert [g.number for g in listing.generations] == [1, 2, 10]
    first, second, tenth = listing.generations
    assert first.revision == hostile and not (tmp_path / "pwned").exists()
    assert second.revision == "abc123-dirty" and tenth.revision is None
    assert (first.nixos_version, second.nixos_version, tenth.nixos_version) == ("24.11.lab.1", "24.11.lab.2", None)
    assert [g.current for g in listing.generations] == [False, True, False]
    assert first.path == str(systems[0])
    assert abs(first.created.timestamp() - (profile.parent / "system-1-link").lstat().st_mtime) < 1
    assert first.created.tzinfo == UTC


def test_parse_listing_marks_running_and_booted() -> None:
    stdout = (
        "generation\t1\t1700000000\t/nix/store/a-sys\t=24.11.1\t\n"
        "generation\t2\t1700000100\t/nix/store/b-sys\t=24.11.2\t={\"revision\": \"r2\", \"dirty\": false}\n"
        "garbage line\n"
        "profile\tsystem-2-link\nrunning\t/nix/store/a-sys\nbooted\t/nix/store/b-sys\n"
    )
    listing = parse_generation_listing(stdout)
    one, two = listing.generations
    assert (one.current, one.running, one.booted) == (False, True, False)
    assert (two.current, two.running, two.booted) == (True, False, True)
    assert two.revision == "r2" and one.revision is None
    assert one.created == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert listing.current == two and listing.running == "/nix/store/a-sys"


def test_table_and_json_carry_the_same_generations() -> None:
    stdout = (
        "generation\t1\t1700000000\t/nix/store/a-sys\t=24.11.1\t={\"revision\": \"0123456789abcdef0123\", \"dirty\": true}\n"
        "generation\t2\t1700000100\t/nix/store/b-sys\t\t\nprofile\tsystem-2-link\nrunning\t/nix/store/b-sys\nbooted\t\n"
    )
    generations = list(parse_generation_listing(stdout).generations)
    table = format_generations(generations).splitlines()
    assert table[0].split() == ["GEN", "DATE", "(UTC)", "NIXOS", "VERSION", "REVISION", "STATE", "STORE", "PATH"]
    assert table[1].split() == ["1", "2023-11-14", "22:13:20", "24.11.1", "0123456789ab-dirty", "-", "/nix/store/a-sys"]
    assert table[2].split() == ["*", "2", "2023-11-14", "22:15:00", "-", "-", "current,running", "/nix/store/b-sys"]
    data = json.loads(generations_json(generations))
    assert data[0] == {
        "number": 1, "created": "2023-11-14T22:13:20Z", "current": False, "running": False, "booted": False,
        "path": "/nix/store/a-sys", "nixos_version": "24.11.1", "revision": "0123456789abcdef0123-dirty",
    }
    assert (data[1]["current"], data[1]["running"], data[1]["nixos_version"]) == (True, True, None)
    assert format_generations([]) == "no system generations"


def test_rollback_target_is_the_highest_generation_below_the_current_one() -> None:
    def listing(current: int):  # type: ignore[no-untyped-def]
        lines = [f"generation\t{n}\t1700000000\t/nix/store/{n}-sys\t=v\t" for n in (1, 3, 4, 9)]
        return parse_generation_listing("\n".join([*lines, f"profile\tsystem-{current}-link"]))

    assert previous_generation(listing(9)).number == 4  # type: ignore[union-attr]
    assert previous_generation(listing(4)).number == 3  # type: ignore[union-attr]
    assert previous_generation(listing(1)) is None


def test_dry_run_switch_and_rollback_print_and_connect_nowhere() -> None:
    stream = io.StringIO()
    host = RemoteHost("ghost", "root@127.0.0.1", port=1, ssh_config=None, echo=Emitter.plain(stream), dry_run=True)
    switch_generation(host, 3)
    rollback(host)
    printed = stream.getvalue()
    assert "+ [ghost] nix-env -p /nix/var/nix/profiles/system --switch-generation 3" in printed
    assert "'<generation 3>/bin/switch-to-configuration' switch" in printed
    assert "+ [ghost] nix-env -p /nix/var/nix/profiles/system --rollback" in printed
    assert host._connection is None


# --- diff, confirm -------------------------------------------------------------


def test_diff_probe_parser() -> None:
    assert parse_diff_probe("running\t/nix/store/x\nnvd\t/usr/bin/nvd\n") == parse_diff_probe("nvd\t/usr/bin/nvd\nrunning\t/nix/store/x")
    probe = parse_diff_probe("running\t\nnvd\t\n")
    assert probe.running is None and probe.nvd is None


@pytest.mark.parametrize(
    ("stdin", "expected"), [("y\n", True), ("YES\n", True), ("n\n", False), ("\n", False), ("", False), ("yep\n", False)]
)
def test_confirm_reads_one_line_from_piped_stdin(monkeypatch: pytest.MonkeyPatch, stdin: str, expected: bool) -> None:
    piped = io.StringIO(stdin + "second line\n")
    monkeypatch.setattr(sys, "stdin", piped)
    assert confirm("Deploy?") is expected
    if stdin:
        assert piped.readline() == "second line\n"  # exactly one line was consumed


def test_confirm_assume_yes_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    piped = io.StringIO("n\n")
    monkeypatch.setattr(sys, "stdin", piped)
    assert confirm("Deploy?", assume_yes=True) is True
    assert piped.readline() == "n\n"


# --- disk space ----------------------------------------------------------------


def test_df_script_skips_missing_paths_and_keys_by_path(tmp_path: Path) -> None:
    # Paths of the test's own: a machine that has never run Nix has no /nix.
    store = tmp_path / "nix"
    store.mkdir()
    missing = str(tmp_path / "no such dir")
    stdout = run(df_argv([str(store), missing, str(tmp_path)])).stdout
    spaces = parse_df(stdout)
    assert set(spaces) == {str(store), str(tmp_path)}
    assert spaces[str(store)].available_bytes > 0 and spaces[str(store)].mount_point.startswith("/")
    # Free space moves while other tests run; the size and the mount point do not.
    expected = run(["df", "-Pk", str(tmp_path)]).stdout.splitlines()[1].split()
    here = spaces[str(tmp_path)]
    assert (here.filesystem, here.total_bytes, here.mount_point) == (expected[0], int(expected[1]) * 1024, expected[5])
    assert 0 < here.available_bytes <= here.total_bytes


def space(path: str, available_mib: int) -> DiskSpace:
    return DiskSpace(path, "/dev/x", "/", 100_000 * MIB, available_mib * MIB)


def test_space_thresholds_and_their_environment_overrides() -> None:
    plenty = {"/nix": space("/nix", 5000), "/boot": space("/boot", 200)}
    assert space_warnings("alpha", plenty, None, environ={}) == []
    # The store wants twice the closure when that is more than the floor.
    warnings = space_warnings("alpha", plenty, 3000 * MIB, environ={})
    assert len(warnings) == 1 and "on /nix" in warnings[0] and "2 x the 2.9 GiB closure" in warnings[0]
    low = {"/nix": space("/nix", 1000), "/boot": space("/boot", 49)}
    assert [w.split(" on ")[1].split()[0] for w in space_warnings("alpha", low, None, environ={})] == ["/nix", "/boot"]
    raised = {"NIXFAB_MIN_FREE_NIX_MIB": "6000", "NIXFAB_MIN_FREE_BOOT_MIB": "300"}
    assert len(space_warnings("alpha", plenty, None, environ=raised)) == 2
    with pytest.raises(UsageError, match="NIXFAB_MIN_FREE_NIX_MIB"):
        space_warnings("alpha", plenty, None, environ={"NIXFAB_MIN_FREE_NIX_MIB": "lots"})


def test_check_free_space_on_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runner = LocalRunner(Emitter.plain(show_commands=False))
    store = str(tmp_path)  # a store path of the test's own: this machine may never have run Nix
    monkeypatch.setenv("NIXFAB_MIN_FREE_NIX_MIB", "0")
    assert check_free_space(runner, [store], "this machine") == []
    monkeypatch.setenv("NIXFAB_MIN_FREE_NIX_MIB", str(10**9))  # a petabyte: no disk here has it
    warnings = check_free_space(runner, [store, "/no/such/path"], "this machine")
    assert len(warnings) == 1 and warnings[0].startswith("this machine: only ") and f" on {store} " in warnings[0]


def test_closure_size_json_shapes() -> None:
    path = "/nix/store/aaaa-sys"
    assert parse_closure_size(json.dumps([{"path": path, "closureSize": 5296, "narSize": 1}]), path) == 5296
    assert parse_closure_size(json.dumps({path: {"closureSize": 77, "narSize": 1}}), path) == 77
    assert parse_closure_size(json.dumps([{"path": path, "valid": False}]), path) is None
    assert parse_closure_size(json.dumps({path: None}), path) is None
    assert parse_closure_size("not json", path) is None


def test_closure_json_shapes_come_dependencies_first() -> None:
    system, etc, unit, lib = "/nix/store/d-system", "/nix/store/c-etc", "/nix/store/b-unit", "/nix/store/a-lib"
    infos = {
        system: {"narSize": 8, "references": [etc, system, lib]},  # a self-reference, as Nix lists it
        etc: {"narSize": 4, "references": [unit]},
        unit: {"narSize": 2, "references": [lib]},
        lib: {"narSize": 1, "references": []},
    }
    listed = parse_closure(json.dumps([{"path": path, **info} for path, info in infos.items()]))  # Nix up to 2.18
    keyed = parse_closure(json.dumps(infos))  # Nix 2.19 and later
    assert listed == keyed and listed is not None
    assert listed.paths == (lib, unit, etc, system) and listed.size == 15
    for index, path in enumerate(listed.paths):
        assert set(infos[path]["references"]) - {path} <= set(listed.paths[:index])  # what nix-store --import needs
    assert listed.nar_bytes([unit, etc]) == 6 and listed.nar_bytes([]) == 0
    unsized = parse_closure(json.dumps({lib: {"references": []}}))
    assert unsized == Closure((lib,), {}, {lib: ()}) and unsized.size is None  # no size said: none claimed
    assert parse_closure("not json") is None and parse_closure("3") is None


def test_closures_listed_together_come_apart_by_system() -> None:
    """One `nix path-info` for several systems built together: each host gets its own system's closure."""
    one, two, etc, lib = "/nix/store/d-one", "/nix/store/e-two", "/nix/store/c-etc", "/nix/store/a-lib"
    infos = {one: {"narSize": 8, "references": [etc, lib]}, two: {"narSize": 16, "references": [lib]},
             etc: {"narSize": 4, "references": []}, lib: {"narSize": 1, "references": []}}
    both = parse_closure(json.dumps(infos))
    assert both is not None
    assert both.of(one).paths == (lib, etc, one) and both.of(one).size == 13
    assert both.of(two).paths == (lib, two) and both.of(two).size == 17
    assert both.of(two).of(two) == both.of(two)


def test_the_closure_of_a_built_system_is_what_nix_store_lists(fleet: Fleet) -> None:
    path = fleet.deploy("alpha", "5")
    closure = closure_of(fleet.runner, path)
    listed = subprocess.run(["nix-store", "--query", "--requisites", path], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(closure.paths) == sorted(listed) and closure.paths[-1] == path
    sizes = subprocess.run(["nix-store", "--query", "--size", *listed], capture_output=True, text=True, check=True).stdout.split()
    assert closure.size == sum(int(size) for size in sizes)


def test_disk_full_is_its_own_error() -> None:
    full = Result(("nix", "copy"), 1, "", "error: writing to file: No space left on device\n")
    assert is_disk_full(full) and is_disk_full("… no space left on device") and not is_disk_full(Result(("x",), 1, "", "boom"))
    raise_if_disk_full("alpha", Result(("x",), 1, "", "boom"))  # other failures are left to the caller
    with pytest.raises(DiskFull) as raised:
        raise_if_disk_full("copying to alpha", full)
    assert raised.value.exit_code == 13 and "No space left on device" in str(raised.value)


# --- flake check and update -----------------------------------------------------


def test_nix_version_and_update_forms() -> None:
    assert parse_nix_version("nix (Nix) 2.8.0\n") == (2, 8, 0)
    assert parse_nix_version("nix (Nix) 2.19.0pre20231010_dirty") == (2, 19, 0)
    assert parse_nix_version("nix (Determinate Nix 3.1.0) 2.26.3") == (2, 26, 3)
    assert parse_nix_version("") is None
    assert not inputs_are_arguments((2, 18, 1)) and inputs_are_arguments((2, 19)) and inputs_are_arguments((2, 24, 9))
    old_all = commands.nix_flake_update("/f", inputs_are_arguments=False)
    assert old_all[3:] == ["flake", "update", "/f"]
    assert commands.nix_flake_update("/f", ["a", "b"], inputs_are_arguments=False)[3:] == [
        "flake", "lock", "/f", "--update-input", "a", "--update-input", "b"]
    assert commands.nix_flake_update("/f", ["a"], inputs_are_arguments=True)[3:] == ["flake", "update", "--flake", "/f", "a"]
    runner = LocalRunner(Emitter.plain(show_commands=False))
    installed = nix_version(runner)
    assert installed is not None and installed == parse_nix_version(run(["nix", "--version"]).stdout)


def test_flake_check_passes_on_the_fixture_and_fails_on_a_syntax_error(tmp_path: Path) -> None:
    runner = LocalRunner(Emitter.plain(show_commands=False))
    flake = write_fixture_flake(tmp_path / "good", ["alpha"])
    flake_check(runner, f"path:{flake}")
    broken = write_fixture_flake(tmp_path / "bad", ["alpha"])
    (broken / "flake.nix").write_text("{ outputs = { self }: { ; }\n")
    with pytest.raises(BuildError) as raised:
        flake_check(runner, f"path:{broken}")
    assert "error:" in str(raised.value) and "--show-trace" in str(raised.value)


def test_the_show_trace_hint_only_where_a_trace_helps() -> None:
    from deploy.build.build import TRACE_HINT, trace_hint

    assert trace_hint("error: undefined variable 'pkgs'\n       at /flake.nix:3:5:\n") == f"; {TRACE_HINT}"
    assert trace_hint("error: syntax error, unexpected ';'\n") == f"; {TRACE_HINT}"
    for not_evaluation in (
        "error: unrecognised flag '--no-such-option'\nTry 'nix --help' for more information.\n",
        "error: builder for '/nix/store/x-y.drv' failed with exit code 1\n",
        "error: cannot connect to 'root@beta'\n",
        "error: writing to file: No space left on device\n",
    ):
        assert trace_hint(not_evaluation) == ""


@pytest.fixture
def two_input_flake(tmp_path: Path) -> Path:
    return write_two_input_flake(tmp_path)


def test_update_one_input_leaves_the_other(two_input_flake: Path) -> None:
    main, runner = two_input_flake, LocalRunner(Emitter.plain(show_commands=False))
    before_one, before_two = locked_input(main, "one"), locked_input(main, "two")
    write_input_flake(main.parent / "one", "2")
    write_input_flake(main.parent / "two", "2")

    flake_update(runner, f"path:{main}", ["one"])

    after_one = locked_input(main, "one")
    assert after_one["narHash"] != before_one["narHash"] and locked_input(main, "two") == before_two
    flake_update(runner, f"path:{main}")
    assert locked_input(main, "two")["narHash"] != before_two["narHash"] and locked_input(main, "one") == after_one


def test_update_of_an_unknown_input_names_the_inputs_and_changes_nothing(two_input_flake: Path) -> None:
    lock_before = (two_input_flake / "flake.lock").read_text()
    write_input_flake(two_input_flake.parent / "one", "2")
    with pytest.raises(UsageError, match="no input 'nixpkgs'; its inputs are: one, two"):
        flake_update(LocalRunner(Emitter.plain(show_commands=False)), f"path:{two_input_flake}", ["one", "nixpkgs"])
    assert (two_input_flake / "flake.lock").read_text() == lock_before


# --- against the lab ------------------------------------------------------------


@dataclass
class Fleet:
    """Lab hosts reached the way the tasks reach them (RemoteHost), deployed with the step functions."""

    lab: Lab
    flake: Path
    runner: LocalRunner
    gc_roots: Path
    remotes: dict[str, RemoteHost]

    def target(self, name: str) -> RemoteHost:
        if name not in self.remotes:
            self.remotes[name] = RemoteHost(name, name, port=None, ssh_config=self.lab.ssh_config, echo=self.runner.echo)
        return self.remotes[name]

    def build(self, attr: str, revision: str) -> str:
        set_fixture_revision(self.flake, revision)
        out_link = self.gc_roots / f"{attr}-{revision}"
        return build_system(self.runner, str(self.flake), attr, gc_root=out_link)

    def copy(self, name: str, path: str) -> None:
        environment = {**os.environ, "NIX_SSHOPTS": commands.nix_sshopts(self.lab.ssh_config, None)}
        subprocess.run(commands.nix_copy([path], to=commands.ssh_store_uri(name)), env=environment, check=True, capture_output=True)

    def deploy(self, name: str, revision: str) -> str:
        path = self.build(name, revision)
        self.copy(name, path)
        activate(self.target(name), path, "switch")
        return path


@pytest.fixture
def fleet(lab: Lab, tmp_path: Path) -> Iterator[Fleet]:
    lab.up(["alpha", "beta"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    (tmp_path / "roots").mkdir()
    fleet = Fleet(lab, flake, LocalRunner(Emitter.plain(sys.stderr)), tmp_path / "roots", {})
    try:
        yield fleet
    finally:
        for remote in fleet.remotes.values():
            remote.close()


def test_generations_rollback_and_switch_generation(fleet: Fleet) -> None:
    lab = fleet.lab
    first = fleet.deploy("alpha", "1")
    second = fleet.deploy("alpha", "2")
    lab.inside("alpha", ["sh", "-c", 'mkdir -p "$1" && printf %s "$2" > "$1/1.json"', "sh",
                         commands.NIXFAB_GENERATIONS_DIR, json.dumps({"revision": "c0ffee", "dirty": True})])
    alpha = fleet.target("alpha")
    logins = lab.accepted_ssh_logins("alpha")

    generations = list_generations(alpha)

    assert lab.accepted_ssh_logins("alpha") == logins  # one connection, already open
    assert [(g.number, g.path, g.nixos_version) for g in generations] == [(1, first, "24.11.lab.1"), (2, second, "24.11.lab.2")]
    assert [(g.current, g.running, g.booted) for g in generations] == [(False, False, False), (True, True, False)]
    assert [g.revision for g in generations] == ["c0ffee-dirty", None]

    rolled = rollback(alpha)
    state = lab.state("alpha")
    assert rolled.generation == 1 and rolled.path == first
    assert state.current_generation == 1 and state.current_system == first
    assert state.boot_default == "nixos-generation-1.conf" and state.boot_default_path == first
    assert [g.number for g in state.generations] == [1, 2]  # rollback deletes nothing
    with pytest.raises(UsageError, match="no generation to roll back to before generation 1"):
        rollback(alpha)

    switch_generation(alpha, 2)
    state = lab.state("alpha")
    assert state.current_generation == 2 and state.current_system == second and state.boot_default == "nixos-generation-2.conf"

    activations = len(lab.activations("alpha"))
    with pytest.raises(UsageError, match="has no system generation 7; it has: 1, 2"):
        switch_generation(alpha, 7)
    assert lab.state("alpha") == state and len(lab.activations("alpha")) == activations

    notes: list[str] = []
    switch_generation(alpha, 2, note=notes.append)  # already current: said, and activated again as nixos-rebuild does
    assert "already current" in notes[0] and len(lab.activations("alpha")) == activations + 1


def test_switch_generation_to_a_failing_generation_puts_everything_back(fleet: Fleet) -> None:
    lab = fleet.lab
    good = fleet.deploy("alpha", "1")
    broken = fleet.build("alpha-broken", "1")
    fleet.copy("alpha", broken)
    # A generation whose activation fails, as an old generation with a broken unit would be.
    lab.ssh("alpha", ["nix-env", "-p", commands.SYSTEM_PROFILE, "--set", broken])
    lab.ssh("alpha", ["nix-env", "-p", commands.SYSTEM_PROFILE, "--switch-generation", "1"])
    before = lab.state("alpha")
    assert before.current_generation == 1 and [g.number for g in before.generations] == [1, 2]

    with pytest.raises(ActivationFailed) as failed:
        switch_generation(fleet.target("alpha"), 2)

    assert "broken-lab.service" in str(failed.value) and "rolled back" in str(failed.value)
    after = lab.state("alpha")
    assert after.current_generation == 1 and after.current_system == good and after.boot_default == "nixos-generation-1.conf"
    # The generation existed before; undoing a switch to it must not delete it.
    assert [(g.number, g.path) for g in after.generations] == [(1, good), (2, broken)]


def test_closure_diff_runs_on_the_target(fleet: Fleet) -> None:
    lab = fleet.lab
    first = fleet.deploy("alpha", "1")
    second = fleet.build("alpha", "2")
    fleet.copy("alpha", second)
    alpha = fleet.target("alpha")

    diff = closure_diff(alpha, second)

    assert (diff.old_path, diff.new_path, diff.tool) == (first, second, DIFF_CLOSURES)
    assert "nixos-system-alpha-lab.1" in diff.text and "nixos-system-alpha-lab.2" in diff.text
    assert format_diff("alpha", diff).startswith(f"alpha: {first} -> {second} (nix store diff-closures)\n")

    # nvd on the target's PATH wins; the lab binds its fakes directory over /usr/local/bin.
    nvd = lab.fakes_dir / "nvd"
    nvd.write_text('#!/bin/sh\necho "fake nvd: $*"\n')
    nvd.chmod(0o755)
    with_nvd = closure_diff(alpha, second)
    assert with_nvd.tool == NVD and with_nvd.text == f"fake nvd: diff {first} {second}"

    fresh = closure_diff(fleet.target("beta"), second)
    assert (fresh.old_path, fresh.tool, fresh.text) == (None, None, NO_RUNNING_SYSTEM)


def test_free_space_and_closure_size_on_a_host(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    path = fleet.deploy("alpha", "1")
    alpha = fleet.target("alpha")
    size = closure_size(alpha, path)
    local_size = closure_size(fleet.runner, path)
    assert size is not None and size > 0 and size == local_size
    assert closure_size(fleet.target("beta"), path) is None  # not in beta's store

    monkeypatch.setenv("NIXFAB_MIN_FREE_NIX_MIB", "0")
    monkeypatch.setenv("NIXFAB_MIN_FREE_BOOT_MIB", "0")
    assert check_free_space(alpha, ["/nix", "/boot"], "alpha", size) == []
    monkeypatch.setenv("NIXFAB_MIN_FREE_NIX_MIB", str(10**9))
    monkeypatch.setenv("NIXFAB_MIN_FREE_BOOT_MIB", str(10**9))
    warnings = check_free_space(alpha, ["/nix", "/boot"], "alpha", size)
    assert [w.split(" on ")[1].split()[0] for w in warnings] == ["/nix", "/boot"]


def test_rollback_as_a_sudo_user(fleet: Fleet) -> None:
    lab = fleet.lab
    first = fleet.deploy("alpha", "1")
    fleet.deploy("alpha", "2")
    deployer = RemoteHost(
        "alpha", "deploy@alpha", port=None, ssh_config=lab.ssh_config, echo=fleet.runner.echo,
        use_sudo=True, sudo_password=SudoPassword(_value=lab.sudo_password),
    )
    try:
        assert [g.current for g in list_generations(deployer)] == [False, True]
        rollback(deployer)
    finally:
        deployer.close()
    state = lab.state("alpha")
    assert state.current_generation == 1 and state.current_system == first and state.boot_default == "nixos-generation-1.conf"
