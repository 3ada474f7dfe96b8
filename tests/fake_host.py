"""A recording, scripted stand-in for the transport: RecordingHost fits deploy.transport.hosts.Host, RecordingRunner fits LocalRunner.

In the spirit of nixos-rebuild-ng's tests: the engine runs against a fake
that records every argv it is asked to run, in order, and answers from a
table the test writes. Tests then assert the exact command sequence of a step.

Rules match a command either by the name of a remote script (the scripts go
as `sh -c <text of deploy/scripts/NAME.sh> sh ARGS...`, and only the exact
text counts), by an argv prefix, or by a predicate on the argv. The rule added
last that matches answers, so a test can override a fixture's defaults. A
rule's replies are used in turn and the last one repeats. A reply is a Reply, a str (stdout, exit 0), an int (exit
code), or an exception instance (raised, as RemoteHost raises HostUnreachable).
LOST is a channel that closed without an exit status: paramiko reports -1,
and RemoteHost passes it on as the returncode.

Commands no rule matches answer exit 0 with no output; tests assert the whole
transcript, so an unexpected command still fails them.

With dry_run, like RemoteHost and LocalRunner, a call is recorded (dry=True),
answered with its dry_stdout/dry_returncode, and never reaches the table.
"""
from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.scripts import script
from deploy.transport.process import Result
from deploy.ui import Emitter

SCRIPT_NAMES = tuple(sorted(path.stem for path in (Path(__file__).resolve().parent.parent / "deploy" / "scripts").glob("*.sh")))


def sh(name: str, *args: str) -> tuple[str, ...]:
    """The argv that sends deploy/scripts/<name>.sh with args."""
    return ("sh", "-c", script(name), "sh", *args)


def script_name(argv: Sequence[str]) -> str | None:
    """Which deploy/scripts file argv sends, if it is exactly `sh -c <its text> sh ...`."""
    if len(argv) >= 4 and argv[0] == "sh" and argv[1] == "-c" and argv[3] == "sh":
        for name in SCRIPT_NAMES:
            if argv[2] == script(name):
                return name
    return None


def shown(argv: Sequence[str]) -> tuple[str, ...]:
    """argv with each exact script text (at any depth, e.g. under systemd-run) replaced by `<NAME.sh>`, for readable diffs."""
    texts = {script(name): f"<{name}.sh>" for name in SCRIPT_NAMES}
    return tuple(texts.get(word, word) for word in argv)


@dataclass(frozen=True)
class Reply:
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    raises: BaseException | None = None


LOST = Reply(-1)
ReplyLike = Reply | str | int | BaseException


def as_reply(value: ReplyLike) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, BaseException):
        return Reply(raises=value)
    if isinstance(value, bool):
        raise TypeError("a reply is a Reply, stdout (str), an exit code (int) or an exception")
    if isinstance(value, int):
        return Reply(value)
    return Reply(0, value)


@dataclass
class Rule:
    matches: Callable[[Sequence[str]], bool]
    replies: list[Reply]
    what: str
    used: int = 0

    def next_reply(self) -> Reply:
        reply = self.replies[min(self.used, len(self.replies) - 1)]
        self.used += 1
        return reply


@dataclass(frozen=True)
class Call:
    argv: tuple[str, ...]
    sudo: bool = False
    stream: bool = False
    dry: bool = False
    connection: int = 0  # 0: the deploy's own connection; 1, 2...: the fresh ones, in the order they were opened
    env: Mapping[str, str] | None = None  # RecordingRunner only

    @property
    def script(self) -> str | None:
        return script_name(self.argv)

    @property
    def shown(self) -> tuple[str, ...]:
        return shown(self.argv)


@dataclass
class Table:
    """The rules and the transcript, shared by a host and every fresh connection to it."""

    rules: list[Rule] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0

    def add(self, match: str | Sequence[str] | Callable[[Sequence[str]], bool], replies: Sequence[ReplyLike]) -> None:
        if not replies:
            raise ValueError("a rule needs at least one reply")
        if isinstance(match, str):
            if match not in SCRIPT_NAMES:
                raise ValueError(f"no deploy/scripts/{match}.sh")
            name = match
            rule = Rule(lambda argv: script_name(argv) == name, [as_reply(reply) for reply in replies], f"<{name}.sh>")
        elif callable(match):
            rule = Rule(match, [as_reply(reply) for reply in replies], getattr(match, "__name__", "predicate"))
        else:
            prefix = tuple(match)
            rule = Rule(lambda argv: tuple(argv[: len(prefix)]) == prefix, [as_reply(reply) for reply in replies], " ".join(prefix))
        with self.lock:
            self.rules.append(rule)

    def answer(self, call: Call) -> Result:
        with self.lock:
            self.calls.append(call)
            rule = next((rule for rule in reversed(self.rules) if rule.matches(call.argv)), None)
            reply = rule.next_reply() if rule is not None else Reply()
        if reply.raises is not None:
            raise reply.raises
        return Result(call.argv, reply.returncode, reply.stdout, reply.stderr)


