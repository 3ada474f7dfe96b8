"""From Invoke's keyword arguments to typed options (deploy/cli/options.py): one function per task family.

tasks.py declares each task's options (name → default) and pairs one of
these functions with the handler that gets what it returns (cli.Step, which
mypy checks). Each function takes exactly the keyword arguments its tasks
declare, never `**kwargs`, and does every conversion and check there is
(seconds, counts, --action, --delete-older-than, a generation number), so a
bad value is refused in one line before any work starts. An option that a
task declares and its function does not take is a TypeError, which
tests/test_model.py looks for in every task.

tasks.py imports this on every TAB: the standard library, deploy.model and
deploy.errors only; the dataclasses of deploy.cli.options load when a task runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from deploy.errors import UsageError
from deploy.model import Action

if TYPE_CHECKING:
    from deploy.cli.options import (
        DeployOptions,
        ExecOptions,
        FlakeOptions,
        FleetOptions,
        GenerationsOptions,
        HistoryOptions,
        HomeOptions,
        HostsOptions,
        KeysOptions,
        OneHostOptions,
        PlanOptions,
        ResetOptions,
        Selection,
        SshWaitOptions,
        StatusOptions,
        SwitchGenerationOptions,
    )


# --- conversions and checks: each says which option was wrong, in one line -------------------------


def seconds(option: str, value: str | float) -> float:
    """Invoke would turn a bad number into a traceback; this says which option was wrong."""
    try:
        parsed = float(value)
    except ValueError:
        raise UsageError(f"{option} takes a number of seconds, not {value!r}") from None
    if parsed <= 0:
        raise UsageError(f"{option} must be more than 0 seconds, not {value!r}")
    return parsed


def count(option: str, value: str | int) -> int:
    try:
        parsed = int(str(value))
    except ValueError:
        raise UsageError(f"{option} takes a whole number, not {value!r}") from None
    if parsed < 1:
        raise UsageError(f"{option} must be at least 1, not {value!r}")
    return parsed


def kept_runs(value: str | int) -> int:
    """--log-keep: how many runs' logs are kept; 0 keeps every one."""
    try:
        parsed = int(str(value))
    except ValueError:
        raise UsageError(f"--log-keep takes a whole number, not {value!r}") from None
    if parsed < 0:
        raise UsageError(f"--log-keep must be 0 (keep every run's logs) or more, not {value!r}")
    return parsed


def check_older_than(value: str) -> str:
    """`all` or `<days>d`, the only forms nix-collect-garbage takes; checked before any reboot."""
    if value != "all" and not (value.endswith("d") and value[:-1].isdigit() and value[:-1].isascii()):
        raise UsageError(f"--delete-older-than takes a number of days such as 15d, or all, not {value!r}")
    return value


def flake_check_choice(*, check: bool, skip_checks: bool) -> bool | None:
    """--check forces `nix flake check`, --skip-checks skips it; neither leaves it to hosts.yaml (default: skipped)."""
    if check and skip_checks:
        raise UsageError("--check and --skip-checks contradict each other; give one of them")
    return True if check else False if skip_checks else None


def check_action(action: str) -> Action:
    try:
        return Action(action)
    except ValueError:
        raise UsageError(f"--action must be one of {', '.join(Action)}, not {action!r}") from None


def check_generation(value: str | int | None) -> int:
    text = str(value or "")
    if not (text.isdigit() and text.isascii()):
        raise UsageError(f"switch-generation takes a generation number (see `inv generations`), not {text!r}")
    return int(text)


def flake_reference(flake: str, *, evaluated: bool = True) -> str:
    """A local directory becomes an absolute reference, so ssh and cwd changes cannot confuse it.

    A directory inside a git checkout is a git flake to Nix, which then sees only tracked files: one
    whose flake.nix git does not track (a new directory, or an ignored one like .lab/) would fail
    later with an error about a missing store path; it is refused here, with the two ways out,
    unless Nix does not evaluate it (`evaluated` False: history and hosts only locate files by it).
    """
    if ":" not in flake.split("#", 1)[0] and Path(flake).is_dir():
        if not evaluated:
            return str(Path(flake).absolute())
        from deploy.record.history import untracked_flake_checkout

        untracked_in = untracked_flake_checkout(Path(flake))
        if untracked_in is not None:
            raise UsageError(
                f"--flake {flake}: its flake.nix is not tracked by the git checkout at {untracked_in}, and Nix sees only "
                f"tracked files of a flake in git: `git add {flake}`, or take the directory as it is with --flake path:{flake}"
            )
        return str(Path(flake).absolute())
    return flake




