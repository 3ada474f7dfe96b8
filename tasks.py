"""nixfab's Invoke tasks: names, options and help, and for each task the two functions it runs:
a builder of deploy/cli/arguments.py, which turns the options into a typed dataclass
(deploy/cli/options.py), and the handler that takes it (cli.run_deploy, or one of
deploy/cli/operations.py); the work happens in deploy/.

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
from invoke.tasks import task

from deploy.cli import arguments, cli, invoke_compat, operations
from deploy.cli.arguments import DeployPreset
from deploy.cli.cli import Step
from deploy.model import Action

invoke_compat.install()

OptionsT = TypeVar("OptionsT")

HELP = {
    "machine": "the machine (nixosConfigurations attribute and SSH destination, [user@]name); default: this machine",
    "host": "the host(s): a,b, a glob ('web-*') or @tag (colmena's --on); repeatable",
    "tag": "every host with this tag (hosts.yaml tags, meta.nix tags); repeatable",
    "all": "every host in hosts.yaml and systems/",
    "flake": "the flake (default: the current directory)",
    "inventory": "hosts.yaml to read (optional; default ./hosts.yaml)",
    "dry-run": "show the plan: every command, local and remote, and run none (Invoke's --dry means the same)",
    "build-on": "where to build: local, target, or a builder/host from hosts.yaml (nixos-rebuild's --build-host)",
    "substitute-on-destination": "let the target fetch paths from its own binary caches",
    "action": "switch, boot, test or dry-activate",
    "delete-older-than": "passed to nix-collect-garbage (default 15d, as flakem's reset; `all` deletes every old generation)",
    "reboot-timeout": "seconds to wait for the host to come back after a reboot",
    "timeout": "seconds to keep trying",
    "interval": "seconds between attempts",
    "command": "the shell command to run (ssh-wait: once the machine answers, and its exit status is ssh-wait's; exec: on every host)",
    "parallel": "hosts worked on at the same time (default 10)",
    "fail-fast": "stop starting new hosts after the first failure",
    "keep-going": "go on with the other hosts after a failure (the default; colmena's word for it)",
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
    "sudo": "run privileged steps with sudo on every selected host, as hosts.yaml's `sudo: true` (nixos-rebuild's --use-remote-sudo)",
    "show-trace": "pass --show-trace to Nix (the same as `-- --show-trace`)",
    "generation": "the generation number to switch to (see `inv generations`)",
    "input": "update only this flake input",
    "user": "the Home Manager user (default: the login user)",
    "verbose": "show every command, local and remote, and all they print (as flakem's `set -x`); also Invoke's --echo",
    "quiet": "show only errors and the summary; also Invoke's --hide",
    "log-keep": "keep the logs of this many runs, this one included (default 20; 0 keeps all)",
}
# Tasks that work on one host describe --host as one name.
ONE_HOST_HELP = {
    "host": "the host: a name from hosts.yaml or systems/, or [user@]address (the same as MACHINE)",
}

# What each value is called in `--help` (Invoke would say STRING for all of them).
METAVARS = {
    "machine": "MACHINE", "host": "NAME", "tag": "TAG", "flake": "FLAKE", "inventory": "FILE", "parallel": "N", "batch": "N",
    "confirm-timeout": "SECONDS", "reboot-timeout": "SECONDS", "timeout": "SECONDS", "interval": "SECONDS", "log-dir": "DIR",
    "action": "ACTION", "build-on": "WHERE", "delete-older-than": "AGE", "generation": "N", "input": "NAME", "user": "USER",
    "command": "COMMAND", "hosts": "NAMES", "reboot-delay": "SECONDS",
}

# Other names of an option: short flags, and the words of nixos-rebuild and colmena. Invoke's and Fabric's
# own short flags (-c -d -D -e -f -F -h -H -i -l -p -r -R -S -t -T -V -w) are left alone, so that
# `inv -f x` and `fab -H x` keep meaning what they always did. -v and -q are every task's output flags (OUTPUT).
FLEET_ALIASES: dict[str, tuple[str, ...]] = {
    "host": ("on", "target-host"),
    "all": ("a",),
    "dry-run": ("n",),
    "parallel": ("j",),
    "keep-going": ("k",),
    "build-on": ("build-host",),
    "sudo": ("use-remote-sudo",),
}
ONE_HOST_ALIASES: dict[str, tuple[str, ...]] = {"host": ("target-host",), "dry-run": ("n",), "all": ("a",)}
# The output flags every task takes (deploy.ui.policy), with their short forms.
OUTPUT: dict[str, Any] = {"verbose": False, "quiet": False}
OUTPUT_ALIASES: dict[str, tuple[str, ...]] = {"verbose": ("v",), "quiet": ("q",)}

SELECTION: dict[str, Any] = {"machine": None, "host": [], "tag": [], "all": False, "flake": ".", "inventory": "hosts.yaml", "dry_run": False}
FLEET: dict[str, Any] = {
    "parallel": "10", "fail_fast": False, "keep_going": False, "canary": False, "batch": "", "json": False, "log_dir": "",
    "log_keep": "20", "check": False, "skip_checks": False, "show_trace": False,
}
ACTIVATING: dict[str, Any] = {
    "force": False, "magic_rollback": True, "confirm_timeout": "30", "health_checks": True, "diff": False, "ask": False, "sudo": False,
}
RESET: dict[str, Any] = {"delete_older_than": "15d", "reboot_timeout": "300"}


class StepTask(invoke_compat.NamedOptionsTask):
    """A task whose body builds its typed options and runs its handler: `step` says with what (tests/test_model.py reads it).

    usage, nix_options and metavars are what `--help` shows (deploy/cli/help.py).
    """

    step: Step[Any]
    usage: str = "[MACHINE]"
    nix_options: bool = False
    metavars: dict[str, str] = METAVARS


def make_task(
    name: str, doc: str, step: Step[Any], parameters: dict[str, Any], positional: tuple[str, ...] = ("machine",), *,
    usage: str = "[MACHINE]", nix_options: bool = False, aliases: dict[str, tuple[str, ...]] | None = None,
) -> StepTask:
    """A Task whose options are `parameters` (name → default) and -v/-q, handed to `step` as keyword arguments.

    doc is the help: its first line is what `--list` shows; it ends with examples.
    """
    parameters = {**parameters, **OUTPUT}

    def body(c: Any, **options: Any) -> None:
        cli.set_output(c, verbose=options.pop("verbose"), quiet=options.pop("quiet"), dry_run=bool(options.get("dry_run")))
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
    one_host = parameters.get("host", []) is None  # a task on one host declares --host as a single name
    texts = {**HELP, **(ONE_HOST_HELP if one_host else {})}
    help_text = {key: texts[key] for key in (k.replace("_", "-") for k in parameters) if key in texts}
    # Invoke would invent a short flag for every option, down to `--` itself once letters run out; ours are `aliases`.
    made = StepTask(body, name=name, positional=positional_names, iterable=iterable, help=help_text, auto_shortflags=False)
    made.step = step
    made.usage = usage
    made.nix_options = nix_options
    made.option_aliases = {**(aliases if aliases is not None else (ONE_HOST_ALIASES if one_host else FLEET_ALIASES)), **OUTPUT_ALIASES}
    return made


def deploy_task(name: str, doc: str, preset: DeployPreset, *, options: dict[str, Any] | None = None) -> StepTask:
    """A fleet deploy (cli.run_deploy): `preset` is what the task fixes, `options` what it asks besides the common ones."""
    parameters = {**SELECTION, **FLEET, **(ACTIVATING if preset.action is not None else {}), **(options or {})}
    return make_task(name, doc, Step(functools.partial(arguments.deploy, preset), cli.run_deploy), parameters, nix_options=True)


def local_step(
    name: str, doc: str, handler: Callable[[Any, OptionsT], None], build: Callable[..., OptionsT], parameters: dict[str, Any],
    positional: tuple[str, ...] = ("machine",), *, usage: str = "[MACHINE]", nix_options: bool = False,
) -> StepTask:
    """A task that works on one host's connection (or this machine): `build` makes its options, `handler` (deploy.cli.operations) runs."""
    return make_task(name, doc, Step(build, handler), parameters, positional=positional, usage=usage, nix_options=nix_options)


