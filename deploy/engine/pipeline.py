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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.activate.activation import (
    SWITCH_RECORDS_DIR,
    SYSTEMD,
    Activation,
    SystemState,
    activate,
    forget_record,
    system_state,
    undo,
)
from deploy.build.build import build_remotely, evaluate
from deploy.config.inventory import HostSpec
from deploy.copy.closure import Closure, closure_of, copy_closure
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.preflight import Answers, Questions
from deploy.engine.request import DeployRequest, build_location
from deploy.engine.session import Session
from deploy.errors import ActivationFailed, ActivationUnknown, HealthCheckFailed, NixfabError, NotConfirmed
from deploy.gc.gc import collect_garbage
from deploy.model import Action, KeyUpload, Phase, Result
from deploy.nix import commands
from deploy.reboot.reboot import reboot_and_wait
from deploy.transport.hosts import Host, LocalHost
from deploy.transport.remote import RemoteHost

if TYPE_CHECKING:
    from deploy.confirm.magic_rollback import Verdict, Watchdog
    from deploy.engine.lock import HostLock
    from deploy.keys.sources import LoadedKey
    from deploy.plan.disk import DiskSpace


@dataclass(frozen=True)
class Built:
    """A system ready to deploy: where it is, and what to release afterwards."""

    path: str
    built_on: str  # "local", "target" or a builder's name
    source_store: str | None = None  # a builder's store the closure is copied from


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
    keys = read_host_keys(request, run)  # first: a key that cannot be read stops the host before anything changes on it
    if request.keys_only:
        return upload_keys_only(session, request, run, keys)
    build_on = build_location(request, spec)
    target = target_of(session, request, run)
    if build_on == "local":
        assert built_here is not None
        built = Built(built_here, "local")
        with host_lock(request, target, run.verdicts_seen, preflight_questions(request, run, target, built, keys)) as lock:
            return finish(session, request, run, target, built, keys, lock)
    run.phase(Phase.BUILD)
    builder: RemoteHost = session.target(spec, run.echo) if build_on == "target" else session.builder(build_on)
    started = time.monotonic()
    evaluation = evaluate(run.runner, request.flake, spec.attr, request.extra_nix)
    builder_ssh = spec.ssh if build_on == "target" else session.ssh_of(build_on)
    remote = build_remotely(
        run.runner, builder, commands.ssh_store_uri(builder.destination), evaluation,
        nix_env=session.nix_env(builder_ssh), extra=request.extra_nix,
    )
    run.step(f"built {spec.attr} on {builder.label}", started)
    source_store = commands.ssh_store_uri(builder.destination) if builder is not target else None
    built = Built(remote.out_path, build_on, source_store)
    questions = preflight_questions(request, run, target, built, keys)
    with remote_gc_root(builder, remote.gc_root_dir), host_lock(request, target, run.verdicts_seen, questions) as lock:
        return finish(session, request, run, target, built, keys, lock)


def preflight_questions(request: DeployRequest, run: HostRun, target: Host, built: Built, keys: Sequence[LoadedKey]) -> Questions | None:
    """What the round trip that takes the lock asks too, so that none of it costs a command of its own."""
    action = request.action
    if action is None or isinstance(target, LocalHost):
        return None
    # A host that already has the system is let go at once, unless the deploy still has something to do there.
    wanted = None if request.force or request.diff_only or keys or not action.changes_system else built.path
    copies = not request.local and built.built_on != "target"
    streams = copies and built.source_store is None and not request.substitute_on_destination and isinstance(target, RemoteHost)
    streams = streams and not target.dry_run
    closure = closure_while_connecting(run, target, built.path) if streams and isinstance(target, RemoteHost) else None
    return Questions(action, wanted, space=space_paths(action) if copies else (), closure=closure.paths if closure else ())


