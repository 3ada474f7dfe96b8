"""`nix flake check` and `nix flake update`, in the form the installed Nix understands."""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence

from deploy.build.build import nix_error, trace_hint
from deploy.errors import BuildError, UsageError
from deploy.nix import commands
from deploy.transport.process import LocalRunner

# `nix flake update NAME...` (and `--flake`) arrived in Nix 2.19; before it,
# one input was updated with `nix flake lock --update-input NAME`.
INPUTS_AS_ARGUMENTS_SINCE = (2, 19)

_versions: dict[str, tuple[int, ...]] = {}


def parse_nix_version(text: str) -> tuple[int, ...] | None:
    """(2, 8, 0) from "nix (Nix) 2.8.0", "nix (Nix) 2.19.0pre20231010_dirty" or "nix (Determinate Nix 3.0) 2.26.3" (pure)."""
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?\S*\s*$", first_line)
    if not match:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def nix_version(runner: LocalRunner) -> tuple[int, ...] | None:
    """The local Nix's version, asked once per `nix` binary."""
    binary = shutil.which("nix") or "nix"
    if binary in _versions:
        return _versions[binary]
    result = runner.run(commands.nix_version(), dry_stdout="")
    version = parse_nix_version(result.stdout) if result.ok else None
    if version is not None and not runner.dry_run:
        _versions[binary] = version
    return version


def inputs_are_arguments(version: tuple[int, ...] | None) -> bool:
    # Unknown (a dry run, an odd build): assume a current Nix.
    return version is None or version >= INPUTS_AS_ARGUMENTS_SINCE


def flake_check(runner: LocalRunner, flake: str, extra: Sequence[str] = (), *, show_progress: bool = True) -> None:
    """`nix flake check`; BuildError with Nix's error and the --show-trace hint if it fails.

    show_progress False: what Nix prints (from 2.19 a line per checked configuration, all of the
    flake's) goes to the log only, as a deploy's own step rather than its answer.
    """
    result = runner.run(commands.nix_flake_check(flake, extra), show_stderr=show_progress)
    if not result.ok:
        raise BuildError(f"nix flake check {flake} failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")


def parse_root_inputs(metadata_json: str) -> list[str]:
    """The names of a flake's inputs from `nix flake metadata --json` (pure)."""
    locks = json.loads(metadata_json).get("locks") or {}
    nodes = locks.get("nodes") or {}
    root = nodes.get(locks.get("root", "root")) or {}
    return sorted(root.get("inputs") or {})


def flake_inputs(runner: LocalRunner, flake: str, extra: Sequence[str] = ()) -> list[str]:
    result = runner.run(commands.nix_flake_metadata(flake, extra), dry_stdout="{}")
    if not result.ok:
        raise BuildError(f"reading the inputs of {flake} failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")
    return parse_root_inputs(result.stdout)


def flake_update(runner: LocalRunner, flake: str, inputs: Sequence[str] = (), extra: Sequence[str] = ()) -> None:
    """Update every input of the flake's lock file, or only the named ones.

    A name the flake has no input for is a UsageError that lists the inputs
    it does have, before anything is changed.
    """
    if inputs and not runner.dry_run:
        known = flake_inputs(runner, flake, extra)
        unknown = [name for name in inputs if name not in known]
        if unknown:
            raise UsageError(
                f"{flake} has no input {', '.join(repr(name) for name in unknown)}; its inputs are: {', '.join(known) or 'none'}"
            )
    argv = commands.nix_flake_update(flake, inputs, inputs_are_arguments=inputs_are_arguments(nix_version(runner)), extra=extra)
    result = runner.run(argv)
    if not result.ok:
        raise BuildError(f"updating the lock file of {flake} failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")