ONE_HOST = {"machine": None, "host": None, "flake": ".", "inventory": "hosts.yaml", "dry_run": False}


def doc(summary: str, *examples: str, more: str = "") -> str:
    """A task's help: what it does (the first line is what `--list` shows), then its examples."""
    text = summary + (f"\n\n{more}" if more else "")
    return text + "\n\nExamples:\n" + "".join(f"  {example}\n" for example in examples)


DEPLOY_TASKS = [
    deploy_task("build", doc("Build a machine's system on this machine, leaving ./result (nothing is activated).",
                             "inv build bigmachine", "inv build bigmachine -- --show-trace"),
                DeployPreset(action=None, build_on="local", out_link=Path("result"))),
    deploy_task("build-there", doc("Build a machine's system on the machine itself (nothing is activated).", "inv build-there bigmachine"),
                DeployPreset(action=None, build_on="target")),
    deploy_task("switch", doc("Build a system here and activate it on this machine (sudo nixos-rebuild switch).",
                              "sudo inv switch", "sudo inv switch --action boot"),
                DeployPreset(local=True), options={"action": "switch"}),
    deploy_task("switch-pull", doc("Build on the target and activate there.", "inv switch-pull bigmachine", "inv switch-pull bigmachine --action test"),
                DeployPreset(build_on="target"), options={"action": "switch"}),
    deploy_task("switch-push", doc("Build here (or where hosts.yaml says), copy the closure, activate on the target(s).",
                                   "inv switch-push bigmachine", "inv switch-push --on @web --canary",
                                   "inv switch-push --target-host root@bigmachine --dry-run", "inv switch-push --all -j 4 -- --show-trace"),
                DeployPreset(), options={"action": "switch", "build_on": None, "substitute_on_destination": False}),
    deploy_task("boot", doc("Like switch-push, but only make it the boot default (nixos-rebuild boot).", "inv boot bigmachine"),
                DeployPreset(action=Action.BOOT), options={"build_on": None}),
    deploy_task("test", doc("Like switch-push, but activate without making it the boot default (nixos-rebuild test).", "inv test bigmachine"),
                DeployPreset(action=Action.TEST), options={"build_on": None}),
    deploy_task("dry-activate", doc("Build, copy, and show what activation would do (nixos-rebuild dry-activate).", "inv dry-activate bigmachine"),
                DeployPreset(action=Action.DRY_ACTIVATE), options={"build_on": None}),
    deploy_task("diff", doc("Build, copy, and print on stdout what would change against the target's running system; activates nothing.",
                            "inv diff bigmachine", "inv diff --tag web > changes.txt"),
                DeployPreset(action=Action.SWITCH, diff_only=True), options={"build_on": None}),
    deploy_task("switch-pull-reset", doc("switch-pull with the boot action, then reboot, wait for it, and collect garbage.",
                                         "inv switch-pull-reset bigmachine --delete-older-than 30d"),
                DeployPreset(action=Action.BOOT, build_on="target", reboot=True, collect_garbage=True), options=RESET),
    deploy_task("switch-push-reset", doc("switch-push with the boot action, then reboot, wait for it, and collect garbage.",
                                         "inv switch-push-reset bigmachine", "inv switch-push-reset --all --batch 2"),
                DeployPreset(action=Action.BOOT, reboot=True, collect_garbage=True), options={**RESET, "build_on": None}),
]

