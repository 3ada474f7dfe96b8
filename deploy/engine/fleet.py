"""Many hosts at once: one build, parallel deploys in waves, live progress, a summary and one exit code.

A host that fails does not stop the others (unless --fail-fast). --canary
deploys one host first; --batch N deploys in waves of N; either stops at the
first wave with a failed or rolled-back host. Ctrl-C (or SIGHUP) stops hosts
that have not started, lets running ones finish (or roll back), and still
summarizes.

What a run holds grows with --parallel, not with the fleet: a host's log file
is opened when its deploy starts and closed when it ends, and its SSH
connection is closed as soon as no unfinished host needs it.

The journal (the on_start and on_result callbacks) failing is never a host's
failure: it becomes a warning and `journal_errors`, which the CLI turns into
a non-zero exit; it neither stops the run nor escapes a deploy thread.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread  # concurrent.futures loads it at its first use otherwise: mid-run, descriptors in use
import errno
import functools
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from deploy.build.build import ParallelBuild
from deploy.cli.options import FleetOptions
from deploy.copy.closure import Closure, closures_of
from deploy.engine.hangup import handling_hangup
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.request import DeployRequest, build_location
from deploy.engine.session import Session
from deploy.errors import (
    ActivationFailed,
    BuildError,
    FleetFailed,
    HealthCheckFailed,
    JournalError,
    NixfabError,
    NotConfirmed,
    StoppedByInterrupt,
    out_of_descriptors,
)
from deploy.model import Phase, Result
from deploy.transport.process import interrupts_deferred
from deploy.ui import Console, Emitter, Progress, host_emitter, live_display, open_log, show_summary, stream_prefix
from deploy.ui.live import HostLine
from deploy.ui.plain import duration
from deploy.ui.results import SUMMARY_COLUMNS

if TYPE_CHECKING:
    from deploy.build.built_systems import BuiltSystems
    from deploy.build.flake_check import FlakeCheck
    from deploy.transport.remote import Preparation


def deploy_host(session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
    """pipeline.deploy_host, imported when the first host deploys: the builds need not wait for every step's import."""
    from deploy.engine import pipeline

    return pipeline.deploy_host(session, request, run, built_here)


@dataclass(frozen=True)
class HostResult:
    host: str
    result: Result
    duration_seconds: float
    path: str | None = None
    generation: int | None = None
    error: str | None = None
    exit_code: int = 0
    log: str | None = None
    diff: str | None = None  # the `diff` task's difference, for stdout

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "result", Result(self.result))

    @property
    def healthy(self) -> bool:
        return self.result.healthy


# A deploy that ends with one of these has put the host back where it was (activation.undo, the magic-rollback watchdog).
ROLLED_BACK_ERRORS = (ActivationFailed, NotConfirmed, HealthCheckFailed)


def result_of_error(error: NixfabError) -> Result:
    if isinstance(error, StoppedByInterrupt):
        return Result.INTERRUPTED
    return Result.ROLLED_BACK if type(error) in ROLLED_BACK_ERRORS else Result.FAILED


def waves(names: Sequence[str], *, canary: bool, batch: int | None) -> list[list[str]]:
    remaining = list(names)
    planned: list[list[str]] = []
    if canary and remaining:
        planned.append([remaining.pop(0)])
    size = batch or len(remaining) or 1
    planned += [remaining[index : index + size] for index in range(0, len(remaining), size)]
    return planned


@dataclass(frozen=True)
class FleetWork:
    """What a fleet does for each host instead of a deploy (the operations: inv exec, inv plan).

    `run` takes what pipeline.deploy_host takes and returns (or raises) as it does; `build_first`:
    the systems built here are built first, as for a deploy, and each host's `run` gets its own.
    """

    run: Callable[[Session, DeployRequest, HostRun, str | None], DeployOutcome]
    build_first: bool = False


