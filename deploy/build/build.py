"""Evaluate and build toplevels: here, on the target, or on a builder."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.build.built_systems import WITHOUT_EVALUATION_CACHE, BuiltSystems
from deploy.errors import BuildError, HostKeyRejected, out_of_descriptors
from deploy.nix import commands
from deploy.transport.hosts import Host
from deploy.transport.process import ChildProcesses, LocalRunner

# strerror(EMFILE), as Nix prints it when the limit it inherited from us runs out.
TOO_MANY_OPEN_FILES = "Too many open files"
TRACE_HINT = "run again with `-- --show-trace` for Nix's full trace"
# Nix errors that are no evaluation error: --show-trace would add nothing to them.
NOT_EVALUATION = (
    "unrecognised flag", "unrecognized flag", "builder for", "cannot build", "cannot connect", "Host key verification failed",
    "No space left on device", "unable to download", "does not provide attribute", TOO_MANY_OPEN_FILES,
)


class NixProgress:
    """Which lines of a `nix build`'s stderr are its progress, shown by default: not the list of
    what it is about to build or fetch (Nix 2.19+ prints one line per derivation before it starts,
    and then one again as each builds), nor an error Nix says it ignored (two builds of one flake
    at once find its evaluation cache busy), which go to the log only."""

    def __init__(self) -> None:
        self.in_listing = False
        self.building_since: float | None = None  # when Nix first said it builds or fetches: its evaluation was over

    def shown(self, line: str) -> bool:
        if self.building_since is None and line.startswith(("building '", "copying path '", "these ")):
            self.building_since = time.monotonic()
        if line.startswith("error (ignored): "):
            return False
        if line.startswith("these ") and line.rstrip().endswith(":") and "will be" in line:
            self.in_listing = True
            return False
        if self.in_listing and line.startswith("  /nix/store/"):
            return False
        self.in_listing = False
        return True


def trace_hint(stderr: str) -> str:
    """`; run again with -- --show-trace …` only where it helps: an evaluation error (not a builder's, a flag's, a network's)."""
    return "" if any(marker in stderr for marker in NOT_EVALUATION) else f"; {TRACE_HINT}"


@dataclass(frozen=True)
class Evaluation:
    derivation: str
    out_path: str


def placeholder(attr: str) -> str:
    return f"<toplevel of {attr}>"


# What OpenSSH says when it refuses a host's key (changed, or unknown under StrictHostKeyChecking yes).
HOST_KEY_REFUSALS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")


def nix_error(stderr: str) -> str:
    """The line of Nix's output that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:") and line != "error:":
            return line.removesuffix(";")  # Nix ends "builder for … failed with exit code 1;" before the log lines
    return lines[-1] if lines else "no output"


def evaluate(runner: LocalRunner, flake: str, attr: str, extra: Sequence[str] = ()) -> Evaluation:
    """The system's derivation (written to the store) and out path, for a build elsewhere; builds and fetches nothing."""
    installable = commands.toplevel_installable(flake, attr)
    dry = json.dumps({"drv": f"<derivation of {attr}>", "out": placeholder(attr)})
    result = runner.run(commands.nix_eval_derivation(installable, extra), dry_stdout=dry)
    if not result.ok:
        raise nix_failure(runner, flake, attr, "evaluating", result.stderr, extra)
    data = json.loads(result.stdout)
    return Evaluation(data["drv"], data["out"])


# Systems that build side by side share derivations (a kernel, most of a closure), and a Nix process that finds one
# being built by another retries only every build-poll-interval seconds: 5 by default, a stall of up to 5 s whenever
# two hosts need the same new derivation. One second keeps the wait short and the polling cheap (user options follow).
LOCK_POLL = ("--option", "build-poll-interval", "1")


def build_system(
    runner: LocalRunner, flake: str, attr: str, *, gc_root: Path, extra: Sequence[str] = (), progress: NixProgress | None = None,
) -> str:
    """One `nix build` of this one system: evaluated once (or answered by Nix's evaluation cache) and built in the same process.

    One installable per process, so the result is this system's without any
    pairing; gc_root is its out link, which says the path and keeps it.
    `progress` sorts Nix's output, and says when the building began.
    """
    installable = commands.toplevel_installable(flake, attr)
    shown = (progress or NixProgress()).shown
    result = runner.run(commands.nix_build([installable], out_link=gc_root, extra=(*LOCK_POLL, *extra)), shown=shown)
    if not result.ok:
        raise nix_failure(runner, flake, attr, "building", result.stderr, extra)
    if runner.dry_run:
        return placeholder(attr)
    try:
        return os.readlink(gc_root)
    except OSError as error:
        raise BuildError(f"building {attr} failed: nix build left no {gc_root}: {error.strerror}") from None


def evaluate_systems(runner: LocalRunner, flake: str, attrs: Sequence[str], extra: Sequence[str] = ()) -> dict[str, Evaluation]:
    """Each system's derivation (written to the store) and out path, paired by name, from one `nix eval`; builds nothing.

    BuildError when any fails to evaluate (which one is for separate builds to say).
    """
    apply = (
        "cs: builtins.listToAttrs (map (n: let t = cs.${n}.config.system.build.toplevel; in "
        f"{{ name = n; value = {{ drv = t.drvPath; out = t.outPath; }}; }}) {commands.nix_names(attrs)})"
    )
    dry = json.dumps({attr: {"drv": f"<derivation of {attr}>", "out": placeholder(attr)} for attr in attrs})
    result = runner.run(commands.nix_eval_configurations(flake, apply, extra), dry_stdout=dry)
    if not result.ok:
        raise BuildError(f"evaluating {', '.join(attrs)} failed: {nix_error(result.stderr)}")
    try:
        data = json.loads(result.stdout)
        return {attr: Evaluation(str(data[attr]["drv"]), str(data[attr]["out"])) for attr in attrs}
    except (ValueError, TypeError, KeyError) as error:
        raise BuildError(f"evaluating {', '.join(attrs)}: cannot read nix eval --json: {error!r}") from None


def build_systems(runner: LocalRunner, flake: str, attrs: Sequence[str], *, gc_root: Path, extra: Sequence[str] = ()) -> dict[str, str]:
    """Several systems in two Nix processes, however many they are: one `nix eval` pairs each with its derivation by
    name, one `nix-store --realise` builds them all (rooted as gc_root, gc_root-2, …) without evaluating again.

    Where each system takes Nix less to evaluate than a Nix process takes to
    start (about 30 ms of CPU), this spares a process per system. BuildError
    when any fails (which one is for separate builds to say).
    """
    evaluations = evaluate_systems(runner, flake, attrs, extra)
    derivations = [evaluations[attr].derivation for attr in attrs]
    realised = runner.run(commands.nix_store_realise_many(derivations, gc_root, (*LOCK_POLL, *extra)), shown=NixProgress().shown)
    if not realised.ok:
        raise BuildError(f"building {', '.join(attrs)} failed: {nix_error(realised.stderr)}")
    return {attr: evaluations[attr].out_path for attr in attrs}


# What a streamed evaluation's `builtins.trace` prints as each system is evaluated: Nix writes a trace to stderr at once,
# while the value it prints on stdout comes only when every system is done.
EVALUATED_MARK = "nixfab-evaluated "


def streamed_evaluation(flake: str, attrs: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """One `nix eval` of these systems, one after another, that says each one's derivation and out path as soon as it
    is evaluated (evaluated_line reads it): each can be built, and its host go on, while the next evaluates."""
    apply = (
        "cs: map (n: let t = cs.${n}.config.system.build.toplevel; in builtins.trace "
        f'("{EVALUATED_MARK}" + builtins.toJSON {{ attr = n; drv = t.drvPath; out = t.outPath; }}) n) {commands.nix_names(attrs)}'
    )
    return commands.nix_eval_configurations(flake, apply, extra)


def evaluated_line(line: str) -> tuple[str, Evaluation] | None:
    """The system, and its evaluation, that a line of a streamed evaluation's stderr says is evaluated; None for any other line."""
    _before, mark, said = line.partition(EVALUATED_MARK)
    if not mark:
        return None
    try:
        data = json.loads(said)
        return str(data["attr"]), Evaluation(str(data["drv"]), str(data["out"]))
    except (ValueError, TypeError, KeyError):
        return None


def memory_figure(path: str, field: str) -> int | None:
    """A `field: N kB` line of a /proc file (Linux), in bytes; None if it cannot be read.

    memory_figure("/proc/meminfo", "MemAvailable"): what new work can have
    without swapping; memory_figure(f"/proc/{pid}/status", "VmRSS"): what the
    process holds.
    """
    try:
        with open(path, encoding="ascii") as figures:
            for line in figures:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def evaluation_processes(count: int, cores: int | None = None) -> int:
    """How many systems evaluate at once: one Nix process per core at most, since one evaluates one system at a time."""
    return max(1, min(count, cores or usable_cores()))


# A system that builds this fast, evaluated afresh, costs Nix more to start than to evaluate: the rest are built several
# per process.
FAST_BUILD_SECONDS = 1.0
# Since this Nix, a path: flake and a git flake with uncommitted changes are evaluated afresh by every process
# (NixOS/nix#10437); before, Nix answered a path: flake it had seen from its evaluation cache.
UNCACHED_EVALUATION_SINCE = (2, 21)


def evaluated_afresh(version: tuple[int, ...] | None, *, copies_every_file: bool, dirty: bool | None, in_git: bool) -> bool:
    """Whether every Nix process evaluates the flake's systems again, never from its evaluation cache (pure).

    Only then does a system that builds fast tell that it is small: from the
    cache, a large one builds fast too, and evaluating several of those
    without the cache (as a share's `nix eval --apply` does) would take
    seconds each. Unknown versions, locked git flakes and remote flakes may
    be cached.
    """
    if version is None or version < UNCACHED_EVALUATION_SINCE:
        return False
    return copies_every_file or dirty is True or not in_git
# At most this many systems in one Nix process: each holds its evaluation in memory until all are built.
MOST_SYSTEMS_PER_PROCESS = 16
# A system whose evaluation took Nix this long was evaluated, not answered from its evaluation cache (that takes
# milliseconds). The systems left then go several to a Nix process, streamed: each is built, and its host goes on, as
# soon as it is evaluated. The process's start and the growth of its heap are paid once, not once per system: a fifth
# of each 1.3 s evaluation after the first, measured with the benchmark's slow fixture.
EVALUATED_AFRESH_SECONDS = 0.5


class ParallelBuild:
    """Build systems here, each evaluated once, in as many Nix processes at once as there are cores.

    A system is ready as soon as it is built: result() waits for that one
    only, so its host's deploy goes on while other systems still evaluate.
    Each process first builds one system; once one took less than
    FAST_BUILD_SECONDS, and `afresh()` says Nix evaluated it rather than
    answered from its cache, the others are shared out among the processes,
    several to each (a failure there builds them one by one again, so that
    each says its own). `after` gets each share's {attr: path} (when it built
    more than one) before their hosts do. Once one took Nix
    EVALUATED_AFRESH_SECONDS or more to evaluate, the others are shared out
    too, streamed: each is built as soon as its process says it is evaluated.
    A streamed process that holds more than half its part of `memory` (the
    memory available) takes no more systems: those left go back to the queue.
    `out_link` (the `build` task's ./result) roots every built system as
    out_link, out_link-2, … in the order of attrs once all are done.
    """

    def __init__(
        self, runner: LocalRunner, flake: str, attrs: Sequence[str], *, roots: Path, out_link: Path | None = None,
        extra: Sequence[str] = (), processes: int | None = None, after: Callable[[Mapping[str, str]], None] | None = None,
        afresh: Callable[[], bool] = lambda: False, built: BuiltSystems | None = None,
        evaluated_afresh_after: float = EVALUATED_AFRESH_SECONDS, memory: int | None = None,
    ) -> None:
        """roots: a directory of this run's own; each system's GC root stays there until the run ends.
        built: the systems built before, answered from there and remembered there (built_systems)."""
        self.attrs = list(dict.fromkeys(attrs))
        self._children = ChildProcesses()
        self._runner = dataclasses.replace(runner, children=self._children)
        self._flake = flake
        self._roots = roots
        self._out_link = out_link
        self._extra = tuple(extra)
        self._outcomes: dict[str, str | BuildError | OSError] = {}
        self._ready = {attr: threading.Event() for attr in self.attrs}
        self._queue = [[pair] for pair in enumerate(self.attrs)]  # what each Nix process builds, in turn
        self._queue_lock = threading.Lock()
        self._fast = False  # a system built in less than FAST_BUILD_SECONDS
        self._evaluated_afresh_after = evaluated_afresh_after
        self._evaluated_slowly = False  # a system took Nix evaluated_afresh_after or more to evaluate
        self._streamed = False  # the shares are streamed, rather than evaluated whole and then built
        self._stopping = False  # stop() came: nothing goes back to the queue
        self._without_cache = False  # Nix's evaluation cache is off: every process evaluates afresh
        self._shared_out = False
        self._after = after
        self._afresh = afresh
        self._built = built
        self._recalled = False  # the first process to start asks the memory and says what is built; the others wait
        self._recall_lock = threading.Lock()
        workers = evaluation_processes(len(self.attrs), processes) if self.attrs else 0
        memory = memory if memory is not None else memory_figure("/proc/meminfo", "MemAvailable")
        self._memory_per_process = memory // max(1, workers) if memory is not None else None
        self._threads = [threading.Thread(target=self._work, name=f"build-{index}", daemon=True) for index in range(workers)]
        for thread in self._threads:
            thread.start()

    def _take(self) -> list[tuple[int, str]]:
        with self._queue_lock:
            if (self._fast or self._evaluated_slowly) and not self._shared_out:
                # Once, when the first system turned out fast, or slow to evaluate: what is left goes to the processes
                # in equal shares.
                self._shared_out = True
                self._streamed = self._evaluated_slowly
                try:
                    afresh = self._without_cache or self._evaluated_slowly or self._afresh()
                except Exception:  # noqa: BLE001 - unanswered (out of descriptors, say): each system keeps its own build
                    afresh = False
                if not afresh:
                    return self._queue.pop(0) if self._queue else []
                left = [pair for share in self._queue for pair in share]
                shares = max(len(self._threads), -(-len(left) // MOST_SYSTEMS_PER_PROCESS))
                self._queue = [share for share in (left[number::shares] for number in range(shares)) if share]
            return self._queue.pop(0) if self._queue else []

    def _recall(self) -> dict[str, str]:
        """Once, before any build: what the memory knows, taken off the queue (a failure there only means building),
        and then what is left to build, said here rather than before, so that the line names only what is built.

        When the memory holds what this run builds, the builds go without
        Nix's evaluation cache: every Nix process then evaluates afresh.
        """
        with self._recall_lock:
            if self._recalled:
                return {}
            self._recalled = True
            recalled = self._remembered()
            if recalled:
                self._runner.echo.note(f"==> {', '.join(recalled)}: built before from this locked flake; not evaluated again")
            if building := [attr for share in self._queue for _index, attr in share]:
                self._runner.echo.note(f"==> building {', '.join(building)} on this machine")
            return recalled

    def _remembered(self) -> dict[str, str]:
        """What the memory knows of this run's systems, taken off the queue ({} when there is none, or it fails)."""
        try:
            if self._built is None or not self._built.known(self._runner):
                return {}
            recalled = self._built.recall(self._runner, self.attrs, self._roots / "built-before")
        except Exception:  # noqa: BLE001 - out of descriptors, say: each system is built as if never seen
            return {}
        with self._queue_lock:
            self._extra = (*WITHOUT_EVALUATION_CACHE, *self._extra)
            self._without_cache = True
            self._queue = [kept for kept in ([pair for pair in share if pair[1] not in recalled] for share in self._queue) if kept]
        return recalled

    def _answer(self, recalled: Mapping[str, str]) -> None:
        """The remembered systems' hosts go on (their closures listed together first, as a share's are)."""
        self._list_closures(recalled)
        for attr, path in recalled.items():
            self._outcomes.setdefault(attr, path)  # unless stop() already said it was interrupted
            self._ready[attr].set()

    def _list_closures(self, built: Mapping[str, str]) -> None:
        """`after`, for systems that became ready together; a system alone has its closure listed by its host,
        beside the SSH handshake."""
        if len(built) > 1 and self._after is not None and not self._children.stopped:
            try:
                self._after(built)
            except Exception:  # noqa: BLE001 - what `after` adds, each host can still do for itself
                pass

    def _work(self) -> None:
        if recalled := self._recall():
            self._answer(recalled)
        while taken := self._take():
            attrs = [attr for _index, attr in taken]
            outcomes: dict[str, str | BuildError | OSError] = {attr: BuildError(f"building {attr} was interrupted") for attr in attrs}
            try:
                # Every system taken is in outcomes, or settled already (streamed), or back in the queue.
                outcomes = self._build_streamed(taken) if self._streamed and len(taken) > 1 else self._build(taken)
                built = {attr: outcome for attr, outcome in outcomes.items() if isinstance(outcome, str)}
                if self._built is not None and self._without_cache:
                    self._built.remember(self._runner, built)
            except Exception as error:  # noqa: BLE001 - a waiting host must hear of it, never wait forever
                failed = [attr for attr in attrs if not self._ready[attr].is_set()]
                outcomes = {attr: BuildError(f"building {attr} failed: {type(error).__name__}: {error}") for attr in failed}
            finally:
                for attr, outcome in outcomes.items():
                    self._settle(attr, outcome)

    def _settle(self, attr: str, outcome: str | BuildError | OSError) -> None:
        self._outcomes[attr] = outcome
        self._ready[attr].set()

    def _build(self, taken: Sequence[tuple[int, str]]) -> dict[str, str | BuildError | OSError]:
        """Build these systems in one Nix process (one by one if that fails), saying what was built and how fast."""
        index, attrs = taken[0][0], [attr for _index, attr in taken]
        started = time.monotonic()
        if len(attrs) > 1:
            try:
                paths = build_systems(self._runner, self._flake, attrs, gc_root=self._roots / f"systems-{index}", extra=self._extra)
            except BuildError:
                if self._children.stopped:
                    return {attr: BuildError(f"building {attr} was interrupted") for attr in attrs}
                return {attr: outcome for one in taken for attr, outcome in self._build([one]).items()}
            except OSError as error:  # out of descriptors, say; the fleet words it
                return dict.fromkeys(attrs, error)
            if not self._runner.dry_run:
                self._runner.echo.step(f"==> built {', '.join(attrs)}", seconds=time.monotonic() - started)
            self._list_closures(paths)
            return dict(paths)
        attr = attrs[0]
        progress = NixProgress()
        try:
            path = build_system(
                self._runner, self._flake, attr, gc_root=self._roots / f"system-{index}", extra=self._extra, progress=progress,
            )
        except (BuildError, OSError) as error:
            return {attr: error}
        ended = time.monotonic()
        elapsed = ended - started
        self._fast = self._fast or elapsed < FAST_BUILD_SECONDS
        evaluating = (progress.building_since or ended) - started  # when nothing was built, all of it
        self._evaluated_slowly = self._evaluated_slowly or evaluating >= self._evaluated_afresh_after
        if not self._runner.dry_run:
            self._runner.echo.step(f"==> built {attr}", seconds=elapsed)
        return {attr: path}

    def _build_streamed(self, taken: Sequence[tuple[int, str]]) -> dict[str, str | BuildError | OSError]:
        """These systems evaluated one after another in one Nix process, each built (without evaluating it again) and
        settled as soon as the process says it is evaluated, so that its host goes on while the next one evaluates.

        What the process did not say it evaluated goes back to the queue: one
        by one when it failed (so that each says its own error), as a share
        again when it stopped for its memory.
        """
        index_of = {attr: index for index, attr in taken}
        outcomes: dict[str, str | BuildError | OSError] = {}
        builds: dict[str, threading.Thread] = {}  # of each system the process said it evaluated
        process: list[subprocess.Popen[str]] = []
        full = threading.Event()  # the process holds too much memory to take more: stopped after the system it said
        evaluating_since = [time.monotonic()]

        def heard(line: str) -> bool:
            """Only logged: what the process says besides is said again by the builds that follow (an error, one by one)."""
            said = evaluated_line(line)
            if said is None or said[0] not in index_of or said[0] in builds:
                return False
            attr, evaluation = said
            began, evaluating_since[0] = evaluating_since[0], time.monotonic()
            builds[attr] = threading.Thread(target=self._realise, args=(attr, index_of[attr], evaluation, began, outcomes), daemon=True)
            builds[attr].start()
            if len(builds) < len(taken) and self._holds_too_much(process[0] if process else None):
                full.set()
                process[0].terminate()
            return False

        cannot_start: OSError | None = None
        try:
            self._runner.run(streamed_evaluation(self._flake, list(index_of), self._extra), shown=heard, started=process.append)
        except OSError as error:  # out of descriptors, say: the fleet words it, as for a system built alone
            cannot_start = error
        for build in builds.values():
            build.join()
        left = [pair for pair in taken if pair[1] not in builds]
        if cannot_start is not None:
            return {**outcomes, **dict.fromkeys((attr for _index, attr in left), cannot_start)}
        with self._queue_lock:
            if left and not self._stopping:
                self._queue[:0] = [left] if full.is_set() else [[pair] for pair in left]
            elif left:
                outcomes.update({attr: BuildError(f"building {attr} was interrupted") for _index, attr in left})
        return outcomes

    def _holds_too_much(self, process: subprocess.Popen[str] | None) -> bool:
        """Whether an evaluating process holds more than half its part of the memory: the next system might need as much."""
        held = memory_figure(f"/proc/{process.pid}/status", "VmRSS") if process is not None else None
        return held is not None and self._memory_per_process is not None and 2 * held > self._memory_per_process

    def _realise(self, attr: str, index: int, evaluation: Evaluation, began: float, outcomes: dict[str, str | BuildError | OSError]) -> None:
        """Build one evaluated system from its derivation, and settle it (its host goes on)."""
        outcome: str | BuildError | OSError
        try:
            gc_root = str(self._roots / f"system-{index}")
            realised = self._runner.run(
                commands.nix_store_realise(evaluation.derivation, gc_root, (*LOCK_POLL, *self._extra)), shown=NixProgress().shown,
            )
            outcome = evaluation.out_path if realised.ok else nix_failure(self._runner, self._flake, attr, "building", realised.stderr)
            if realised.ok and not self._runner.dry_run:
                self._runner.echo.step(f"==> built {attr}", seconds=time.monotonic() - began)
        except OSError as error:
            outcome = error
        except Exception as error:  # noqa: BLE001 - its host must hear of it, never wait forever
            outcome = BuildError(f"building {attr} failed: {type(error).__name__}: {error}")
        outcomes[attr] = outcome
        self._settle(attr, outcome)

    def result(self, attr: str) -> str:
        """attr's toplevel path once it is built; its BuildError (or OSError) if it failed."""
        self._ready[attr].wait()
        outcome = self._outcomes[attr]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def stop(self) -> None:
        """Interrupted: end the builds under way and start no more; a system not built says so."""
        with self._queue_lock:
            self._stopping = True
            left, self._queue = [pair for share in self._queue for pair in share], []
        for _index, attr in left:
            self._outcomes[attr] = BuildError(f"building {attr} was interrupted")
            self._ready[attr].set()
        self._children.stop()

    def finish(self) -> None:
        """Wait for every build, then leave the out links (if asked for) of what was built."""
        for thread in self._threads:
            thread.join()
        if self._children.stopped:
            return
        built = [outcome for outcome in (self._outcomes.get(attr) for attr in self.attrs) if isinstance(outcome, str)]
        if self._out_link is not None and built:
            linked = self._runner.run(commands.nix_store_realise_many(built, self._out_link, self._extra))
            if not linked.ok:
                raise BuildError(f"cannot link {self._out_link}: {nix_error(linked.stderr)}")


def nix_failure(runner: LocalRunner, flake: str, attr: str, doing: str, stderr: str, extra: Sequence[str] = ()) -> BuildError:
    """Nix's failure at `doing` (evaluating, building) attr, in one line: a configuration the flake lacks lists those it has."""
    if TOO_MANY_OPEN_FILES in stderr:  # the same advice as when nixfab itself runs out
        return BuildError(f"{doing} {attr} failed: {out_of_descriptors(nix_error(stderr))}")
    return BuildError(
        missing_configuration(runner, flake, [attr], stderr, extra) or f"{doing} {attr} failed: {nix_error(stderr)}{trace_hint(stderr)}"
    )


def missing_configuration(runner: LocalRunner, flake: str, attrs: Sequence[str], stderr: str, extra: Sequence[str] = ()) -> str | None:
    """When Nix failed because the flake has no such nixosConfigurations, say which it lacks and which it has; else None."""
    if "does not provide attribute" not in stderr:
        return None
    listed = runner.run(commands.nix_eval_configurations(flake, "builtins.attrNames", extra), show_stderr=False)
    try:
        names = [str(name) for name in json.loads(listed.stdout)] if listed.ok else None
    except ValueError:
        names = None
    missing = [attr for attr in attrs if names is not None and attr not in names]
    if names is None or not missing:
        return None
    lacked = ", ".join(f'nixosConfigurations."{attr}"' for attr in missing)
    return f"{flake} has no {lacked}; it has: {', '.join(names) or 'no nixosConfigurations at all'}"


def evaluate_out_paths(runner: LocalRunner, flake: str, attrs: Sequence[str], extra: Sequence[str] = ()) -> dict[str, str | None]:
    """The toplevel out path of each attr in one `nix eval` (None where the flake has no such system); builds nothing."""
    apply = (
        f"cs: builtins.listToAttrs (map (n: {{ name = n; value = if cs ? ${{n}} "
        f"then cs.${{n}}.config.system.build.toplevel.outPath else null; }}) {commands.nix_names(attrs)})"
    )
    result = runner.run(commands.nix_eval_configurations(flake, apply, extra), show_stderr=False)
    if not result.ok:
        raise BuildError(f"evaluating {flake} failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")
    return dict(json.loads(result.stdout))


@dataclass(frozen=True)
class RemoteBuild:
    out_path: str
    gc_root_dir: str  # on the builder; remove it once the result has been copied


def build_remotely(
    runner: LocalRunner,
    builder: Host,
    builder_store: str,
    evaluation: Evaluation,
    *,
    nix_env: Mapping[str, str],
    extra: Sequence[str] = (),
) -> RemoteBuild:
    """Copy the derivation's closure to the builder and realise it there.

    The result stays rooted in a temporary directory on the builder until the
    caller removes it, so it cannot be collected halfway through a deploy.
    """
    copy = runner.run(commands.nix_copy([evaluation.derivation], to=builder_store, derivation=True, extra=extra), env=nix_env)
    if not copy.ok:
        if any(sign in copy.stderr for sign in HOST_KEY_REFUSALS):
            # ssh (under nix copy) is the pull's first contact with the host: a bad host key is exit 5, as for push.
            raise HostKeyRejected(f"{builder.label}: SSH host key unknown or changed (ssh refused it while copying the derivation); check known_hosts")
        raise BuildError(f"copying the derivation to {builder.label} failed: {nix_error(copy.stderr)}")
    temporary = builder.run(commands.make_temp_dir(), dry_stdout="<temporary directory>")
    if not temporary.ok:
        raise BuildError(f"{builder.label}: cannot create a temporary directory: {temporary.tail(1)}")
    root_dir = temporary.stdout.strip()
    realise = builder.run(commands.nix_store_realise(evaluation.derivation, f"{root_dir}/result", extra), stream=True)
    if not realise.ok:
        builder.run(commands.remove_tree(root_dir))
        raise BuildError(f"building on {builder.label} failed: {nix_error(realise.stderr)}")  # a builder's failure: no trace to show
    return RemoteBuild(evaluation.out_path, root_dir)
