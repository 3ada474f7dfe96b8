"""`inv plan`: what a deploy would do to each host, read from the host itself, changing nothing.

The systems are built here, as a deploy builds them (one `nix build` for all,
engine/fleet.py). Then, per host, one round trip (plan_facts.sh, which reads
the closure on stdin) says what the host runs, boots and has: whether the
deploy would be up to date, which closure paths it would copy and how many
bytes that is, whether the boot default and the running system would
change, and whether a reboot would change the kernel, initrd or modules.

Which units would be stopped, started, restarted or reloaded only the new
system's switch-to-configuration can say (`dry-activate`, compared with the
running system), so it runs on the host where the running system would
change. Where the host lacks paths of that system they are first imported
into a temporary GC root, and afterwards the root, the indirect root Nix
filed for it and every imported path are removed again: a plan leaves the
host's store as it found it. Nothing is staged while another deploy holds the
host's lock. Everything else a host is asked is read only.
"""
from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from deploy.copy.closure import Closure, closure_of, export_into
from deploy.engine.fleet import HostResult
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.pipeline import target_of
from deploy.engine.request import DeployRequest
from deploy.engine.session import Session
from deploy.errors import NixfabError, RemoteCommandFailed
from deploy.model import Action, Phase, Result
from deploy.nix import commands
from deploy.scripts import script
from deploy.transport.hosts import Host
from deploy.transport.process import LocalRunner
from deploy.transport.remote import RemoteHost

KERNEL_PARTS = ("kernel", "initrd", "kernel-modules")

# switch-to-configuration's dry-activate lines (NixOS's Perl and Rust versions print the same words), and what each lists.
UNIT_LINES = {
    "would stop the following units: ": "stop",
    "would NOT stop the following changed units: ": "skip",
    "would NOT restart the following changed units: ": "skip",
    "would reload the following units: ": "reload",
    "would restart the following units: ": "restart",
    "would start the following units: ": "start",
}


@dataclass(frozen=True)
class UnitChanges:
    """What switch-to-configuration would do to systemd units; `skip`: changed, but left running (restartIfChanged = false)."""

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    reload: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    restart_systemd: bool = False

    @property
    def empty(self) -> bool:
        return not (self.stop or self.start or self.restart or self.reload or self.skip or self.restart_systemd)


def parse_dry_activate(lines: Iterable[str]) -> UnitChanges:
    """The units named by `switch-to-configuration dry-activate`'s output (pure); other lines are ignored."""
    found: dict[str, list[str]] = {kind: [] for kind in ("stop", "start", "restart", "reload", "skip")}
    restart_systemd = False
    for line in lines:
        line = line.strip()
        if line == "would restart systemd":
            restart_systemd = True
            continue
        for prefix, kind in UNIT_LINES.items():
            if line.startswith(prefix):
                found[kind] += [unit.strip() for unit in line.removeprefix(prefix).split(",") if unit.strip()]
    return UnitChanges(**{kind: tuple(dict.fromkeys(units)) for kind, units in found.items()}, restart_systemd=restart_systemd)


@dataclass(frozen=True)
class HostFacts:
    """What plan_facts.sh read on a host."""

    profile: str | None  # the profile's link, system-N-link
    boot_default: str | None  # the profile's system
    current: str | None
    booted: str | None
    booted_kernel: tuple[str, ...]  # KERNEL_PARTS' links of /run/booted-system ("" where missing)
    current_kernel: tuple[str, ...]
    missing: tuple[str, ...]  # of the closure asked about, dependencies first
    locked: bool  # a deploy holds the host's lock
    staging: str | None  # the staging directory made for the missing paths
    error: str | None = None


def parse_facts(stdout: str) -> HostFacts:
    """plan_facts.sh's `key<TAB>value` lines (pure); `missing` repeats, other lines (Nix's warnings) are ignored."""
    single: dict[str, str] = {}
    missing: list[str] = []
    for line in stdout.splitlines():
        key, tab, value = line.partition("\t")
        if not tab:
            continue
        if key == "missing":
            missing.append(value.strip())
        else:
            single[key] = value.strip()
    return HostFacts(
        profile=single.get("profile") or None,
        boot_default=single.get("boot") or None,
        current=single.get("current") or None,
        booted=single.get("booted") or None,
        booted_kernel=tuple(single.get(f"booted-{part}", "") for part in KERNEL_PARTS),
        current_kernel=tuple(single.get(f"current-{part}", "") for part in KERNEL_PARTS),
        missing=tuple(path for path in missing if path),
        locked=single.get("locked") == "1",
        staging=single.get("staging") or None,
        error=single.get("error") or None,
    )


