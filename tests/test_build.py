"""Building here: each selected system evaluated once, realised without a second evaluation, failures kept to their host;
and `nix flake check` on request, remembered per locked flake.

The pure parts are checked on their own; the rest against the real Nix and the lab's fixture flake (no hosts needed).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy.build import build
from deploy.build.build import ParallelBuild, build_system
from deploy.build.built_systems import BUILT_DIRECTORY, BuiltSystems
from deploy.build.flake_check import FlakeCheck, PassedChecks
from deploy.build.locked_flake import LockedFlake, Memory, identity_key, nix_identity, remembers
from deploy.errors import BuildError
from deploy.lab import write_fixture_flake
from deploy.lab.lab import set_fixture_revision
from deploy.nix import commands
from deploy.transport.process import LocalRunner, Result
from deploy.ui import Emitter
from deploy.ui.events import CommandRun, Event, Note, OutputText

NIX = shutil.which("nix")
needs_nix = pytest.mark.skipif(NIX is None, reason="nix is not installed")


class Recorder:
    """Every event a runner's emitter sends: the commands it ran, its notes, what the commands printed."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event, /) -> None:
        self.events.append(event)

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return [event.argv for event in self.events if isinstance(event, CommandRun)]

    @property
    def notes(self) -> str:
        return "\n".join(event.text for event in self.events if isinstance(event, Note))

    @property
    def output(self) -> str:
        return "".join(event.text for event in self.events if isinstance(event, OutputText))


def recording_runner() -> tuple[LocalRunner, Recorder]:
    recorder = Recorder()
    return LocalRunner(Emitter(recorder)), recorder


def toplevel_of(flake: Path, attr: str) -> str:
    installable = f'path:{flake}#nixosConfigurations."{attr}".config.system.build.toplevel.outPath'
    return subprocess.run([*commands.NIX, "eval", "--raw", installable], capture_output=True, text=True, check=True).stdout


# --- pure ------------------------------------------------------------------------------------------------------------


def test_nix_store_gets_the_extra_options_it_understands() -> None:
    extra = ["--show-trace", "--impure", "--override-input", "nixpkgs", "path:/n", "-L", "--option", "cores", "2",
             "--arg", "a", "1", "--update-input=x", "-j", "4", "--refresh", "--keep-failed"]
    assert commands.store_options(extra) == ["--show-trace", "--option", "cores", "2", "-j", "4", "--keep-failed"]
    assert commands.nix_store_realise_many(["/nix/store/a.drv", "/nix/store/b.drv"], Path("/r/result"), ["--impure", "-v"]) == [
        "nix-store", "--realise", "/nix/store/a.drv", "/nix/store/b.drv", "--add-root", "/r/result", "--keep-going", "-v",
    ]
    assert commands.nix_store_realise("/nix/store/a.drv", "/t/result", ["-L", "-v"]) == [
        "nix-store", "--realise", "/nix/store/a.drv", "--add-root", "/t/result", "-v",
    ]


def test_one_process_per_core_at_most() -> None:
    assert [build.evaluation_processes(count, cores=2) for count in (1, 2, 8)] == [1, 2, 2]
    assert build.evaluation_processes(8, cores=16) == 8


METADATA_2_8 = {"locked": {"narHash": "sha256-A", "type": "path"}, "locks": {"nodes": {"root": {}}, "root": "root", "version": 7}}
METADATA_2_26 = {**METADATA_2_8, "narHash": "sha256-A"}


def test_a_locked_flake_is_known_by_its_nar_hash_locks_and_options() -> None:
    key = identity_key(json.dumps(METADATA_2_8))
    assert key is not None and key == identity_key(json.dumps(METADATA_2_26))
    assert identity_key(json.dumps({**METADATA_2_8, "locked": {"narHash": "sha256-B"}})) != key
    assert identity_key(json.dumps({**METADATA_2_8, "locks": {"nodes": {"root": {"inputs": {"n": "n"}}, "n": {}}}})) != key
    assert identity_key(json.dumps(METADATA_2_8), ["--override-input", "n", "path:/n"]) != key
    assert identity_key(json.dumps({"locked": {"type": "git"}})) is None
    assert identity_key("not json") is None and identity_key("[]") is None