def closure_while_connecting(run: HostRun, target: RemoteHost, path: str) -> Closure:
    """The system's closure and size (a local Nix command, unless the build listed it) while the SSH handshake runs:
    the preflight needs both."""
    import concurrent.futures

    if run.closure is not None:  # the closure of the system built here, which is `path`
        closure = run.closure
        target.connect()
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="closure") as pool:
            asked = pool.submit(closure_of, run.runner, path)
            target.connect()
            closure = asked.result()
    run.closure, run.closure_size = closure, closure.size
    return closure


# How long a deploy waits for an earlier deploy's watchdog to decide (it first lets a still running switch end).
LEFTOVER_WATCHDOG_WAIT_SECONDS = 300.0


@contextmanager
def host_lock(
    request: DeployRequest, target: Host, verdicts_seen: list[Verdict] | None = None, questions: Questions | None = None
) -> Iterator[HostLock | None]:
    """The host's lock, once every watchdog an earlier deploy left behind has decided (their verdicts go to verdicts_seen).

    With questions, the lock carries the host's answers (preflight.Answers); None when no lock is taken.
    """
    if (request.action is None and not request.keys_only) or not request.lock or isinstance(target, LocalHost):
        yield None
        return
    from deploy.engine.lock import acquire

    lock = acquire(target, request.action or "keys", questions)

    def note(message: str) -> None:
        target.echo.note(f"==> {message}")

    if lock.cleared_stale:
        note(f"{target.label}: cleared a stale deploy lock left by {lock.cleared_stale}")
    try:
        if lock.pending_watchdogs:
            from deploy.confirm import magic_rollback

            # Nobody can confirm them any more: their deployer would hold the lock. Let them decide before anything changes.
            seen = magic_rollback.settle_leftovers(target, lock.pending_watchdogs, timeout=LEFTOVER_WATCHDOG_WAIT_SECONDS, note=note)
            if verdicts_seen is not None:
                verdicts_seen.extend(seen)
            if lock.answers is not None:
                lock.answers = dataclasses.replace(lock.answers, state=None)  # a watchdog may have put the system back: ask again
        yield lock
    finally:
        lock.release()


def up_to_date(request: DeployRequest, target: Host, path: str, known: SystemState | None = None) -> SystemState | None:
    """The host's state when it already has this system where the action would put it, else None.

    known: the state the host gave under the deploy's lock, instead of asking again.
    """
    state = known or system_state(target)
    action = request.action
    if action is None or not action.changes_system:
        return None  # dry-activate is never "already done"
    profile_matches = state.generation_path == path or not action.changes_boot_default
    running_matches = state.running == path or not action.changes_running_system
    return state if profile_matches and running_matches else None


def what_it_already_does(action: Action) -> str:
    """What up_to_date found true of the host, in words: `runs and boots`, `boots` or `runs` the system."""
    said = [word for word, holds in (("runs", action.changes_running_system), ("boots", action.changes_boot_default)) if holds]
    return " and ".join(said)


