"""Free space in the Nix store and /boot, before they run out halfway through a deploy.

Checks return warnings for the caller to print; only a copy or build that
actually hit "No space left on device" becomes an error (DiskFull).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from deploy.errors import DiskFull, UsageError
from deploy.nix import commands
from deploy.nix.commands import df_argv
from deploy.transport.process import Result

__all__ = [  # noqa: RUF022 - grouped by purpose: the checks first, then the thresholds
    "DiskSpace", "df_argv", "parse_df", "space_warnings", "check_free_space", "closure_size",
    "is_disk_full", "raise_if_disk_full", "min_free_nix_bytes", "min_free_boot_bytes",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
# The store needs room for the closure and for what nix unpacks next to it;
# /boot needs room for one more kernel and initrd.
MIN_FREE_NIX_MIB = 1024
MIN_FREE_BOOT_MIB = 50
MIN_FREE_NIX_ENV = "NIXFAB_MIN_FREE_NIX_MIB"
MIN_FREE_BOOT_ENV = "NIXFAB_MIN_FREE_BOOT_MIB"
CLOSURE_FACTOR = 2
DISK_FULL_MESSAGE = "No space left on device"
STORE_PATHS = ("/nix", "/nix/store")
BOOT_PATH = "/boot"

_DF_LINE = re.compile(r"^(?P<filesystem>.+?)\s+(?P<blocks>\d+)\s+(?P<used>\d+)\s+(?P<available>\d+)\s+(?P<capacity>\d+%|-)\s+(?P<mount>/.*)$")


class Runs(Protocol):
    """LocalRunner and every Host fit: both take argv and a dry-run stdout."""

    def run(self, argv: Sequence[str], *, dry_stdout: str = "") -> Result: ...


@dataclass(frozen=True)
class DiskSpace:
    path: str  # the path asked about
    filesystem: str
    mount_point: str
    total_bytes: int
    available_bytes: int


def parse_df(stdout: str) -> dict[str, DiskSpace]:
    """Parse commands.df_argv's "PATH<TAB>df -Pk line" output, keyed by the path asked about (pure)."""
    spaces: dict[str, DiskSpace] = {}
    for line in stdout.splitlines():
        path, _, df_line = line.partition("\t")
        match = _DF_LINE.match(df_line.strip())
        if not path or not match:
            continue
        spaces[path] = DiskSpace(
            path=path,
            filesystem=match["filesystem"],
            mount_point=match["mount"],
            total_bytes=int(match["blocks"]) * 1024,
            available_bytes=int(match["available"]) * 1024,
        )
    return spaces


def _mib_from_environment(name: str, default: int, environ: Mapping[str, str]) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise UsageError(f"{name} must be a whole number of MiB, not {value!r}")
    return int(value)


def min_free_nix_bytes(environ: Mapping[str, str] | None = None) -> int:
    return _mib_from_environment(MIN_FREE_NIX_ENV, MIN_FREE_NIX_MIB, os.environ if environ is None else environ) * MIB


def min_free_boot_bytes(environ: Mapping[str, str] | None = None) -> int:
    return _mib_from_environment(MIN_FREE_BOOT_ENV, MIN_FREE_BOOT_MIB, os.environ if environ is None else environ) * MIB


def human_size(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 1024:.1f} KiB"


def is_boot(path: str) -> bool:
    return path == BOOT_PATH or path.startswith(BOOT_PATH + "/")


def space_warnings(
    label: str, spaces: Mapping[str, DiskSpace], needed_bytes: int | None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One warning per path that has less room than it should (pure, given environ).

    /boot wants MIN_FREE_BOOT_MIB; anything else is a store and wants
    MIN_FREE_NIX_MIB or twice the closure's size, whichever is more.
    """
    warnings = []
    for path, space in spaces.items():
        if is_boot(path):
            wanted, why = min_free_boot_bytes(environ), ""
        else:
            floor = min_free_nix_bytes(environ)
            by_closure = CLOSURE_FACTOR * needed_bytes if needed_bytes else 0
            wanted = max(floor, by_closure)
            why = f" ({CLOSURE_FACTOR} x the {human_size(needed_bytes or 0)} closure)" if by_closure > floor else ""
        if space.available_bytes < wanted:
            warnings.append(
                f"{label}: only {human_size(space.available_bytes)} free on {path} "
                f"({space.filesystem} on {space.mount_point}); want at least {human_size(wanted)}{why}"
            )
    return warnings


def check_free_space(host: Runs, paths: Sequence[str], label: str, needed_bytes: int | None = None) -> list[str]:
    """Warnings about too little room on paths of a Host (or a LocalRunner, for this machine).

    Paths that do not exist there (a host without /boot) are skipped; a dry
    run checks nothing.
    """
    result = host.run(df_argv(paths), dry_stdout="")
    if not result.ok:
        return [f"{label}: could not check free space on {', '.join(paths)}: {result.tail(1)}"]
    return space_warnings(label, parse_df(result.stdout), needed_bytes)


def parse_closure_size(stdout: str, path: str) -> int | None:
    """closureSize from `nix path-info --json -S` (pure).

    Nix up to 2.18 prints a list of objects with "path"; 2.19 and later an
    object keyed by path (null for an invalid path).
    """
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    if isinstance(data, dict):
        info = data.get(path)
    elif isinstance(data, list):
        info = next((item for item in data if isinstance(item, dict) and item.get("path") == path), None)
    else:
        info = None
    if not isinstance(info, dict) or info.get("valid") is False:
        return None
    size = info.get("closureSize")
    return size if isinstance(size, int) else None


def closure_size(runner: Runs, path: str) -> int | None:
    """The size of path's closure in the store runner reaches; None when unknown (not built, dry run)."""
    result = runner.run(commands.nix_closure_size(path), dry_stdout="")
    return parse_closure_size(result.stdout, path) if result.ok else None


def is_disk_full(result_or_text: Result | str) -> bool:
    text = result_or_text if isinstance(result_or_text, str) else f"{result_or_text.stdout}\n{result_or_text.stderr}"
    return DISK_FULL_MESSAGE.lower() in text.lower()


def raise_if_disk_full(label: str, result: Result | str) -> None:
    """DiskFull (its own exit code) when a failed command ran out of space."""
    if not is_disk_full(result):
        return
    text = result if isinstance(result, str) else f"{result.stdout}\n{result.stderr}"
    line = next((line.strip() for line in text.splitlines() if DISK_FULL_MESSAGE.lower() in line.lower()), DISK_FULL_MESSAGE)
    raise DiskFull(f"{label}: out of disk space: {line}")
