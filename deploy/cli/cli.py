"""The CLI edge: the only place where errors become messages and exit codes.

tasks.py declares tasks and options; each task is a Step: a function of
deploy/cli/arguments.py builds its typed options (deploy/cli/options.py) from
Invoke's keyword arguments, and its handler (run_deploy here, or one in
deploy/cli/operations.py) gets them. Everything heavy
(Fabric, paramiko, rich, yaml) is imported inside functions, so that
Invoke's tab completion, which imports tasks.py on every TAB, stays fast.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from deploy.errors import BuildError, HangUp, JournalError, NixfabError, UsageError, out_of_descriptors
from deploy.model import Result

if TYPE_CHECKING:
    from deploy.build.locked_flake import LockedFlake
    from deploy.cli.options import DeployOptions, FleetOptions, KeysOptions, OneHostOptions, Selection
    from deploy.config.inventory import HostSpec, Inventory
    from deploy.engine.fleet import HostResult
    from deploy.engine.host_run import HostRun
    from deploy.engine.request import DeployRequest
    from deploy.engine.session import Session
    from deploy.record.history import DeployRecord, Journal
    from deploy.transport.hosts import Host

T = TypeVar("T")
OptionsT = TypeVar("OptionsT")


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
            options = self.build(**invoke_dry_run(context, arguments))
        self.run(context, options)


def invoke_dry_run(context: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Invoke's own `--dry` ("echo commands instead of running") is --dry-run; a task that cannot keep that promise refuses."""
    config = getattr(context, "config", None)
    dry = bool(getattr(getattr(config, "run", None), "dry", False)) if config is not None else False
    if not dry or arguments.get("dry_run"):
        return arguments
    if "dry_run" in arguments:
        return {**arguments, "dry_run": True}
    if "command" in arguments:  # ssh-wait: it runs COMMAND, which a dry run cannot show the outcome of
        raise UsageError("ssh-wait has no dry run (Invoke's --dry): it would run COMMAND; nothing was done")
    return arguments  # status, history, hosts, generations only read


def set_output(context: Any, *, verbose: bool, quiet: bool, dry_run: bool) -> None:
    """The output policy of this task (deploy.ui.policy): -v/-q, or Invoke's own --echo and --hide, and --dry-run."""
    from deploy.ui import OutputPolicy, set_policy, verbosity_of

    run = getattr(getattr(context, "config", None), "run", None)
    with errors_as_exit_codes():
        verbosity = verbosity_of(verbose=verbose, quiet=quiet, echo=bool(getattr(run, "echo", False)), hide=getattr(run, "hide", None))
    set_policy(OutputPolicy(verbosity, dry_run=dry_run or bool(getattr(run, "dry", False))))


def one_line(message: str) -> str:
    """Errors are one line, even when they quote a value (a path, a flake) that holds a line break."""
    return message.strip().replace("\r", "\\r").replace("\n", "\\n")


@contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    """Errors become one line and an exit code; SIGHUP (and Ctrl-C) stop the task as an interruption, never a traceback."""
    from invoke.exceptions import Exit

    try:
        with hangup_is_an_interrupt():
            yield
    except NixfabError as error:
        raise Exit(f"nixfab: error: {one_line(str(error))}", code=error.exit_code) from None
    except HangUp:
        raise Exit("nixfab: hung up (SIGHUP)", code=129) from None
    except KeyboardInterrupt:
        raise Exit("nixfab: interrupted", code=130) from None
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        raise Exit(code=quiet_broken_pipe()) from None
    except OSError as error:
        import errno

        if error.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        # Out of file descriptors outside any one host's deploy: still one line, never a traceback.
        raise Exit(f"nixfab: error: {out_of_descriptors(error.strerror or str(error))}", code=1) from None


def stdout_reader_gone() -> bool:
    """stdout is a pipe whose reader closed it (`| head`), rather than some other pipe breaking."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def end_process(code: int) -> NoReturn:
    """End the process now with code: flushed, exit handlers run (logging's, temporary directories'), but no
    interpreter teardown. Only for the end of the command line (invoke_compat), where nothing else is left to run."""
    import atexit

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = quiet_broken_pipe() if stdout_reader_gone() else 120  # 120: what Python exits with when its last flush fails
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    atexit._run_exitfuncs()
    os._exit(code)


def quiet_broken_pipe() -> int:
    """The reader went away (`| head`): end quietly, as `cat` does, and let no flush at exit complain again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a writer the pipe cut off