def finish(
    session: Session, request: DeployRequest, run: HostRun, target: Host, built: Built, keys: Sequence[LoadedKey] = (),
    lock: HostLock | None = None,
) -> DeployOutcome:
    """Copy, activate, confirm, reboot, collect garbage: under `lock`, whose answers spare asking the host again."""
    spec, path = run.spec, built.path
    answers = lock.answers if lock is not None and lock.answers is not None else Answers(None)  # nothing known: each is asked
    if answers.systemd is not None:
        target.facts[SYSTEMD] = answers.systemd
    run.path = path
    if request.action is None:
        if target.dry_run:
            run.note(f"{spec.name}: planned: build {path}")
            return DeployOutcome(spec.name, path, built.built_on, Result.PLANNED)
        run.note(f"{spec.name}: built {path}")
        return DeployOutcome(spec.name, path, built.built_on, Result.BUILT)

    if answers.current:
        current = answers.state  # the host said so, and let go of the lock in the same round trip
    else:
        current = None if request.force or request.diff_only or target.dry_run else up_to_date(request, target, path, answers.state)
    if current is not None:
        run.note(f"{spec.name}: up to date (already {what_it_already_does(request.action)} {path}); nothing copied or activated (--force to redo)")
        # Keys are not part of the system: a deploy leaves them current even when the system already is.
        upload_host_keys(run, target, keys, KeyUpload.PRE_ACTIVATION)
        upload_host_keys(run, target, keys, KeyUpload.POST_ACTIVATION)
        return DeployOutcome(spec.name, path, built.built_on, Result.UP_TO_DATE, generation=current.generation, warnings=tuple(run.warnings))

    copied = False
    if not request.local and built.built_on != "target":
        run.phase(Phase.COPY)
        check_space(run, target, path, action=request.action, spaces=answers.spaces)
        sources = [spec.ssh] + ([session.ssh_of(built.built_on)] if built.source_store else [])
        try:
            copied = copy_closure(
                run.runner, path, target=target, target_store=commands.ssh_store_uri(spec.ssh.destination()),
                source_store=built.source_store, substitute_on_destination=request.substitute_on_destination,
                nix_env=session.nix_env(*sources), extra=request.extra_nix, missing=answers.missing, closure=run.closure,
            )
        except NixfabError as error:
            from deploy.plan.disk import raise_if_disk_full

            raise_if_disk_full(spec.name, str(error))
            raise

    if request.diff_only:
        run.phase(Phase.DIFF)
        if target.dry_run:
            closure_diff_text(run, target, path)
            run.note(f"{spec.name}: planned: diff {path}; nothing was run")
            return DeployOutcome(spec.name, path, built.built_on, Result.PLANNED, copied, warnings=tuple(run.warnings))
        # The task's result: the CLI prints it on stdout; the host's log keeps it too.
        return DeployOutcome(
            spec.name, path, built.built_on, Result.DIFFED, copied, warnings=tuple(run.warnings), diff=closure_diff_text(run, target, path)
        )
    if request.show_diff or request.ask:
        run.phase(Phase.DIFF)
        if not show_diff_and_ask(run, target, path, ask=request.ask):
            run.note(f"{spec.name}: skipped: not activated, as answered")
            return DeployOutcome(spec.name, path, built.built_on, Result.SKIPPED, copied, warnings=tuple(run.warnings))

    upload_host_keys(run, target, keys, KeyUpload.PRE_ACTIVATION)
    run.phase(Phase.ACTIVATE)
    last_on_the_host = not (request.reboot or request.collect_garbage or any(key.spec.upload == KeyUpload.POST_ACTIVATION for key in keys))
    activation = activate_with_rollback(session, request, run, target, path, previous=answers.state, lock=lock, last_on_the_host=last_on_the_host)
    # Only switch and boot make a generation; after test or dry-activate the profile's generation is another system's.
    generation = activation.generation if request.action.changes_boot_default else None
    run.generation = generation
    record_revision(request, target, activation, lock)

    boot_id = None
    if request.reboot:
        run.phase(Phase.REBOOT)
        started = time.monotonic()
        boot_id = reboot_and_wait(target, expected_system=path, timeout=request.reboot_timeout, interval=request.reboot_interval)
        run.step("rebooted into it", started)
    # After the confirmation and the health checks; after the reboot for the -reset tasks, whose reboot empties /run.
    upload_host_keys(run, target, keys, KeyUpload.POST_ACTIVATION)
    if request.collect_garbage:
        run.phase(Phase.GC)
        started = time.monotonic()
        collect_garbage(target, request.delete_older_than)
        run.step("collected garbage", started)
    if target.dry_run:
        run.note(f"{spec.name}: planned: {request.action} {path}; nothing was run")
        return DeployOutcome(spec.name, path, built.built_on, Result.PLANNED, copied, None, None, tuple(run.warnings))
    return DeployOutcome(spec.name, path, built.built_on, Result.OK, copied, generation, boot_id, tuple(run.warnings))