def test_impure_evaluation_and_nix_s_cache_turned_off_are_never_remembered() -> None:
    assert remembers([]) and remembers(["--option", "cores", "2", "-L", "--override-input", "n", "path:/n"])
    for extra in (["--impure"], ["-L", "--no-eval-cache"], ["--option", "eval-cache", "false"], ["--eval-cache", "false"],
                  ["--option", "pure-eval", "false"], ["--pure-eval", "false"], ["--no-pure-eval"], ["--recreate-lock-file"]):
        assert not remembers(extra), extra
        assert identity_key(json.dumps(METADATA_2_8), extra) is None
    assert remembers(["--option", "eval-cache", "true"]) and remembers(["--option", "eval-cache"])


def test_another_nix_or_nix_configuration_is_another_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIX_CONF_DIR", str(tmp_path))
    monkeypatch.delenv("NIX_CONFIG", raising=False)
    (tmp_path / "nix.conf").write_text("cores = 2\n")
    before = nix_identity()
    assert nix_identity() == before
    (tmp_path / "nix.conf").write_text("cores = 3\n")
    assert nix_identity() != before
    configured = nix_identity()
    monkeypatch.setenv("NIX_CONFIG", "pure-eval = false")
    assert nix_identity() != configured
    assert identity_key(json.dumps(METADATA_2_8), nix=before) != identity_key(json.dumps(METADATA_2_8), nix=configured)


def test_passed_checks_are_remembered_and_the_oldest_forgotten(tmp_path: Path) -> None:
    passed = PassedChecks(tmp_path / "checks")
    assert not passed.passed("a")
    for index in range(55):
        passed.remember(f"k{index}")
        os.utime(tmp_path / "checks" / f"k{index}", (index, index))
    assert passed.passed("k54") and not passed.passed("k0")
    assert len(list((tmp_path / "checks").iterdir())) == 50



def test_what_is_recalled_counts_as_new_so_a_system_redeployed_unchanged_is_not_forgotten(tmp_path: Path) -> None:
    """The memory keeps what was used last, not what was written last: a system deployed unchanged run after run
    would otherwise be forgotten behind newer builds of other flakes, and cost an evaluation again."""
    memory = Memory(tmp_path / "built", keep=3)
    for index, key in enumerate(["used", "old", "newer"]):
        memory.remember(key, f"/nix/store/{key}")
        os.utime(tmp_path / "built" / key, (1000 + index, 1000 + index))
    assert memory.recall("used") == "/nix/store/used"
    memory.remember("newest", "/nix/store/newest")
    assert sorted(entry.name for entry in (tmp_path / "built").iterdir()) == ["newer", "newest", "used"]


def test_a_staged_entry_left_by_a_run_that_died_while_writing_is_pruned(tmp_path: Path) -> None:
    memory = Memory(tmp_path / "built", keep=10)
    memory.remember("kept", "/nix/store/kept")
    left = tmp_path / "built" / ".gone.4242.140000"
    left.write_text("/nix/store/half")
    os.utime(left, (1000, 1000))
    writing = tmp_path / "built" / ".other.4343.140001"  # another run's, being written right now
    writing.write_text("/nix/store/other")
    memory.remember("next", "/nix/store/next")
    assert sorted(entry.name for entry in (tmp_path / "built").iterdir()) == [".other.4343.140001", "kept", "next"]

# --- against Nix ---------------------------------------------------------------------------------------------------


def nix_caches_path_flakes() -> bool:
    from deploy.nix.flake_ops import nix_version

    version = nix_version(LocalRunner(Emitter()))
    return version is not None and version < (2, 21)


