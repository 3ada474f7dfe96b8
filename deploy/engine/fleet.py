"""Many hosts at once: one build, parallel deploys in waves, live progress, a summary and one exit code.

A host that fails does not stop the others (unless --fail-fast). --canary
deploys one host first; --batch N deploys in waves of N; either stops at the
first wave with a failed or rolled-back host. Ctrl-C stops hosts that have
not started, lets running ones finish (or roll back), and still summarizes.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from deploy.cli.options import FleetOptions
from deploy.engine.pipeline import DeployOutcome, DeployRequest, HostRun, Session, build_here, build_location, deploy_host
from deploy.errors import ActivationFailed, BuildError, FleetFailed, HealthCheckFailed, NixfabError, NotConfirmed
from deploy.model import Phase, Result
from deploy.transport.process import LocalRunner
from deploy.ui import Console, Progress, host_emitter, live_display, open_log, show_summary, stream_prefix


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

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "result", Result(self.result))

    @property
    def healthy(self) -> bool:
        return self.result.healthy


# A deploy that ends with one of these has put the host back where it was (activation.undo, the magic-rollback watchdog).
ROLLED_BACK_ERRORS = (ActivationFailed, NotConfirmed, HealthCheckFailed)


def result_of_error(error: NixfabError) -> Result:
    return Result.ROLLED_BACK if type(error) in ROLLED_BACK_ERRORS else Result.FAILED


def waves(names: Sequence[str], *, canary: bool, batch: int | None) -> list[list[str]]:
    remaining = list(names)
    planned: list[list[str]] = []
    if canary and remaining:
        planned.append([remaining.pop(0)])
    size = batch or len(remaining) or 1
    planned += [remaining[index : index + size] for index in range(0, len(remaining), size)]
    return planned


class Fleet:
    """One run over the selected hosts; call run() once."""

    def __init__(
        self,
        session: Session,
        request: DeployRequest,
        machines: Sequence[str],
        options: FleetOptions,
        *,
        console: Console | None = None,
        on_result: Callable[[HostResult, HostRun], None] | None = None,
    ) -> None:
        self.session = session
        self.request = request
        self.options = options
        self.console = console or Console()
        self.on_result = on_result
        specs = [session.inventory.host(machine) for machine in machines]
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise NixfabError(f"{spec.name} is selected twice (as different users?); name it once")
            seen.add(spec.name)
        width = max(len(spec.name) for spec in specs)
        self.progress = Progress([spec.name for spec in specs])
        self.stop = threading.Event()
        self.interrupted = False
        self.ask_lock = threading.Lock()
        self._logs: list[TextIO] = []
        self.runs: dict[str, HostRun] = {}
        for spec in specs:
            log = open_log(options.log_dir, spec.name)
            if log is not None:
                self._logs.append(log)
            echo = host_emitter(self.console, stream_prefix(spec.name, width), log)
            self.runs[spec.name] = HostRun(
                spec, echo, LocalRunner(echo, dry_run=session.dry_run),
                on_phase=functools.partial(self.progress.phase, spec.name), ask_lock=self.ask_lock,
            )
        self.results: dict[str, HostResult] = {}

    # ---- stages -----------------------------------------------------------------------------

    def run(self) -> list[HostResult]:
        with ExitStack() as stack:
            stack.callback(self._close_logs)
            stack.enter_context(live_display(self.console, self.progress, enabled=self.options.live))
            gc_root = stack.enter_context(self._out_link())
            try:
                built = self.build_locally(gc_root)
                self.deploy_in_waves(built)
            except KeyboardInterrupt:
                self.interrupted = True
            for name in self.runs:
                if name not in self.results:
                    self.finish(name, HostResult(name, Result.INTERRUPTED if self.interrupted else Result.NOT_STARTED, 0.0))
        return [self.results[name] for name in self.runs]

    @contextmanager
    def _out_link(self) -> Iterator[Path]:
        if self.request.out_link is not None:
            yield self.request.out_link
            return
        import tempfile

        with tempfile.TemporaryDirectory(prefix="nixfab-gcroot-") as directory:
            yield Path(directory) / "result"

    def build_locally(self, gc_root: Path) -> dict[str, str]:
        """One `nix build` for every system built here; if it fails, one per host to find which."""
        local = [run for run in self.runs.values() if build_location(self.request, run.spec) == "local"]
        if not local:
            return {}
        for run in local:
            self.progress.phase(run.spec.name, Phase.BUILD)
        names = ", ".join(run.spec.attr for run in local)
        from deploy.plan.disk import check_free_space

        for warning in check_free_space(self.session.runner, ["/nix"], "this machine"):
            self.session.echo.warning(warning)
        self.session.echo.note(f"==> building {names} on this machine")
        started = time.monotonic()
        try:
            return build_here(self.session, self.request, local, gc_root)
        except BuildError as batch_error:
            if len(local) == 1:
                self.fail(local[0], batch_error, started)
                return {}
        built: dict[str, str] = {}
        for index, run in enumerate(local):
            try:
                built |= build_here(self.session, self.request, [run], gc_root.with_name(f"{gc_root.name}-single-{index}"))
            except BuildError as error:
                self.fail(run, error, started)
        return built

    def deploy_in_waves(self, built: dict[str, str]) -> None:
        pending = [name for name in self.runs if name not in self.results]
        for wave in waves(pending, canary=self.options.canary, batch=self.options.batch):
            self.deploy_wave(wave, built)
            if self.stop.is_set():
                return
            staged = self.options.canary or self.options.batch
            if staged and any(not self.results[name].healthy for name in wave):
                failed = ", ".join(name for name in wave if not self.results[name].healthy)
                self.session.echo.note(f"==> stopping the rollout: {failed} did not come out healthy")
                self.stop.set()
                return

    def deploy_wave(self, wave: Sequence[str], built: dict[str, str]) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.options.parallel), thread_name_prefix="deploy") as pool:
            futures = [pool.submit(self.deploy_one, name, built.get(name)) for name in wave]
            try:
                while not all(future.done() for future in futures):
                    concurrent.futures.wait(futures, timeout=0.2)
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop.set()
                self.session.echo.note("==> interrupted: no new host starts; waiting for running deploys to finish or roll back")
                self.wait_despite_interrupts(futures)

    def wait_despite_interrupts(self, futures: Sequence[concurrent.futures.Future[None]]) -> None:
        # A deploy stopped between activation and confirmation is exactly the half-deployed host we never leave.
        while not all(future.done() for future in futures):
            try:
                concurrent.futures.wait(futures, timeout=0.2)
            except KeyboardInterrupt:
                self.session.echo.note("==> still waiting for running deploys (they roll back on their own if cut off)")

    def deploy_one(self, name: str, built_here: str | None) -> None:
        run = self.runs[name]
        if name in self.results:
            return
        if self.stop.is_set():
            self.finish(name, HostResult(name, Result.INTERRUPTED if self.interrupted else Result.NOT_STARTED, 0.0))
            return
        started = time.monotonic()
        self.progress.phase(name, Phase.LOCK if self.request.action else Phase.BUILD)
        try:
            outcome = deploy_host(self.session, self.request, run, built_here)
        except NixfabError as error:
            self.fail(run, error, started)
            return
        except Exception as error:  # noqa: BLE001 - one host's bug must not take down the fleet's summary
            run.echo.record(traceback.format_exc())
            self.fail(run, NixfabError(f"{name}: internal error: {type(error).__name__}: {error}"), started)
            return
        self.finish(name, self.result_of(outcome, started))

    def result_of(self, outcome: DeployOutcome, started: float) -> HostResult:
        return HostResult(
            outcome.host, outcome.status, round(time.monotonic() - started, 3), outcome.path, outcome.generation, log=self.log_path(outcome.host)
        )

    def fail(self, run: HostRun, error: NixfabError, started: float) -> None:
        message = str(error)
        run.echo.note(f"error: {message}")
        result = HostResult(
            run.spec.name, result_of_error(error), round(time.monotonic() - started, 3),
            error=message, exit_code=error.exit_code, log=self.log_path(run.spec.name),
        )
        self.finish(run.spec.name, result)
        if self.options.fail_fast:
            self.stop.set()

    def finish(self, name: str, result: HostResult) -> None:
        self.results[name] = result
        self.progress.finish(name, result.result)
        run = self.runs[name]
        if self.on_result is not None:
            self.on_result(result, run)

    def log_path(self, name: str) -> str | None:
        return str(self.options.log_dir / f"{name}.log") if self.options.log_dir else None

    def _close_logs(self) -> None:
        for log in self._logs:
            log.close()


def exit_code(results: Sequence[HostResult], *, interrupted: bool) -> int:
    if interrupted:
        return 130
    codes = {result.exit_code for result in results if not result.healthy and result.exit_code}
    if not codes:
        return 0 if all(result.healthy for result in results) else 1
    return codes.pop() if len(codes) == 1 else FleetFailed.exit_code


def results_json(results: Sequence[HostResult], *, interrupted: bool) -> str:
    return json.dumps(
        {
            "exit_code": exit_code(results, interrupted=interrupted),
            "interrupted": interrupted,
            "hosts": [
                {
                    "host": r.host, "result": r.result, "generation": r.generation, "path": r.path,
                    "duration_seconds": r.duration_seconds, "error": r.error, "exit_code": r.exit_code, "log": r.log,
                }
                for r in results
            ],
        },
        indent=2,
    )


def summary_rows(results: Sequence[HostResult]) -> list[tuple[str, Result, str, str, str]]:
    return [
        (r.host, r.result, "" if r.generation is None else str(r.generation), f"{r.duration_seconds:.1f}s", first_line(r.error or ""))
        for r in results
    ]


def first_line(text: str, limit: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def format_summary(results: Sequence[HostResult]) -> str:
    """The summary as plain text, for pipes and logs."""
    header = ("host", "result", "gen", "time", "error")
    rows = [header, *summary_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
        for row in rows
    ).rstrip()


def print_summary(results: Sequence[HostResult], *, rich: bool, stream: TextIO) -> None:
    show_summary(summary_rows(results), format_summary(results), rich=rich, stream=stream)

