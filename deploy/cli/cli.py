"""The CLI edge: the only place where errors become messages and exit codes.

tasks.py declares tasks and options; each task is a Step: a function of
deploy/cli/arguments.py builds its typed options (deploy/cli/options.py) from
Invoke's keyword arguments, and its handler (run_deploy here, or one in
deploy/cli/day2.py) gets them. Everything heavy
(Fabric, paramiko, rich, yaml) is imported inside functions, so that
Invoke's tab completion, which imports tasks.py on every TAB, stays fast.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from deploy.errors import JournalError, NixfabError, UsageError
from deploy.model import Result

if TYPE_CHECKING:
    from deploy.cli.options import DeployOptions, OneHostOptions, Selection
    from deploy.config.inventory import HostSpec
    from deploy.engine.fleet import HostResult
    from deploy.engine.pipeline import DeployRequest, HostRun, Session
    from deploy.record.history import DeployRecord, Journal
    from deploy.transport.hosts import Host

T = TypeVar("T")
OptionsT = TypeVar("OptionsT")
# Positionals our handlers check themselves, so each can be left out or given by flag.
OPTIONAL_POSITIONALS = frozenset({"machine", "generation", "command"})


class Step(Generic[OptionsT]):
    """One task's work: `build` turns Invoke's keyword arguments into typed options (deploy.cli.arguments), `run` acts on them.

    mypy checks that what `build` returns is what `run` takes. (A plain class: a dataclass would cost
    tab completion an exec at import.)
    """

    __slots__ = ("build", "run")

    def __init__(self, build: Callable[..., OptionsT], run: Callable[[Any, OptionsT], None]) -> None:
        self.build = build
        self.run = run

    def __call__(self, context: Any, **arguments: Any) -> None:
        with errors_as_exit_codes():
            options = self.build(**arguments)
        self.run(context, options)


def allow_optional_machine() -> None:
    """Let `inv TASK` run without a machine (then it means this machine).

    Invoke requires every positional argument. Its parser consumes a
    positional only while it is unset, and complains at the end if one still
    is; we keep the first and, for `machine` only, drop the second.
    """
    from invoke.parser.parser import ParseMachine

    if getattr(ParseMachine.complete_context, "_nixfab", False):
        return
    original = ParseMachine.complete_context

    def complete_context(self: Any) -> None:
        if self.context is not None:
            for argument in self.context.positional_args:
                if argument.name in OPTIONAL_POSITIONALS and argument.value is None:
                    argument.value = ""
        original(self)

    # The marker checked above, so a second call does not wrap the patch again; mypy allows no attributes on a function.
    complete_context._nixfab = True  # type: ignore[attr-defined]
    # Deliberately replacing a method of Invoke's parser class (see the docstring).
    ParseMachine.complete_context = complete_context  # type: ignore[method-assign]


def one_line(message: str) -> str:
    """Errors are one line, even when they quote a value (a path, a flake) that holds a line break."""
    return message.strip().replace("\r", "\\r").replace("\n", "\\n")


@contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    from invoke.exceptions import Exit

    try:
        yield
    except NixfabError as error:
        raise Exit(f"nixfab: error: {one_line(str(error))}", code=error.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("nixfab: interrupted", code=130) from None
    except OSError as error:
        import errno

        if error.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        # Out of file descriptors outside any one host's deploy: still one line, never a traceback.
        raise Exit(f"nixfab: error: out of file descriptors ({error.strerror}): raise the limit (`ulimit -n`) or lower --parallel", code=1) from None


def extra_nix_options(argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """What follows `--` on the command line, argv-exact (Invoke keeps only a joined string)."""
    argv = list(sys.argv if argv is None else argv)
    return tuple(argv[argv.index("--") + 1 :]) if "--" in argv else ()


def fab_machine(context: Any) -> str | None:
    """The machine from the Connection that `fab -H` passes, if any."""
    original = getattr(context, "original_host", None)
    if not original:
        return None
    user = getattr(context, "user", None)
    explicit_user = user and user != context.config.get("user")
    return f"{user}@{original}" if explicit_user else str(original)


def fab_ssh_config(context: Any) -> Path | None:
    path = getattr(getattr(context, "config", None), "_runtime_ssh_path", None) if hasattr(context, "original_host") else None
    return Path(path).absolute() if path else None


def flake_directory(flake: str) -> Path | None:
    from deploy.config.flakeref import local_flake_directory

    directory = local_flake_directory(flake)
    return Path(directory) if directory else None


def open_session(inventory: str, *, dry_run: bool, flake: str, ssh_config: Path | None = None) -> Session:
    """The run's shared state; hosts that only the flake's systems/ knows join the inventory with their meta.nix.

    Every task opens its session here, so a name means the same machine to all of them.
    """
    from deploy.config.inventory import load_inventory
    from deploy.engine.pipeline import Session

    loaded = load_inventory(Path(inventory), required=inventory != "hosts.yaml")
    flake_dir = flake_directory(flake)
    if flake_dir is not None and (flake_dir / "systems").is_dir():
        from deploy.config.discovery import discover_systems, inventory_with_systems

        loaded = inventory_with_systems(loaded, discover_systems(flake_dir))
    if ssh_config and loaded.ssh_config is None:
        if any(character.isspace() for character in str(ssh_config)):
            raise UsageError(f"ssh_config path {str(ssh_config)!r} contains whitespace, which Nix's NIX_SSHOPTS cannot carry")
        loaded = replace(loaded, ssh_config=ssh_config)
    return Session(loaded, dry_run=dry_run)


def systems_of(flake: str) -> dict[str, tuple[str, ...]]:
    """systems/<name>/ of a local flake, with their meta.nix tags (evaluated by Nix, or from the systems cache)."""
    directory = flake_directory(flake)
    if directory is None or not (directory / "systems").is_dir():
        return {}
    from deploy.config.discovery import discover_systems

    return {name: tuple(info.tags or ()) for name, info in discover_systems(directory).items()}


def selected_machines(context: Any, session: Session, selection: Selection) -> tuple[list[str], bool]:
    """(machines, local): what --host/--tag/--all/the positional name select; nothing means this machine."""
    from deploy.config.selection import select_hosts, this_machine

    names = [name for name in [selection.machine or fab_machine(context), *selection.hosts] if name]
    if not names and not selection.tags and not selection.everything:
        return [this_machine()], True
    machines = select_hosts(
        session.inventory, systems_of(selection.flake), names=names, tags=selection.tags, everything=selection.everything
    )
    here = this_machine()
    is_here = len(machines) == 1 and machines[0] == here and session.inventory.host(here).ssh.address == here
    return machines, is_here


def deploy_request(options: DeployOptions, *, local: bool, extra_nix: tuple[str, ...]) -> DeployRequest:
    from deploy.engine.pipeline import DeployRequest
    from deploy.record.history import flake_revision

    flake = options.selection.flake
    revision, dirty = flake_revision(flake)
    return DeployRequest(
        flake=flake,
        action=options.action,
        build_on=options.build_on,
        local=options.local or local,
        reboot=options.reboot,
        collect_garbage=options.collect_garbage,
        delete_older_than=options.delete_older_than,
        substitute_on_destination=options.substitute_on_destination,
        extra_nix=extra_nix,
        out_link=options.out_link,
        reboot_timeout=options.reboot_timeout,
        force=options.force,
        magic_rollback=options.magic_rollback,
        confirm_timeout=options.confirm_timeout,
        health_checks=options.health_checks,
        show_diff=options.show_diff,
        ask=options.ask,
        diff_only=options.diff_only,
        revision=revision,
        dirty=dirty,
    )


def run_deploy(context: Any, options: DeployOptions) -> None:
    """Every deploy task: select hosts, check the flake, then build and deploy them as a fleet."""
    with errors_as_exit_codes():
        extra_nix = extra_nix_options() if not hasattr(context, "original_host") else ()
        selection = options.selection
        session = open_session(selection.inventory, dry_run=options.dry_run, ssh_config=fab_ssh_config(context), flake=selection.flake)
        try:
            machines, local = selected_machines(context, session, selection)
            request = deploy_request(options, local=local, extra_nix=extra_nix)
            run_fleet(session, request, machines, options)
        finally:
            session.close()


def run_fleet(session: Session, request: DeployRequest, machines: list[str], options: DeployOptions) -> None:
    from deploy.build.flake_check import PASSED_DIRECTORY, FlakeCheck, PassedChecks
    from deploy.engine.fleet import Fleet, exit_code, print_summary, results_json
    from deploy.record.history import Journal, journal_path, state_directory
    from deploy.ui import stdout_result

    flake_dir = flake_directory(request.flake)
    fleet_options = replace(
        options.fleet,
        log_dir=options.fleet.log_dir or state_directory(flake_dir) / "logs" / run_stamp(),
        live=sys.stderr.isatty() and not request.ask and not session.dry_run,
    )
    check = None
    if request.action is not None and (session.inventory.check if options.check is None else options.check):
        check = FlakeCheck(session.runner, request.flake, PassedChecks(state_directory(flake_dir) / PASSED_DIRECTORY), request.extra_nix)
    journal = FleetJournal(Journal(journal_path(flake_dir)), request) if not session.dry_run else None

    fleet = Fleet(
        session, request, machines, fleet_options,
        on_start=journal.started if journal else None, on_result=journal.finished if journal else None, check=check,
    )
    results = fleet.run()
    # The check ends before the run does, whatever the hosts did: its verdict is part of the run's.
    check_failed = check.outcome() if check is not None and not fleet.interrupted else None
    print_summary(results, rich=sys.stderr.isatty(), stream=sys.stderr)
    if options.as_json:
        stdout_result(results_json(results, interrupted=fleet.interrupted, hangup=fleet.hangup, journal_errors=fleet.journal_errors))
    elif request.action is None:
        for result in results:
            if result.path:
                stdout_result(result.path)
    code = exit_code(results, interrupted=fleet.interrupted, hangup=fleet.hangup, journal_failed=bool(fleet.journal_errors))
    if fleet.journal_errors and code != JournalError.exit_code:
        # The hosts' own code wins; the journal's failure is still said, after the summary.
        session.echo.warning(f"the deploy journal was not written: {fleet.journal_errors[0]}")
    if code == JournalError.exit_code and fleet.journal_errors:
        raise JournalError(f"every host deployed, but the deploy journal was not written: {fleet.journal_errors[0]}")
    if check_failed is not None and code in (0, check_failed.exit_code):
        raise check_failed  # what stopped the hosts at activation; or, with none activating, still the run's failure
    if code:
        raise fleet_error(results, code, interrupted=fleet.interrupted)


class FleetJournal:
    """A fleet's rows in the journal: `unfinished` when a host starts, rewritten with its result when it ends.

    A run killed halfway thus leaves its hosts' rows unfinished, for `inv history` to show. A host that ends
    without having started (failed in the shared build, interrupted before its turn) gets its one row then.
    """

    def __init__(self, journal: Journal, request: DeployRequest) -> None:
        import threading

        self.journal = journal
        self.request = request
        self.rows: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()

    def started(self, run: HostRun) -> None:
        from deploy.engine.fleet import HostResult

        record = journal_entry(self.request, run.spec, HostResult(run.spec.name, Result.UNFINISHED, 0.0))
        row = self.journal.record(record)
        with self._lock:
            self.rows[run.spec.name] = (row, record.started_at)

    def finished(self, result: HostResult, run: HostRun) -> None:
        with self._lock:
            row = self.rows.pop(run.spec.name, None)
        if result.result == Result.NOT_STARTED and row is None:
            return
        if row is None:
            self.journal.record(journal_entry(self.request, run.spec, result))
        else:
            self.journal.update(row[0], replace(journal_entry(self.request, run.spec, result), started_at=row[1]))


def fleet_error(results: Sequence[HostResult], code: int, *, interrupted: bool) -> NixfabError:
    failed = [result for result in results if not result.healthy]
    if interrupted:
        how = "hung up (SIGHUP)" if code == 129 else "interrupted"
        message = f"{how}; {len(failed)} host(s) not deployed: {', '.join(r.host for r in failed)}"
    elif len(results) == 1 and failed and failed[0].error:
        message = failed[0].error
    else:
        message = f"{len(failed)} of {len(results)} hosts failed or rolled back: " + ", ".join(f"{r.host} ({r.result})" for r in failed)
    error = NixfabError(message)
    error.exit_code = code
    return error


def journal_record(journal: Journal, request: DeployRequest, spec: HostSpec, result: HostResult) -> None:
    journal.record(journal_entry(request, spec, result))


def journal_entry(request: DeployRequest, spec: HostSpec, result: HostResult) -> DeployRecord:
    from datetime import UTC, datetime, timedelta

    from deploy.record.history import DeployRecord, local_user

    started = datetime.now(UTC) - timedelta(seconds=result.duration_seconds)
    return DeployRecord(
        started_at=started.isoformat(timespec="seconds"), local_user=local_user(), host=spec.name,
        action=request.action or "build", flake=request.flake, revision=request.revision, dirty=request.dirty,
        store_path=result.path, generation=result.generation, result=result.result,
        duration_seconds=result.duration_seconds, error=result.error,
    )


def run_stamp() -> str:
    import os
    import time

    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def run_on_target(context: Any, target: OneHostOptions, step: Callable[[Host], T]) -> T:
    """Run one step (reset, ssh-wait, generations, …) against one host, or this machine without one."""
    with errors_as_exit_codes():
        session = open_session(target.inventory, dry_run=target.dry_run, flake=target.flake, ssh_config=fab_ssh_config(context))
        try:
            return step(single_target(context, session, target.machine, target.flake))
        finally:
            session.close()


def single_target(context: Any, session: Session, machine: str | None, flake: str) -> Host:
    from deploy.config.selection import select_hosts, this_machine
    from deploy.transport.hosts import LocalHost

    name = machine or fab_machine(context)
    if not name or name == this_machine():
        return LocalHost(session.runner, label=name or this_machine())
    select_hosts(session.inventory, systems_of(flake), names=[name])  # an unknown name is refused with "did you mean"
    spec = session.inventory.host(name)
    return session.target(spec)
