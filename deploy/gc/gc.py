"""Garbage collection on a host, as flakem's -reset commands end."""
from __future__ import annotations

from deploy.errors import NixfabError
from deploy.nix import commands
from deploy.transport.hosts import Host
from deploy.transport.process import Result


def collect_garbage(host: Host, delete_older_than: str | None) -> Result:
    result = host.run(commands.collect_garbage(delete_older_than), sudo=True, stream=True)
    if not result.ok:
        raise NixfabError(f"{host.label}: nix-collect-garbage failed: {result.tail(1)}")
    return result
