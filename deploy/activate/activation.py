"""Make a system current on its host: profile, switch-to-configuration, and undo on failure."""
from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from deploy.errors import ActivationFailed, ActivationUnknown, HostUnreachable, NixfabError, NotInStore, RemoteCommandFailed
from deploy.model import Action
from deploy.nix import commands
from deploy.scripts import script
from deploy.transport.hosts import Host
from deploy.transport.process import Result, tab_fields

# Where an activation that no watchdog guards records its exit status (mark_activated.sh), by token, so that
# after a lost channel nixfab can still ask the host how it ended. The watchdog's own directory serves when guarded.
SWITCH_RECORDS_DIR = "/run/nixfab/switches"

@dataclass(frozen=True)
class SystemState:
    """Enough of a host's state to put it back."""

    generation: int | None
    generation_path: str | None
    running: str | None


@dataclass(frozen=True)
class Activation:
    path: str
    action: Action
    generation: int | None
    previous: SystemState
    # False when an existing generation was made current (switch-generation,
    # rollback): undo must then not delete it.
    created_generation: bool = True
    # Names the switch's own unit (nixfab-switch-<token>) and, when guarded, the watchdog.
    token: str = field(default="", compare=False)

    @property
    def unit(self) -> str:
        return commands.switch_unit(self.token or "0")

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "action", Action(self.action))


def parse_generation(link_target: str) -> int | None:
    # The profile points at "system-42-link".
    parts = link_target.strip().rsplit("/", 1)[-1].split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def read_link(host: Host, path: str) -> str | None:
    result = host.run(commands.read_link(path), dry_stdout=f"<{path}>")
    if not result.ok:
        return None
    return result.stdout.strip() or None


def new_token() -> str:
    return secrets.token_hex(6)


def system_state(host: Host) -> SystemState:
    """What activate() would restore; a probe that fails or is cut off is an error, never "the host has nothing"."""
    result = host.run(["sh", "-c", script("system_state"), "sh", commands.SYSTEM_PROFILE], dry_stdout="running\t<running system>\n")
    if not result.ok:
        why = f"exit {result.returncode}" if result.returncode != -1 else "the connection dropped"
        raise RemoteCommandFailed(
            f"{host.label}: cannot read the system profile and the running system ({why}: {result.tail(1)}); "
            "refusing to activate without knowing what to restore"
        )
    return parse_system_state(result.stdout, host.label, dry_run=host.dry_run)


def parse_system_state(stdout: str, label: str, *, dry_run: bool = False) -> SystemState:
    """system_state.sh's lines (pure); RemoteCommandFailed when the profile's system cannot be read."""
    facts = tab_fields(stdout)
    generation = parse_generation(facts["profile"]) if facts.get("profile") else None
    if facts.get("profile") and (generation is None or not facts.get("generation")) and not dry_run:
        raise RemoteCommandFailed(
            f"{label}: the system profile points at {facts['profile']!r}, whose system cannot be read; "
            "refusing to activate without knowing what to restore"
        )
    return SystemState(generation, facts.get("generation") or None, facts.get("running") or None)


# host.facts' key: whether systemd is the host's init, so that systemd-run can start units there.
SYSTEMD = "systemd"


def has_systemd(host: Host) -> bool:
    """sd_booted(3), as nixos-rebuild-ng asks it (nixos-rebuild started a unit to see whether one started): where
    systemd runs but systemd-run then fails, the watchdog or the switch fails to start and says why, before or
    instead of any change, rather than running without the unit that outlives a dropped connection."""
    if SYSTEMD not in host.facts:
        host.facts[SYSTEMD] = host.run(commands.systemd_is_init()).ok
    return host.facts[SYSTEMD]


def wrap_for_host(host: Host, argv: list[str], action: Action, unit: str) -> list[str]:
    """nixos-rebuild's rule: use systemd-run where it works, a clean env elsewhere."""
    install_bootloader = action.changes_boot_default
    if has_systemd(host):
        return commands.systemd_run(argv, unit=unit, install_bootloader=install_bootloader)
    return commands.plain_environment(argv, install_bootloader=install_bootloader)