@dataclass(frozen=True)
class DryActivation:
    units: UnitChanges | None  # None when switch-to-configuration failed
    output: tuple[str, ...]
    exit_code: int | None
    left: tuple[str, ...] = ()  # staged paths still in the store after the cleanup


def parse_dry_activate_output(stdout: str) -> DryActivation:
    """plan_dry_activate.sh's lines (pure)."""
    output: list[str] = []
    left: list[str] = []
    status: int | None = None
    for line in stdout.splitlines():
        key, tab, value = line.partition("\t")
        if key == "dry" and tab:
            output.append(value)
        elif key == "dry-exit" and value.strip().lstrip("-").isdigit():
            status = int(value)
        elif key == "left" and value.strip():
            left.append(value.strip())
    units = parse_dry_activate(output) if status == 0 else None
    return DryActivation(units, tuple(output), status, tuple(left))


@dataclass(frozen=True)
class HostPlan:
    """What a deploy of `system` with `action` would do to one host."""

    host: str
    action: Action
    system: str
    up_to_date: bool
    generation: int | None  # the profile's generation now
    boot_default: str | None
    current_system: str | None
    boot_default_changes: bool
    running_system_changes: bool
    copy_paths: tuple[str, ...]
    copy_bytes: int | None
    units: UnitChanges | None  # None: unknown (see units_note), or the running system would not change
    units_note: str | None
    reboot_needed: bool | None  # None: the host runs no system to compare with
    reboot_because: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)


def generation_of(profile_link: str | None) -> int | None:
    from deploy.activate.activation import parse_generation

    return parse_generation(profile_link) if profile_link else None


def kernel_of(system: str) -> tuple[str, ...]:
    """The new system's kernel, initrd and modules links, read from this machine's store, where it was built."""
    parts = []
    for part in KERNEL_PARTS:
        try:
            parts.append(os.readlink(os.path.join(system, part)))
        except OSError:
            parts.append("")
    return tuple(parts)


def reboot_needed(facts: HostFacts, new_kernel: Sequence[str]) -> tuple[bool | None, tuple[str, ...]]:
    """Whether the new system's kernel, initrd or modules differ from those that run (the booted system's, else the running one's)."""
    running = facts.booted_kernel if facts.booted else facts.current_kernel if facts.current else None
    if running is None:
        return None, ()
    differ = tuple(part for part, old, new in zip(KERNEL_PARTS, running, new_kernel, strict=True) if old != new)
    return bool(differ), differ


def read_facts(target: Host, system: str, closure: Sequence[str], *, stage: bool) -> HostFacts:
    """One round trip: the closure goes on stdin (no argv limit), the facts come back."""
    argv = ["sh", "-c", script("plan_facts"), "sh", commands.SYSTEM_PROFILE, "1" if stage else "0"]
    if isinstance(target, RemoteHost):
        listing = io.BytesIO("".join(f"{path}\n" for path in closure).encode())
        result = target.feed(argv, listing, describe_source=f"(the {len(closure)} paths of {system}'s closure)")
    else:
        result = target.run(argv)  # this machine: it built the system, so it has all of it
    facts = parse_facts(result.stdout)
    if not result.ok or facts.error:
        raise RemoteCommandFailed(f"{target.label}: cannot read what it runs and has (exit {result.returncode}): {facts.error or result.tail(1)}")
    return facts