OPERATION_TASKS = [
    local_step("reset", doc("Reboot the machine, wait until it is back, then collect garbage.", "inv reset bigmachine", "fab -H root@bigmachine reset"),
               operations.reset, arguments.reset, {**ONE_HOST, **RESET}),
    local_step("ssh-wait", doc("Wait until the machine answers SSH, then run COMMAND there (flakem's ssh-wait); exits with COMMAND's status.",
                               "inv ssh-wait bigmachine", "inv ssh-wait bigmachine 'systemctl is-system-running --wait'"),
               operations.ssh_wait, arguments.ssh_wait,
               {"machine": None, "command": None, "host": None, "flake": ".", "inventory": "hosts.yaml", "timeout": "300", "interval": "2"},
               positional=("machine", "command"), usage="[MACHINE] [COMMAND]"),
    local_step("generations", doc("List the system generations of the target (or this machine).", "inv generations bigmachine",
                                  "inv generations bigmachine --json"),
               operations.generations, arguments.generations, {**ONE_HOST, "json": False}),
    local_step("switch-generation", doc("Make generation N current on the target and activate it.", "inv switch-generation bigmachine 41"),
               operations.switch_generation, arguments.switch_generation, {**ONE_HOST, "generation": None}, positional=("machine", "generation"),
               usage="[MACHINE] GENERATION"),
    local_step("rollback", doc("Go back to the previous generation and activate it (nixos-rebuild --rollback switch).", "inv rollback bigmachine"),
               operations.rollback, arguments.one_host, ONE_HOST),
    local_step("check", doc("Run `nix flake check` on the flake.", "inv check", "inv check --show-trace"), operations.check, arguments.flake_task,
               {"flake": ".", "dry_run": False, "show_trace": False}, usage="", nix_options=True),
    local_step("update", doc("Update the flake's lock file: every input, or only --input NAME.", "inv update", "inv update --input nixpkgs"),
               operations.update, arguments.flake_task, {"flake": ".", "input": [], "dry_run": False}, usage="", nix_options=True),
    local_step("status", doc("One row per host: reachable, generation, drift from the flake, reboot pending, uptime.", "inv status",
                             "inv status --on @web --json"),
               operations.status, arguments.status,
               {"machine": None, "host": [], "tag": [], "all": False, "flake": ".", "inventory": "hosts.yaml", "json": False},
               nix_options=True),
    local_step("exec", doc("Run one command on the selected hosts, in parallel, each line prefixed with its host; exits with their common code, else 1.",
                           "inv exec --on @web -- systemctl is-active nginx", "inv exec --all 'df -h /nix | tail -1'",
                           "inv exec bigmachine --json -- cat /etc/machine-id",
                           more="The words after `--` run exactly as given; a COMMAND runs as `sh -c COMMAND`. sudo as the host's deploys use it."),
               operations.exec_on_hosts, arguments.exec_on_hosts, {**SELECTION, "command": None, "parallel": "10", "json": False},
               positional=("machine", "command"), usage="[MACHINE] (COMMAND | -- ARGV...)"),
    local_step("plan", doc("What a deploy would do on each host (paths to copy, boot default, running system, units, reboot); changes nothing.",
                           "inv plan --all", "inv plan --on @web --action boot --json", "inv plan bigmachine -- --show-trace"),
               operations.plan, arguments.plan,
               {**{key: value for key, value in SELECTION.items() if key != "dry_run"}, "action": "switch", "parallel": "10", "json": False},
               nix_options=True),
    local_step("history", doc("The local journal of deploys and rollbacks.", "inv history", "inv history bigmachine --json"),
               operations.history, arguments.history, {"machine": None, "host": [], "json": False, "flake": "."}),
    local_step("keys", doc("Upload the hosts' keys (hosts.yaml `keys`: secrets kept out of the Nix store) and nothing else.",
                           "inv keys bigmachine", "inv keys --tag web", "inv keys --all --dry-run",
                           more="Each key is read here (its file, or its command's output) before anything changes on a host, "
                                "and written there over SSH on stdin, atomically, with its owner and mode; never in argv or a log."),
               cli.run_keys, arguments.keys,
               {**SELECTION, "parallel": "10", "fail_fast": False, "keep_going": False, "json": False, "log_dir": "", "sudo": False}),
    local_step("hosts", doc("Every host nixfab knows: from systems/, hosts.yaml or both, with mismatches flagged.", "inv hosts", "inv hosts --json"),
               operations.hosts, arguments.hosts, {"flake": ".", "inventory": "hosts.yaml", "json": False}, usage=""),
]