class Fleet:
    """One run over the selected hosts; call run() once. It deploys each host, unless given other `work`."""

    def __init__(
        self,
        session: Session,
        request: DeployRequest,
        machines: Sequence[str],
        options: FleetOptions,
        *,
        console: Console | None = None,
        on_result: Callable[[HostResult, HostRun], None] | None = None,
        on_start: Callable[[HostRun], None] | None = None,
        work: FleetWork | None = None,
        check: FlakeCheck | None = None,
        built: BuiltSystems | None = None,
    ) -> None:
        self.session = session
        self.work = work
        self.check = check  # `nix flake check` running beside the build: hosts wait for it before activating
        self.builds: ParallelBuild | None = None
        self.built = built  # the systems built here before: an unchanged flake is not evaluated again
        self.closures: dict[str, Closure] = {}  # of the systems built here, by path, listed a share at a time
        self.preparation: Preparation | None = None  # Fabric's import and `ssh -G`, while the systems build
        self.space_check: threading.Thread | None = None  # this machine's free space, while the systems build
        self.request = request
        self.options = options
        self.console = console or Console()
        self.on_result = on_result
        self.on_start = on_start
        specs = [session.inventory.host(machine) for machine in machines]
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise NixfabError(f"{spec.name} is selected twice (as different users?); name it once")
            seen.add(spec.name)
        self.width = max(len(spec.name) for spec in specs)
        self.progress = Progress([spec.name for spec in specs])
        self.stop = threading.Event()
        self.interrupted = False
        self.hangup = False  # the interruption was SIGHUP (exit 129), not Ctrl-C (130)
        self.ask_lock = threading.Lock()
        self.journal_errors: list[str] = []
        self._state_lock = threading.Lock()
        self._logs: dict[str, TextIO] = {}  # only the hosts deploying right now
        self._logs_failed = False
        self.runs: dict[str, HostRun] = {}
        for spec in specs:
            echo = self._emitter(spec.name)
            self.runs[spec.name] = HostRun(
                spec, echo, session.local_runner(echo),
                on_phase=functools.partial(self._enter_phase, spec.name), ask_lock=self.ask_lock,
            )
        # Which unfinished hosts need each SSH connection (their own, their builder's): the last one to end closes it.
        self._connection_users: dict[tuple[str, int | None], set[str]] = {}
        self._connections_of: dict[str, list[tuple[str, int | None]]] = {}
        for spec in specs:
            keys = [] if request.local else [(spec.ssh.destination(), spec.ssh.port)]
            build_on = build_location(request, spec)
            if build_on not in ("local", "target"):
                try:
                    builder = session.ssh_of(build_on)
                    keys.append((builder.destination(), builder.port))
                except NixfabError:
                    pass  # the deploy itself reports an unknown builder
            self._connections_of[spec.name] = keys
            for key in keys:
                self._connection_users.setdefault(key, set()).add(spec.name)
        self.results: dict[str, HostResult] = {}

    # ---- stages -----------------------------------------------------------------------------

    def run(self) -> list[HostResult]:
        with ExitStack() as stack:
            stack.callback(self._close_logs)
            stack.enter_context(self._hangup_is_an_interrupt())
            stack.enter_context(live_display(self.console, self.progress, enabled=self.options.live))
            gc_roots = stack.enter_context(self._gc_roots())
            stack.callback(self._join_space_check)  # its df is a child of this run: it never outlives it
            try:
                if self.work is None or self.work.build_first:
                    self.build_locally(gc_roots)
                self.deploy_in_waves()
                self.finish_builds()
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop.set()  # first: a deploy that meets its stopped build must take it for the interruption it is
                self.stop_background()
            except OSError as error:
                self.fail_the_rest(error)
            for name in self.runs:
                if name not in self.results:
                    self.finish(name, HostResult(name, Result.INTERRUPTED if self.interrupted else Result.NOT_STARTED, 0.0))
        return [self.results[name] for name in self.runs]

    @contextmanager
    def _hangup_is_an_interrupt(self) -> Iterator[None]:
        """SIGHUP (the terminal or the SSH session went away) stops the run as Ctrl-C does: no half-deployed host."""

        def hangup(signum: int, frame: FrameType | None) -> None:
            self.hangup = True
            raise KeyboardInterrupt

        with handling_hangup(hangup):
            yield

    @contextmanager
    def _gc_roots(self) -> Iterator[Path]:
        """A directory for the run's GC roots of what it builds here, removed (so they can be collected) when it ends.

        Its removal failing (out of descriptors, say) is a warning: the hosts' results and the summary still come."""
        import shutil
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="nixfab-gcroot-"))
        try:
            yield directory
        finally:
            try:
                shutil.rmtree(directory)
            except OSError as error:
                self.session.echo.warning(
                    f"cannot remove {directory}: {os_error_text(error)}; remove it, or the systems it links to are never garbage-collected"
                )

    def fail_the_rest(self, error: OSError) -> None:
        """The fleet's own step (starting the builds, a wave) met an OSError, mostly running out of descriptors, which
        a lazy import meets as well as a pipe. Every host not yet done fails with one line and the summary still
        comes; the hosts already deploying finished first (their wave's pool waits for them), and no build outlives
        the run: no host is touched without its system."""
        self.stop_background()
        self.finish_builds()
        started = time.monotonic()
        for name, run in self.runs.items():
            if name not in self.results:
                self.fail(run, os_error(name, error), started)

    def build_locally(self, gc_roots: Path) -> None:
        """Start building every system built here: evaluated once, in up to one Nix process per core.

        Each host's deploy waits for its own system (deploy_one), so the first
        hosts copy and activate while later systems still evaluate.
        """
        local = [run for run in self.runs.values() if build_location(self.request, run.spec) == "local"]
        if not local or self.request.keys_only:
            return
        for run in local:
            self.progress.phase(run.spec.name, Phase.BUILD)
        attrs = list(dict.fromkeys(run.spec.attr for run in local))
        streams = self.request.action is not None and not self.request.local and not self.request.substitute_on_destination
        self.builds = ParallelBuild(
            self.session.runner, self.request.flake, attrs, roots=gc_roots, out_link=self.request.out_link, extra=self.request.extra_nix,
            after=self._list_closures if streams and not self.session.dry_run else None, afresh=self._evaluated_afresh,
            built=self.built,
        )
        if self.request.action is not None and any(self._connections_of.values()):
            from deploy.transport.remote import Preparation

            ssh_config, resolver = self.session.inventory.ssh_config, self.session.ssh_resolver
            self.preparation = Preparation([
                functools.partial(resolver.resolve, destination, port=port, ssh_config=ssh_config, label=name)
                for name, keys in self._connections_of.items() for destination, port in keys
            ])
        # Imported here, by the fleet's own step, whose running out of descriptors fails every host with one line.
        from deploy.plan.disk import check_free_space

        # Once the builds run, and beside them: a warning, which need not hold up the builds or the hosts' connections.
        check = functools.partial(check_free_space, self.session.runner, ["/nix"], "this machine")
        self.space_check = threading.Thread(target=self._warn_if_short_of_space, args=(check,), name="free-space", daemon=True)
        self.space_check.start()

    def _warn_if_short_of_space(self, check: Callable[[], list[str]]) -> None:
        # It never ends the run when it cannot be checked (out of file descriptors, say, which the hosts' deploys
        # then meet and report one by one), nor leaves a traceback from its thread.
        try:
            warnings = check()
        except Exception as error:  # noqa: BLE001 - a warning's check, whatever stops it
            warnings = [f"this machine: could not check free space on /nix: {getattr(error, 'strerror', None) or error}"]
        for warning in warnings:
            self.session.echo.warning(warning)

    def _join_space_check(self) -> None:
        if self.space_check is not None:
            self.space_check.join()

    def _evaluated_afresh(self) -> bool:
        """Whether the local Nix evaluates this flake again in every process (asked once, when a system built fast)."""
        from deploy.build.build import evaluated_afresh
        from deploy.config.flakeref import copies_every_file, local_flake_directory
        from deploy.nix.flake_ops import nix_version

        flake = self.request.flake
        return evaluated_afresh(
            nix_version(self.session.runner), copies_every_file=copies_every_file(flake), dirty=self.request.dirty,
            in_git=self.request.revision is not None or local_flake_directory(flake) is None,
        )

    def _list_closures(self, built: Mapping[str, str]) -> None:
        """Systems one Nix process just built: their closures from one more, for their hosts' preflights to ask about."""
        try:
            self.closures.update(closures_of(self.session.runner, list(built.values())))
        except (NixfabError, OSError):
            pass  # each host then lists its own, and says what went wrong

    def stop_background(self) -> None:
        """Interrupted: the builds and the flake check run in threads, whose children only we can stop."""
        if self.builds is not None:
            self.builds.stop()
        if self.check is not None:
            self.check.stop()
        if self.preparation is not None:
            self.preparation.stop()

    def finish_builds(self) -> None:
        """Wait for every build (the `build` task's ./result links are made once all are done)."""
        if self.builds is None:
            return
        try:
            self.builds.finish()
        except BuildError as error:
            self.session.echo.warning(str(error))
        except OSError as error:  # as the link's failure is (a BuildError): the hosts' results stand
            self.session.echo.warning(f"cannot link {self.request.out_link}: {os_error_text(error)}")

    def _connects_while_building(self, run: HostRun) -> bool:
        """A deploy to a host whose system this machine builds: its connection opens while the system builds.

        Not for a host with keys to read (one that cannot be read stops the host before it is even connected to, once
        its system is built), nor beside a flake check (whose failure leaves a host not yet connected unconnected), nor
        for a plan (which asks nothing of a host whose system does not build).
        """
        request = self.request
        return (
            self.work is None and self.check is None and request.action is not None and not request.local
            and not request.keys_only and not (request.uploads_keys and run.spec.keys)
            and not self.session.dry_run and self._builds_here(run)
        )

    def _builds_here(self, run: HostRun) -> bool:
        """Whether this run builds the host's system on this machine."""
        return self.builds is not None and build_location(self.request, run.spec) == "local"

    def _built_here(self, run: HostRun) -> str | None:
        """The host's system, once built here (BuildError if it failed); None when it is built elsewhere."""
        if not self._builds_here(run):
            return None
        assert self.builds is not None  # _builds_here says so
        return self.builds.result(run.spec.attr)

    def _enter_phase(self, name: str, phase: Phase) -> None:
        """A host's next phase; activation first waits for the flake check, whose failure stops the host there."""
        if phase is Phase.ACTIVATE and self.check is not None:
            if not self.check.done:
                self.progress.phase(name, Phase.CHECK)
            self.check.wait()
        self.progress.phase(name, phase)

    def deploy_in_waves(self) -> None:
        pending = [name for name in self.runs if name not in self.results]
        for name in pending:
            self.progress.queued(name)
        planned = waves(pending, canary=self.options.canary, batch=self.options.batch)
        for number, wave in enumerate(planned, 1):
            if len(planned) > 1 or self.options.canary:
                canary = " (the canary)" if self.options.canary and number == 1 else ""
                self.session.echo.note(f"==> wave {number}/{len(planned)}: {', '.join(wave)}{canary}")
                self.progress.wave = f"wave {number}/{len(planned)}"
            self.deploy_wave(wave)
            if self.stop.is_set():
                return
            staged = self.options.canary or self.options.batch
            if staged and any(not self.results[name].healthy for name in wave):
                failed = ", ".join(name for name in wave if not self.results[name].healthy)
                self.session.echo.note(f"==> stopping the rollout: {failed} did not come out healthy")
                self.stop.set()
                return

    def deploy_wave(self, wave: Sequence[str]) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.options.parallel), thread_name_prefix="deploy") as pool:
            futures: list[concurrent.futures.Future[None]] = []
            try:
                # A Ctrl-C or SIGHUP that came while a thread started would leave that deploy running without its
                # future, outside the handling below: it comes once every deploy of the wave has its future.
                with interrupts_deferred():
                    futures.extend(pool.submit(self.deploy_one, name) for name in wave)
                while not all(future.done() for future in futures):
                    concurrent.futures.wait(futures, timeout=0.2)
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop.set()
                self.stop_background()
                what = "hung up (SIGHUP)" if self.hangup else "interrupted"
                self.session.echo.note(f"==> {what}: no new host starts; waiting for running deploys to finish or roll back")
                self.wait_despite_interrupts(futures)
        for future in futures:
            future.result()  # deploy_one catches what a host's deploy raises; anything else is a bug, not to be lost

    def wait_despite_interrupts(self, futures: Sequence[concurrent.futures.Future[None]]) -> None:
        # A deploy stopped between activation and confirmation is exactly the half-deployed host we never leave.
        while not all(future.done() for future in futures):
            try:
                concurrent.futures.wait(futures, timeout=0.2)
            except KeyboardInterrupt:
                self.session.echo.note("==> still waiting for running deploys (they roll back on their own if cut off)")

    def deploy_one(self, name: str) -> None:
        run = self.runs[name]
        if name in self.results:
            return
        started = time.monotonic()
        built_here: str | None = None
        if not self.stop.is_set():
            try:
                if self._connects_while_building(run):
                    self.session.target(run.spec, run.echo).connect_ahead()
                built_here = self._built_here(run)
                run.closure = self.closures.get(built_here) if built_here else None
                check_failed = self.check.failure() if self.check is not None else None
                if check_failed is not None:
                    raise check_failed  # known before the host is touched: it is not even connected to
            except (NixfabError, OSError) as error:
                if not self.stop.is_set():
                    self.fail(run, error if isinstance(error, NixfabError) else os_error(name, error), started)
                    return
        if self.stop.is_set():  # also when it came while this host's system was building
            self.finish(name, HostResult(name, Result.INTERRUPTED if self.interrupted else Result.NOT_STARTED, 0.0))
            return
        if self.work is None:
            self.progress.phase(name, Phase.LOCK if self.request.action or self.request.keys_only else Phase.BUILD)
        try:
            self._open_log(run)
            if self.on_start is not None:
                self._journal(functools.partial(self.on_start, run))
            try:
                work = deploy_host if self.work is None else self.work.run
                outcome = work(self.session, self.request, run, built_here)
            except NixfabError as error:
                self.fail(run, error, started)
                return
            except OSError as error:
                run.echo.record(traceback.format_exc())
                self.fail(run, os_error(name, error), started)
                return
            except Exception as error:  # noqa: BLE001 - one host's bug must not take down the fleet's summary
                run.echo.record(traceback.format_exc())
                self.fail(run, NixfabError(f"{name}: internal error: {type(error).__name__}: {error}"), started)
                return
            self.finish(name, self.result_of(outcome, started))
        finally:
            self._close_log(name)

    def result_of(self, outcome: DeployOutcome, started: float) -> HostResult:
        return HostResult(
            outcome.host, outcome.status, round(time.monotonic() - started, 3), outcome.path, outcome.generation, log=self.log_path(outcome.host),
            diff=outcome.diff,
        )

    def fail(self, run: HostRun, error: NixfabError, started: float) -> None:
        message = str(error)
        if self.options.fail_fast:
            self.stop.set()
        name = run.spec.name
        opened_here = name not in self._logs and self._open_log(run)  # a host that failed in the shared build
        try:
            # Said once, here, with what shows why; the summary then gives only the host's result.
            run.echo.failure(message.removeprefix(f"{name}: "), getattr(error, "details", None))
        finally:
            if opened_here:
                self._close_log(name)
        result = HostResult(
            name, result_of_error(error), round(time.monotonic() - started, 3),
            path=run.path, generation=run.generation, error=message, exit_code=error.exit_code, log=self.log_path(name),
        )
        self.finish(name, result)

    def finish(self, name: str, result: HostResult) -> None:
        self.results[name] = result
        self.progress.finish(name, result.result)
        run = self.runs[name]
        try:
            if self.on_result is not None:
                self._journal(functools.partial(self.on_result, result, run))
        finally:
            self._release_connections(name)

    def _journal(self, record: Callable[[], None]) -> None:
        """Run a journal callback; its failure is a warning and a mark on the run, never a host's failure."""
        try:
            try:
                record()
            except OSError as error:  # out of descriptors, say: the same warning, not a run that ends without its summary
                raise JournalError(f"cannot write the deploy journal: {error.strerror or error}") from None
        except JournalError as error:
            with self._state_lock:
                first = not self.journal_errors
                self.journal_errors.append(str(error))
            if first:
                self.session.echo.warning(f"{error}; the deploys go on, but this run is not (fully) in `inv history`")

    def _release_connections(self, name: str) -> None:
        closing = []
        with self._state_lock:
            for key in self._connections_of.get(name, []):
                users = self._connection_users.get(key, set())
                users.discard(name)
                if not users:
                    closing.append(key)
        for destination, port in closing:
            self.session.release(destination, port)

    def log_path(self, name: str) -> str | None:
        if self.options.log_dir is None or self._logs_failed:
            return None
        return str(self.options.log_dir / f"{name}.log")

    def _open_log(self, run: HostRun) -> bool:
        """Open the host's log for the length of its deploy; a log that cannot be opened is a warning, not a failure."""
        name = run.spec.name
        if self._logs_failed:
            return False
        try:
            log = open_log(self.options.log_dir, name)
        except OSError as error:
            with self._state_lock:
                first, self._logs_failed = not self._logs_failed, True
            if first:
                self.session.echo.warning(f"cannot write host logs in {self.options.log_dir}: {error.strerror or error}; going on without them")
            return False
        if log is None:
            return False
        with self._state_lock:
            self._logs[name] = log
        self._set_echo(run, self._emitter(name, log))
        return True

    def _close_log(self, name: str) -> None:
        with self._state_lock:
            log = self._logs.pop(name, None)
        if log is None:
            return
        run = self.runs[name]
        self._set_echo(run, self._emitter(name))
        log.close()

    def _emitter(self, name: str, log: TextIO | None = None) -> Emitter:
        return host_emitter(self.console, stream_prefix(name, self.width), log, also=HostLine(self.progress, name))

    def _set_echo(self, run: HostRun, echo: Emitter) -> None:
        run.echo = echo
        run.runner = self.session.local_runner(echo)

    def _close_logs(self) -> None:
        for name in list(self._logs):
            self._close_log(name)


