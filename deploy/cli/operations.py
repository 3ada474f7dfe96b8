"""Handlers of the tasks that are not fleet deploys: reset, ssh-wait, generations, rollback, check,
update, status, history, hosts, exec, plan, and Home Manager's hm.* tasks.

Each takes the Invoke context and the task's typed options (deploy/cli/options.py,
built by deploy/cli/arguments.py) and runs inside cli.errors_as_exit_codes(), so bad input
ends as one line and an exit code. tasks.py names these functions, so this
module imports only light things at module level; the work's imports are
inside the functions.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.cli import cli
from deploy.errors import UsageError
from deploy.model import Result

if TYPE_CHECKING:
    from deploy.activate.activation import Activation
    from deploy.cli.options import (
        ExecOptions,
        FlakeOptions,
        FleetOptions,
        GenerationsOptions,
        HistoryOptions,
        HomeOptions,
        HostsOptions,
        OneHostOptions,
        PlanOptions,
        ResetOptions,
        SshWaitOptions,
        StatusOptions,
        SwitchGenerationOptions,
    )
    from deploy.transport.hosts import Host


def require_machine(context: Any, target: OneHostOptions, task: str) -> OneHostOptions:
    """The target with its machine named (by MACHINE, --host or `fab -H`): these tasks never act on this machine by default."""
    machine = target.machine or cli.fab_machine(context)
    if not machine:
        raise UsageError(f"name the machine: `inv {task} MACHINE` (this task never acts on this machine by default)")
    return replace(target, machine=machine)


def reset(context: Any, options: ResetOptions) -> None:
    from deploy.gc.gc import collect_garbage
    from deploy.reboot.reboot import reboot_and_wait

    with cli.errors_as_exit_codes():
        target = require_machine(context, options.target, "reset")

        def reboot_then_collect(host: Host) -> None:
            reboot_and_wait(host, expected_system=None, timeout=options.reboot_timeout)
            collect_garbage(host, options.delete_older_than)

        cli.run_on_target(context, target, reboot_then_collect)


def ssh_wait(context: Any, options: SshWaitOptions) -> None:
    from deploy import ui
    from deploy.reboot.reboot import ssh_wait as wait

    with cli.errors_as_exit_codes():
        target = require_machine(context, options.target, "ssh-wait")

        def wait_then_run(host: Host) -> int:
            result = wait(host, options.command, timeout=options.timeout, interval=options.interval)
            ui.stdout_result(result.stdout, end="")
            ui.stderr_passthrough(result.stderr)
            return result.returncode

        status = cli.run_on_target(context, target, wait_then_run)
    if status != 0:
        from invoke.exceptions import Exit

        # COMMAND's own status, as `ssh host COMMAND` gives it (a scripted `inv ssh-wait h 'test -e /x'` relies on it).
        raise Exit(code=status if 0 < status < 256 else 255)


def generations(context: Any, options: GenerationsOptions) -> None:
    from deploy.activate.generations import format_generations, generations_json, list_generations

    def show(target: Host) -> None:
        listed = list_generations(target)
        # Every line ends in a newline, the table's last too (a shell prompt or `wc -l` after it counts on that).
        stdout_result(generations_json(listed) if options.as_json else format_generations(listed).rstrip("\n"))

    cli.run_on_target(context, options.target, show)


def switch_generation(context: Any, options: SwitchGenerationOptions) -> None:
    from deploy.activate.generations import switch_generation as switch

    def run(target: Host) -> None:
        activation = switch(target, options.generation, note=print_note)
        print_note(f"==> {target.label}: generation {activation.generation} is current and running ({activation.path})")
        journal_operation(options.target, target.label, "switch-generation", activation)

    cli.run_on_target(context, options.target, run)


def rollback(context: Any, options: OneHostOptions) -> None:
    from deploy.activate.generations import rollback as roll_back

    def run(target: Host) -> None:
        activation = roll_back(target, note=print_note)
        print_note(f"==> {target.label}: rolled back to generation {activation.generation} ({activation.path})")
        journal_operation(options, target.label, "rollback", activation)

    cli.run_on_target(context, options, run)


def journal_operation(options: OneHostOptions, host: str, action: str, activation: Activation) -> None:
    if options.dry_run:
        return
    from deploy.record.history import DeployRecord, Journal, journal_path, local_user, utc_now

    Journal(journal_path(options.flake)).record(
        DeployRecord(
            started_at=utc_now(), local_user=local_user(), host=host, action=action, flake="", revision=None, dirty=None,
            store_path=activation.path, generation=activation.generation, result=Result.OK, duration_seconds=0.0, error=None,
        )
    )


def print_note(message: str) -> None:
    from deploy import ui

    ui.note(message)


def stdout_result(text: str, end: str = "\n") -> None:
    """ui.stdout_result, imported when a task prints: `inv --list` and tab completion import this module only to name handlers."""
    from deploy import ui

    ui.stdout_result(text, end=end)


def check(context: Any, options: FlakeOptions) -> None:
    from deploy.nix.flake_ops import flake_check
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    with cli.errors_as_exit_codes():
        extra = cli.extra_nix_options()
        if options.show_trace and "--show-trace" not in extra:
            extra = (*extra, "--show-trace")
        flake_check(LocalRunner(Emitter(), dry_run=options.dry_run), options.flake, extra)
        print_note(f"==> {options.flake}: nix flake check passed")


def update(context: Any, options: FlakeOptions) -> None:
    from deploy.config.selection import split_names
    from deploy.nix.flake_ops import flake_update
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    with cli.errors_as_exit_codes():
        flake_update(LocalRunner(Emitter(), dry_run=options.dry_run), options.flake, split_names(options.inputs), cli.extra_nix_options())


def status(context: Any, options: StatusOptions) -> None:
    from deploy.build.built_systems import BuiltSystems
    from deploy.build.locked_flake import LockedFlake
    from deploy.errors import JournalError
    from deploy.plan.status import host_status, print_status, record_verdicts
    from deploy.record.history import Journal, journal_path, state_directory

    with cli.errors_as_exit_codes():
        selection = options.selection
        session = cli.open_session(selection.inventory, dry_run=False, ssh_config=cli.fab_ssh_config(context), flake=selection.flake)
        journal = Journal(journal_path(selection.flake))
        journal_error: JournalError | None = None
        try:
            machines, _local = cli.selected_machines(context, session, selection)
            try:
                asking = journal.awaiting_verdicts(machines)
            except JournalError as error:
                asking, journal_error = {}, error
            extra_nix = cli.extra_nix_options()
            built = BuiltSystems(state_directory(selection.flake), LockedFlake(selection.flake, extra_nix))
            rows = host_status(session, selection.flake, machines, extra_nix, asking, built)
        finally:
            session.close()
        print_status(rows, as_json=options.as_json)
        # The watchdogs' verdicts on deploys the journal left unfinished or failed go into their rows (`inv history`).
        if journal_error is None:
            try:
                record_verdicts(journal, rows)
            except JournalError as error:
                journal_error = error
        if journal_error is not None:
            raise JournalError(f"the watchdogs' verdicts were not written into the deploy journal: {journal_error}")


def history(context: Any, options: HistoryOptions) -> None:
    from deploy.record.history import Journal, format_history, history_json, journal_path

    with cli.errors_as_exit_codes():
        path = journal_path(options.flake)
        records = Journal(path).records() if path.exists() else []
        if options.hosts:
            wanted = set(options.hosts)
            records = [record for record in records if record.host in wanted]
        stdout_result(history_json(records) if options.as_json else format_history(records), end="" if not options.as_json else "\n")


def hosts(context: Any, options: HostsOptions) -> None:
    import json

    from deploy.config.discovery import discover_systems, format_host_listing, host_listing
    from deploy.config.inventory import load_inventory
    from deploy.record.history import state_directory

    with cli.errors_as_exit_codes():
        flake_dir = cli.flake_directory(options.flake) or Path(".")
        inventory = load_inventory(Path(options.inventory), required=options.inventory != "hosts.yaml")
        rows = host_listing(inventory, discover_systems(flake_dir, state_directory(options.flake)))
        if options.as_json:
            stdout_result(json.dumps([{**row.__dict__, "tags": list(row.tags), "problems": list(row.problems)} for row in rows], indent=2))
        else:
            stdout_result(format_host_listing(rows), end="")


def fleet_options(flake: str, parallel: int) -> FleetOptions:
    """An operation's fleet run options: --parallel hosts at once, each host's log where a deploy's goes, no live table."""
    from deploy.cli.options import FleetOptions
    from deploy.record.history import state_directory

    return FleetOptions(parallel=parallel, log_dir=state_directory(flake) / "logs" / cli.run_stamp())


