"""Magic rollback: a host that the deployer cannot reach again after activation puts itself back.

As in deploy-rs, the proof that a new configuration did not cut the host off
is a *new* SSH connection made after activation. Before activating, a
watchdog is started on the host, detached from our session (a systemd-run
unit where that works). It waits until the activation has finished, then
gives the deployer `confirm_timeout` seconds. Whoever first creates
`<dir>/verdict` decides: the deployer's new connection (confirmed) or the
watchdog (it runs the same rollback steps undo() would).
"""
from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.activate.activation import Activation, rollback_steps, systemd_run_works
from deploy.errors import HostUnreachable, LoginRefused, NixfabError, NotConfirmed
from deploy.nix import commands
from deploy.scripts import script
from deploy.transport.hosts import Host

STATE_DIR = "/run/nixfab/magic-rollback"
# How long the watchdog waits for the activation itself to end before giving up on it and rolling back.
ACTIVATION_LIMIT_SECONDS = 1800

@dataclass(frozen=True)
class Watchdog:
    directory: str
    unit: str
    confirm_timeout: int

    @property
    def activated_marker(self) -> str:
        return f"{self.directory}/activated"

    @property
    def verdict(self) -> str:
        return f"{self.directory}/verdict"


def new_watchdog(confirm_timeout: float) -> Watchdog:
    token = secrets.token_hex(6)
    return Watchdog(f"{STATE_DIR}/{token}", f"nixfab-watchdog-{token}", max(1, round(confirm_timeout)))


def watchdog_argv(watchdog: Watchdog, activation: Activation) -> list[str]:
    steps = [shlex.join(step.argv()) for step in rollback_steps(activation)]
    return ["sh", "-c", script("rollback_watchdog"), "sh", watchdog.directory, str(ACTIVATION_LIMIT_SECONDS), str(watchdog.confirm_timeout), *steps]


def detached(argv: Sequence[str], *, unit: str, use_systemd: bool) -> list[str]:
    """Start argv so that it outlives our SSH session and returns at once."""
    if use_systemd:
        return ["systemd-run", "--collect", "--quiet", "--no-ask-password", f"--unit={unit}", *argv]
    return ["setsid", "-f", "sh", "-c", script("exec_without_stdio"), "sh", *argv]


def mark_activated(watchdog: Watchdog, argv: Sequence[str]) -> list[str]:
    return ["sh", "-c", script("mark_activated"), "sh", watchdog.activated_marker, *argv]


def arm(host: Host, watchdog: Watchdog, activation: Activation) -> None:
    """Start the watchdog before switch-to-configuration runs."""
    start = detached(watchdog_argv(watchdog, activation), unit=watchdog.unit, use_systemd=systemd_run_works(host))
    # Its directory and the watchdog in one round trip.
    started = host.run(["sh", "-c", script("mkdir_then_exec"), "sh", watchdog.directory, *start], sudo=True)
    if not started.ok:
        raise NixfabError(f"{host.label}: cannot start the rollback watchdog: {started.tail(1)}")


def disarm(host: Host, watchdog: Watchdog) -> None:
    """After a failed activation that undo() already handled: the watchdog must not roll back again."""
    try:
        host.run(["mkdir", "-p", "--", watchdog.verdict], sudo=True)
    except NixfabError:
        pass  # unreachable: the watchdog will roll back, which is what we want anyway


def confirm(
    open_fresh: Callable[[], Host],
    watchdog: Watchdog,
    *,
    label: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Prove, over new SSH connections, that the host is still reachable; else report its self-rollback."""
    deadline = clock() + watchdog.confirm_timeout
    last_problem = "no attempt"
    while clock() < deadline:
        fresh = open_fresh()
        try:
            answer = fresh.run(["sh", "-c", script("confirm_activation"), "sh", watchdog.directory], sudo=True, dry_stdout="confirmed\n")
            verdict = answer.stdout.strip() if answer.ok else f"error {answer.tail(1)}"
            if verdict == "confirmed":
                return
            if verdict.startswith("failed"):
                last_problem = f"the activation exited {verdict.split()[-1]}"
                break
            if verdict == "too-late":
                last_problem = "the watchdog had already decided to roll back"
                break
            last_problem = "the activation has not finished" if verdict == "pending" else verdict
        except LoginRefused:
            raise
        except HostUnreachable as problem:
            last_problem = str(problem)
        finally:
            fresh.close()
        sleep(1.0)
    raise NotConfirmed(f"{label}: not confirmed within {watchdog.confirm_timeout}s after activation ({last_problem})")


def await_self_rollback(open_fresh: Callable[[], Host], watchdog: Watchdog, *, timeout: float, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """After a missed confirmation: wait for the watchdog's rollback; the running system it left, if seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = open_fresh()
        try:
            if fresh.run(["test", "-e", f"{watchdog.directory}/rolled-back"], sudo=True).ok:
                return fresh.run(commands.read_link("/run/current-system")).stdout.strip() or None
        except LoginRefused:
            raise
        except HostUnreachable:
            pass
        finally:
            fresh.close()
        sleep(1.0)
    return None