def os_error(name: str, error: OSError) -> NixfabError:
    """An OSError in a host's deploy as that host's one-line failure."""
    return NixfabError(f"{name}: {os_error_text(error)}")


def os_error_text(error: OSError) -> str:
    """An OSError in one line; running out of descriptors says what to do."""
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return out_of_descriptors(error.strerror or str(error))
    return f"{type(error).__name__}: {error}"


def exit_code(results: Sequence[HostResult], *, interrupted: bool, hangup: bool = False, journal_failed: bool = False) -> int:
    """The run's exit code: an interruption's, else the hosts' failure's, else the journal's (17), else 0."""
    if interrupted:
        return 129 if hangup else 130
    codes = {result.exit_code for result in results if not result.healthy and result.exit_code}
    if not codes:
        if not all(result.healthy for result in results):
            return 1
        return JournalError.exit_code if journal_failed else 0
    return codes.pop() if len(codes) == 1 else FleetFailed.exit_code


def results_json(
    results: Sequence[HostResult], *, interrupted: bool, hangup: bool = False, journal_errors: Sequence[str] = ()
) -> str:
    document: dict[str, object] = {
        "exit_code": exit_code(results, interrupted=interrupted, hangup=hangup, journal_failed=bool(journal_errors)),
        "interrupted": interrupted,
        "hosts": [
            {
                "host": r.host, "result": r.result, "generation": r.generation, "path": r.path,
                "duration_seconds": r.duration_seconds, "error": r.error, "exit_code": r.exit_code, "log": r.log,
            }
            for r in results
        ],
    }
    if journal_errors:
        document["journal_error"] = journal_errors[0]  # only then, so the document keeps its shape otherwise
    return json.dumps(document, indent=2)


