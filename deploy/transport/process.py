"""The one layer that runs commands on this machine.

Every command is announced (a CommandRun event, shown as flakem's `set -x`
did) before it runs; with dry_run it is announced and not run. argv lists go
straight to the kernel: no shell ever sees them, and the shown line uses
shlex.join so it can be pasted.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from deploy.ui import Emitter

if TYPE_CHECKING:
    from deploy.transport.local_store import StoreServer


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




@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or SIGHUP that arrives while a child is being started is delivered once it has started.

    Python raises KeyboardInterrupt (HangUp for SIGHUP) wherever the main
    thread is; inside Popen, after the fork, the child would be left running
    with nobody to stop it. (Only the main thread runs signal handlers.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def defer(signum: int, frame: object) -> None:
        caught.append(signum)

    # A handler Python did not install (getsignal says None) could not be put back: such a signal is left alone.
    previous = {number: handler for number in (signal.SIGINT, signal.SIGHUP) if (handler := signal.getsignal(number)) is not None}
    for number in previous:
        signal.signal(number, defer)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for pending in dict.fromkeys(caught):
            signal.raise_signal(pending)  # now, with the caller's handler, where its cleanup covers the child


def _tee(source: IO[str], output: Emitter | None, collected: list[str], shown: Callable[[str], bool] | None = None) -> None:
    """Collect a child's stream line by line; each line is also live output when `output` is given
    (only logged where `shown` says no)."""
    for line in source:
        collected.append(line)
        if output is not None:
            try:
                if shown is None or shown(line):
                    output.output(line)
                else:
                    output.record(line)
            except (OSError, ValueError):
                pass  # a log that cannot be written must not stop the reader: the child would block on a full pipe


class ChildProcesses:
    """The children of runners that work in threads of their own (the build, the flake check).

    Only the main thread hears Ctrl-C and SIGHUP, so a child started in another
    thread would outlive an interrupted run: stop() ends those running and
    refuses to start more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self.stopped = False

    def started(self, process: subprocess.Popen[str]) -> None:
        """Track process, or end it at once when stop() came first."""
        with self._lock:
            if not self.stopped:
                self._running.add(process)
                return
        process.terminate()

    def ended(self, process: subprocess.Popen[str]) -> None:
        with self._lock:
            self._running.discard(process)

    def stop(self, timeout: float = 5.0) -> None:
        """End the running children and wait until they have (SIGKILL after `timeout`): the run may end right after,
        and a child it only signalled could outlive it by the moments Nix takes to stop."""
        with self._lock:
            self.stopped = True
            running = list(self._running)
        for process in running:
            try:
                process.terminate()
            except OSError:
                pass  # it ended meanwhile
        deadline = time.monotonic() + timeout
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class LocalRunner:
    echo: Emitter
    dry_run: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    children: ChildProcesses | None = None  # where the children are tracked, for a runner used outside the main thread
    store: StoreServer | None = None  # the run's nix-store --serve, shared by every host's runner

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        show_stderr: bool = True,
        shown: Callable[[str], bool] | None = None,
        started: Callable[[subprocess.Popen[str]], None] | None = None,
        dry_stdout: str = "",
        dry_returncode: int = 0,
    ) -> Result:
        """Run argv; stdout is captured, stderr is shown live (the lines `shown` accepts; the rest logged) and kept for errors.

        `started` gets the process once it runs: whoever watches it (its memory, say) may end it early.
        """
        extra_env = {**self.env, **(env or {})}
        self.echo.command(argv, env=extra_env)
        if self.dry_run:
            return Result(tuple(argv), dry_returncode, dry_stdout)
        stdout: list[str] = []
        stderr: list[str] = []
        readers: list[threading.Thread] = []
        process: subprocess.Popen[str] | None = None
        try:
            with interrupts_deferred():
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
                if self.children is not None:
                    self.children.started(process)
                if started is not None:
                    started(process)
                readers = [
                    threading.Thread(target=_tee, args=(process.stdout, None, stdout)),
                    threading.Thread(target=_tee, args=(process.stderr, self.echo if show_stderr else None, stderr, shown)),
                ]
                for reader in readers:
                    reader.start()
            process.wait()
        except KeyboardInterrupt:
            if process is not None:
                process.terminate()
                process.wait()
            raise
        finally:
            for reader in readers:
                reader.join()
            if self.children is not None and process is not None:
                self.children.ended(process)
        self.echo.record("".join(stdout) + ("" if show_stderr else "".join(stderr)))
        return Result(tuple(argv), process.returncode, "".join(stdout), "".join(stderr))

    def capture_secret(self, argv: Sequence[str], *, cwd: Path | None = None) -> tuple[int, bytes, str]:
        """Run argv for its stdout, which is a secret: (exit status, stdout, stderr).

        Announced like every command (argv is not the secret: hosts.yaml holds
        it), but its stdout is never shown or logged; its stderr goes to the
        log. Dry: announced, not run, and nothing comes back.
        """
        self.echo.command(argv)
        if self.dry_run:
            return 0, b"", ""
        process: subprocess.Popen[bytes] | None = None
        try:
            with interrupts_deferred():
                try:
                    process = subprocess.Popen(
                        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                        env={**os.environ, **self.env},
                    )
                except FileNotFoundError:
                    return 127, b"", f"{argv[0]}: command not found\n"
                except PermissionError:
                    return 126, b"", f"{argv[0]}: permission denied\n"
            stdout, stderr_bytes = process.communicate()
        except KeyboardInterrupt:
            if process is not None:
                process.terminate()
                process.wait()
            raise
        stderr = stderr_bytes.decode("utf-8", "replace")
        self.echo.record(stderr)
        return process.returncode, stdout, stderr

    def run_with_secret(self, argv: Sequence[str], secret: bytes, *, describe: str) -> Result:
        """Run argv with `secret` as its stdin; `describe` stands for it in the command line shown, and nothing logs it."""
        self.echo.command([*argv, "<", describe])
        if self.dry_run:
            return Result(tuple(argv), 0)
        process: subprocess.Popen[bytes] | None = None
        try:
            with interrupts_deferred():
                try:
                    process = subprocess.Popen(
                        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **self.env}
                    )
                except FileNotFoundError:
                    return Result(tuple(argv), 127, "", f"{argv[0]}: command not found\n")
            stdout_bytes, stderr_bytes = process.communicate(secret)
        except KeyboardInterrupt:
            if process is not None:
                process.terminate()
                process.wait()
            raise
        stdout, stderr = stdout_bytes.decode("utf-8", "replace"), stderr_bytes.decode("utf-8", "replace")
        self.echo.record(stdout + stderr)
        return Result(tuple(argv), process.returncode, stdout, stderr)
