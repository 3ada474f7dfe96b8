"""Handlers of the tasks that are not fleet deploys: reset, ssh-wait, generations, rollback, check,
update, status, history, hosts, and Home Manager's hm.* tasks.

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
        FlakeOptions,
        GenerationsOptions,
        HistoryOptions,
        HomeOptions,
        HostsOptions,
        OneHostOptions,
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
    from deploy.reboot.reboot import ssh_wait as wait

    with cli.errors_as_exit_codes():
        target = require_machine(context, options.target, "ssh-wait")

        def wait_then_run(host: Host) -> None:
            result = wait(host, options.command, timeout=options.timeout, interval=options.interval)
            stdout_result(result.stdout, end="")

        cli.run_on_target(context, target, wait_then_run)


def generations(context: Any, options: GenerationsOptions) -> None:
    from deploy.activate.generations import format_generations, generations_json, list_generations

    def show(target: Host) -> None:
        listed = list_generations(target)
        stdout_result(generations_json(listed) if options.as_json else format_generations(listed), end="" if not options.as_json else "\n")

    cli.run_on_target(context, options.target, show)


def switch_generation(context: Any, options: SwitchGenerationOptions) -> None:
    from deploy.activate.generations import switch_generation as switch

    def run(target: Host) -> None:
        activation = switch(target, options.generation, note=print_note)
        print_note(f"==> {target.label}: generation {activation.generation} is current and running ({activation.path})")
        journal_day2(options.target, target.label, "switch-generation", activation)

    cli.run_on_target(context, options.target, run)


def rollback(context: Any, options: OneHostOptions) -> None:
    from deploy.activate.generations import rollback as roll_back

    def run(target: Host) -> None:
        activation = roll_back(target, note=print_note)
        print_note(f"==> {target.label}: rolled back to generation {activation.generation} ({activation.path})")
        journal_day2(options, target.label, "rollback", activation)

    cli.run_on_target(context, options, run)


def journal_day2(options: OneHostOptions, host: str, action: str, activation: Activation) -> None:
    if options.dry_run:
        return
    from deploy.record.history import DeployRecord, Journal, journal_path, local_user, utc_now

    Journal(journal_path(None)).record(
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
        flake_check(LocalRunner(Emitter(), dry_run=options.dry_run), options.flake, cli.extra_nix_options())
        print_note(f"==> {options.flake}: nix flake check passed")


def update(context: Any, options: FlakeOptions) -> None:
    from deploy.config.selection import split_names
    from deploy.nix.flake_ops import flake_update
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    with cli.errors_as_exit_codes():
        flake_update(LocalRunner(Emitter(), dry_run=options.dry_run), options.flake, split_names(options.inputs), cli.extra_nix_options())


def status(context: Any, options: StatusOptions) -> None:
    from deploy.plan.status import host_status, print_status

    with cli.errors_as_exit_codes():
        selection = options.selection
        session = cli.open_session(selection.inventory, dry_run=False, ssh_config=cli.fab_ssh_config(context), flake=selection.flake)
        try:
            machines, _local = cli.selected_machines(context, session, selection)
            rows = host_status(session, selection.flake, machines, cli.extra_nix_options())
        finally:
            session.close()
        print_status(rows, as_json=options.as_json)


def history(context: Any, options: HistoryOptions) -> None:
    from deploy.record.history import Journal, format_history, history_json, journal_path

    with cli.errors_as_exit_codes():
        path = journal_path(cli.flake_directory(options.flake))
        records = Journal(path).records() if path.exists() else []
        if options.hosts:
            wanted = set(options.hosts)
            records = [record for record in records if record.host in wanted]
        stdout_result(history_json(records) if options.as_json else format_history(records), end="" if not options.as_json else "\n")


def hosts(context: Any, options: HostsOptions) -> None:
    import json

    from deploy.config.discovery import discover_systems, format_host_listing, host_listing
    from deploy.config.inventory import load_inventory

    with cli.errors_as_exit_codes():
        flake_dir = cli.flake_directory(options.flake) or Path(".")
        inventory = load_inventory(Path(options.inventory), required=options.inventory != "hosts.yaml")
        rows = host_listing(inventory, discover_systems(flake_dir))
        if options.as_json:
            stdout_result(json.dumps([{**row.__dict__, "tags": list(row.tags), "problems": list(row.problems)} for row in rows], indent=2))
        else:
            stdout_result(format_host_listing(rows), end="")


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
