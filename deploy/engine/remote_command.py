"""`inv exec`: one command on every selected host, run as a fleet runs deploys.

The command is an argv (what follows `--`), quoted with shlex.join at the
transport boundary, or one shell string, run as `sh -c STRING`. It runs with
the rights a deploy has on that host: as the login when that is root, else
through sudo (hosts.yaml's `sudo`, which a login other than root always
implies), the password asked once per run. The fleet (engine/fleet.py) runs it --parallel hosts at a
time, each on its own connection, closed as soon as the host is done; each
line a host prints comes prefixed with its name (`alpha | …`), as a deploy's
do. The run's exit code is the one every host's command exited with, else 1.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deploy.engine.fleet import HostResult
from deploy.engine.host_run import DeployOutcome, HostRun
from deploy.engine.pipeline import target_of
from deploy.engine.request import DeployRequest
from deploy.engine.session import Session
from deploy.errors import CommandExited
from deploy.model import Result
from deploy.transport.process import Result as CommandResult

SHELL = ("sh", "-c")


@dataclass(frozen=True)
class RemoteCommand:
    """What runs on each host: an argv, never re-split; a shell string is the argv `sh -c STRING`."""

    argv: tuple[str, ...]

    @classmethod
    def shell(cls, text: str) -> RemoteCommand:
        return cls((*SHELL, text))

    @property
    def name(self) -> str:
        """How errors call it: the program, or `sh -c` for a shell string."""
        return " ".join(SHELL) if self.argv[:2] == SHELL else self.argv[0]


class CommandOnHosts:
    """The fleet's work for `inv exec`: run the command on one host and keep what it printed."""

    def __init__(self, command: RemoteCommand) -> None:
        self.command = command
        self.outputs: dict[str, CommandResult] = {}
        self._lock = threading.Lock()

    def __call__(self, session: Session, request: DeployRequest, run: HostRun, built_here: str | None) -> DeployOutcome:
        name = run.spec.name
        target = target_of(session, request, run)
        # sudo exactly where the host's deploys use it (this machine too: only if hosts.yaml says so for it).
        # Streamed: each line reaches the host's prefixed output as it comes, and a long command has no fixed deadline.
        result = target.run(self.command.argv, sudo=run.spec.sudo, stream=True)
        with self._lock:
            self.outputs[name] = result
        if not result.ok:
            raise CommandExited(f"{name}: {self.command.name} exited {result.returncode}", result.returncode)
        return DeployOutcome(name, "", "", Result.OK)


def exit_code(results: Sequence[HostResult], *, interrupted: bool, hangup: bool = False) -> int:
    """The exit code every host's command exited with (nixfab's own code for a host it never ran on), else 1."""
    if interrupted:
        return 129 if hangup else 130
    codes = {result.exit_code for result in results}
    return codes.pop() if len(codes) == 1 else 1


def results_json(
    command: RemoteCommand, results: Sequence[HostResult], outputs: Mapping[str, CommandResult], *, interrupted: bool, hangup: bool = False
) -> str:
    """The run for scripts: per host its exit code and what the command printed (null where it never ran)."""
    hosts = []
    for result in results:
        output = outputs.get(result.host)
        hosts.append({
            "host": result.host,
            "result": result.result,
            "exit_code": result.exit_code,
            "ran": output is not None,
            "stdout": output.stdout if output is not None else None,
            "stderr": output.stderr if output is not None else None,
            "duration_seconds": result.duration_seconds,
            "error": result.error if output is None else None,  # why it never ran; a command that ran has its exit code
            "log": result.log,
        })
    document = {
        "exit_code": exit_code(results, interrupted=interrupted, hangup=hangup),
        "interrupted": interrupted,
        "command": list(command.argv),
        "hosts": hosts,
    }
    return json.dumps(document, indent=2)


def format_summary(results: Sequence[HostResult], outputs: Mapping[str, CommandResult]) -> str:
    """One line per host: its exit code, how long it took, and why the command never ran where it did not."""
    rows = [("host", "exit", "time", "")]
    for result in results:
        ran = result.host in outputs
        why = "" if ran else str(result.result) if not result.error else result.error.splitlines()[0]
        rows.append((result.host, str(result.exit_code) if ran else "-", f"{result.duration_seconds:.1f}s", why))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join(
        ("  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row[:3])) + ("  " + row[3] if row[3] else "")).rstrip()
        for row in rows
    )


def failure_message(results: Sequence[HostResult], outputs: Mapping[str, CommandResult], code: int) -> str:
    """The run's one error line when its exit code is not 0."""
    if code in (129, 130):
        left = [result.host for result in results if result.result in (Result.INTERRUPTED, Result.NOT_STARTED)]
        how = "hung up (SIGHUP)" if code == 129 else "interrupted"
        return f"{how}; the command did not run on {len(left)} host(s): {', '.join(left)}" if left else how
    if len(results) == 1 and results[0].error:
        return results[0].error
    if len({result.exit_code for result in results}) == 1:
        return f"the command exited {code} on every host ({len(results)})"

    def said(result: HostResult) -> str:
        return str(result.exit_code) if result.host in outputs else str(result.result)

    return "the hosts' exit codes differ: " + ", ".join(f"{result.host} {said(result)}" for result in results)
