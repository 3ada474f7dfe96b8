"""Make a system current on its host: profile, switch-to-configuration, and undo on failure."""
from __future__ import annotations

from dataclasses import dataclass

from deploy import commands
from deploy.errors import ActivationFailed, NotInStore, RemoteCommandFailed
from deploy.hosts import Host


@dataclass(frozen=True)
class SystemState:
    """Enough of a host's state to put it back."""

    generation: int | None
    generation_path: str | None
    running: str | None


@dataclass(frozen=True)
class Activation:
    path: str
    action: str
    generation: int | None
    previous: SystemState


def parse_generation(link_target: str) -> int | None:
    # The profile points at "system-42-link".
    parts = link_target.strip().rsplit("/", 1)[-1].split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def read_link(host: Host, path: str) -> str | None:
    result = host.run(commands.read_link(path), dry_stdout=f"<{path}>")
    if not result.ok:
        return None
    return result.stdout.strip() or None


def system_state(host: Host) -> SystemState:
    profile_link = read_link(host, commands.SYSTEM_PROFILE)
    generation = parse_generation(profile_link) if profile_link else None
    generation_path = read_link(host, f"{commands.SYSTEM_PROFILE}-{generation}-link") if generation is not None else None
    return SystemState(generation, generation_path, read_link(host, "/run/current-system"))


def systemd_run_works(host: Host) -> bool:
    if "systemd-run" not in host.facts:
        probe = commands.systemd_run(["true"], unit=f"{commands.SWITCH_UNIT}-probe", install_bootloader=False)
        host.facts["systemd-run"] = host.run(probe, sudo=True).ok
    return host.facts["systemd-run"]


def wrap_for_host(host: Host, argv: list[str], action: str) -> list[str]:
    """nixos-rebuild's rule: use systemd-run where it works, a clean env elsewhere."""
    install_bootloader = action in ("switch", "boot")
    if systemd_run_works(host):
        return commands.systemd_run(argv, unit=commands.SWITCH_UNIT, install_bootloader=install_bootloader)
    return commands.plain_environment(argv, install_bootloader=install_bootloader)


def run_switch_to_configuration(host: Host, path: str, action: str) -> None:
    result = host.run(wrap_for_host(host, commands.switch_to_configuration(path, action), action), sudo=True, stream=True)
    if not result.ok:
        raise ActivationFailed(f"{host.label}: switch-to-configuration {action} failed (exit {result.returncode}): {result.tail(1)}")


def activate(host: Host, path: str, action: str) -> Activation:
    """Set the profile (for switch and boot) and run switch-to-configuration.

    On failure the host goes back to its previous generation, boot default
    and running system, and ActivationFailed says what went wrong.
    """
    if not host.run(commands.test_file(f"{path}/nixos-version")).ok:
        raise NotInStore(f"{host.label}: {path} is not a NixOS system on this host (no nixos-version); refusing to activate it")
    previous = system_state(host)
    generation = previous.generation
    if action in ("switch", "boot"):
        result = host.run(commands.set_system_profile(path), sudo=True)
        if not result.ok:
            raise RemoteCommandFailed(f"{host.label}: nix-env --set failed: {result.tail(1)}")
        generation = parse_generation(read_link(host, commands.SYSTEM_PROFILE) or "")
    activation = Activation(path, action, generation, previous)
    try:
        run_switch_to_configuration(host, path, action)
    except ActivationFailed as failure:
        error_output = failure
        undone = undo(host, activation)
        raise ActivationFailed(f"{error_output}; {undone}") from None
    return activation


def undo(host: Host, activation: Activation) -> str:
    """Put back what activate() changed; says what it did, for the error message."""
    previous = activation.previous
    steps = []
    if activation.action in ("switch", "boot") and activation.generation != previous.generation:
        if previous.generation is not None and previous.generation_path:
            host.run(commands.switch_system_generation(previous.generation), sudo=True)
            steps.append(f"profile and boot default back to generation {previous.generation}" + restore(host, previous.generation_path, "boot"))
        if activation.generation is not None:
            if previous.generation is None:
                host.run(commands.remove_system_profile(activation.generation), sudo=True)
                steps.append("removed the new profile (the host had none)")
            else:
                host.run(commands.delete_system_generation(activation.generation), sudo=True)
    if activation.action in ("switch", "test") and previous.running and previous.running != activation.path:
        steps.append(f"running system back to {previous.running}" + restore(host, previous.running, "test"))
    return "rolled back: " + "; ".join(steps) if steps else "nothing to roll back"


def restore(host: Host, path: str, action: str) -> str:
    """Reactivate an earlier system; an empty string when that worked."""
    try:
        run_switch_to_configuration(host, path, action)
    except ActivationFailed as failure:
        return f" (but its switch-to-configuration {action} failed too: {failure})"
    return ""