def exec_on_hosts(context: Any, options: ExecOptions) -> None:
    """inv exec: the command on every selected host, as a fleet; a summary of exit codes, or --json."""
    from deploy import ui
    from deploy.cli.arguments import exec_selection_and_command
    from deploy.engine import remote_command
    from deploy.engine.fleet import Fleet, FleetWork
    from deploy.engine.request import DeployRequest
    from deploy.errors import NixfabError

    # What the command prints on the hosts is exec's answer: shown at the default verbosity too, as dry-activate's.
    ui.set_policy(replace(ui.policy(), host_output=True))
    with cli.errors_as_exit_codes():
        # Under `fab`, what follows `--` is fab's own remote command, never ours.
        after = cli.extra_nix_options() if not hasattr(context, "original_host") else ()
        selection, argv = exec_selection_and_command(options, after)
        command = remote_command.RemoteCommand(argv)
        session = cli.open_session(selection.inventory, dry_run=options.dry_run, ssh_config=cli.fab_ssh_config(context), flake=selection.flake)
        try:
            machines, local = cli.selected_machines(context, session, selection)
            work = remote_command.CommandOnHosts(command)
            request = DeployRequest(selection.flake, None, local=local, lock=False)
            fleet = Fleet(session, request, machines, fleet_options(selection.flake, options.parallel), work=FleetWork(work))
            results = fleet.run()
        finally:
            session.close()
        ui.summary_line(remote_command.format_summary(results, work.outputs))  # the summary: at every verbosity
        if options.as_json:
            ui.stdout_result(remote_command.results_json(command, results, work.outputs, interrupted=fleet.interrupted, hangup=fleet.hangup))
        code = remote_command.exit_code(results, interrupted=fleet.interrupted, hangup=fleet.hangup)
        if code:
            error = NixfabError(remote_command.failure_message(results, work.outputs, code))
            error.exit_code = code
            raise error