def stage(
    runner: LocalRunner, target: RemoteHost, system: str, missing: Sequence[str], staging: str, *, then_dry_activate: bool, closure: Closure | None = None,
) -> DryActivation | None:
    """Import the paths the host lacks and hold the system with a temporary GC root in `staging`.

    then_dry_activate (where no sudo is needed): go on at once with plan_dry_activate.sh, in the same
    round trip, and return what it said (else None). RemoteCommandFailed when the import or the
    root failed, or the dry-activation did not report; the caller then removes the staging.
    """
    follow = script("plan_dry_activate") if then_dry_activate else ""
    argv = ["sh", "-c", script("plan_stage"), "sh", system, staging, follow]
    staged = export_into(runner, target, missing, argv, closure=closure)
    answer = parse_dry_activate_output(staged.stdout) if then_dry_activate else None
    if not staged.ok or (then_dry_activate and (answer is None or answer.exit_code is None)):
        raise RemoteCommandFailed(f"{target.label}: staging {system} failed: {staged.tail(1)}")
    return answer


def dry_activate(target: Host, system: str | None, staging: str | None) -> DryActivation:
    """switch-to-configuration dry-activate (as root, as a deploy runs it) and the staging's removal, in one round trip.

    A staged system is named by its staging directory only: a store path in the arguments would be in
    sudo's SUDO_COMMAND, which the garbage collector reads as a root, and the staged paths would stay.
    """
    staged = system is not None and staging is not None
    argv = ["sh", "-c", script("plan_dry_activate"), "sh", "staged" if staged else system or "", staging or ""]
    result = target.run(argv, sudo=True)
    parsed = parse_dry_activate_output(result.stdout)
    if not result.ok:
        raise RemoteCommandFailed(f"{target.label}: switch-to-configuration dry-activate could not run: {result.tail(1)}")
    return parsed