class SwitchLost(Exception):
    """The channel closed before switch-to-configuration's exit status came back: how it ended is unknown."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def run_switch_to_configuration(
    host: Host, path: str, action: Action, wrap: Callable[[list[str]], list[str]] | None = None, *, unit: str | None = None
) -> None:
    """Raises ActivationFailed for a switch that exited non-zero, SwitchLost when its exit status never came back."""
    argv = commands.switch_to_configuration(path, action)
    unit = unit or commands.switch_unit(new_token())
    try:
        result = host.run(wrap_for_host(host, wrap(argv) if wrap else argv, action, unit), sudo=True, stream=True)
    except HostUnreachable as lost:
        raise SwitchLost(str(lost)) from None
    raise_for_switch(host, result, action, unit)


def raise_for_switch(host: Host, result: Result, action: Action, unit: str) -> None:
    """SwitchLost when the switch's exit status never came back, ActivationFailed when it is not 0."""
    if result.returncode == -1:
        # Fabric's exit status for a channel that closed without one: the switch may well go on in its unit.
        raise SwitchLost(f"{host.label}: the SSH channel closed during switch-to-configuration {action} without an exit status")
    if not result.ok:
        failed = ActivationFailed(f"{host.label}: switch-to-configuration {action} failed (exit {result.returncode}): {result.tail(1)}")
        # Under systemd-run --pipe, as without systemd-run, the switch's output came to us, not to its unit's journal.
        failed.details = output_tail(f"switch-to-configuration {action}", result) or journal_tail(host, unit)
        raise failed


def output_tail(what: str, result: Result, lines: int = 20) -> str | None:
    """A command's last lines of output (stdout's, then stderr's), under a line that says whose they are."""
    printed = (result.stdout.rstrip("\n") + "\n" + result.stderr.rstrip("\n")).strip("\n").splitlines()[-lines:]
    return "\n".join([f"{what} (last lines):", *(f"  {line}" for line in printed)]) if printed else None


def journal_tail(host: Host, unit: str) -> str | None:
    """The unit's journal, for a switch that printed nothing: what systemd says of how it ended."""
    if not host.facts.get(SYSTEMD):
        return None  # then the switch's own output, which the renderers keep, is the failure's details
    journal = host.run(commands.journal_tail(unit))
    if not (journal.ok and journal.stdout.strip()):
        return None
    return "\n".join([f"journalctl -u {unit} (last lines):", *(f"  {line}" for line in journal.stdout.rstrip().splitlines())])


def activate(
    host: Host,
    path: str,
    action: Action,
    *,
    arm: Callable[[Activation], Sequence[str]] | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
    before_undo: Callable[[], None] | None = None,
    token: str | None = None,
    previous: SystemState | None = None,
) -> Activation:
    """Set the profile (for switch and boot) and run switch-to-configuration, in one command (scripts/activate.sh).

    On failure the host goes back to its previous generation, boot default
    and running system, and ActivationFailed says what went wrong. A
    connection lost during the switch is not a failure: ActivationUnknown
    carries the activation, and nothing is undone over a guess.
    `arm` gives the argv that starts the rollback watchdog for the prepared
    activation (its generation is not known yet): it runs before the
    profile changes. `wrap` wraps the switch-to-configuration argv;
    `before_undo` runs before undo() (magic rollback claims its verdict
    there). `previous`: the host's state as it said under the deploy's lock
    (else it is asked).
    """
    action = Action(action)  # a caller's plain "switch" becomes the member; anything else is a ValueError
    previous = previous or system_state(host)
    activation = Activation(path, action, previous.generation, previous, token=token or new_token())
    prepared = replace(activation, generation=None) if action.changes_boot_default else activation
    arming = list(arm(prepared)) if arm is not None else []
    switch = commands.switch_to_configuration(path, action)
    argv = activation_argv(path, action, arming, wrap_for_host(host, wrap(switch) if wrap else switch, action, activation.unit))
    try:
        result = host.run(argv, sudo=True, stream=True, dry_stdout=f"nixfab-activate\tprofile\t{commands.SYSTEM_PROFILE}-<new>-link\n")
    except HostUnreachable as lost:
        # Whether the profile was set is the host's to say (pipeline.settle_lost_switch reads it again).
        raise lost_activation(host.label, prepared, str(lost)) from None
    said = activation_markers(result.stdout)
    # activate.sh's own lines are not the switch's output: the failure's details quote only the switch.
    result = Result(result.argv, result.returncode, without_markers(result.stdout), result.stderr)
    if "not-nixos" in said:
        raise NotInStore(f"{host.label}: {path} is not a NixOS system on this host (no nixos-version); refusing to activate it")
    if "unarmed" in said:
        raise NixfabError(f"{host.label}: cannot start the rollback watchdog: {said['unarmed']}")
    if "unset" in said:
        if before_undo is not None:
            before_undo()
        raise RemoteCommandFailed(f"{host.label}: nix-env --set failed: {said['unset']}")
    if action.changes_boot_default:
        activation = replace(activation, generation=parse_generation(said.get("profile", "")))
    try:
        raise_for_switch(host, result, action, activation.unit)
    except ActivationFailed as failure:
        if before_undo is not None:
            before_undo()
        undone = undo(host, activation)
        rolled_back = ActivationFailed(f"{failure}; {undone}")
        rolled_back.details = failure.details
        raise rolled_back from None
    except SwitchLost as lost:
        raise lost_activation(host.label, activation, lost.why) from None
    return activation


