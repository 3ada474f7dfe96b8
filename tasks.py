"""nixfab's Invoke tasks: argument parsing only; the work happens in deploy/.

Task names mirror flakem's commands. `inv TASK MACHINE` or `inv TASK --host
MACHINE`; extra Nix options go after `--`. fabfile.py serves the same task
functions to `fab -H user@host TASK`, with the machine taken from -H.
"""
from __future__ import annotations

import inspect
from typing import Any

from invoke import Collection, Task, task

from deploy import cli

COMMON_HELP = {
    "host": "the machine: nixosConfigurations attribute and SSH destination ([user@]name)",
    "flake": "the flake (default: the current directory)",
    "inventory": "hosts.yaml to read (optional; default ./hosts.yaml)",
    "dry-run": "print every command, local and remote, and run none",
    "build-on": "where to build: local, target, or a builder/host from hosts.yaml",
    "substitute-on-destination": "let the target fetch paths from its own binary caches",
    "action": "switch, boot, test or dry-activate",
    "delete-older-than": "passed to nix-collect-garbage (default 15d, as flakem's reset; `all` deletes every old generation)",
    "reboot-timeout": "seconds to wait for the host to come back after a reboot",
    "timeout": "seconds to keep trying",
    "interval": "seconds between attempts",
    "command": "the shell command to run once the machine answers",
}


def _deploy(c: Any, host: str | None, **options: Any) -> None:
    options.setdefault("extra_nix", cli.extra_nix_options() if not hasattr(c, "original_host") else ())
    inventory, dry_run = options.pop("inventory"), options.pop("dry_run")
    cli.run_deploy(c, host, inventory=inventory, dry_run=dry_run, **options)


def build(c, host=None, flake=".", inventory="hosts.yaml", dry_run=False):  # type: ignore[no-untyped-def]
    """Build a machine's system on this machine, leaving ./result (nothing is activated)."""
    from pathlib import Path

    _deploy(c, host, flake=flake, inventory=inventory, dry_run=dry_run, action=None, build_on="local", out_link=Path("result"))


def build_there(c, host=None, flake=".", inventory="hosts.yaml", dry_run=False):  # type: ignore[no-untyped-def]
    """Build a machine's system on the machine itself (nothing is activated)."""
    _deploy(c, host, flake=flake, inventory=inventory, dry_run=dry_run, action=None, build_on="target")


def switch(c, host=None, flake=".", inventory="hosts.yaml", action="switch", dry_run=False):  # type: ignore[no-untyped-def]
    """Build a system here and activate it on this machine (sudo nixos-rebuild switch)."""
    _deploy(c, host, flake=flake, inventory=inventory, dry_run=dry_run, action=action, local=True)


def switch_pull(c, host=None, flake=".", inventory="hosts.yaml", action="switch", dry_run=False):  # type: ignore[no-untyped-def]
    """Build on the target and activate there."""
    _deploy(c, host, flake=flake, inventory=inventory, dry_run=dry_run, action=action, build_on="target")


def switch_push(  # type: ignore[no-untyped-def]
    c, host=None, flake=".", inventory="hosts.yaml", action="switch", build_on=None, substitute_on_destination=False, dry_run=False
):
    """Build here (or where hosts.yaml says), copy the closure, activate on the target."""
    _deploy(
        c, host, flake=flake, inventory=inventory, dry_run=dry_run, action=action,
        build_on=build_on, substitute_on_destination=substitute_on_destination,
    )


def switch_pull_reset(  # type: ignore[no-untyped-def]
    c, host=None, flake=".", inventory="hosts.yaml", delete_older_than="15d", reboot_timeout="300", dry_run=False
):
    """switch-pull with the boot action, then reboot, wait for it, and collect garbage."""
    _deploy(
        c, host, flake=flake, inventory=inventory, dry_run=dry_run, action="boot", build_on="target",
        reboot=True, collect_garbage=True, delete_older_than=delete_older_than, reboot_timeout=reboot_timeout,
    )


def switch_push_reset(  # type: ignore[no-untyped-def]
    c, host=None, flake=".", inventory="hosts.yaml", delete_older_than="15d", reboot_timeout="300", build_on=None, dry_run=False
):
    """switch-push with the boot action, then reboot, wait for it, and collect garbage."""
    _deploy(
        c, host, flake=flake, inventory=inventory, dry_run=dry_run, action="boot", build_on=build_on,
        reboot=True, collect_garbage=True, delete_older_than=delete_older_than, reboot_timeout=reboot_timeout,
    )


def reset(c, host=None, inventory="hosts.yaml", delete_older_than="15d", reboot_timeout="300", dry_run=False):  # type: ignore[no-untyped-def]
    """Reboot the machine, wait until it is back, then collect garbage."""
    from deploy.gc import collect_garbage
    from deploy.reboot import reboot_and_wait

    def reboot_then_collect(target: Any) -> None:
        reboot_and_wait(target, expected_system=None, timeout=cli.seconds("--reboot-timeout", reboot_timeout))
        collect_garbage(target, delete_older_than)

    cli.run_on_target(c, host, inventory=inventory, dry_run=dry_run, step=reboot_then_collect)


def ssh_wait(c, host=None, command=None, inventory="hosts.yaml", timeout="300", interval="2"):  # type: ignore[no-untyped-def]
    """Wait until the machine answers SSH, then run COMMAND there (flakem's ssh-wait)."""
    from deploy.reboot import ssh_wait as wait

    def wait_then_run(target: Any) -> None:
        result = wait(target, command or None, timeout=cli.seconds("--timeout", timeout), interval=cli.seconds("--interval", interval))
        print(result.stdout, end="")

    cli.run_on_target(c, host, inventory=inventory, dry_run=False, step=wait_then_run)


DEPLOY_TASKS = (build, build_there, switch, switch_pull, switch_push, switch_pull_reset, switch_push_reset, reset, ssh_wait)


def deploy_namespace(*, machine_positional: bool) -> Collection:
    """inv takes the machine by position or flag; fab takes it from -H, so only by flag."""
    namespace = Collection()
    for body in DEPLOY_TASKS:
        positional = ["host", "command"] if body is ssh_wait else ["host"]
        parameters = {name.replace("_", "-") for name in inspect.signature(body).parameters}
        help_for_body = {name: text for name, text in COMMON_HELP.items() if name in parameters}
        namespace.add_task(Task(body, positional=positional if machine_positional else [], help=help_for_body))
    return namespace


@task(help={"hosts": "comma-separated names", "reboot-delay": "seconds a simulated reboot takes"})
def lab_up(c, hosts="alpha,beta,gamma", reboot_delay=1.0):  # type: ignore[no-untyped-def]
    """Start simulated NixOS hosts on 127.0.0.1 (see README: The lab)."""
    from deploy import lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.up([h for h in hosts.split(",") if h], reboot_delay=float(reboot_delay))


@task
def lab_status(c):  # type: ignore[no-untyped-def]
    """Show each simulated host: its process, boot id, generations and running system."""
    from deploy import lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.status()


@task
def lab_down(c):  # type: ignore[no-untyped-def]
    """Stop every simulated host (by pid) and everything running in it."""
    from deploy import lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.down()


@task
def demo(c):  # type: ignore[no-untyped-def]
    """Start three simulated hosts, switch-push to each, and show what happened."""
    from deploy import lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.demo()


lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_status, "status")
lab.add_task(lab_down, "down")

ns = deploy_namespace(machine_positional=True)
ns.add_collection(lab)
ns.add_task(demo)
