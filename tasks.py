"""nixfab's Invoke tasks: names, options and help, and for each task the two functions it runs:
a builder of deploy/cli/arguments.py, which turns the options into a typed dataclass
(deploy/cli/options.py), and the handler that takes it (cli.run_deploy, or one of
deploy/cli/day2.py); the work happens in deploy/.

Task names mirror flakem's commands: `inv TASK [MACHINE]`, or select with
`--host a,b` (repeatable, globs), `--tag web`, `--all`; with none of them a
task works on this machine. Extra Nix options go after `--`. fabfile.py
serves the same tasks to `fab -H user@host TASK`.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import Task, task

from deploy.cli import arguments, cli, day2
from deploy.cli.arguments import DeployPreset
from deploy.cli.cli import Step
from deploy.model import Action

cli.allow_optional_machine()

OptionsT = TypeVar("OptionsT")

HELP = {
    "machine": "the machine (nixosConfigurations attribute and SSH destination, [user@]name); default: this machine",
    "host": "the host(s): a,b or a glob ('web-*'); repeatable where a task takes several",
    "tag": "every host with this tag (hosts.yaml tags, meta.nix tags); repeatable",
    "all": "every host in hosts.yaml and systems/",
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
    "parallel": "hosts deployed at the same time (default 10)",
    "fail-fast": "stop starting new hosts after the first failure",
    "canary": "deploy one host first; go on only if it comes out healthy",
    "batch": "deploy in waves of N hosts; stop after a wave with a failure",
    "json": "print the result as JSON on stdout",
    "log-dir": "where each host's full log goes (default .nixfab/logs/<run>/)",
    "force": "activate even when the host already runs this system",
    "magic-rollback": "roll back unless a new SSH connection confirms the host after activation (default on)",
    "confirm-timeout": "seconds a host waits for that confirmation before rolling back (default 30)",
    "health-checks": "run hosts.yaml health checks after activation (default on)",
    "check": "run `nix flake check` beside the build; hosts activate once it passes (skipped for a locked flake that passed before)",
    "skip-checks": "do not run `nix flake check`, even if hosts.yaml says `check: true` (not running it is the default)",
    "diff": "show what changes (nvd or nix store diff-closures, on the target) before activating",
    "ask": "show the diff and ask before activating each host",
    "generation": "the generation number to switch to (see `inv generations`)",
    "input": "update only this flake input",
    "user": "the Home Manager user (default: the login user)",
}

SELECTION: dict[str, Any] = {"machine": None, "host": [], "tag": [], "all": False, "flake": ".", "inventory": "hosts.yaml", "dry_run": False}
FLEET: dict[str, Any] = {"parallel": "10", "fail_fast": False, "canary": False, "batch": "", "json": False, "log_dir": "", "check": False, "skip_checks": False}
ACTIVATING: dict[str, Any] = {
    "force": False, "magic_rollback": True, "confirm_timeout": "30", "health_checks": True, "diff": False, "ask": False,
}
RESET: dict[str, Any] = {"delete_older_than": "15d", "reboot_timeout": "300"}


class StepTask(Task[Callable[..., None]]):
    """A task whose body builds its typed options and runs its handler: `step` says with what (tests/test_model.py reads it)."""

    step: Step[Any]


def make_task(
    name: str, doc: str, step: Step[Any], parameters: dict[str, Any], positional: tuple[str, ...] = ("machine",)
) -> StepTask:
    """A Task whose options are `parameters` (name → default), handed to `step` as keyword arguments."""

    def body(c: Any, **options: Any) -> None:
        step(c, **options)

    body.__name__ = name.replace("-", "_")
    body.__doc__ = doc
    # Invoke reads a task's options from inspect.signature(), which honours __signature__; mypy does not know the attribute.
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value) for key, value in parameters.items()]
    )
    iterable = [key for key, value in parameters.items() if isinstance(value, list)]
    positional_names = [name for name in positional if name in parameters]
    help_text = {key: HELP[key] for key in (k.replace("_", "-") for k in parameters) if key in HELP}
    # Invoke would invent a short flag for every option, down to `--` itself once letters run out.
    made = StepTask(body, name=name, positional=positional_names, iterable=iterable, help=help_text, auto_shortflags=False)
    made.step = step
    return made


def deploy_task(name: str, doc: str, preset: DeployPreset, *, options: dict[str, Any] | None = None) -> StepTask:
    """A fleet deploy (cli.run_deploy): `preset` is what the task fixes, `options` what it asks besides the common ones."""
    parameters = {**SELECTION, **FLEET, **(ACTIVATING if preset.action is not None else {}), **(options or {})}
    return make_task(name, doc, Step(functools.partial(arguments.deploy, preset), cli.run_deploy), parameters)


def local_step(
    name: str, doc: str, handler: Callable[[Any, OptionsT], None], build: Callable[..., OptionsT], parameters: dict[str, Any],
    positional: tuple[str, ...] = ("machine",),
) -> StepTask:
    """A task that works on one host's connection (or this machine): `build` makes its options, `handler` (deploy.cli.day2) runs."""
    return make_task(name, doc, Step(build, handler), parameters, positional=positional)


ONE_HOST = {"machine": None, "host": None, "flake": ".", "inventory": "hosts.yaml", "dry_run": False}