@needs_nix
def test_a_system_is_evaluated_once_by_the_one_nix_build_that_builds_it(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"], trace_evaluation=True)
    runner, recorder = recording_runner()
    path = build_system(runner, f"path:{flake}", "alpha", gc_root=tmp_path / "alpha")
    assert path == toplevel_of(flake, "alpha") and os.readlink(tmp_path / "alpha") == path
    # Nix says it each time a process evaluates a toplevel: once, in the one `nix build` that also builds it.
    assert [line for line in recorder.output.splitlines() if "lab: evaluating" in line] == ["trace: lab: evaluating the toplevel of alpha"]
    assert [argv[:4] for argv in recorder.commands] == [(*commands.NIX, "build")]
    # Waits for a derivation another build holds are polled each second, not each five (Nix's default).
    assert recorder.commands[0][-3:] == ("--option", "build-poll-interval", "1")
    # Again: Nix 2.8 answers an unchanged flake from its evaluation cache; newer Nix does not cache a path: flake
    # (NixOS/nix#10437, seen from 2.21; 2.26 here) and evaluates it once more, in the one process again.
    assert build_system(runner, f"path:{flake}", "alpha", gc_root=tmp_path / "again") == path
    assert recorder.output.count("lab: evaluating") == (1 if nix_caches_path_flakes() else 2)


@needs_nix
def test_a_system_that_fails_to_evaluate_or_to_build_says_so_in_one_line(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    runner, _ = recording_runner()
    with pytest.raises(BuildError) as unbuildable:
        build_system(runner, f"path:{flake}", "beta-unbuildable", gc_root=tmp_path / "root")
    assert str(unbuildable.value).startswith("building beta-unbuildable failed: error: builder for '/nix/store/")
    assert "nixos-system-beta" in str(unbuildable.value) and "\n" not in str(unbuildable.value)
    with pytest.raises(BuildError) as missing:
        build_system(runner, f"path:{flake}", "nosuch", gc_root=tmp_path / "root")
    assert str(missing.value).startswith(f'path:{flake} has no nixosConfigurations."nosuch"; it has: alpha, ')
    assert not (tmp_path / "root").exists()


@needs_nix
def test_systems_build_side_by_side_and_the_build_task_links_them_in_host_order(tmp_path: Path) -> None:
    names = ["alpha", "beta", "gamma"]
    flake = write_fixture_flake(tmp_path / "flake", names)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    parallel = ParallelBuild(
        runner, f"path:{flake}", [*names, "nosuch"], roots=tmp_path / "roots", out_link=tmp_path / "result", processes=2,
    )
    assert parallel.result("gamma") == toplevel_of(flake, "gamma")
    with pytest.raises(BuildError, match=r'has no nixosConfigurations\."nosuch"'):
        parallel.result("nosuch")
    parallel.finish()
    assert sum(1 for argv in recorder.commands if argv[3] == "build") == 4
    assert [os.readlink(tmp_path / link) for link in ("result", "result-2", "result-3")] == [toplevel_of(flake, name) for name in names]
    assert sorted(os.readlink(link) for link in (tmp_path / "roots").iterdir()) == sorted(toplevel_of(flake, name) for name in names)



@needs_nix
def test_systems_that_build_fast_are_shared_out_several_to_a_nix_process_each_paired_with_its_own(tmp_path: Path) -> None:
    """Each process builds one system first; these take Nix less than its own start, so the rest go several to a
    process, paired with their hosts by name. `after` hears of each share's systems before their hosts do."""
    names = ["foxtrot", "alpha", "echo", "charlie", "bravo", "delta"]
    flake = write_fixture_flake(tmp_path / "flake", names)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    heard: list[dict[str, str]] = []
    parallel = ParallelBuild(
        runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=2, after=lambda built: heard.append(dict(built)),
        afresh=lambda: True,
    )
    results = {name: parallel.result(name) for name in names}
    parallel.finish()
    assert results == {name: toplevel_of(flake, name) for name in names}
    # Two single builds, then two processes to evaluate two systems each by name and two to build them, evaluating nothing.
    assert [argv[3] for argv in recorder.commands if argv[0] == "nix"].count("build") == 2
    evaluations = [argv for argv in recorder.commands if argv[3] == "eval"]
    assert len(evaluations) == 2 and all(argv[4:6] == ("--json", f"path:{flake}#nixosConfigurations") for argv in evaluations)
    realised = [argv for argv in recorder.commands if argv[:2] == ("nix-store", "--realise")]
    assert sorted(len([word for word in argv if word.endswith(".drv")]) for argv in realised) == [2, 2]
    # Of the shares, not of a system built alone (its host lists its closure beside the SSH handshake).
    assert sorted(len(batch) for batch in heard) == [2, 2]
    assert all(results[name] == path for batch in heard for name, path in batch.items())
    assert sorted(os.readlink(link) for link in (tmp_path / "roots").iterdir()) == sorted(results.values())  # each one rooted


@needs_nix
def test_a_shared_out_build_that_fails_builds_its_systems_one_by_one_so_each_says_its_own(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta", "gamma"])
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    names = ["alpha", "beta", "gamma", "beta-unbuildable", "alpha-broken"]
    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=1, afresh=lambda: True)
    assert parallel.result("alpha") == toplevel_of(flake, "alpha")
    for name in ("beta", "gamma", "alpha-broken"):
        assert parallel.result(name) == toplevel_of(flake, name)
    with pytest.raises(BuildError, match=r"\Abuilding beta-unbuildable failed: error: builder for '/nix/store/"):
        parallel.result("beta-unbuildable")
    parallel.finish()
    together = [argv for argv in recorder.commands if argv[:2] == ("nix-store", "--realise")]
    assert len(together) == 1 and len([word for word in together[0] if word.endswith(".drv")]) == 4  # the four after alpha, first


@needs_nix
def test_systems_that_nix_may_answer_from_its_cache_are_never_shared_out(tmp_path: Path) -> None:
    """From the evaluation cache a large system builds fast too, and a share's `nix eval --apply` would evaluate
    several of those afresh: where the cache may answer, every system keeps a `nix build` of its own."""
    names = ["alpha", "beta", "gamma", "delta"]
    flake = write_fixture_flake(tmp_path / "flake", names)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=2, afresh=lambda: False)
    assert {name: parallel.result(name) for name in names} == {name: toplevel_of(flake, name) for name in names}
    parallel.finish()
    assert [argv[3] for argv in recorder.commands] == ["build"] * 4



def kinds_of(recorder: Recorder) -> list[str]:
    """What each command was: nix's subcommand, or nix-store's operation."""
    return [argv[3] if argv[0] == "nix" else argv[1] for argv in recorder.commands]


# The fixture's systems evaluate in about 0.2 s with this much work here; the builds below take a tenth of a second of
# evaluation for Nix's own work (the default, EVALUATED_AFRESH_SECONDS, is for real systems).
SOME_EVALUATION_WORK = 300
SLOW_TO_EVALUATE = 0.05


@needs_nix
def test_systems_slow_to_evaluate_go_several_to_a_nix_process_each_built_as_soon_as_it_is_evaluated(tmp_path: Path) -> None:
    """Once a system took Nix a while to evaluate (its cache did not answer), the rest are evaluated one after another
    in one process per core, each built (without evaluating it again) as soon as Nix says it is evaluated: one process
    start and one heap for several systems, and no host waits for the others' evaluations."""
    names = ["alpha", "beta", "gamma", "delta", "echo"]
    flake = write_fixture_flake(tmp_path / "flake", names, eval_work=SOME_EVALUATION_WORK, trace_evaluation=True)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=1, evaluated_afresh_after=SLOW_TO_EVALUATE)
    results = {name: parallel.result(name) for name in names}
    parallel.finish()
    assert results == {name: toplevel_of(flake, name) for name in names}
    assert kinds_of(recorder) == ["build", "eval", "--realise", "--realise", "--realise", "--realise"]
    realised = [argv for argv in recorder.commands if argv[1] == "--realise"]
    assert all(len([word for word in argv if word.endswith(".drv")]) == 1 for argv in realised)
    for name in names:
        assert recorder.output.count(f"lab: evaluating the toplevel of {name}\n") == 1, name
    # beta was being built before the process had even begun echo's evaluation.
    events = [event.argv[2] if isinstance(event, CommandRun) else event.text for event in recorder.events
              if isinstance(event, CommandRun | OutputText)]
    beta_built = next(index for index, said in enumerate(events) if said.endswith("nixos-system-beta-lab.1.drv"))
    echo_evaluated = next(index for index, said in enumerate(events) if "lab: evaluating the toplevel of echo" in said)
    assert beta_built < echo_evaluated
    assert [note for note in recorder.notes.splitlines() if note.startswith("==> built")] == []  # steps, not notes
    assert sorted(os.readlink(link) for link in (tmp_path / "roots").iterdir()) == sorted(results.values())  # each one rooted