HOME_TASKS = [
    local_step("build", doc("Build a Home Manager configuration here (homeConfigurations.\"user@host\").", "inv hm.build alice@bigmachine"),
               operations.hm_build, arguments.home, {**ONE_HOST, "user": ""}, nix_options=True),
    local_step("switch", doc("Build and activate a Home Manager configuration on this machine.", "inv hm.switch", "inv hm.switch --user alice"),
               operations.hm_switch, arguments.home, {"user": "", "flake": ".", "dry_run": False}, usage="", nix_options=True),
    local_step("push", doc("Build here, copy, and activate a Home Manager configuration on the target.", "inv hm.push alice@bigmachine"),
               operations.hm_push, arguments.home, {**ONE_HOST, "user": ""}, nix_options=True),
    local_step("pull", doc("Build and activate a Home Manager configuration on the target itself.", "inv hm.pull alice@bigmachine"),
               operations.hm_pull, arguments.home, {**ONE_HOST, "user": ""}, nix_options=True),
]


def namespace() -> Collection:
    root = Collection()
    for each in [*DEPLOY_TASKS, *OPERATION_TASKS]:
        root.add_task(each)
    home = Collection("hm")
    for each in HOME_TASKS:
        home.add_task(each)
    root.add_collection(home)
    return root


def refuse_dry(c: Context, name: str) -> None:
    """Invoke's --dry promises that nothing runs; a lab task cannot keep that promise, so it refuses."""
    if c.config.run.dry:
        from invoke.exceptions import Exit

        raise Exit(f"nixfab: error: {name} has no dry run (Invoke's --dry); nothing was done", code=2)


