"""Every task family's options, typed: frozen dataclasses that handlers get instead of a dict.

deploy/cli/arguments.py builds them, once, from Invoke's keyword arguments, and
does every conversion and check on the way; nothing changes them after that.
A dataclass costs a few hundred microseconds to create, so this module is
imported when a task runs, never by tasks.py itself (cli.py and operations.py
name these types for mypy only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.model import Action

DEFAULT_PARALLEL = 10  # colmena's default too: enough for a homelab at once, gentle on a small machine


@dataclass(frozen=True)
class Selection:
    """Which hosts: the positional MACHINE, --host (a,b, globs; repeatable), --tag, --all; none of them: this machine."""

    machine: str | None
    hosts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    everything: bool = False
    flake: str = "."  # a reference (arguments.flake_reference): a local directory is absolute
    inventory: str = "hosts.yaml"


@dataclass(frozen=True)
class OneHostOptions:
    """A task on one host: --host NAME or the positional MACHINE; neither means this machine (or `fab -H`'s)."""

    machine: str | None
    flake: str
    inventory: str
    dry_run: bool = False


@dataclass(frozen=True)
class FleetOptions:
    """How the fleet runs; log_dir None is .nixfab/logs/<run>/, and the CLI decides `live` when it starts."""

    parallel: int = DEFAULT_PARALLEL
    fail_fast: bool = False
    canary: bool = False
    batch: int | None = None
    log_dir: Path | None = None
    live: bool = False
    log_keep: int = 20  # runs whose logs are kept under .nixfab/logs/ (deploy.ui.log.prune_runs); 0: all


@dataclass(frozen=True)
class DeployOptions:
    """Every deploy task (build … switch-push-reset): the hosts, how the fleet runs, and what each deploy does."""

    selection: Selection
    dry_run: bool
    fleet: FleetOptions
    as_json: bool
    check: bool | None  # --check True, --skip-checks False, neither None (hosts.yaml's `check`, default off)
    action: Action | None  # None builds only
    build_on: str | None  # None: what hosts.yaml says
    local: bool  # the task fixes the target to this machine (`switch`)
    out_link: Path | None
    diff_only: bool
    reboot: bool
    collect_garbage: bool
    delete_older_than: str | None
    reboot_timeout: float
    substitute_on_destination: bool
    force: bool
    magic_rollback: bool
    confirm_timeout: float
    health_checks: bool
    show_diff: bool
    ask: bool
    sudo: bool = False  # --sudo/--use-remote-sudo: sudo on every selected host, whatever hosts.yaml says
    show_trace: bool = False  # --show-trace: one more extra Nix option


@dataclass(frozen=True)
class KeysOptions:
    """`keys`: the hosts' keys from hosts.yaml, uploaded alone (a fleet run: no check, no build, no activation)."""

    selection: Selection
    dry_run: bool
    fleet: FleetOptions
    as_json: bool
    sudo: bool = False  # --sudo/--use-remote-sudo, as for the deploys


@dataclass(frozen=True)
class ResetOptions:
    target: OneHostOptions
    delete_older_than: str
    reboot_timeout: float


@dataclass(frozen=True)
class SshWaitOptions:
    target: OneHostOptions
    command: str | None  # None: only wait
    timeout: float
    interval: float


@dataclass(frozen=True)
class GenerationsOptions:
    target: OneHostOptions
    as_json: bool


@dataclass(frozen=True)
class SwitchGenerationOptions:
    target: OneHostOptions
    generation: int


@dataclass(frozen=True)
class FlakeOptions:
    """check and update: a flake on this machine."""

    flake: str
    dry_run: bool
    inputs: tuple[str, ...] = ()  # update's --input values (a,b; repeatable); none: every input
    show_trace: bool = False


@dataclass(frozen=True)
class StatusOptions:
    selection: Selection
    as_json: bool


@dataclass(frozen=True)
class ExecOptions:
    """inv exec: the selection's words as given, since MACHINE may be the command (`inv exec --all 'uptime'`) unless one follows `--`."""

    machine: str | None
    hosts: tuple[str, ...]
    tags: tuple[str, ...]
    everything: bool
    flake: str
    inventory: str
    command: str | None  # one shell string; the argv after `--` is read when the task runs
    dry_run: bool
    parallel: int
    as_json: bool


@dataclass(frozen=True)
class PlanOptions:
    """inv plan: the hosts, and the deploy (--action) whose effect it shows."""

    selection: Selection
    action: Action
    parallel: int
    as_json: bool


@dataclass(frozen=True)
class HistoryOptions:
    hosts: tuple[str, ...]  # none: every host
    flake: str
    as_json: bool


@dataclass(frozen=True)
class HostsOptions:
    flake: str
    inventory: str
    as_json: bool


@dataclass(frozen=True)
class HomeOptions:
    """hm.*: a Home Manager configuration; hm.switch names no machine (it is this one) and reads no inventory."""

    target: OneHostOptions
    user: str | None  # None: the target's login user