def shifted(machine: str | None, host: str | None, slot: str | int | None) -> str | int | None:
    """With --host, the positional MACHINE slot holds the next positional argument (`inv ssh-wait --host a CMD`)."""
    return machine if host and machine and not slot else slot


# --- hosts -----------------------------------------------------------------------------------------


def selection(
    *, machine: str | None, host: Sequence[str], tag: Sequence[str], all: bool, flake: str, inventory: str  # noqa: A002 - the --all option
) -> Selection:
    from deploy.cli.options import Selection

    # colmena's `--on a,web-*,@tag`: an element that starts with @ is a tag, in --host and MACHINE alike.
    elements = [part.strip() for value in [machine or "", *host] for part in value.split(",")]
    if not any(element.startswith("@") for element in elements):
        return Selection(machine or None, tuple(host), tuple(tag), bool(all), flake_reference(flake), inventory)
    if "@" in elements:
        raise UsageError("@ names a tag (--on @web), and is not a tag by itself")
    names = tuple(element for element in elements if element and not element.startswith("@"))
    tags = (*tag, *(element[1:] for element in elements if element.startswith("@")))
    return Selection(None, names, tags, bool(all), flake_reference(flake), inventory)


def one_host(*, machine: str | None, host: str | None, flake: str, inventory: str, dry_run: bool) -> OneHostOptions:
    """--host NAME wins over the positional MACHINE."""
    from deploy.cli.options import OneHostOptions

    return OneHostOptions(host or machine or None, flake_reference(flake), inventory, bool(dry_run))


# --- deploys -------------------------------------------------------------------------------------


class DeployPreset(NamedTuple):
    """What a deploy task fixes rather than asks: its action, where it builds, what follows activation.

    A NamedTuple, immutable like the options, but cheaper to create than a dataclass at tasks.py's import.
    """

    action: Action | None = Action.SWITCH  # None builds only; a task with an --action option overrides it
    build_on: str | None = None  # local, target; a task with a --build-on option overrides it
    local: bool = False  # the target is this machine (`switch`)
    out_link: Path | None = None
    diff_only: bool = False
    reboot: bool = False
    collect_garbage: bool = False


def fleet_options(
    *,
    parallel: str | int,
    fail_fast: bool,
    keep_going: bool,
    log_dir: str,
    log_keep: str | int = 20,
    canary: bool = False,
    batch: str = "",
) -> FleetOptions:
    """How a fleet run goes, for every task that runs one (deploys, keys)."""
    from deploy.cli.options import FleetOptions

    if fail_fast and keep_going:
        raise UsageError("--fail-fast and --keep-going contradict each other; give one")
    return FleetOptions(
        batch=count("--batch", batch) if batch else None,
        parallel=count("--parallel", parallel),
        fail_fast=bool(fail_fast),
        canary=bool(canary),
        log_dir=Path(log_dir) if log_dir else None,
        log_keep=kept_runs(log_keep),
    )