def plan(context: Any, options: PlanOptions) -> None:
    """inv plan: build as a deploy does, then ask each host what the deploy would change there; a table, or --json."""
    import time

    from deploy import ui
    from deploy.build.built_systems import BuiltSystems
    from deploy.build.locked_flake import LockedFlake
    from deploy.engine.fleet import Fleet, FleetWork, exit_code, totals_line
    from deploy.engine.request import DeployRequest
    from deploy.plan.deploy_plan import DeployPlanner, format_plans, plans_json
    from deploy.record.history import state_directory

    started = time.monotonic()
    with cli.errors_as_exit_codes():
        extra_nix = cli.extra_nix_options() if not hasattr(context, "original_host") else ()
        selection = options.selection
        session = cli.open_session(selection.inventory, dry_run=False, ssh_config=cli.fab_ssh_config(context), flake=selection.flake)
        try:
            machines, local = cli.selected_machines(context, session, selection)
            # Always built here: building on a target or a builder would change that machine's store.
            request = DeployRequest(selection.flake, options.action, build_on="local", local=local, extra_nix=extra_nix, lock=False)
            planner = DeployPlanner()
            work = FleetWork(planner, build_first=True)
            run_options = fleet_options(selection.flake, options.parallel)
            built = BuiltSystems(state_directory(selection.flake), LockedFlake(selection.flake, extra_nix))
            fleet = Fleet(session, request, machines, run_options, work=work, built=built)
            results = fleet.run()
        finally:
            session.close()
        code = exit_code(results, interrupted=fleet.interrupted, hangup=fleet.hangup)
        if options.as_json:
            ui.stdout_result(plans_json(results, planner.plans, exit_code=code, interrupted=fleet.interrupted))
        else:
            ui.stdout_result(format_plans(results, planner.plans))
        if code:
            # Each host's error was said once, when it failed: the last line gives the totals.
            logs = run_options.log_dir if any(result.log for result in results) else None
            raise cli.fleet_error(totals_line(results, time.monotonic() - started, logs), code, interrupted=fleet.interrupted, hangup=fleet.hangup)


