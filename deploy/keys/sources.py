"""A host's keys, read on this machine before anything changes on the host.

A key comes from a file here (`source`) or from what a command here prints
(`command`), and is held in memory only: never written to disk, never in a
log or an argv, and never shown (LoadedKey's repr leaves it out).
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.config.inventory import KeySpec
from deploy.errors import KeysFailed, UsageError
from deploy.transport.process import LocalRunner


@dataclass(frozen=True)
class LoadedKey:
    """A key and its content; content None: a dry run, which reads nothing."""

    spec: KeySpec
    content: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> int | None:
        return None if self.content is None else len(self.content)


def origin(spec: KeySpec) -> str:
    """Where a key comes from, for messages: `file /path` or `command pass show db` (as hosts.yaml wrote it)."""
    if spec.source is not None:
        return f"file {spec.source}"
    assert spec.command is not None
    shell_string = len(spec.command) == 3 and spec.command[:2] == ("sh", "-c")
    return f"command `{spec.command[2] if shell_string else shlex.join(spec.command)}`"


def read_file(spec: KeySpec) -> bytes | str:
    """The file's bytes, or why they cannot be had."""
    assert spec.source is not None
    try:
        return spec.source.read_bytes()
    except FileNotFoundError:
        return f"{spec.source} does not exist"
    except IsADirectoryError:
        return f"{spec.source} is a directory"
    except OSError as error:
        return f"{spec.source} cannot be read: {error.strerror or error}"


def run_command(runner: LocalRunner, spec: KeySpec) -> bytes | str:
    """The command's stdout, or why there is none (its exit status and the last line of its stderr)."""
    assert spec.command is not None
    try:
        returncode, stdout, stderr = runner.capture_secret(spec.command, cwd=spec.directory)
    except OSError as error:
        return f"{origin(spec)} could not run: {error.strerror or error}"
    if returncode != 0:
        said = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        return f"{origin(spec)} failed (exit {returncode})" + (f": {said[0]}" if said else "")
    return stdout


def read_keys(runner: LocalRunner, specs: Sequence[KeySpec], *, host: str) -> tuple[LoadedKey, ...]:
    """Every key of the host, read here; KeysFailed names each one that cannot be, and nothing has changed on the host.

    A dry run reads no file and runs no command (the command is shown).
    """
    loaded: list[LoadedKey] = []
    problems: list[str] = []
    for spec in specs:
        if runner.dry_run:
            if spec.command is not None:
                runner.capture_secret(spec.command, cwd=spec.directory)
            loaded.append(LoadedKey(spec))
            continue
        content = read_file(spec) if spec.source is not None else run_command(runner, spec)
        if isinstance(content, str):
            problems.append(f"key {spec.name!r}: {content}")
        else:
            loaded.append(LoadedKey(spec, content))
    if problems:
        raise KeysFailed(f"{host}: {'; '.join(problems)}; nothing was changed on {host}")
    return tuple(loaded)


def copied_with_the_flake(flake: str, source: Path) -> bool:
    """Whether Nix copies `source` into the store with the flake: it is in a local flake's directory, and that flake is
    a `path:` one or in no git checkout (copied whole), or its git checkout tracks the file (a git flake copies those)."""
    from deploy.record.history import git_tracks, local_flake_directory

    directory = local_flake_directory(flake)
    if directory is None:
        return False
    directory, real_source = Path(os.path.realpath(directory)), Path(os.path.realpath(source))
    if not real_source.is_relative_to(directory):
        return False
    if flake.split("#", 1)[0].startswith("path:") or not git_tracks(directory, "flake.nix"):
        return True
    return git_tracks(directory, str(real_source.relative_to(directory)))


def refuse_sources_in_the_flake(flake: str, specs: Iterable[tuple[str, KeySpec]]) -> None:
    """UsageError, before anything runs, for each (host, key) whose source Nix would copy into the store with the flake."""
    exposed = dict.fromkeys(
        f"key {spec.name!r} of {host}: {spec.source}"
        for host, spec in specs
        if spec.source is not None and copied_with_the_flake(flake, spec.source)
    )
    if exposed:
        raise UsageError(
            f"{'; '.join(exposed)}: Nix copies this file into the store with the flake {flake}, where anyone can read it; "
            "keep key files outside the flake's directory (or untracked by git, in a git flake)"
        )