def activation_argv(path: str, action: Action, arming: Sequence[str], switch: Sequence[str]) -> list[str]:
    """scripts/activate.sh: check the system, arm the watchdog, set the profile, then the switch (pure)."""
    set_profile = "1" if action.changes_boot_default else "0"
    return [
        "sh", "-c", script("activate"), "sh", path, commands.SYSTEM_PROFILE, set_profile, script("run_first"), str(len(arming)), *arming, *switch,
    ]


def without_markers(stdout: str) -> str:
    return "".join(line for line in stdout.splitlines(keepends=True) if not line.startswith("nixfab-activate\t"))


def activation_markers(stdout: str) -> dict[str, str]:
    """activate.sh's `nixfab-activate<TAB>WHAT[<TAB>DETAIL]` lines, as {WHAT: DETAIL} (pure)."""
    said: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("nixfab-activate\t"):
            what, _, detail = line.removeprefix("nixfab-activate\t").partition("\t")
            said[what] = detail.strip()
    return said


def lost_activation(
    label: str, activation: Activation, why: str, *, asked: str | None = None, record: str | None = None, guard: str = ""
) -> ActivationUnknown:
    """What to say when nixfab cannot tell how the switch ended, and what to check.

    why: how the connection was lost. asked: what the host said when asked
    over a new connection ("it is still running", ...), None when it was not
    asked. record: the directory holding the switch's exit status on the host.
    guard: what the rollback watchdog will do, empty when none guards it.
    """
    unit = activation.unit
    what = f"switch-to-configuration {activation.action} of {activation.path}"
    status = f"`cat {record}/activated` (its exit status, once it ends), " if record else ""
    checks = f"`systemctl status {unit}`, `journalctl -u {unit}`, {status}`readlink /run/current-system` and `readlink {commands.SYSTEM_PROFILE}`"
    heard = f"; asked over a new connection: {asked}" if asked else ""
    message = f"{label}: lost the connection during {what} ({why}){heard}; nixfab cannot tell whether it finished and undid nothing{guard}. "
    return ActivationUnknown(f"{message}On the host, check {checks}", activation, why)


def settle_lost_switch(
    host: Host,
    unknown: ActivationUnknown,
    answer: str,
    *,
    label: str,
    record: str,
    note: Callable[[str], None],
    when_unreachable: Callable[[str], NixfabError] | None = None,
    guard: str = "",
    before_undo: Callable[[], None] | None = None,
) -> Activation:
    """What became of a switch whose channel closed, from the host's answer over a new connection
    (magic_rollback.activation_status on the switch's record): go on, undo, or say that nobody can tell.

    "finished 0": the activation, with the generation the profile now names.
    "finished N": before_undo (a watchdog's disarm), undo, ActivationFailed.
    Still running, or no record: ActivationUnknown with what the host said
    (and `guard`: what a watchdog will do). Unreachable: when_unreachable's
    error (a watchdog decides), else ActivationUnknown saying that the host
    may be cut off and what to check from its console.
    """
    lost = unknown.activation
    if answer.startswith("unreachable: "):
        reason = answer.removeprefix("unreachable: ")
        if when_unreachable is not None:
            raise when_unreachable(reason)
        raise unreachable_after_switch(label, lost, unknown.why, reason, record=record)
    if not answer.startswith("finished"):
        heard = {"running": "it is still running", "unknown": "the host has no record of how it ended"}.get(answer, answer)
        raise lost_activation(label, lost, unknown.why, asked=heard, record=record, guard=guard)
    status = answer.split()[-1]
    activation = lost
    if lost.action.changes_boot_default:
        activation = replace(lost, generation=parse_generation(read_link(host, commands.SYSTEM_PROFILE) or ""))
    if status == "0":
        note(f"{label}: the switch finished (exit 0) while we were away")
        return activation
    if before_undo is not None:
        before_undo()
    undone = undo(host, activation)
    raise ActivationFailed(f"{label}: switch-to-configuration {lost.action} failed (exit {status}) after the connection dropped; {undone}")