def read_host_keys(request: DeployRequest, run: HostRun) -> tuple[LoadedKey, ...]:
    """The host's keys, read here (files, commands) when this request uploads them; KeysFailed before anything changed."""
    if not (request.uploads_keys and run.spec.keys):
        return ()
    from deploy.keys.sources import read_keys

    return read_keys(run.runner, run.spec.keys, host=run.spec.name)


def upload_host_keys(run: HostRun, target: Host, keys: Sequence[LoadedKey], when: KeyUpload) -> None:
    """The keys that go up at this point of the deploy (`when`), over the host's connection."""
    chosen = [key for key in keys if key.spec.upload == when]
    if not chosen:
        return
    from deploy.keys.upload import upload_keys

    run.phase(Phase.KEYS)
    upload_keys(target, chosen, note=run.note)


def upload_keys_only(session: Session, request: DeployRequest, run: HostRun, keys: Sequence[LoadedKey]) -> DeployOutcome:
    """`keys`: the host's keys alone, pre-activation ones first, under the host's lock; no system is built or activated."""
    spec = run.spec
    if not keys:
        run.note(f"{spec.name}: no keys in hosts.yaml; nothing to upload")
        return DeployOutcome(spec.name, None, "", Result.OK, warnings=tuple(run.warnings))
    target = target_of(session, request, run)
    with host_lock(request, target, run.verdicts_seen):
        upload_host_keys(run, target, keys, KeyUpload.PRE_ACTIVATION)
        upload_host_keys(run, target, keys, KeyUpload.POST_ACTIVATION)
    status = Result.PLANNED if target.dry_run else Result.OK
    return DeployOutcome(spec.name, None, "", status, warnings=tuple(run.warnings))


def space_paths(action: Action) -> tuple[str, ...]:
    """Where a deploy of this action needs room on the target."""
    return ("/nix", "/boot") if action.changes_boot_default else ("/nix",)


def check_space(run: HostRun, target: Host, path: str, *, action: Action, spaces: Mapping[str, DiskSpace] | None = None) -> None:
    """Warn when the target is short of room; spaces: what its df said under the deploy's lock, else it is asked."""
    from deploy.plan.disk import check_free_space, closure_size, space_warnings

    needed = run.closure_size if run.closure_size is not None else closure_size(run.runner, path)
    if spaces is not None:
        warnings = space_warnings(run.spec.name, spaces, needed)
    else:
        warnings = check_free_space(target, list(space_paths(action)), run.spec.name, needed)
    for warning in warnings:
        run.warn(warning)


def closure_diff_text(run: HostRun, target: Host, path: str) -> str:
    """The `diff` task's difference, as text for stdout; the host's log records it."""
    from deploy.plan.diff import closure_diff, format_diff

    text = format_diff(run.spec.name, closure_diff(target, path))
    run.echo.record(text + "\n")
    return text


def show_diff_and_ask(run: HostRun, target: Host, path: str, *, ask: bool) -> bool:
    """Show the diff; with `ask`, False when the answer was no."""
    from deploy.plan.diff import closure_diff, confirm, format_diff

    with run.ask_lock or threading.Lock():
        difference = closure_diff(target, path)
        for line in format_diff(run.spec.name, difference).splitlines():
            run.echo.note(line)
        return not ask or confirm(f"{run.spec.name}: activate {path}?")


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

    started = time.monotonic()
    problem = run_health_check(target, spec.health)
    if problem is not None:
        if before_undo is not None:
            before_undo()
        undone = undo(target, activation)
        raise HealthCheckFailed(f"{spec.name}: health check failed: {problem}; {undone}")
    run.step("health checks passed", started)


