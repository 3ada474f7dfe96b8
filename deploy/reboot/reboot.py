"""Reboot a host and know that it came back, on the system we meant."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from deploy.activate.activation import has_systemd
from deploy.errors import HostUnreachable, LoginRefused, NixfabError, RebootTimeout
from deploy.nix import commands
from deploy.transport.hosts import Host
from deploy.transport.process import Result


def poll(
    host: Host,
    argv: Sequence[str],
    *,
    timeout: float,
    interval: float,
    accept: Callable[[Result], bool] = lambda result: True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Run argv over a fresh connection until the host answers and accept() agrees.

    Refused keys are final; anything that looks like a host still booting is retried.
    """
    deadline = clock() + timeout
    last_problem = "no attempt made"
    while True:
        try:
            result = host.run(argv)
            if accept(result):
                return result
            last_problem = "answered, but not yet as expected"
        except LoginRefused:
            raise
        except (HostUnreachable, NixfabError) as problem:
            last_problem = str(problem)
        host.close()
        if clock() + interval > deadline:
            raise RebootTimeout(f"{host.label}: gave up after {timeout:.0f}s ({last_problem})")
        sleep(interval)


def reboot_and_wait(host: Host, *, expected_system: str | None, timeout: float = 300, interval: float = 2) -> str:
    """Reboot, wait for SSH and a new boot id, then check /run/current-system; returns the new boot id."""
    old_boot_id = host.run(commands.read_boot_id(), dry_stdout="<boot id>").stdout.strip()
    reboot = commands.delayed_reboot() if has_systemd(host) else commands.plain_reboot()
    try:
        host.run(reboot, sudo=True)
    except HostUnreachable:
        pass  # the connection may drop before `reboot` returns: that is the point
    host.close()
    if host.dry_run:
        return "<new boot id>"
    result = poll(
        host,
        commands.read_boot_id(),
        timeout=timeout,
        interval=interval,
        accept=lambda result: result.ok and result.stdout.strip() not in ("", old_boot_id),
    )
    new_boot_id = result.stdout.strip()
    if expected_system is not None:
        running = host.run(commands.read_link("/run/current-system")).stdout.strip()
        if running != expected_system:
            raise RebootTimeout(f"{host.label}: rebooted into {running or 'nothing'}, not {expected_system}")
    return new_boot_id


def ssh_wait(host: Host, command: str | None, *, timeout: float, interval: float) -> Result:
    """flakem's ssh-wait, with a timeout and a pause between attempts."""
    argv = ["sh", "-c", command] if command else ["true"]
    return poll(host, argv, timeout=timeout, interval=interval)