# ---- Home Manager ---------------------------------------------------------------------------


def home_user(options: HomeOptions, target: Host | None) -> str:
    import getpass

    user = options.user or (getattr(target, "login_user", None) if target is not None else None) or getpass.getuser()
    return str(user)


def hm_build(context: Any, options: HomeOptions) -> None:
    from deploy.activate.home_manager import build_home
    from deploy.config.inventory import load_inventory
    from deploy.config.selection import this_machine
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    with cli.errors_as_exit_codes():
        target = options.target
        # It builds here and needs no host, but an --inventory named on the command line must exist and parse.
        load_inventory(Path(target.inventory), required=target.inventory != "hosts.yaml")
        machine = target.machine or this_machine()
        name = machine.rpartition("@")[2]
        user = options.user or (machine.partition("@")[0] if "@" in machine else home_user(options, None))
        path = build_home(
            LocalRunner(Emitter(), dry_run=target.dry_run), target.flake, user, name, out_link=Path("result"), extra=cli.extra_nix_options(),
        )
        stdout_result(path)


def hm_switch(context: Any, options: HomeOptions) -> None:
    from deploy.activate.home_manager import switch_home
    from deploy.config.selection import this_machine
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    with cli.errors_as_exit_codes():
        runner = LocalRunner(Emitter(), dry_run=options.target.dry_run)
        activation = switch_home(runner, options.target.flake, home_user(options, None), this_machine(), extra=cli.extra_nix_options())
        print_note(f"==> {activation.user}: Home Manager generation {activation.generation} is active ({activation.path})")


def hm_push(context: Any, options: HomeOptions) -> None:
    home_remote(context, options, "push")


def hm_pull(context: Any, options: HomeOptions) -> None:
    home_remote(context, options, "pull")


def home_remote(context: Any, options: HomeOptions, how: str) -> None:
    from deploy.activate import home_manager
    from deploy.nix import commands

    with cli.errors_as_exit_codes():
        target = require_machine(context, options.target, f"hm.{how}")
        assert target.machine is not None
        session = cli.open_session(target.inventory, dry_run=target.dry_run, flake=target.flake, ssh_config=cli.fab_ssh_config(context))
        try:
            spec = session.inventory.host(target.machine)
            remote = session.target(spec)
            user = options.user or spec.ssh.user or remote.login_user
            deploy_home = home_manager.push_home if how == "push" else home_manager.pull_home
            activation = deploy_home(
                session.runner, remote, target_store=commands.ssh_store_uri(spec.ssh.destination()), flake=target.flake, user=user,
                host=spec.name, nix_env=session.nix_env(spec.ssh), extra=cli.extra_nix_options(),
            )
            print_note(f"==> {spec.name}: {user}'s Home Manager generation {activation.generation} is active ({activation.path})")
        finally:
            session.close()