def deploy(
    preset: DeployPreset,
    *,
    # Every deploy task: the selection, and the fleet.
    machine: str | None,
    host: Sequence[str],
    tag: Sequence[str],
    all: bool,  # noqa: A002 - the --all option
    flake: str,
    inventory: str,
    dry_run: bool,
    parallel: str | int,
    fail_fast: bool,
    keep_going: bool,
    canary: bool,
    batch: str,
    json: bool,
    log_dir: str,
    skip_checks: bool,
    show_trace: bool,
    log_keep: str | int = 20,
    check: bool = False,
    # Tasks that activate.
    force: bool = False,
    magic_rollback: bool = True,
    confirm_timeout: str | float = 30.0,
    health_checks: bool = True,
    diff: bool = False,
    ask: bool = False,
    sudo: bool = False,
    # Some tasks only.
    action: str | None = None,
    build_on: str | None = None,
    substitute_on_destination: bool = False,
    delete_older_than: str | None = None,
    reboot_timeout: str | float = 300.0,
) -> DeployOptions:
    from deploy.cli.options import DeployOptions

    fleet = fleet_options(
        parallel=parallel, fail_fast=fail_fast, keep_going=keep_going, log_dir=log_dir, log_keep=log_keep, canary=canary, batch=batch
    )
    checked_action = check_action(action) if action is not None else preset.action
    older_than = check_older_than(delete_older_than) if delete_older_than else None
    reboot_seconds = seconds("--reboot-timeout", reboot_timeout)
    confirm_seconds = seconds("--confirm-timeout", confirm_timeout)
    return DeployOptions(
        selection=selection(machine=machine, host=host, tag=tag, all=all, flake=flake, inventory=inventory),
        dry_run=bool(dry_run),
        fleet=fleet,
        as_json=bool(json),
        check=flake_check_choice(check=bool(check), skip_checks=bool(skip_checks)),
        action=checked_action,
        build_on=build_on or preset.build_on,
        local=preset.local,
        out_link=preset.out_link,
        diff_only=preset.diff_only,
        reboot=preset.reboot,
        collect_garbage=preset.collect_garbage,
        delete_older_than=older_than,
        reboot_timeout=reboot_seconds,
        substitute_on_destination=bool(substitute_on_destination),
        force=bool(force),
        magic_rollback=bool(magic_rollback),
        confirm_timeout=confirm_seconds,
        health_checks=bool(health_checks),
        show_diff=bool(diff),
        ask=bool(ask),
        sudo=bool(sudo),
        show_trace=bool(show_trace),
    )


def keys(
    *,
    machine: str | None,
    host: Sequence[str],
    tag: Sequence[str],
    all: bool,  # noqa: A002 - the --all option
    flake: str,
    inventory: str,
    dry_run: bool,
    parallel: str | int,
    fail_fast: bool,
    keep_going: bool,
    json: bool,
    log_dir: str,
    sudo: bool,
) -> KeysOptions:
    from deploy.cli.options import KeysOptions

    fleet = fleet_options(parallel=parallel, fail_fast=fail_fast, keep_going=keep_going, log_dir=log_dir)
    return KeysOptions(
        selection=selection(machine=machine, host=host, tag=tag, all=all, flake=flake, inventory=inventory),
        dry_run=bool(dry_run),
        fleet=fleet,
        as_json=bool(json),
        sudo=bool(sudo),
    )


# --- the other tasks (deploy/cli/operations.py) ------------------------------------------------------------


def reset(
    *, machine: str | None, host: str | None, flake: str, inventory: str, dry_run: bool, delete_older_than: str, reboot_timeout: str | float
) -> ResetOptions:
    from deploy.cli.options import ResetOptions

    timeout = seconds("--reboot-timeout", reboot_timeout)
    older_than = check_older_than(delete_older_than)
    return ResetOptions(one_host(machine=machine, host=host, flake=flake, inventory=inventory, dry_run=dry_run), older_than, timeout)


def ssh_wait(
    *, machine: str | None, command: str | None, host: str | None, flake: str, inventory: str, timeout: str | float, interval: str | float
) -> SshWaitOptions:
    from deploy.cli.options import SshWaitOptions

    run = str(shifted(machine, host, command) or "") or None
    timeout_seconds, interval_seconds = seconds("--timeout", timeout), seconds("--interval", interval)
    target = one_host(machine=machine, host=host, flake=flake, inventory=inventory, dry_run=False)
    return SshWaitOptions(target, run, timeout_seconds, interval_seconds)


def generations(*, machine: str | None, host: str | None, flake: str, inventory: str, dry_run: bool, json: bool) -> GenerationsOptions:
    from deploy.cli.options import GenerationsOptions

    return GenerationsOptions(one_host(machine=machine, host=host, flake=flake, inventory=inventory, dry_run=dry_run), bool(json))


def switch_generation(
    *, machine: str | None, host: str | None, flake: str, inventory: str, dry_run: bool, generation: str | int | None
) -> SwitchGenerationOptions:
    from deploy.cli.options import SwitchGenerationOptions

    target = one_host(machine=machine, host=host, flake=flake, inventory=inventory, dry_run=dry_run)
    return SwitchGenerationOptions(target, check_generation(shifted(machine, host, generation)))