@contextmanager
def hangup_is_an_interrupt() -> Iterator[None]:
    """SIGHUP (the terminal or the SSH session nixfab runs in went away) raises HangUp where Ctrl-C raises KeyboardInterrupt.

    Its default would end the process on the spot: during `nix flake check`
    or a build, with no summary and the child left running. (A fleet's own
    handler takes over while its hosts deploy: see Fleet.run.)
    """
    from deploy.engine.hangup import handling_hangup

    def hangup(signum: int, frame: object) -> None:
        raise HangUp

    with handling_hangup(hangup):
        yield


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
    from deploy.engine.session import Session

    loaded = load_inventory(Path(inventory), required=inventory != "hosts.yaml")
    flake_dir = flake_directory(flake)
    if flake_dir is not None and (flake_dir / "systems").is_dir():
        from deploy.config.discovery import discover_systems, inventory_with_systems
        from deploy.record.history import state_directory

        loaded = inventory_with_systems(loaded, discover_systems(flake_dir, state_directory(flake)))
    if ssh_config and loaded.ssh_config is None:
        if any(character.isspace() for character in str(ssh_config)):
            raise UsageError(f"ssh_config path {str(ssh_config)!r} contains whitespace, which Nix's NIX_SSHOPTS cannot carry")
        loaded = replace(loaded, ssh_config=ssh_config)
    return Session(loaded, dry_run=dry_run)


def with_sudo(inventory: Inventory) -> Inventory:
    """--sudo/--use-remote-sudo: every host runs its privileged steps with sudo, whatever hosts.yaml says."""
    hosts = {name: replace(spec, sudo=True) for name, spec in inventory.hosts.items()}
    return replace(inventory, hosts=hosts, default_sudo=True)


def systems_of(flake: str) -> dict[str, tuple[str, ...]]:
    """systems/<name>/ of a local flake, with their meta.nix tags (evaluated by Nix, or from the systems cache)."""
    directory = flake_directory(flake)
    if directory is None or not (directory / "systems").is_dir():
        return {}
    from deploy.config.discovery import discover_systems
    from deploy.record.history import state_directory

    return {name: tuple(info.tags or ()) for name, info in discover_systems(directory, state_directory(flake)).items()}


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
    from deploy.engine.request import DeployRequest
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


@contextmanager
def fleet_session(context: Any, selection: Selection, *, dry_run: bool, sudo: bool) -> Iterator[tuple[Session, list[str], bool]]:
    """The session a fleet task runs in (`--sudo` forcing sudo on every host), its machines, and whether it is this machine."""
    session = open_session(selection.inventory, dry_run=dry_run, ssh_config=fab_ssh_config(context), flake=selection.flake)
    if sudo:
        session.inventory = with_sudo(session.inventory)
    try:
        machines, local = selected_machines(context, session, selection)
        yield session, machines, local
    finally:
        session.close()


def run_deploy(context: Any, options: DeployOptions) -> None:
    """Every deploy task: select hosts, check the flake, then build and deploy them as a fleet."""
    with errors_as_exit_codes():
        extra_nix = extra_nix_options() if not hasattr(context, "original_host") else ()
        if options.show_trace and "--show-trace" not in extra_nix:
            extra_nix = (*extra_nix, "--show-trace")
        with fleet_session(context, options.selection, dry_run=options.dry_run, sudo=options.sudo) as (session, machines, local):
            request = deploy_request(options, local=local, extra_nix=extra_nix)
            run_fleet(session, request, machines, options.fleet, as_json=options.as_json, check=options.check)


def run_keys(context: Any, options: KeysOptions) -> None:
    """`keys`: upload the selected hosts' keys from hosts.yaml, as a fleet run (no check, no build, no activation)."""
    from deploy.engine.request import DeployRequest

    with errors_as_exit_codes():
        with fleet_session(context, options.selection, dry_run=options.dry_run, sudo=options.sudo) as (session, machines, local):
            request = DeployRequest(flake=options.selection.flake, action=None, local=local, keys_only=True)
            run_fleet(session, request, machines, options.fleet, as_json=options.as_json, check=False)


