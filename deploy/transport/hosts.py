"""What the steps need from a machine: run argv, maybe as root, and say who it is.

RemoteHost (Fabric, in remote.py) and LocalHost (this machine, for `switch`)
both fit, so activation, GC and generation handling are written once.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from deploy.nix.commands import sudo_prefix
from deploy.transport.process import LocalRunner, Result
from deploy.ui import Emitter


class Host(Protocol):
    label: str
    dry_run: bool
    facts: dict[str, bool]  # what probes found out about the host, such as a working systemd-run

    @property
    def echo(self) -> Emitter:
        """Where notes about this host go (its output, its log)."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stream: bool = False,
        dry_stdout: str = "",
        dry_returncode: int = 0,
        timeout: float | None = None,  # seconds; None: the host's default deadline for this kind of command
    ) -> Result: ...

    def run_with_secret(self, argv: Sequence[str], secret: bytes, *, sudo: bool = False, describe: str, ready: str) -> Result:
        """Run argv with `secret` on its stdin, once it printed the line `ready`; the secret is never in argv, shown or logged."""
        ...

    def close(self) -> None: ...


class LocalHost:
    """This machine as a deploy target (`inv switch`), with sudo when not root."""

    def __init__(self, runner: LocalRunner, label: str = "localhost") -> None:
        self.runner = runner
        self.label = label
        self.dry_run = runner.dry_run
        self.facts: dict[str, bool] = {}

    @property
    def echo(self) -> Emitter:
        return self.runner.echo

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stream: bool = False,
        dry_stdout: str = "",
        dry_returncode: int = 0,
        timeout: float | None = None,  # unused: a local command has no peer that can go silent
    ) -> Result:
        if sudo and os.geteuid() != 0:
            argv = [*sudo_prefix(), *argv]
        result = self.runner.run(argv, show_stderr=stream, dry_stdout=dry_stdout, dry_returncode=dry_returncode)
        if stream and result.stdout:
            self.runner.echo.output(result.stdout)
        return result

    def run_with_secret(self, argv: Sequence[str], secret: bytes, *, sudo: bool = False, describe: str, ready: str) -> Result:
        """Here sudo asks on the terminal, never on stdin: the secret can be written at once; the script reads it once `ready`."""
        if sudo and os.geteuid() != 0:
            argv = [*sudo_prefix(), *argv]
        result = self.runner.run_with_secret(argv, secret, describe=describe)
        if self.dry_run:
            return Result(result.argv, 0, f"{ready}\n")
        return result

    def close(self) -> None:
        pass