def forget_record(host: Host, record: str) -> None:
    """Remove a switch's record of its exit status (SWITCH_RECORDS_DIR/<token>) once nixfab knows how it ended."""
    try:
        host.run(["rm", "-rf", "--", record], sudo=True)
    except NixfabError:
        pass  # a host that went away keeps a few bytes in /run until it reboots


def unreachable_after_switch(label: str, activation: Activation, why: str, unreachable: str, *, record: str) -> ActivationUnknown:
    """The connection dropped during a switch no watchdog guards, and no new one reaches the host: it may be cut off for good."""
    action, previous = activation.action, activation.previous
    if action.changes_running_system:
        cause = "the new configuration may have cut it off (sshd, firewall or network), or it went down"
    else:
        cause = "it went down, or its network did"
    if action.changes_boot_default and previous.generation is not None:
        back = (
            f"; generation {previous.generation} was current before: `nix-env -p {commands.SYSTEM_PROFILE} --switch-generation "
            f"{previous.generation}`, then `{commands.SYSTEM_PROFILE}/bin/switch-to-configuration {action}` puts it back"
        )
    elif action.changes_running_system and previous.running:
        back = f"; `{previous.running}/bin/switch-to-configuration test` puts back the system that ran before"
    else:
        back = ""
    message = (
        f"{label}: lost the connection during switch-to-configuration {action} of {activation.path} ({why}), and no new SSH "
        f"connection reaches the host ({unreachable}): {cause}. nixfab cannot tell whether the switch finished and undid nothing, "
        f"and no rollback watchdog guards this activation (--no-magic-rollback, or `boot`), so nothing on the host undoes it. "
        f"From the host's console, check `cat {record}/activated` (the switch's exit status), `journalctl -u {activation.unit}`, "
        f"`readlink /run/current-system` and `readlink {commands.SYSTEM_PROFILE}`{back}"
    )
    return ActivationUnknown(message, activation, why)


@dataclass(frozen=True)
class RollbackStep:
    """One step of putting a host back: a profile command as root, or reactivating an earlier system."""

    says: str | None  # for the error message; None for steps not worth mentioning
    profile_argv: tuple[str, ...] = ()
    reactivate: tuple[str, Action] | None = None  # (system path, switch-to-configuration action)

    def argv(self) -> list[str]:
        return commands.switch_to_configuration(*self.reactivate) if self.reactivate else list(self.profile_argv)


def rollback_steps(activation: Activation) -> list[RollbackStep]:
    """What puts back what activate() changed, in order.

    undo() runs these over the deploy's connection; the magic-rollback
    watchdog runs the same steps on the host when no confirmation comes.
    """
    previous = activation.previous
    steps: list[RollbackStep] = []
    if activation.action.changes_boot_default and activation.generation != previous.generation:
        if previous.generation is not None and previous.generation_path:
            steps.append(RollbackStep(None, tuple(commands.switch_system_generation(previous.generation))))
            steps.append(
                RollbackStep(f"profile and boot default back to generation {previous.generation}", reactivate=(previous.generation_path, Action.BOOT))
            )
        if activation.generation is not None and activation.created_generation:
            if previous.generation is None:
                steps.append(RollbackStep("removed the new profile (the host had none)", tuple(commands.remove_system_profile(activation.generation))))
            else:
                steps.append(RollbackStep(None, tuple(commands.delete_system_generation(activation.generation))))
    if activation.action.changes_running_system and previous.running and previous.running != activation.path:
        steps.append(RollbackStep(f"running system back to {previous.running}", reactivate=(previous.running, Action.TEST)))
    return steps


def undo(host: Host, activation: Activation) -> str:
    """Put back what activate() changed; says what it did, for the error message."""
    said = []
    for step in rollback_steps(activation):
        if step.reactivate:
            problem = restore(host, *step.reactivate, unit=f"{activation.unit}-undo-{step.reactivate[1]}")
            said.append(f"{step.says}{problem}")
        else:
            host.run(step.profile_argv, sudo=True)
            if step.says:
                said.append(step.says)
    return "rolled back: " + "; ".join(said) if said else "nothing to roll back"


def restore(host: Host, path: str, action: Action, *, unit: str | None = None) -> str:
    """Reactivate an earlier system; an empty string when that worked."""
    try:
        run_switch_to_configuration(host, path, action, unit=unit)
    except ActivationFailed as failure:
        return f" (but its switch-to-configuration {action} failed too: {failure})"
    except SwitchLost as lost:
        return f" (but the connection dropped during its switch-to-configuration {action}: {lost.why}; check the host)"
    return ""