@task(help={"hosts": "comma-separated names", "reboot-delay": "seconds a simulated reboot takes"})
def lab_up(c: Context, hosts: str = "alpha,beta,gamma", reboot_delay: float = 1.0) -> None:
    """Start simulated NixOS hosts on 127.0.0.1 (see README: The lab); refuses while a lab runs.

    Examples:
      inv lab.up
      inv lab.up --hosts alpha,beta
    """
    from deploy.lab import cli as lab_cli

    refuse_dry(c, "lab.up")
    with cli.errors_as_exit_codes():
        lab_cli.up([h for h in hosts.split(",") if h], reboot_delay=float(reboot_delay))


@task
def lab_status(c: Context) -> None:
    """Show each simulated host: its process, boot id, generations and running system.

    Examples:
      inv lab.status
    """
    from deploy.lab import cli as lab_cli

    with cli.errors_as_exit_codes():
        lab_cli.status()


@task
def lab_down(c: Context) -> None:
    """Stop every simulated host (by pid) and everything running in it.

    Examples:
      inv lab.down
    """
    from deploy.lab import cli as lab_cli

    refuse_dry(c, "lab.down")
    with cli.errors_as_exit_codes():
        lab_cli.down()


@task
def demo(c: Context) -> None:
    """Start three simulated hosts, deploy to them as a fleet, and show what happened.

    Examples:
      inv demo
    """
    from deploy.lab import cli as lab_cli

    refuse_dry(c, "demo")
    with cli.errors_as_exit_codes():
        lab_cli.demo()


for each_lab_task in (lab_up, lab_status, lab_down, demo):
    # What --help shows (deploy/cli/help.py); setattr, since invoke.task() is annotated as returning a plain Callable.
    setattr(each_lab_task, "usage", "")  # noqa: B010
    setattr(each_lab_task, "metavars", METAVARS)  # noqa: B010

lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_status, "status")  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task
lab.add_task(lab_down, "down")  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task

ns = namespace()
ns.add_collection(lab)
ns.add_task(demo)  # type: ignore[arg-type]  # invoke.task() is annotated "-> Callable" but returns a Task