DEPLOY_TASKS = [
    deploy_task("build", "Build a machine's system on this machine, leaving ./result (nothing is activated).",
                DeployPreset(action=None, build_on="local", out_link=Path("result"))),
    deploy_task("build-there", "Build a machine's system on the machine itself (nothing is activated).",
                DeployPreset(action=None, build_on="target")),
    deploy_task("switch", "Build a system here and activate it on this machine (sudo nixos-rebuild switch).",
                DeployPreset(local=True), options={"action": "switch"}),
    deploy_task("switch-pull", "Build on the target and activate there.", DeployPreset(build_on="target"), options={"action": "switch"}),
    deploy_task("switch-push", "Build here (or where hosts.yaml says), copy the closure, activate on the target(s).",
                DeployPreset(), options={"action": "switch", "build_on": None, "substitute_on_destination": False}),
    deploy_task("boot", "Like switch-push, but only make it the boot default (nixos-rebuild boot).",
                DeployPreset(action=Action.BOOT), options={"build_on": None}),
    deploy_task("test", "Like switch-push, but activate without making it the boot default (nixos-rebuild test).",
                DeployPreset(action=Action.TEST), options={"build_on": None}),
    deploy_task("dry-activate", "Build, copy, and show what activation would do (nixos-rebuild dry-activate).",
                DeployPreset(action=Action.DRY_ACTIVATE), options={"build_on": None}),
    deploy_task("diff", "Build, copy, and show what would change against the target's running system; activates nothing.",
                DeployPreset(action=Action.SWITCH, diff_only=True), options={"build_on": None}),
    deploy_task("switch-pull-reset", "switch-pull with the boot action, then reboot, wait for it, and collect garbage.",
                DeployPreset(action=Action.BOOT, build_on="target", reboot=True, collect_garbage=True), options=RESET),
    deploy_task("switch-push-reset", "switch-push with the boot action, then reboot, wait for it, and collect garbage.",
                DeployPreset(action=Action.BOOT, reboot=True, collect_garbage=True), options={**RESET, "build_on": None}),
]

DAY2_TASKS = [
    local_step("reset", "Reboot the machine, wait until it is back, then collect garbage.", day2.reset, arguments.reset,
               {**ONE_HOST, **RESET}),
    local_step("ssh-wait", "Wait until the machine answers SSH, then run COMMAND there (flakem's ssh-wait).", day2.ssh_wait, arguments.ssh_wait,
               {"machine": None, "command": None, "host": None, "flake": ".", "inventory": "hosts.yaml", "timeout": "300", "interval": "2"},
               positional=("machine", "command")),
    local_step("generations", "List the system generations of the target (or this machine).", day2.generations, arguments.generations,
               {**ONE_HOST, "json": False}),
    local_step("switch-generation", "Make generation N current on the target and activate it.", day2.switch_generation,
               arguments.switch_generation, {**ONE_HOST, "generation": None}, positional=("machine", "generation")),
    local_step("rollback", "Go back to the previous generation and activate it (nixos-rebuild --rollback switch).", day2.rollback,
               arguments.one_host, ONE_HOST),
    local_step("check", "Run `nix flake check` on the flake.", day2.check, arguments.flake_task, {"flake": ".", "dry_run": False}),
    local_step("update", "Update the flake's lock file: every input, or only --input NAME.", day2.update, arguments.flake_task,
               {"flake": ".", "input": [], "dry_run": False}),
    local_step("status", "One row per host: reachable, generation, drift from the flake, reboot pending, uptime.", day2.status,
               arguments.status,
               {"machine": None, "host": [], "tag": [], "all": False, "flake": ".", "inventory": "hosts.yaml", "json": False}),
    local_step("history", "The local journal of deploys and rollbacks.", day2.history, arguments.history,
               {"machine": None, "host": [], "json": False, "flake": "."}),
    local_step("hosts", "Every host nixfab knows: from systems/, hosts.yaml or both, with mismatches flagged.", day2.hosts, arguments.hosts,
               {"flake": ".", "inventory": "hosts.yaml", "json": False}),
]

HOME_TASKS = [
    local_step("build", "Build a Home Manager configuration here (homeConfigurations.\"user@host\").", day2.hm_build, arguments.home,
               {**ONE_HOST, "user": ""}),
    local_step("switch", "Build and activate a Home Manager configuration on this machine.", day2.hm_switch, arguments.home,
               {"user": "", "flake": ".", "dry_run": False}),
    local_step("push", "Build here, copy, and activate a Home Manager configuration on the target.", day2.hm_push, arguments.home,
               {**ONE_HOST, "user": ""}),
    local_step("pull", "Build and activate a Home Manager configuration on the target itself.", day2.hm_pull, arguments.home,
               {**ONE_HOST, "user": ""}),
]


def namespace() -> Collection:
    root = Collection()
    for each in [*DEPLOY_TASKS, *DAY2_TASKS]:
        root.add_task(each)
    home = Collection("hm")
    for each in HOME_TASKS:
        home.add_task(each)
    root.add_collection(home)
    return root


@task(help={"hosts": "comma-separated names", "reboot-delay": "seconds a simulated reboot takes"})
def lab_up(c: Context, hosts: str = "alpha,beta,gamma", reboot_delay: float = 1.0) -> None:
    """Start simulated NixOS hosts on 127.0.0.1 (see README: The lab)."""
    from deploy.lab import cli as lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.up([h for h in hosts.split(",") if h], reboot_delay=float(reboot_delay))


@task
def lab_status(c: Context) -> None:
    """Show each simulated host: its process, boot id, generations and running system."""
    from deploy.lab import cli as lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.status()


@task
def lab_down(c: Context) -> None:
    """Stop every simulated host (by pid) and everything running in it."""
    from deploy.lab import cli as lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.down()


@task
def demo(c: Context) -> None:
    """Start three simulated hosts, deploy to them as a fleet, and show what happened."""
    from deploy.lab import cli as lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.demo()


lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_status, "status")  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task
lab.add_task(lab_down, "down")  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task

ns = namespace()
ns.add_collection(lab)
ns.add_task(demo)  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task