class RecordingHost:
    """deploy.transport.hosts.Host for tests: records argv, answers from a table, opens "fresh connections" that share both."""

    def __init__(
        self,
        label: str = "web1",
        *,
        dry_run: bool = False,
        facts: dict[str, bool] | None = None,
        table: Table | None = None,
        connection: int = 0,
    ) -> None:
        self.label = label
        self.dry_run = dry_run
        self.facts: dict[str, bool] = dict(facts or {})
        self.table = table or Table()
        self.connection = connection
        self.closed = 0
        self.opened: list[RecordingHost] = []  # the fresh connections reconnect() made from this one
        self.output = io.StringIO()
        self.echo = Emitter.plain(self.output)  # where show_journal and host_lock write their notes

    # ---- the Host protocol ----

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stream: bool = False,
        dry_stdout: str = "",
        dry_returncode: int = 0,
        timeout: float | None = None,
    ) -> Result:
        assert not isinstance(argv, str), f"argv must be a list of words, not the string {argv!r}"
        assert all(isinstance(word, str) for word in argv), f"argv has a word that is not a str: {argv!r}"
        call = Call(tuple(argv), sudo, stream, self.dry_run, self.connection)
        if self.dry_run:
            with self.table.lock:
                self.table.calls.append(call)
            return Result(call.argv, dry_returncode, dry_stdout)
        return self.table.answer(call)

    def run_with_secret(self, argv: Sequence[str], secret: bytes, *, sudo: bool = False, describe: str, ready: str) -> Result:
        """Recorded as a call with the secret's description (never the secret) after argv; answered from the table."""
        call = Call((*argv, "<", describe), sudo, False, self.dry_run, self.connection)
        if self.dry_run:
            with self.table.lock:
                self.table.calls.append(call)
            return Result(call.argv, 0, f"{ready}\n")
        return self.table.answer(call)

    def close(self) -> None:
        self.closed += 1

    def connect(self) -> None:
        """RemoteHost opens its connection ahead of the first command; here there is nothing to open."""

    # ---- for tests ----

    def on(self, match: str | Sequence[str] | Callable[[Sequence[str]], bool], *replies: ReplyLike) -> RecordingHost:
        """Answer commands that send script `match` (a name) or start with argv `match` with replies, in turn."""
        self.table.add(match, replies or ("",))
        return self

    def reconnect(self) -> RecordingHost:
        """A new connection to the same host (magic rollback's proof): same table and transcript, no facts."""
        with self.table.lock:
            self.table.connections += 1
            number = self.table.connections
        fresh = RecordingHost(self.label, dry_run=self.dry_run, table=self.table, connection=number)
        self.opened.append(fresh)
        return fresh

    @property
    def calls(self) -> list[Call]:
        with self.table.lock:
            return list(self.table.calls)

    @property
    def argvs(self) -> list[tuple[str, ...]]:
        return [call.argv for call in self.calls]

    def shown(self) -> list[tuple[str, ...]]:
        return [call.shown for call in self.calls]

    @property
    def sent(self) -> list[Call]:
        """What would have reached the host: everything but dry-run echoes."""
        return [call for call in self.calls if not call.dry]


class RecordingRunner:
    """deploy.transport.process.LocalRunner for tests: the commands a step runs on this machine (nix path-info, nix copy)."""

    def __init__(self, *, dry_run: bool = False, echo: Emitter | None = None) -> None:
        self.dry_run = dry_run
        self.notes = io.StringIO()  # what the default echo printed
        self.echo = echo or Emitter.plain(self.notes)
        self.env: dict[str, str] = {}
        self.store = None  # no nix-store --serve: closures come from the recorded nix path-info
        self.table = Table()

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        show_stderr: bool = True,
        dry_stdout: str = "",
        dry_returncode: int = 0,
    ) -> Result:
        call = Call(tuple(argv), dry=self.dry_run, env=dict(env or {}))
        self.echo.command(argv, env=env)
        if self.dry_run:
            with self.table.lock:
                self.table.calls.append(call)
            return Result(call.argv, dry_returncode, dry_stdout)
        return self.table.answer(call)

    def on(self, match: str | Sequence[str] | Callable[[Sequence[str]], bool], *replies: ReplyLike) -> RecordingRunner:
        self.table.add(match, replies or ("",))
        return self

    @property
    def calls(self) -> list[Call]:
        with self.table.lock:
            return list(self.table.calls)