def activate_with_rollback(
    session: Session, request: DeployRequest, run: HostRun, target: Host, path: str, previous: SystemState | None = None,
    lock: HostLock | None = None, *, last_on_the_host: bool = False,
) -> Activation:
    """activate() and the health checks, guarded by the magic-rollback watchdog when the action changes what runs.

    The activation protocol (README, "The activation protocol"): probe; arm
    the watchdog (it knows the system it guards and what to restore); set the
    profile; switch in the run's own unit; on a lost channel ask the host how
    the switch ended; health checks; confirm over a new connection. Whoever
    claims the verdict first decides: the deployer's undo, its confirmation
    or the watchdog. last_on_the_host: nothing follows on the host (no
    reboot, keys or GC), so the confirmation's round trip also releases the
    lock, with the revision.
    """
    assert request.action is not None
    started = time.monotonic()

    def open_fresh() -> Host:
        return session.fresh_target(run.spec, run.echo)

    if not isinstance(target, RemoteHost):
        # This machine: no channel to lose, nobody to be cut off from.
        activation = activate(target, path, request.action, token=run.token, previous=previous)
        run.step(activated(activation), started)
        check_health(request, run, target, activation)
        return activation
    if not (request.magic_rollback and request.action.changes_running_system):
        return activate_unguarded(request, run, target, path, open_fresh, previous, lock)
    from deploy.confirm import magic_rollback

    watchdog = magic_rollback.new_watchdog(request.confirm_timeout, health_budget(request, run.spec), token=run.token)

    def arm(prepared: Activation) -> list[str]:
        return magic_rollback.arm_argv(target, watchdog, prepared)

    disarm = functools.partial(magic_rollback.disarm, target, watchdog)
    try:
        activation = activate(
            target, path, request.action, arm=arm,
            wrap=lambda argv: magic_rollback.mark_activated(watchdog.activated_marker, argv), before_undo=disarm, token=watchdog.token,
            previous=previous,
        )
    except ActivationUnknown as unknown:
        activation = settle_lost_switch(run, request, target, open_fresh, unknown, record=watchdog.directory, watchdog=watchdog)
    run.step(activated(activation), started)
    check_health(request, run, target, activation, before_undo=disarm)
    run.phase(Phase.CONFIRM)
    started = time.monotonic()
    last: list[str] = []
    if last_on_the_host and lock is not None and lock.held and not lock.released:
        record_revision(request, target, activation, lock)  # onto the release, which runs only once confirmed
        last = lock.release_argv()
    try:
        if magic_rollback.confirm(open_fresh, watchdog, label=run.spec.name, then=last) and lock is not None:
            lock.let_go()
    except NotConfirmed as missed:
        if lock is not None:
            lock.revision_record = None  # the generation it names is being rolled back
        raise self_rollback(run, open_fresh, watchdog, request, missed) from None
    if target.dry_run:
        run.note(f"{run.spec.name}: would confirm over a new SSH connection")
    run.step("confirmed over a new SSH connection", started)
    return activation


def activate_unguarded(
    request: DeployRequest, run: HostRun, target: Host, path: str, open_fresh: Callable[[], Host], previous: SystemState | None = None,
    lock: HostLock | None = None,
) -> Activation:
    """A remote activation no watchdog guards (--no-magic-rollback, `boot`): a lost channel is still asked about, never guessed.

    The switch records its exit status on the host as a guarded one does, in
    SWITCH_RECORDS_DIR/<token>; the record is removed once nixfab knows how
    the switch ended, and left for the user to read when it does not.
    """
    from deploy.confirm import magic_rollback

    assert request.action is not None
    started = time.monotonic()
    record = f"{SWITCH_RECORDS_DIR}/{run.token}"
    try:
        try:
            activation = activate(
                target, path, request.action, wrap=lambda argv: magic_rollback.mark_activated(f"{record}/activated", argv), token=run.token,
                previous=previous,
            )
        except ActivationUnknown as unknown:
            activation = settle_lost_switch(run, request, target, open_fresh, unknown, record=record, watchdog=None)
    except ActivationFailed:
        forget_record(target, record)
        raise
    if lock is not None and lock.held:
        lock.leftovers.append(record)  # removed by the release, in its round trip
    else:
        forget_record(target, record)
    run.step(activated(activation), started)
    check_health(request, run, target, activation)
    return activation