class DeployPlanner:
    """The fleet's work for `inv plan`: read one host's facts, dry-activate where the running system would change, keep the plan."""

    def __init__(self) -> None:
        self.plans: dict[str, HostPlan] = {}
        self._lock = threading.Lock()

    def __call__(self, session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
        assert request.action is not None and built_here is not None, "a plan builds every system here first"
        name = run.spec.name
        plan = plan_host(request.action, run, target_of(session, request, run), built_here)
        with self._lock:
            self.plans[name] = plan
        return DeployOutcome(name, built_here, "local", Result.OK, generation=plan.generation, warnings=plan.warnings)


def plan_host(action: Action, run: HostRun, target: Host, system: str) -> HostPlan:
    closure = closure_of(run.runner, system)
    facts = read_facts(target, system, closure.paths, stage=action.changes_running_system and isinstance(target, RemoteHost))
    running_changes = action.changes_running_system and facts.current != system
    boot_changes = action.changes_boot_default and facts.boot_default != system
    warnings: list[str] = []
    units: UnitChanges | None = None
    note: str | None = None
    if running_changes:
        units, note, left = units_of(run, target, system, facts, closure)
        if left:
            warnings.append(f"{len(left)} staged path(s) are still in its store, alive for another reason: {' '.join(left)}")
    elif facts.staging is not None:
        unstage(target, facts.staging)  # staging is asked for only where the running system changes; never leave one
    for warning in warnings:
        run.warn(f"{run.spec.name}: {warning}")
    needed, because = reboot_needed(facts, kernel_of(system))
    return HostPlan(
        host=run.spec.name,
        action=action,
        system=system,
        up_to_date=not running_changes and not boot_changes,
        generation=generation_of(facts.profile),
        boot_default=facts.boot_default,
        current_system=facts.current,
        boot_default_changes=boot_changes,
        running_system_changes=running_changes,
        copy_paths=facts.missing,
        copy_bytes=closure.nar_bytes(facts.missing),  # from what Nix said of the closure, not asked again
        units=units,
        units_note=note,
        reboot_needed=needed,
        reboot_because=because,
        warnings=tuple(warnings),
    )


def units_of(
    run: HostRun, target: Host, system: str, facts: HostFacts, closure: Closure | None = None,
) -> tuple[UnitChanges | None, str | None, tuple[str, ...]]:
    """(units, why they are unknown, staged paths left behind): dry-activate, staging the closure first where it is missing."""
    if facts.missing and facts.staging is None:
        why = "another deploy holds the host's lock" if facts.locked else "its closure is not on the host"
        return None, f"not asked: {why}", ()
    removed = facts.staging is None
    answer: DryActivation | None = None
    try:
        if facts.missing:
            assert isinstance(target, RemoteHost) and facts.staging is not None
            run.phase(Phase.COPY)
            try:
                # A root login dry-activates and cleans up in the staging's own round trip; sudo needs one of its own.
                answer = stage(run.runner, target, system, facts.missing, facts.staging, then_dry_activate=not target.use_sudo, closure=closure)
            except RemoteCommandFailed as error:
                return None, f"not asked: {error}", ()
            removed = answer is not None
        if answer is None:
            run.phase(Phase.ACTIVATE)
            answer = dry_activate(target, system, facts.staging)
            removed = True
    finally:
        if not removed:
            assert facts.staging is not None
            unstage(target, facts.staging)
    if answer.units is None:
        last = answer.output[-1] if answer.output else "no output"
        return None, f"dry-activate failed (exit {answer.exit_code}): {last}", answer.left
    return answer.units, None, answer.left


def unstage(target: Host, staging: str) -> None:
    """Remove a staging directory, its root and its paths, when no dry-activate did (best effort: the host may be gone)."""
    try:
        dry_activate(target, None, staging)
    except NixfabError:
        pass


# ---- showing it ------------------------------------------------------------------------------


def human_bytes(size: int | None) -> str:
    if size is None:
        return "? bytes"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def units_text(plan: HostPlan) -> str:
    if not plan.running_system_changes:
        return "-"
    if plan.units is None:
        return plan.units_note or "?"
    if plan.units.empty:
        return "none"
    parts = [
        f"{label} {', '.join(units)}"
        for label, units in (
            ("stop", plan.units.stop), ("start", plan.units.start), ("restart", plan.units.restart),
            ("reload", plan.units.reload), ("leave changed", plan.units.skip),
        )
        if units
    ]
    if plan.units.restart_systemd:
        parts.insert(0, "restart systemd")
    return "; ".join(parts)


HEADER = ("host", "plan", "copy", "boot default", "running", "units", "reboot")


def plan_row(result: HostResult, plan: HostPlan | None) -> tuple[str, ...]:
    if plan is None:
        return (result.host, str(result.result), "", "", "", "", (result.error or "").partition("\n")[0])
    copy = "-" if not plan.copy_paths else f"{len(plan.copy_paths)} paths, {human_bytes(plan.copy_bytes)}"
    generation = f"gen {plan.generation}" if plan.generation is not None else "none"
    boot = f"{generation} -> new" if plan.boot_default_changes else "same" if plan.action.changes_boot_default else "-"
    running = "changes" if plan.running_system_changes else "same" if plan.action.changes_running_system else "-"
    reboot = "?" if plan.reboot_needed is None else f"yes ({', '.join(plan.reboot_because)})" if plan.reboot_needed else "no"
    return (plan.host, "up to date" if plan.up_to_date else plan.action.value, copy, boot, running, units_text(plan), reboot)


def format_plans(results: Sequence[HostResult], plans: dict[str, HostPlan]) -> str:
    table = [HEADER, *(plan_row(result, plans.get(result.host)) for result in results)]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table)


def plans_json(results: Sequence[HostResult], plans: dict[str, HostPlan], *, exit_code: int, interrupted: bool) -> str:
    hosts: list[dict[str, object]] = []
    for result in results:
        plan = plans.get(result.host)
        row: dict[str, object] = {"host": result.host, "result": result.result, "error": result.error, "exit_code": result.exit_code}
        if plan is not None:
            data = asdict(plan)
            data.pop("host")
            data["copy"] = {"paths": list(plan.copy_paths), "count": len(plan.copy_paths), "bytes": plan.copy_bytes}
            data.pop("copy_paths")
            data.pop("copy_bytes")
            data["reboot_because"] = list(plan.reboot_because)
            data["warnings"] = list(plan.warnings)
            units = asdict(plan.units) if plan.units is not None else None
            data["units"] = None if units is None else {key: list(value) if isinstance(value, tuple) else value for key, value in units.items()}
            row |= data
        hosts.append(row)
    return json.dumps({"exit_code": exit_code, "interrupted": interrupted, "hosts": hosts}, indent=2)