@needs_nix
def test_a_streamed_process_that_holds_too_much_memory_takes_no_more_systems(tmp_path: Path) -> None:
    """A Nix process keeps every system it evaluated: past half its part of the memory it is stopped after the
    system it said, and those left go to a new one (the last, alone, to a `nix build` of its own)."""
    names = ["alpha", "beta", "gamma", "delta"]
    flake = write_fixture_flake(tmp_path / "flake", names, eval_work=SOME_EVALUATION_WORK)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    parallel = ParallelBuild(
        runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=1, evaluated_afresh_after=SLOW_TO_EVALUATE, memory=1,
    )
    assert {name: parallel.result(name) for name in names} == {name: toplevel_of(flake, name) for name in names}
    parallel.finish()
    assert kinds_of(recorder) == ["build", "eval", "--realise", "eval", "--realise", "build"]


@needs_nix
def test_a_streamed_process_that_fails_leaves_each_system_it_did_not_evaluate_its_own_build(tmp_path: Path) -> None:
    names = ["alpha", "beta", "beta-unbuildable", "nosuch", "gamma"]
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta", "gamma"], eval_work=SOME_EVALUATION_WORK)
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=1, evaluated_afresh_after=SLOW_TO_EVALUATE)
    assert {name: parallel.result(name) for name in ("alpha", "beta", "gamma")} == {name: toplevel_of(flake, name) for name in ("alpha", "beta", "gamma")}
    with pytest.raises(BuildError, match=r"\Abuilding beta-unbuildable failed: error: builder for '/nix/store/\S+-nixos-system-beta-lab.1.drv' failed"):
        parallel.result("beta-unbuildable")
    with pytest.raises(BuildError, match=r'has no nixosConfigurations\."nosuch"; it has: alpha, '):
        parallel.result("nosuch")
    parallel.finish()
    # The streamed process said beta and beta-unbuildable (which failed to build, alone), and failed at nosuch: nosuch
    # and gamma each get a build of their own (nosuch's failure asks which systems the flake has). Its error is only
    # logged: the build that follows says it.
    assert kinds_of(recorder) == ["build", "eval", "--realise", "--realise", "build", "eval", "build"]
    shown = "".join(event.text for event in recorder.events if isinstance(event, OutputText) and not event.captured)
    assert "attribute 'nosuch' missing" not in shown and shown.count("does not provide attribute") == 1
    assert "attribute 'nosuch' missing" in recorder.output  # the streamed process's words, in the log