def summary_rows(results: Sequence[HostResult]) -> list[tuple[str, Result, str, str]]:
    """The summary table: a host's error is not repeated there, it was said once when the host failed."""
    return [(r.host, r.result, "" if r.generation is None else str(r.generation), f"{r.duration_seconds:.1f}s") for r in results]


def format_summary(results: Sequence[HostResult]) -> str:
    """The summary as plain text, for pipes and logs."""
    rows = [SUMMARY_COLUMNS, *summary_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(SUMMARY_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row)).rstrip() for row in rows)


# The totals, in this order, and what each result is called there.
TOTALS: tuple[tuple[Result, str], ...] = (
    (Result.OK, "ok"), (Result.UP_TO_DATE, "up to date"), (Result.BUILT, "built"), (Result.DIFFED, "diffed"),
    (Result.PLANNED, "planned"), (Result.SKIPPED, "skipped"), (Result.FAILED, "failed"), (Result.ROLLED_BACK, "rolled back"),
    (Result.INTERRUPTED, "interrupted"), (Result.NOT_STARTED, "not started"), (Result.UNFINISHED, "unfinished"),
)


def totals_line(results: Sequence[HostResult], seconds: float, log_dir: Path | None) -> str:
    """`2 ok, 1 rolled back (gamma) in 4.1 s; logs: .nixfab/logs/20250101-120000-4242`: the summary's last line."""
    parts = []
    for result, label in TOTALS:
        hosts = [r.host for r in results if r.result == result]
        if hosts:
            named = f" ({', '.join(hosts[:5])}{', …' if len(hosts) > 5 else ''})" if not result.healthy else ""
            parts.append(f"{len(hosts)} {label}{named}")
    line = f"{', '.join(parts) or 'no hosts'} in {duration(seconds)}"
    return f"{line}; logs: {shown_path(log_dir)}" if log_dir is not None else line


def shown_path(path: Path) -> str:
    """A path as short as it can be said: relative to the current directory when it is inside it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_summary(results: Sequence[HostResult], *, rich: bool, stream: TextIO) -> None:
    show_summary(summary_rows(results), format_summary(results), rich=rich, stream=stream)