def activated(activation: Activation) -> str:
    """The activation's step line (`in 1.1 s` follows), true for each action: only switch and boot make a generation."""
    action, name = activation.action, activation.path.rsplit("/", 1)[-1].split("-", 1)[-1]
    made = "a new generation" if activation.generation is None else f"generation {activation.generation}"
    if action.changes_boot_default:
        return f"activated {made} ({action})" if action.changes_running_system else f"made {made} the boot default ({action}, running after a reboot)"
    if action.changes_running_system:
        kept = "the boot default" if activation.previous.generation is None else f"generation {activation.previous.generation}"
        return f"activated {name} ({action}, {kept} stays the boot default)"
    return f"ran {action} of {name} (nothing changed)"


def settle_lost_switch(
    run: HostRun,
    request: DeployRequest,
    target: Host,
    open_fresh: Callable[[], Host],
    unknown: ActivationUnknown,
    *,
    record: str,
    watchdog: Watchdog | None,
) -> Activation:
    """The channel closed during the switch: ask the host, over new connections, how it ended, then decide
    (activation.settle_lost_switch). With a watchdog: no new connection works is the case magic rollback exists
    for, so NotConfirmed after waiting for its rollback; a failed switch claims the verdict before the undo.
    The deploy's own connection is dropped and opened again when next used.
    """
    from deploy.activate.activation import settle_lost_switch as settle
    from deploy.confirm import magic_rollback

    name = run.spec.name
    run.note(f"{name}: lost the connection during activation; asking the host over a new one how the switch ended")
    target.close()
    answer = magic_rollback.activation_status(open_fresh, record, timeout=request.confirm_timeout)
    if watchdog is None:
        return settle(target, unknown, answer, label=name, record=record, note=run.note)
    guarded = watchdog

    def wait_for_its_rollback(reason: str) -> NixfabError:
        missed = NotConfirmed(
            f"{name}: not confirmed within {guarded.confirm_timeout}s after the connection dropped during activation ({reason})"
        )
        return self_rollback(run, open_fresh, guarded, request, missed)

    guard = (
        f"; the rollback watchdog {guarded.token} puts back what it guards unless confirmed "
        f"(its verdict: {magic_rollback.VERDICTS_DIR}/{guarded.token})"
    )
    return settle(
        target, unknown, answer, label=name, record=record, note=run.note, when_unreachable=wait_for_its_rollback, guard=guard,
        before_undo=lambda: magic_rollback.disarm(target, guarded),
    )


def self_rollback(run: HostRun, open_fresh: Callable[[], Host], watchdog: Watchdog, request: DeployRequest, missed: NotConfirmed) -> NotConfirmed:
    from deploy.confirm import magic_rollback

    run.note(f"{run.spec.name}: no confirmation; waiting for the host to roll itself back")
    running = magic_rollback.await_self_rollback(open_fresh, watchdog, timeout=watchdog.confirm_timeout + watchdog.health_seconds + 60)
    if running is None:
        return NotConfirmed(f"{missed}; the host should have rolled itself back, but nixfab could not verify it")
    return NotConfirmed(f"{missed}; the host rolled itself back and runs {running} again")


def record_revision(request: DeployRequest, target: Host, activation: Activation, lock: HostLock | None = None) -> None:
    """Leave the flake's revision next to the generation, for `generations` to show: with the lock's release, when one is held."""
    if activation.generation is None or not activation.action.changes_boot_default or request.revision is None:
        return
    if lock is not None and lock.released:
        return  # written by the release, already run on the confirmation's connection
    from deploy.record.history import deployed_by, revision_payload, revision_record_args, revision_record_argv

    payload = revision_payload(request.revision, request.dirty, by=deployed_by())
    if lock is not None and lock.held:
        lock.revision_record = revision_record_args(activation.generation, payload)
        return
    target.run(revision_record_argv(activation.generation, payload), sudo=True)


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 3)