def flake_task(
    *, flake: str, dry_run: bool, input: Sequence[str] = (), show_trace: bool = False  # noqa: A002 - the --input option
) -> FlakeOptions:
    """check and update."""
    from deploy.cli.options import FlakeOptions

    return FlakeOptions(flake_reference(flake), bool(dry_run), tuple(input), bool(show_trace))


def status(
    *, machine: str | None, host: Sequence[str], tag: Sequence[str], all: bool, flake: str, inventory: str, json: bool  # noqa: A002 - the --all option
) -> StatusOptions:
    """No MACHINE, --host or --tag means every host here, not this machine."""
    from deploy.cli.options import StatusOptions

    names = (machine,) if machine else ()
    everything = bool(all) or not (names or host or tag)
    return StatusOptions(selection(machine=None, host=[*names, *host], tag=tag, all=everything, flake=flake, inventory=inventory), bool(json))


def exec_on_hosts(
    *,
    machine: str | None,
    host: Sequence[str],
    tag: Sequence[str],
    all: bool,  # noqa: A002 - the --all option
    flake: str,
    inventory: str,
    dry_run: bool,
    command: str | None,
    parallel: str | int,
    json: bool,
) -> ExecOptions:
    from deploy.cli.options import ExecOptions

    return ExecOptions(
        machine or None, tuple(host), tuple(tag), bool(all), flake_reference(flake), inventory, command or None, bool(dry_run),
        count("--parallel", parallel), bool(json),
    )


def exec_selection_and_command(options: ExecOptions, after_dashes: Sequence[str]) -> tuple[Selection, tuple[str, ...]]:
    """The hosts and the argv to run: what follows `--` (exact), else one shell string run as `sh -c STRING`.

    The string is COMMAND, or MACHINE when --host, --tag or --all already name the hosts
    (`inv exec --all 'uptime'`, as `inv ssh-wait --host a CMD`).
    """
    machine, shell = options.machine, options.command
    if after_dashes and shell is not None:
        raise UsageError("give the command once: as the words after `--`, or as one shell string, not both")
    if not after_dashes and shell is None and machine and (options.hosts or options.tags or options.everything):
        machine, shell = None, machine
    if not after_dashes and shell is None:
        raise UsageError("name the command to run: `inv exec HOST -- COMMAND ARGS...` or `inv exec HOST 'SHELL COMMAND'`")
    hosts = selection(
        machine=machine, host=options.hosts, tag=options.tags, all=options.everything, flake=options.flake, inventory=options.inventory
    )
    return hosts, tuple(after_dashes) if after_dashes else ("sh", "-c", str(shell))


def plan(
    *,
    machine: str | None,
    host: Sequence[str],
    tag: Sequence[str],
    all: bool,  # noqa: A002 - the --all option
    flake: str,
    inventory: str,
    action: str,
    parallel: str | int,
    json: bool,
) -> PlanOptions:
    from deploy.cli.options import PlanOptions

    checked = check_action(action)
    if not checked.changes_system:
        raise UsageError(f"--action {action}: a plan shows what switch, boot or test would change")
    return PlanOptions(
        selection(machine=machine, host=host, tag=tag, all=all, flake=flake, inventory=inventory), checked, count("--parallel", parallel), bool(json)
    )


def history(*, machine: str | None, host: Sequence[str], json: bool, flake: str) -> HistoryOptions:
    from deploy.cli.options import HistoryOptions

    return HistoryOptions(tuple(name for name in [machine, *host] if name), flake_reference(flake, evaluated=False), bool(json))


def hosts(*, flake: str, inventory: str, json: bool) -> HostsOptions:
    from deploy.cli.options import HostsOptions

    return HostsOptions(flake_reference(flake, evaluated=False), inventory, bool(json))


def home(
    *, user: str, flake: str, dry_run: bool, machine: str | None = None, host: str | None = None, inventory: str = "hosts.yaml"
) -> HomeOptions:
    """hm.*; hm.switch has no MACHINE, --host or --inventory."""
    from deploy.cli.options import HomeOptions

    return HomeOptions(one_host(machine=machine, host=host, flake=flake, inventory=inventory, dry_run=dry_run), user or None)