def run_fleet(
    session: Session, request: DeployRequest, machines: list[str], fleet_options: FleetOptions, *, as_json: bool, check: bool | None
) -> None:
    import time

    from deploy.build.locked_flake import LockedFlake

    started = time.monotonic()
    if request.uploads_keys:
        from deploy.keys.sources import refuse_sources_in_the_flake

        # Before the check or the build below copies the flake, and a key file in it, into the store.
        specs = (session.inventory.host(machine) for machine in machines)
        refuse_sources_in_the_flake(request.flake, ((spec.name, key) for spec in specs for key in spec.keys))
    with LockedFlake(request.flake, request.extra_nix) as locked:  # asked once, for the check and the build alike
        if not session.dry_run and not request.keys_only:
            # Only now that key files were refused: to answer, Nix copies the flake into the store. Asked while the
            # run imports its engine and opens its journal and logs, the answer is there when the build wants it.
            locked.ask_early(session.runner)
        run_fleet_of(session, request, machines, fleet_options, as_json=as_json, check=check, locked=locked, started=started)


def run_fleet_of(
    session: Session, request: DeployRequest, machines: list[str], fleet_options: FleetOptions, *, as_json: bool, check: bool | None,
    locked: LockedFlake, started: float,
) -> None:
    """run_fleet's run, once the flake's identity is being asked."""
    import time

    from deploy.build.built_systems import BuiltSystems
    from deploy.build.flake_check import PASSED_DIRECTORY, FlakeCheck, PassedChecks
    from deploy.engine.fleet import Fleet, exit_code, print_summary, results_json, totals_line
    from deploy.model import Action
    from deploy.record.history import JOURNAL_FILE_NAME, Journal, state_directory
    from deploy.ui import Verbosity, policy, prune_runs, set_policy, stdout_result

    state_dir = state_directory(request.flake)
    logs = state_dir / "logs"
    log_dir = fleet_options.log_dir or logs / run_stamp()
    if fleet_options.log_dir is None and not session.dry_run:
        prune_runs(logs, fleet_options.log_keep, current=log_dir)  # a --log-dir of the user's own is never pruned
    if request.action == Action.DRY_ACTIVATE:
        set_policy(replace(policy(), host_output=True))  # what it would do is what the hosts print: its answer
    fleet_options = replace(
        fleet_options, log_dir=log_dir, live=sys.stderr.isatty() and not request.ask and not session.dry_run and policy().progress,
    )
    with run_log(session, log_dir):
        flake_check = None
        if request.action is not None and (session.inventory.check if check is None else check):
            flake_check = FlakeCheck(
                session.runner, locked, PassedChecks(state_dir / PASSED_DIRECTORY), show_progress=policy().verbosity >= Verbosity.VERBOSE,
            )
        journal = FleetJournal(Journal(state_dir / JOURNAL_FILE_NAME), request) if not session.dry_run else None
        if needs_sudo_password(session, request, machines):
            # Asked now, before the live table is drawn: a prompt under it would sit unseen while the table ticks on.
            session.sudo_password.get()

        fleet = Fleet(
            session, request, machines, fleet_options,
            on_start=journal.started if journal else None, on_result=journal.finished if journal else None, check=flake_check,
            built=BuiltSystems(state_dir, locked),
        )
        results = fleet.run()
        # The check ends before the run does, whatever the hosts did: its verdict is part of the run's.
        check_failed = flake_check.outcome() if flake_check is not None and not fleet.interrupted else None
    print_summary(results, rich=sys.stderr.isatty(), stream=sys.stderr)
    if as_json:
        stdout_result(results_json(results, interrupted=fleet.interrupted, hangup=fleet.hangup, journal_errors=fleet.journal_errors))
    elif request.action is None:
        for result in results:
            if result.path and result.result == Result.BUILT:
                stdout_result(result.path)
    elif request.diff_only:
        from deploy.plan.diff import without_colour

        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        for result in results:
            if result.diff is not None:
                stdout_result(result.diff if colour else without_colour(result.diff))
    code = exit_code(results, interrupted=fleet.interrupted, hangup=fleet.hangup, journal_failed=bool(fleet.journal_errors))
    totals = totals_line(results, time.monotonic() - started, log_dir if any(result.log for result in results) else None)
    if fleet.journal_errors and code != JournalError.exit_code:
        # The hosts' own code wins; the journal's failure is still said, after the summary.
        session.echo.warning(f"the deploy journal was not written: {fleet.journal_errors[0]}")
    if code == JournalError.exit_code and fleet.journal_errors:
        raise JournalError(f"every host deployed, but the deploy journal was not written: {fleet.journal_errors[0]}; {totals}")
    if check_failed is not None and code in (0, check_failed.exit_code):
        # What stopped the hosts at activation (each said only that), or, with none activating, still the run's failure.
        raise BuildError(f"{check_failed}; {totals}")
    if code:
        raise fleet_error(totals, code, interrupted=fleet.interrupted, hangup=fleet.hangup)
    from deploy.ui import summary_line

    summary_line(totals)


