"""The one layer that runs commands on this machine.

Every command is echoed before it runs, as flakem's `set -x` did; with
dry_run it is echoed and not run. argv lists go straight to the kernel: no
shell ever sees them, and the echo uses shlex.join so it can be pasted.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 20) -> str:
        text = (self.stderr or self.stdout).rstrip()
        return "\n".join(text.splitlines()[-lines:])


def tab_fields(stdout: str) -> dict[str, str]:
    """`key<TAB>value` lines, as the probe scripts print them."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("\t")
        fields[key] = value.strip()
    return fields


class TextSink(Protocol):
    """What Echo writes to: a text stream such as sys.stderr, or a fleet host's output.HostStream."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass
class Echo:
    """Where one deploy's `+ command` lines, notes and live command output go.

    In a fleet, `stream` is the host's output.HostStream: it prefixes lines
    with the host's name and keeps the full log, including output that is
    captured rather than shown (see `record`).
    """

    stream: TextSink = field(default_factory=lambda: sys.stderr)
    enabled: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def command(self, argv: Sequence[str], *, where: str | None = None, env: Mapping[str, str] | None = None) -> None:
        if not self.enabled:
            return
        prefix = f"+ [{where}] " if where else "+ "
        assignments = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
        self.note(prefix + " ".join([*assignments, shlex.join(argv)]))

    def note(self, message: str) -> None:
        with self.lock:
            print(message, file=self.stream, flush=True)

    def record(self, text: str) -> None:
        record = getattr(self.stream, "record", None)
        if record is not None:
            record(text)


def _tee(source: IO[str], sink: TextSink | None, collected: list[str]) -> None:
    for line in source:
        collected.append(line)
        if sink is not None:
            try:
                sink.write(line)
                sink.flush()
            except (OSError, ValueError):
                pass


@dataclass
class LocalRunner:
    echo: Echo
    dry_run: bool = False
    env: Mapping[str, str] = field(default_factory=dict)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        show_stderr: bool = True,
        dry_stdout: str = "",
        dry_returncode: int = 0,
    ) -> Result:
        """Run argv; stdout is captured, stderr is shown live and kept for errors."""
        extra_env = {**self.env, **(env or {})}
        self.echo.command(argv, env=extra_env)
        if self.dry_run:
            return Result(tuple(argv), dry_returncode, dry_stdout)
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **extra_env},
            )
        except FileNotFoundError:
            return Result(tuple(argv), 127, "", f"{argv[0]}: command not found\n")
        stdout: list[str] = []
        stderr: list[str] = []
        readers = [
            threading.Thread(target=_tee, args=(process.stdout, None, stdout)),
            threading.Thread(target=_tee, args=(process.stderr, self.echo.stream if show_stderr else None, stderr)),
        ]
        for reader in readers:
            reader.start()
        try:
            process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        finally:
            for reader in readers:
                reader.join()
        self.echo.record("".join(stdout) + ("" if show_stderr else "".join(stderr)))
        return Result(tuple(argv), process.returncode, "".join(stdout), "".join(stderr))