@needs_nix
def test_a_streamed_process_that_cannot_start_leaves_its_systems_the_os_error_the_fleet_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of file descriptors when the share's `nix eval` starts: each of its systems says so (as an OSError, which the
    fleet turns into its advice on the limit), as a system built alone would; none waits forever."""
    names = ["alpha", "beta", "gamma"]
    flake = write_fixture_flake(tmp_path / "flake", names, eval_work=SOME_EVALUATION_WORK)
    runner, _ = recording_runner()
    (tmp_path / "roots").mkdir()
    run = LocalRunner.run

    def no_descriptors_for_a_share(self: LocalRunner, argv: list[str], **options: object) -> Result:
        if any(build.EVALUATED_MARK in word for word in argv):
            raise OSError(24, "Too many open files")
        return run(self, argv, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalRunner, "run", no_descriptors_for_a_share)
    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=1, evaluated_afresh_after=SLOW_TO_EVALUATE)
    assert parallel.result("alpha") == toplevel_of(flake, "alpha")
    for name in ("beta", "gamma"):
        with pytest.raises(OSError, match="Too many open files"):
            parallel.result(name)
    parallel.finish()


def test_a_streamed_evaluation_s_lines_say_which_system_was_evaluated() -> None:
    argv = build.streamed_evaluation("path:/f", ["alpha", "beta-slow"], ["--impure"])
    assert argv[3:6] == ["eval", "--json", "path:/f#nixosConfigurations"] and argv[-1] == "--impure"
    assert argv[7].endswith('[ "alpha" "beta-slow" ]')
    said = 'trace: nixfab-evaluated {"attr":"beta-slow","drv":"/nix/store/a-x.drv","out":"/nix/store/b-x"}\n'
    assert build.evaluated_line(said) == ("beta-slow", build.Evaluation("/nix/store/a-x.drv", "/nix/store/b-x"))
    assert build.evaluated_line("trace: lab: evaluating the toplevel of alpha\n") is None
    assert build.evaluated_line("trace: nixfab-evaluated {not json\n") is None


@needs_nix
def test_systems_built_from_a_locked_flake_are_remembered_and_not_evaluated_again(tmp_path: Path) -> None:
    """With the memory answering, the builds go without Nix's evaluation cache (which processes of one flake would
    wait on each other to write), and a system built before costs one nix-store --realise for all, evaluating nothing."""
    names = ["alpha", "beta", "gamma", "delta"]
    flake = write_fixture_flake(tmp_path / "flake", names, revision=f"memory-{time.time_ns()}")
    state = tmp_path / "state"
    runner, recorder = recording_runner()

    def build_all(attrs: list[str], roots: str) -> dict[str, str]:
        (tmp_path / roots).mkdir()
        built = BuiltSystems(state, LockedFlake(f"path:{flake}"))
        parallel = ParallelBuild(runner, f"path:{flake}", attrs, roots=tmp_path / roots, processes=2, afresh=lambda: False, built=built)
        results = {name: parallel.result(name) for name in attrs}
        parallel.finish()
        return results

    expected = {name: toplevel_of(flake, name) for name in names}
    assert build_all(names, "first") == expected
    assert "==> building alpha, beta, gamma, delta on this machine" in recorder.notes
    metadata, *builds = recorder.commands
    assert metadata[3:6] == ("flake", "metadata", "--json")
    assert builds and all(("--option", "eval-cache", "false") in zip(argv, argv[1:], argv[2:]) for argv in builds)
    assert any(argv[3] == "build" for argv in builds)

    recorder.events.clear()
    broken = toplevel_of(flake, "alpha-broken")
    assert build_all([*names, "alpha-broken"], "again") == {**expected, "alpha-broken": broken}
    metadata, rooted, built = recorder.commands
    assert rooted[:2] == ("nix-store", "--realise") and sorted(word for word in rooted if word.startswith("/nix/")) == sorted(expected.values())
    assert built[3] == "build" and any('"alpha-broken"' in word for word in built)
    assert "alpha, beta, gamma, delta: built before from this locked flake; not evaluated again" in recorder.notes
    assert [note for note in recorder.notes.splitlines() if note.startswith("==> building")] == ["==> building alpha-broken on this machine"]
    assert sorted(os.readlink(link) for link in (tmp_path / "again").iterdir()) == sorted([*expected.values(), broken])

    # A remembered system no longer in the store is built again; another revision is another flake.
    key = LockedFlake(f"path:{flake}").key(runner)
    assert key is not None
    Memory(state / BUILT_DIRECTORY, 10).remember(BuiltSystems._key(key, "beta"), "/nix/store/00000000000000000000000000000000-gone")
    recorder.events.clear()
    assert build_all(["alpha", "beta"], "gone") == {"alpha": expected["alpha"], "beta": expected["beta"]}
    assert [argv[3] if argv[0] == "nix" else argv[1] for argv in recorder.commands] == ["flake", "--realise", "build"]
    set_fixture_revision(flake, f"memory-{time.time_ns()}")
    recorder.events.clear()
    build_all(["alpha"], "changed")
    assert [argv[3] for argv in recorder.commands] == ["flake", "build"]


@needs_nix
def test_the_flake_s_identity_is_asked_of_nix_once_whoever_asks_first(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    runner, recorder = recording_runner()
    with LockedFlake(f"path:{flake}") as locked:
        locked.ask_early(runner)  # as a deploy does, while it opens its journal and logs
        keys = {locked.key(runner) for _ in range(3)}
    assert len(keys) == 1 and None not in keys
    assert [argv[3:5] for argv in recorder.commands] == [("flake", "metadata")]
    write_fixture_flake(tmp_path / "flake", ["alpha"], revision="2")
    assert LockedFlake(f"path:{flake}").key(runner) not in keys


def test_an_early_question_that_fails_leaves_no_identity_and_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    class OutOfDescriptors(LocalRunner):
        def run(self, *args: object, **kwargs: object) -> Result:
            raise OSError(24, "Too many open files")

    runner = OutOfDescriptors(Emitter(Recorder()))
    with LockedFlake("path:/nowhere") as locked:
        locked.ask_early(runner)
    assert died == [] and locked.key(runner) is None


@needs_nix
def test_without_a_locked_identity_nothing_is_remembered_and_nix_keeps_its_cache(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    state = tmp_path / "state"
    runner, recorder = recording_runner()
    (tmp_path / "roots").mkdir()
    built = BuiltSystems(state, LockedFlake(f"path:{flake}", ["--impure"]))
    parallel = ParallelBuild(runner, f"path:{flake}", ["alpha"], roots=tmp_path / "roots", extra=["--impure"], built=built)
    assert parallel.result("alpha") == toplevel_of(flake, "alpha")
    parallel.finish()
    assert [argv[3] for argv in recorder.commands] == ["build"] and "eval-cache" not in recorder.commands[0]
    assert not (state / BUILT_DIRECTORY).exists()


@needs_nix
def test_a_question_about_sharing_out_that_fails_leaves_every_system_its_own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking the Nix version can fail (out of file descriptors, say): then nothing is shared out, no build thread
    dies with a traceback, and every host still hears of its own system."""
    names = ["alpha", "beta", "gamma", "delta"]
    flake = write_fixture_flake(tmp_path / "flake", names)
    runner, _ = recording_runner()
    (tmp_path / "roots").mkdir()
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    def no_descriptors() -> bool:
        raise OSError(24, "Too many open files")

    parallel = ParallelBuild(runner, f"path:{flake}", names, roots=tmp_path / "roots", processes=2, afresh=no_descriptors)
    assert {name: parallel.result(name) for name in names} == {name: toplevel_of(flake, name) for name in names}
    parallel.finish()
    assert died == []

