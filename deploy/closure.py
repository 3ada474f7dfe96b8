"""Move a system closure to its target with `nix copy`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from deploy import commands
from deploy.build import nix_error
from deploy.errors import RemoteCommandFailed
from deploy.hosts import Host
from deploy.process import LocalRunner


def copy_closure(
    runner: LocalRunner,
    path: str,
    *,
    target: Host,
    target_store: str,
    source_store: str | None = None,
    substitute_on_destination: bool = False,
    nix_env: Mapping[str, str],
    extra: Sequence[str] = (),
) -> bool:
    """Copy path's closure to target (from source_store, or this machine); False if it was there."""
    if target.run(commands.check_store_path_valid(path), dry_returncode=1).ok:
        runner.echo.note(f"[{target.label}] {path} is already in the store; nothing to copy")
        return False
    argv = commands.nix_copy(
        [path], to=target_store, source=source_store, substitute_on_destination=substitute_on_destination, extra=extra
    )
    result = runner.run(argv, env=nix_env)
    if not result.ok:
        raise RemoteCommandFailed(f"copying {path} to {target.label} failed: {nix_error(result.stderr)}")
    return True
