"""Health checks after activation: a command on the target and/or an HTTP URL from here, with retries."""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from deploy.config.inventory import HealthCheck
from deploy.transport.hosts import Host


def command_argv(check: HealthCheck) -> list[str]:
    """The user's command runs in a shell by design; `timeout` bounds it (coreutils, on every NixOS)."""
    assert check.command is not None
    return ["timeout", f"{check.timeout:g}", "sh", "-c", check.command]


def probe_url(url: str, timeout: float) -> str | None:
    """None when the URL answered 2xx, else what went wrong."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:  # noqa: S310 - the user's own URL
            status = int(response.status)
    except urllib.error.HTTPError as error:
        status = error.code
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"GET {url}: {reason}"
    return None if 200 <= status < 300 else f"GET {url} answered {status}"


def attempt(host: Host, check: HealthCheck) -> str | None:
    if check.command is not None:
        result = host.run(command_argv(check))
        if not result.ok:
            detail = result.tail(1)
            return f"`{check.command}` exited {result.returncode}" + (f": {detail}" if detail else "")
    if check.url is not None and not host.dry_run:
        host_problem = probe_url(check.url, check.timeout)
        if host_problem:
            return host_problem
    return None


def run_health_check(host: Host, check: HealthCheck, *, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """None when healthy, else the last problem after every retry."""
    problem: str | None = None
    for attempt_number in range(check.retries + 1):
        if attempt_number:
            sleep(check.interval)
        problem = attempt(host, check)
        if problem is None:
            return None
    return f"{problem} (after {check.retries + 1} attempts)"