def test_only_a_flake_nix_evaluates_afresh_in_every_process_is_shared_out() -> None:
    afresh = functools.partial(build.evaluated_afresh, copies_every_file=False, dirty=None, in_git=True)
    assert not afresh((2, 8, 0)) and not afresh(None)  # a locked git flake: cached
    assert not afresh((2, 26, 3))
    assert build.evaluated_afresh((2, 26, 3), copies_every_file=True, dirty=None, in_git=True)  # path:
    assert build.evaluated_afresh((2, 26, 3), copies_every_file=False, dirty=True, in_git=True)  # uncommitted changes
    assert build.evaluated_afresh((2, 21), copies_every_file=False, dirty=None, in_git=False)  # a directory outside git
    # Before 2.21 Nix answered a path: flake it had seen from its cache (test_a_system_is_evaluated_once_… shows it).
    assert not build.evaluated_afresh((2, 20, 9), copies_every_file=True, dirty=True, in_git=False)

@needs_nix
def test_the_flake_check_runs_once_per_locked_flake(tmp_path: Path) -> None:
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    passed = PassedChecks(tmp_path / "checks")
    runner, recorder = recording_runner()

    def checked() -> int:
        return sum(1 for argv in recorder.commands if argv[3:5] == ("flake", "check"))

    FlakeCheck(runner, LockedFlake(f"path:{flake}"), passed).wait()
    assert checked() == 1
    FlakeCheck(runner, LockedFlake(f"path:{flake}"), passed).wait()
    assert checked() == 1 and "passed before for this locked" in recorder.notes
    write_fixture_flake(tmp_path / "flake", ["alpha"], revision="2")
    FlakeCheck(runner, LockedFlake(f"path:{flake}"), passed).wait()
    assert checked() == 2

    write_fixture_flake(tmp_path / "flake", ["alpha"], failing_check=True)
    failing = FlakeCheck(runner, LockedFlake(f"path:{flake}"), passed)
    with pytest.raises(BuildError, match=r"^not activated: nix flake check path:\S+ failed$"):
        failing.wait()  # what each host says; the check's own error is the run's, said once
    assert re.match(r"^nix flake check path:\S+ failed: error: builder for .*lab-check.drv", str(failing.outcome()))
    assert failing.failure() is not None and checked() == 3
    FlakeCheck(runner, LockedFlake(f"path:{flake}"), passed).outcome()
    assert checked() == 4  # a failed check is not remembered


def test_nix_out_of_file_descriptors_gets_nixfab_s_words_and_no_trace_hint() -> None:
    """Nix inherits our descriptor limit: when it runs out, the advice is the one nixfab gives for itself, not --show-trace."""
    runner = LocalRunner(Emitter.plain(show_commands=False))
    failure = build.nix_failure(runner, "/flake", "alpha", "building", "error: creating pipe: Too many open files\n")
    assert str(failure) == (
        "building alpha failed: out of file descriptors (error: creating pipe: Too many open files): "
        "raise the limit (`ulimit -n`) or lower --parallel"
    )
    assert build.trace_hint("error: creating pipe: Too many open files") == ""
