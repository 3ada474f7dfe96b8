"""One host's deploy, from its build to garbage collection.

The steps live in their own modules (build, closure, activation,
magic_rollback, health, reboot, gc); this module decides which of them a
request needs, where they run, and that every temporary GC root and the
host's lock are released however the deploy ends. fleet.py runs it for many
hosts at once.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.activate.activation import Activation, SystemState, activate, system_state, undo
from deploy.build.build import build_remotely, evaluate
from deploy.config.inventory import HostSpec, Inventory, SshTarget
from deploy.copy.closure import copy_closure
from deploy.errors import ActivationFailed, ActivationUnknown, HealthCheckFailed, NixfabError, NotConfirmed, UsageError
from deploy.gc.gc import collect_garbage
from deploy.model import Action, Phase, Result
from deploy.nix import commands
from deploy.reboot.reboot import reboot_and_wait
from deploy.transport.hosts import Host, LocalHost
from deploy.transport.openssh import SshResolver
from deploy.transport.process import LocalRunner
from deploy.transport.remote import RemoteHost, SudoPassword
from deploy.ui import Emitter

if TYPE_CHECKING:
    from deploy.confirm.magic_rollback import Watchdog


@dataclass(frozen=True)
class DeployRequest:
    flake: str
    action: Action | None  # None builds only
    build_on: str | None = None  # overrides hosts.yaml: local, target, or a builder's name
    local: bool = False  # the target is this machine (`switch`, or no --host)
    reboot: bool = False
    collect_garbage: bool = False
    delete_older_than: str | None = None
    substitute_on_destination: bool = False
    extra_nix: tuple[str, ...] = ()
    out_link: Path | None = None  # `build` leaves ./result, as nixos-rebuild build does
    reboot_timeout: float = 300.0
    reboot_interval: float = 2.0
    force: bool = False  # activate even when the host already runs this system
    magic_rollback: bool = True
    confirm_timeout: float = 30.0
    health_checks: bool = True
    show_diff: bool = False
    ask: bool = False
    lock: bool = True
    diff_only: bool = False  # `diff`: build, copy and show the difference; activate nothing
    revision: str | None = None  # the flake's git revision, recorded on the target per generation
    dirty: bool | None = None

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        if self.action is not None:
            object.__setattr__(self, "action", Action(self.action))


@dataclass(frozen=True)
class Built:
    """A system ready to deploy: where it is, and what to release afterwards."""

    path: str
    built_on: str  # "local", "target" or a builder's name
    source_store: str | None = None  # a builder's store the closure is copied from


@dataclass(frozen=True)
class DeployOutcome:
    host: str
    path: str
    built_on: str
    status: Result  # ok, built, up-to-date or diffed: a deploy that fails raises instead
    copied: bool = False
    generation: int | None = None
    boot_id: str | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "status", Result(self.status))


@dataclass
class HostRun:
    """One host's part of a run: its spec, its output, its phases."""

    spec: HostSpec
    echo: Emitter
    runner: LocalRunner
    on_phase: Callable[[Phase], None] = lambda phase: None
    ask_lock: threading.Lock | None = None  # questions to the user, one host at a time
    warnings: list[str] = field(default_factory=list)
    path: str | None = None  # what is known so far, for the journal of a deploy that fails later: the system built
    generation: int | None = None  # and the generation it activated

    def phase(self, phase: Phase) -> None:
        self.on_phase(phase)

    def note(self, message: str) -> None:
        self.echo.note(f"==> {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.echo.warning(message)


@dataclass
class Session:
    """What one run shares between hosts: the inventory, dry-run, the sudo password, connections."""

    inventory: Inventory
    echo: Emitter = field(default_factory=Emitter)
    dry_run: bool = False
    sudo_password: SudoPassword = field(default_factory=SudoPassword)
    ssh_resolver: SshResolver = field(default_factory=SshResolver)  # `ssh -G` once per destination per run
    _remotes: dict[tuple[str, int | None], RemoteHost] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.runner = LocalRunner(self.echo, dry_run=self.dry_run)

    def new_remote(self, label: str, ssh: SshTarget, *, use_sudo: bool, echo: Emitter | None = None) -> RemoteHost:
        return RemoteHost(
            label,
            ssh.destination(),
            port=ssh.port,
            ssh_config=self.inventory.ssh_config,
            echo=echo or self.echo,
            dry_run=self.dry_run,
            use_sudo=use_sudo,
            sudo_password=self.sudo_password,
            resolver=self.ssh_resolver,
        )

    def remote(self, label: str, ssh: SshTarget, *, use_sudo: bool, echo: Emitter | None = None) -> RemoteHost:
        """The connection to a host or builder, opened once per run and shared."""
        key = (ssh.destination(), ssh.port)
        with self._lock:
            if key not in self._remotes:
                self._remotes[key] = self.new_remote(label, ssh, use_sudo=use_sudo, echo=echo)
            return self._remotes[key]

    def target(self, spec: HostSpec, echo: Emitter | None = None) -> RemoteHost:
        return self.remote(spec.name, spec.ssh, use_sudo=spec.sudo, echo=echo)

    def fresh_target(self, spec: HostSpec, echo: Emitter | None = None) -> RemoteHost:
        """A new connection, never shared: magic rollback's proof that SSH still works."""
        return self.new_remote(spec.name, spec.ssh, use_sudo=spec.sudo, echo=echo)

    def ssh_of(self, name: str) -> SshTarget:
        """A host's or a builder's SSH target, by name."""
        if name in self.inventory.hosts:
            return self.inventory.hosts[name].ssh
        return self.inventory.builder_target(name)

    def builder(self, name: str) -> RemoteHost:
        if name in self.inventory.hosts:
            return self.target(self.inventory.hosts[name])
        return self.remote(name, self.ssh_of(name), use_sudo=False)

    def nix_env(self, *targets: SshTarget) -> dict[str, str]:
        ports = {t.port for t in targets if t.port}
        if len(ports) > 1:
            raise UsageError(
                f"{' and '.join(t.destination() for t in targets)} use different SSH ports; "
                "one nix copy cannot reach both: name them as Host aliases in the inventory's ssh_config"
            )
        return {"NIX_SSHOPTS": commands.nix_sshopts(self.inventory.ssh_config, ports.pop() if ports else None)}

    def release(self, destination: str, port: int | None) -> None:
        """Close the shared connection to destination:port, if one is open (a fleet host is done with it)."""
        with self._lock:
            remote = self._remotes.pop((destination, port), None)
        if remote is not None:
            remote.close()

    def close(self) -> None:
        with self._lock:
            remotes = list(self._remotes.values())
        for remote in remotes:
            remote.close()


def build_location(request: DeployRequest, spec: HostSpec) -> str:
    if request.local:
        return "local"
    build_on = request.build_on or spec.build_on
    return "target" if build_on == spec.name else build_on


def target_of(session: Session, request: DeployRequest, run: HostRun) -> Host:
    return LocalHost(run.runner, label=run.spec.name) if request.local else session.target(run.spec, run.echo)


@contextmanager
def remote_gc_root(builder: Host, root_dir: str | None) -> Iterator[None]:
    try:
        yield
    finally:
        if root_dir is not None:
            try:
                builder.run(commands.remove_tree(root_dir))
            except NixfabError:
                pass  # a host that went away keeps a stale temporary root; harmless


def deploy_host(session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
    """Everything after the local build for one host: remote build, copy, activate, confirm, check, reboot, GC."""
    spec = run.spec
    build_on = build_location(request, spec)
    target = target_of(session, request, run)
    if build_on == "local":
        assert built_here is not None
        with host_lock(request, target):
            return finish(session, request, run, target, Built(built_here, "local"))
    run.phase(Phase.BUILD)
    builder: RemoteHost = session.target(spec, run.echo) if build_on == "target" else session.builder(build_on)
    run.note(f"{spec.name}: building {spec.attr} on {builder.label}")
    evaluation = evaluate(run.runner, request.flake, spec.attr, request.extra_nix)
    builder_ssh = spec.ssh if build_on == "target" else session.ssh_of(build_on)
    remote = build_remotely(
        run.runner, builder, commands.ssh_store_uri(builder.destination), evaluation,
        nix_env=session.nix_env(builder_ssh), extra=request.extra_nix,
    )
    with remote_gc_root(builder, remote.gc_root_dir), host_lock(request, target):
        source_store = commands.ssh_store_uri(builder.destination) if builder is not target else None
        return finish(session, request, run, target, Built(remote.out_path, build_on, source_store))


# How long a deploy waits for an earlier deploy's watchdog to decide (it first lets a still running switch end).
LEFTOVER_WATCHDOG_WAIT_SECONDS = 300.0


@contextmanager
def host_lock(request: DeployRequest, target: Host) -> Iterator[None]:
    if request.action is None or not request.lock or isinstance(target, LocalHost):
        yield
        return
    from deploy.engine.lock import acquire

    lock = acquire(target, request.action)
    target_echo = getattr(target, "echo", None)

    def note(message: str) -> None:
        if target_echo is not None:
            target_echo.note(f"==> {message}")

    if lock.cleared_stale:
        note(f"{target.label}: cleared a stale deploy lock left by {lock.cleared_stale}")
    try:
        if lock.pending_watchdogs:
            from deploy.confirm import magic_rollback

            # Nobody can confirm them any more: their deployer would hold the lock. Let them decide before anything changes.
            magic_rollback.settle_leftovers(target, lock.pending_watchdogs, timeout=LEFTOVER_WATCHDOG_WAIT_SECONDS, note=note)
        yield
    finally:
        lock.release()


def up_to_date(request: DeployRequest, target: Host, path: str) -> SystemState | None:
    """The host's state when it already has this system where the action would put it, else None."""
    state = system_state(target)
    action = request.action
    if action is None or not action.changes_system:
        return None  # dry-activate is never "already done"
    profile_matches = state.generation_path == path or not action.changes_boot_default
    running_matches = state.running == path or not action.changes_running_system
    return state if profile_matches and running_matches else None


def finish(session: Session, request: DeployRequest, run: HostRun, target: Host, built: Built) -> DeployOutcome:
    spec, path = run.spec, built.path
    run.path = path
    if request.action is None:
        run.note(f"{spec.name}: built {path}")
        return DeployOutcome(spec.name, path, built.built_on, Result.BUILT)

    current = None if request.force or request.diff_only or target.dry_run else up_to_date(request, target, path)
    if current is not None:
        run.note(f"{spec.name}: up to date (already {request.action} {path}); nothing copied or activated (--force to redo)")
        return DeployOutcome(spec.name, path, built.built_on, Result.UP_TO_DATE, generation=current.generation, warnings=tuple(run.warnings))

    copied = False
    if not request.local and built.built_on != "target":
        run.phase(Phase.COPY)
        check_space(run, target, path, action=request.action)
        run.note(f"{spec.name}: copying the closure")
        sources = [spec.ssh] + ([session.ssh_of(built.built_on)] if built.source_store else [])
        try:
            copied = copy_closure(
                run.runner, path, target=target, target_store=commands.ssh_store_uri(spec.ssh.destination()),
                source_store=built.source_store, substitute_on_destination=request.substitute_on_destination,
                nix_env=session.nix_env(*sources), extra=request.extra_nix,
            )
        except NixfabError as error:
            from deploy.plan.disk import raise_if_disk_full

            raise_if_disk_full(spec.name, str(error))
            raise

    if request.show_diff or request.ask or request.diff_only:
        run.phase(Phase.DIFF)
        show_diff_and_ask(run, target, path, ask=request.ask)
    if request.diff_only:
        return DeployOutcome(spec.name, path, built.built_on, Result.DIFFED, copied, warnings=tuple(run.warnings))

    run.phase(Phase.ACTIVATE)
    run.note(f"{spec.name}: activating ({request.action})")
    activation = activate_with_rollback(session, request, run, target, path)
    run.generation = activation.generation
    record_revision(request, target, activation)

    boot_id = None
    if request.reboot:
        run.phase(Phase.REBOOT)
        run.note(f"{spec.name}: rebooting and waiting for it to come back")
        boot_id = reboot_and_wait(target, expected_system=path, timeout=request.reboot_timeout, interval=request.reboot_interval)
    if request.collect_garbage:
        run.phase(Phase.GC)
        run.note(f"{spec.name}: collecting garbage")
        collect_garbage(target, request.delete_older_than)
    generation = "a new generation" if activation.generation is None else f"generation {activation.generation}"
    run.note(f"{spec.name}: done: {generation} is {path}")
    return DeployOutcome(spec.name, path, built.built_on, Result.OK, copied, activation.generation, boot_id, tuple(run.warnings))


def check_space(run: HostRun, target: Host, path: str, *, action: Action) -> None:
    from deploy.plan.disk import check_free_space, closure_size

    paths = ["/nix"] + (["/boot"] if action.changes_boot_default else [])
    for warning in check_free_space(target, paths, run.spec.name, closure_size(run.runner, path)):
        run.warn(warning)


def show_diff_and_ask(run: HostRun, target: Host, path: str, *, ask: bool) -> None:
    from deploy.plan.diff import closure_diff, confirm, format_diff

    with run.ask_lock or threading.Lock():
        difference = closure_diff(target, path)
        for line in format_diff(run.spec.name, difference).splitlines():
            run.echo.note(line)
        if ask and not confirm(f"{run.spec.name}: activate {path}?"):
            raise UsageError(f"{run.spec.name}: not activated: the answer was no")


def health_budget(request: DeployRequest, spec: HostSpec) -> float:
    """The longest the health checks may take: the watchdog's window grows by this much."""
    if not request.health_checks or spec.health is None:
        return 0.0
    check = spec.health
    return (check.retries + 1) * (check.timeout + 5.0) + check.retries * check.interval


def check_health(request: DeployRequest, run: HostRun, target: Host, activation: Activation, before_undo: Callable[[], None] | None = None) -> None:
    """The new system's health checks; on failure the host is put back (HealthCheckFailed)."""
    spec = run.spec
    if not (request.health_checks and spec.health is not None and activation.action.changes_running_system):
        return
    run.phase(Phase.HEALTH)
    from deploy.health.health import run_health_check

    problem = run_health_check(target, spec.health)
    if problem is not None:
        if before_undo is not None:
            before_undo()
        undone = undo(target, activation)
        raise HealthCheckFailed(f"{spec.name}: health check failed: {problem}; {undone}")


def activate_with_rollback(session: Session, request: DeployRequest, run: HostRun, target: Host, path: str) -> Activation:
    """activate() and the health checks, guarded by the magic-rollback watchdog when the action changes what runs.

    The activation protocol (README, "The activation protocol"): probe; arm
    the watchdog (it knows the system it guards and what to restore); set the
    profile; switch in the run's own unit; on a lost channel ask the host how
    the switch ended; health checks; confirm over a new connection. Whoever
    claims the verdict first decides: the deployer's undo, its confirmation
    or the watchdog.
    """
    assert request.action is not None
    guarded = request.magic_rollback and request.action.changes_running_system and isinstance(target, RemoteHost)
    if not guarded:
        activation = activate(target, path, request.action)
        check_health(request, run, target, activation)
        return activation
    from deploy.confirm import magic_rollback

    watchdog = magic_rollback.new_watchdog(request.confirm_timeout, health_budget(request, run.spec))

    def arm(prepared: Activation) -> None:
        magic_rollback.arm(target, watchdog, prepared)

    def open_fresh() -> Host:
        return session.fresh_target(run.spec, run.echo)

    disarm = functools.partial(magic_rollback.disarm, target, watchdog)
    try:
        activation = activate(
            target, path, request.action, before_switch=arm, wrap=lambda argv: magic_rollback.mark_activated(watchdog, argv),
            before_undo=disarm, token=watchdog.token,
        )
    except ActivationUnknown as unknown:
        lost: Activation = unknown.activation  # type: ignore[attr-defined]
        activation = settle_lost_switch(run, request, target, open_fresh, watchdog, lost)
    check_health(request, run, target, activation, before_undo=disarm)
    run.phase(Phase.CONFIRM)
    try:
        magic_rollback.confirm(open_fresh, watchdog, label=run.spec.name)
    except NotConfirmed as missed:
        raise self_rollback(run, open_fresh, watchdog, request, missed) from None
    run.note(f"{run.spec.name}: confirmed over a new SSH connection")
    return activation


def settle_lost_switch(
    run: HostRun, request: DeployRequest, target: Host, open_fresh: Callable[[], Host], watchdog: Watchdog, lost: Activation
) -> Activation:
    """The channel closed during the switch: ask the host, over new connections, how it ended, then decide.

    Succeeded: go on (health checks, confirmation). Failed: claim the verdict
    and undo. No new connection works: NotConfirmed, after waiting for the
    watchdog's rollback. Still running at the deadline, or no record of it:
    raise ActivationUnknown and leave the armed watchdog to put back what it
    guards.
    The deploy's own connection is dropped and opened again when next used.
    """
    from deploy.activate.activation import lost_activation, parse_generation, read_link
    from deploy.confirm import magic_rollback

    name = run.spec.name
    run.note(f"{name}: lost the connection during activation; asking the host over a new one how the switch ended")
    target.close()
    answer = magic_rollback.activation_status(open_fresh, watchdog, timeout=request.confirm_timeout)
    if answer.startswith("unreachable: "):
        # No new connection works: the case magic rollback exists for. The watchdog decides; wait for its verdict.
        missed = NotConfirmed(
            f"{name}: not confirmed within {watchdog.confirm_timeout}s after the connection dropped during activation "
            f"({answer.removeprefix('unreachable: ')})"
        )
        raise self_rollback(run, open_fresh, watchdog, request, missed)
    if not answer.startswith("finished"):
        where = {"running": "it is still running", "unknown": "the host has no record of how it ended"}.get(answer, answer)
        guarded = (
            f"; the rollback watchdog {watchdog.token} puts back what it guards unless confirmed "
            f"(its verdict: {magic_rollback.VERDICTS_DIR}/{watchdog.token}; the switch's record: {watchdog.activated_marker})"
        )
        raise lost_activation(name, lost, where, guarded=guarded)
    status = answer.split()[-1]
    activation = lost
    if lost.action.changes_boot_default:
        activation = dataclasses.replace(lost, generation=parse_generation(read_link(target, commands.SYSTEM_PROFILE) or ""))
    if status == "0":
        run.note(f"{name}: the switch finished (exit 0) while we were away")
        return activation
    magic_rollback.disarm(target, watchdog)
    undone = undo(target, activation)
    raise ActivationFailed(f"{name}: switch-to-configuration {lost.action} failed (exit {status}) after the connection dropped; {undone}")


def self_rollback(run: HostRun, open_fresh: Callable[[], Host], watchdog: Watchdog, request: DeployRequest, missed: NotConfirmed) -> NotConfirmed:
    from deploy.confirm import magic_rollback

    run.note(f"{run.spec.name}: no confirmation; waiting for the host to roll itself back")
    running = magic_rollback.await_self_rollback(open_fresh, watchdog, timeout=watchdog.confirm_timeout + watchdog.health_seconds + 60)
    if running is None:
        return NotConfirmed(f"{missed}; the host should have rolled itself back, but nixfab could not verify it")
    return NotConfirmed(f"{missed}; the host rolled itself back and runs {running} again")


def record_revision(request: DeployRequest, target: Host, activation: Activation) -> None:
    """Leave the flake's revision next to the generation, for `generations` to show."""
    if activation.generation is None or not activation.action.changes_boot_default or request.revision is None:
        return
    from deploy.record.history import deployed_by, revision_payload, revision_record_argv

    payload = revision_payload(request.revision, request.dirty, by=deployed_by())
    target.run(revision_record_argv(activation.generation, payload), sudo=True)


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 3)