@contextmanager
def run_log(session: Session, log_dir: Path) -> Iterator[None]:
    """The run's own lines (the flake check, the shared build, the waves) also go to <log_dir>/run.log, whatever is shown."""
    from deploy.ui import RUN_LOG, Emitter, RunLog, Tee

    if session.dry_run:
        yield
        return
    shown = session.echo
    session.echo = Emitter(Tee(shown.sink, RunLog(log_dir / f"{RUN_LOG}.log")))
    session.runner = session.local_runner(session.echo)
    try:
        yield
    finally:
        session.echo = shown
        session.runner = session.local_runner(shown)


def needs_sudo_password(session: Session, request: DeployRequest, machines: Sequence[str]) -> bool:
    """Whether the run will use sudo on a host: it changes a host (lock, activation, keys, reboot, GC) that logs in as non-root."""
    changes_hosts = request.action is not None or request.reboot or request.collect_garbage or request.keys_only
    if session.dry_run or request.local or not changes_hosts:
        return False
    specs = [session.inventory.host(machine) for machine in machines]
    # `keys` goes to a host only when it has keys; a host without them is not even connected to.
    return any(spec.sudo and (spec.keys or not request.keys_only) for spec in specs)


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

        record = journal_entry(self.request, run.spec, HostResult(run.spec.name, Result.UNFINISHED, 0.0), token=run.token)
        row = self.journal.record(record)
        with self._lock:
            self.rows[run.spec.name] = (row, record.started_at)

    def finished(self, result: HostResult, run: HostRun) -> None:
        with self._lock:
            row = self.rows.pop(run.spec.name, None)
        if result.result == Result.NOT_STARTED and row is None:
            return
        entry = journal_entry(self.request, run.spec, result, token=run.token)
        if row is None:
            self.journal.record(entry)
        else:
            self.journal.update(row[0], replace(entry, started_at=row[1]))
        # Earlier deploys' watchdogs this deploy let decide first: their verdicts go into those deploys' rows.
        for verdict in run.verdicts_seen:
            if verdict.by == "watchdog":
                self.journal.record_verdict(run.spec.name, verdict.token, f"{verdict.text} (at {verdict.when})", undid=verdict.undid)


def fleet_error(totals: str, code: int, *, interrupted: bool, hangup: bool = False) -> NixfabError:
    """The run's last line when a host did not deploy: its totals (each host's error was said once, when it failed)."""
    how = "hung up (SIGHUP); " if interrupted and hangup else "interrupted; " if interrupted else ""
    error = NixfabError(how + totals)
    error.exit_code = code
    return error


def journal_record(journal: Journal, request: DeployRequest, spec: HostSpec, result: HostResult) -> None:
    journal.record(journal_entry(request, spec, result))


def journal_entry(request: DeployRequest, spec: HostSpec, result: HostResult, *, token: str | None = None) -> DeployRecord:
    from datetime import UTC, datetime, timedelta

    from deploy.record.history import DeployRecord, local_user

    started = datetime.now(UTC) - timedelta(seconds=result.duration_seconds)
    return DeployRecord(
        started_at=started.isoformat(timespec="seconds"), local_user=local_user(), host=spec.name,
        action=request.action or ("keys" if request.keys_only else "build"), flake=request.flake, revision=request.revision, dirty=request.dirty,
        store_path=result.path, generation=result.generation, result=result.result,
        duration_seconds=result.duration_seconds, error=result.error, token=token,
    )


def run_stamp() -> str:
    """A run's log directory name (ui.log.RUN_DIRECTORY): when it started, to the microsecond, and its pid."""
    import os
    from datetime import datetime

    return datetime.now().strftime("%Y%m%d-%H%M%S.%f") + f"-{os.getpid()}"


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
