"""Handlers of the tasks that are not fleet deploys: reset, ssh-wait, generations, rollback, check,
update, status, history, hosts, and Home Manager's hm.* tasks.

Each takes the Invoke context and the task's options and runs inside
cli.errors_as_exit_codes(), so bad input ends as one line and an exit code.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from deploy import cli, commands
from deploy.errors import UsageError
from deploy.hosts import Host
from deploy.model import Result


def one_machine(options: dict[str, Any], shifted: str | None = None) -> str | None:
    """`--host X` or the positional MACHINE; with --host, a positional slot holds the next argument."""
    if options.get("host"):
        if shifted and options.get("machine") and not options.get(shifted):
            options[shifted] = options["machine"]
        return str(options["host"])
    return options.get("machine") or None


def require_machine(context: Any, options: dict[str, Any], task: str, shifted: str | None = None) -> str:
    machine = one_machine(options, shifted) or cli.fab_machine(context)
    if not machine:
        raise UsageError(f"name the machine: `inv {task} MACHINE` (this task never acts on this machine by default)")
    return str(machine)


def reset(context: Any, options: dict[str, Any]) -> None:
    from deploy.gc import collect_garbage
    from deploy.reboot import reboot_and_wait

    with cli.errors_as_exit_codes():
        machine = require_machine(context, options, "reset")
        timeout = cli.seconds("--reboot-timeout", options["reboot_timeout"])
        cli.check_older_than(options["delete_older_than"])

        def reboot_then_collect(target: Host) -> None:
            reboot_and_wait(target, expected_system=None, timeout=timeout)
            collect_garbage(target, options["delete_older_than"])

        cli.run_on_target(context, machine, inventory=options["inventory"], flake=options["flake"], dry_run=options["dry_run"], step=reboot_then_collect)


def ssh_wait(context: Any, options: dict[str, Any]) -> None:
    from deploy.reboot import ssh_wait as wait

    with cli.errors_as_exit_codes():
        machine = require_machine(context, options, "ssh-wait", shifted="command")
        timeout, interval = cli.seconds("--timeout", options["timeout"]), cli.seconds("--interval", options["interval"])

        def wait_then_run(target: Host) -> None:
            result = wait(target, options.get("command") or None, timeout=timeout, interval=interval)
            print(result.stdout, end="")

        cli.run_on_target(context, machine, inventory=options["inventory"], flake=options["flake"], dry_run=False, step=wait_then_run)


def generations(context: Any, options: dict[str, Any]) -> None:
    from deploy.generations import format_generations, generations_json, list_generations

    def show(target: Host) -> None:
        listed = list_generations(target)
        print(generations_json(listed) if options["json"] else format_generations(listed), end="" if not options["json"] else "\n")

    cli.run_on_target(context, one_machine(options), inventory=options["inventory"], flake=options["flake"], dry_run=options["dry_run"], step=show)


def switch_generation(context: Any, options: dict[str, Any]) -> None:
    from deploy.generations import switch_generation as switch

    machine = one_machine(options, shifted="generation")
    with cli.errors_as_exit_codes():
        text = str(options.get("generation") or "")
        if not text.isdigit():
            raise UsageError(f"switch-generation takes a generation number (see `inv generations`), not {text!r}")

    def run(target: Host) -> None:
        activation = switch(target, int(text), note=print_note)
        print_note(f"==> {target.label}: generation {activation.generation} is current and running ({activation.path})")
        journal_day2(options, target.label, "switch-generation", activation)

    cli.run_on_target(context, machine, inventory=options["inventory"], flake=options["flake"], dry_run=options["dry_run"], step=run)


def rollback(context: Any, options: dict[str, Any]) -> None:
    from deploy.generations import rollback as roll_back

    def run(target: Host) -> None:
        activation = roll_back(target, note=print_note)
        print_note(f"==> {target.label}: rolled back to generation {activation.generation} ({activation.path})")
        journal_day2(options, target.label, "rollback", activation)

    cli.run_on_target(context, one_machine(options), inventory=options["inventory"], flake=options["flake"], dry_run=options["dry_run"], step=run)


def journal_day2(options: dict[str, Any], host: str, action: str, activation: Any) -> None:
    if options.get("dry_run"):
        return
    from deploy.history import DeployRecord, Journal, journal_path, local_user, utc_now

    Journal(journal_path(None)).record(
        DeployRecord(
            started_at=utc_now(), local_user=local_user(), host=host, action=action, flake="", revision=None, dirty=None,
            store_path=activation.path, generation=activation.generation, result=Result.OK, duration_seconds=0.0, error=None,
        )
    )


def print_note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check(context: Any, options: dict[str, Any]) -> None:
    from deploy.flake_ops import flake_check
    from deploy.process import Echo, LocalRunner

    with cli.errors_as_exit_codes():
        flake = cli.flake_reference(options["flake"])
        flake_check(LocalRunner(Echo(), dry_run=options["dry_run"]), flake, cli.extra_nix_options())
        print_note(f"==> {flake}: nix flake check passed")


def update(context: Any, options: dict[str, Any]) -> None:
    from deploy.flake_ops import flake_update
    from deploy.process import Echo, LocalRunner
    from deploy.selection import split_names

    with cli.errors_as_exit_codes():
        flake = cli.flake_reference(options["flake"])
        flake_update(LocalRunner(Echo(), dry_run=options["dry_run"]), flake, split_names(options["input"]), cli.extra_nix_options())


def status(context: Any, options: dict[str, Any]) -> None:
    from deploy.status import host_status, print_status

    with cli.errors_as_exit_codes():
        flake = cli.flake_reference(options["flake"])
        session = cli.open_session(options["inventory"], dry_run=False, ssh_config=cli.fab_ssh_config(context), flake=flake)
        try:
            names = [options["machine"]] if options.get("machine") else []
            selecting = dict(host=[*names, *options["host"]], tag=options["tag"], all=options["all"] or not (names or options["host"] or options["tag"]))
            machines, _local = cli.selected_machines(context, session, flake, selecting)
            rows = host_status(session, flake, machines, cli.extra_nix_options())
        finally:
            session.close()
        print_status(rows, as_json=options["json"])


def history(context: Any, options: dict[str, Any]) -> None:
    from deploy.history import Journal, format_history, history_json, journal_path

    with cli.errors_as_exit_codes():
        hosts = [name for name in [options.get("machine"), *options["host"]] if name]
        path = journal_path(cli.flake_directory(cli.flake_reference(options["flake"])))
        records = Journal(path).records() if path.exists() else []
        if hosts:
            wanted = set(hosts)
            records = [record for record in records if record.host in wanted]
        print(history_json(records) if options["json"] else format_history(records), end="" if not options["json"] else "\n")


def hosts(context: Any, options: dict[str, Any]) -> None:
    import json

    from deploy.discovery import discover_systems, format_host_listing, host_listing
    from deploy.inventory import load_inventory

    with cli.errors_as_exit_codes():
        flake_dir = cli.flake_directory(cli.flake_reference(options["flake"])) or Path(".")
        inventory = load_inventory(Path(options["inventory"]), required=options["inventory"] != "hosts.yaml")
        rows = host_listing(inventory, discover_systems(flake_dir))
        if options["json"]:
            print(json.dumps([{**row.__dict__, "tags": list(row.tags), "problems": list(row.problems)} for row in rows], indent=2))
        else:
            print(format_host_listing(rows), end="")


# ---- Home Manager ---------------------------------------------------------------------------


def home_user(options: dict[str, Any], target: Host | None) -> str:
    import getpass

    user = options.get("user") or (getattr(target, "login_user", None) if target is not None else None) or getpass.getuser()
    return str(user)


def hm_build(context: Any, options: dict[str, Any]) -> None:
    from deploy.home_manager import build_home
    from deploy.inventory import load_inventory
    from deploy.process import Echo, LocalRunner
    from deploy.selection import this_machine

    with cli.errors_as_exit_codes():
        # It builds here and needs no host, but an --inventory named on the command line must exist and parse.
        load_inventory(Path(options["inventory"]), required=options["inventory"] != "hosts.yaml")
        machine = one_machine(options) or this_machine()
        name = machine.rpartition("@")[2]
        user = options.get("user") or (machine.partition("@")[0] if "@" in machine else home_user(options, None))
        path = build_home(
            LocalRunner(Echo(), dry_run=options["dry_run"]), cli.flake_reference(options["flake"]), user, name,
            out_link=Path("result"), extra=cli.extra_nix_options(),
        )
        print(path)


def hm_switch(context: Any, options: dict[str, Any]) -> None:
    from deploy.home_manager import switch_home
    from deploy.process import Echo, LocalRunner
    from deploy.selection import this_machine

    with cli.errors_as_exit_codes():
        runner = LocalRunner(Echo(), dry_run=options["dry_run"])
        activation = switch_home(runner, cli.flake_reference(options["flake"]), home_user(options, None), this_machine(), extra=cli.extra_nix_options())
        print_note(f"==> {activation.user}: Home Manager generation {activation.generation} is active ({activation.path})")


def hm_push(context: Any, options: dict[str, Any]) -> None:
    home_remote(context, options, "push")


def hm_pull(context: Any, options: dict[str, Any]) -> None:
    home_remote(context, options, "pull")


def home_remote(context: Any, options: dict[str, Any], how: str) -> None:
    from deploy import home_manager

    with cli.errors_as_exit_codes():
        machine = require_machine(context, options, f"hm.{how}")
        flake = cli.flake_reference(options["flake"])
        session = cli.open_session(options["inventory"], dry_run=options["dry_run"], flake=flake, ssh_config=cli.fab_ssh_config(context))
        try:
            spec = session.inventory.host(machine)
            target = session.target(spec)
            user = options.get("user") or spec.ssh.user or target.login_user
            deploy_home = home_manager.push_home if how == "push" else home_manager.pull_home
            activation = deploy_home(
                session.runner, target, target_store=commands.ssh_store_uri(spec.ssh.destination()), flake=flake, user=user,
                host=spec.name, nix_env=session.nix_env(spec.ssh), extra=cli.extra_nix_options(),
            )
            print_note(f"==> {spec.name}: {user}'s Home Manager generation {activation.generation} is active ({activation.path})")
        finally:
            session.close()
