"""Magic rollback: a host that the deployer cannot reach again after activation puts itself back.

As in deploy-rs, the proof that a new configuration did not cut the host off
is a *new* SSH connection made after activation. Before activating, a
watchdog is started on the host, detached from our session (a systemd-run
unit where that works). It waits until the activation has finished, then
gives the deployer `confirm_timeout` seconds. Whoever first creates
`<dir>/verdict` decides: the deployer's new connection (confirmed), the
deployer's own undo (disarm) or the watchdog, which puts back what
undo() would, but only what still is the system it guards. Its verdict is
left in VERDICTS_DIR/<token>. The README's "The activation protocol" is the
state machine this follows.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.activate.activation import Activation, has_systemd
from deploy.errors import HostUnreachable, LoginRefused, NixfabError, NotConfirmed
from deploy.nix import commands
from deploy.scripts import script
from deploy.transport.hosts import Host
from deploy.transport.process import tab_fields

STATE_DIR = "/run/nixfab/magic-rollback"
# Verdicts outlive the run (and a reboot): status, history and the next deploy read them.
VERDICTS_DIR = "/nix/var/nix/nixfab/verdicts"
# How long the watchdog waits for the activation itself to end before giving up on it and rolling back.
ACTIVATION_LIMIT_SECONDS = 1800

@dataclass(frozen=True)
class Watchdog:
    directory: str
    unit: str
    confirm_timeout: int
    # Seconds the deployer's health checks may take between the activation and the confirmation.
    health_seconds: int = 0

    @property
    def token(self) -> str:
        return self.directory.rsplit("/", 1)[1]

    @property
    def activated_marker(self) -> str:
        return f"{self.directory}/activated"

    @property
    def verdict(self) -> str:
        return f"{self.directory}/verdict"


def new_watchdog(confirm_timeout: float, health_seconds: float = 0, *, token: str | None = None) -> Watchdog:
    """token: the run's own (it names the switch's unit and the journal's row too); a new one when None."""
    token = token or secrets.token_hex(6)
    return Watchdog(f"{STATE_DIR}/{token}", f"nixfab-watchdog-{token}", max(1, round(confirm_timeout)), max(0, round(health_seconds)))


def watchdog_argv(watchdog: Watchdog, activation: Activation) -> list[str]:
    """The watchdog and what it guards: the new system, and the generation and running system it restores.

    It is armed before the profile changes, so it cannot know the new
    generation's number: it reads the profile when it acts, and undoes only
    what still is the system it guards (see rollback_watchdog.sh).
    """
    previous = activation.previous
    flags = [activation.action.changes_boot_default, activation.action.changes_running_system, activation.created_generation]
    return [
        "sh", "-c", script("rollback_watchdog"), "sh", watchdog.directory, str(ACTIVATION_LIMIT_SECONDS),
        str(watchdog.confirm_timeout + watchdog.health_seconds), VERDICTS_DIR, commands.SYSTEM_PROFILE, activation.path,
        "" if previous.generation is None else str(previous.generation), previous.generation_path or "", previous.running or "",
        *("1" if flag else "0" for flag in flags),
    ]


def detached(argv: Sequence[str], *, unit: str, use_systemd: bool) -> list[str]:
    """Start argv so that it outlives our SSH session and returns at once."""
    if use_systemd:
        return ["systemd-run", "--collect", "--quiet", "--no-ask-password", f"--unit={unit}", *argv]
    return ["setsid", "-f", "sh", "-c", script("exec_without_stdio"), "sh", *argv]


def mark_activated(marker: str, argv: Sequence[str]) -> list[str]:
    """argv, recording its exit status in `marker` on the host (the watchdog's, or SWITCH_RECORDS_DIR's when none guards it)."""
    return ["sh", "-c", script("mark_activated"), "sh", marker, *argv]


def arm_argv(host: Host, watchdog: Watchdog, activation: Activation) -> list[str]:
    """What starts the watchdog (its directory, then the watchdog, detached), run by activate.sh before the profile changes."""
    start = detached(watchdog_argv(watchdog, activation), unit=watchdog.unit, use_systemd=has_systemd(host))
    return ["sh", "-c", script("mkdir_then_exec"), "sh", watchdog.directory, *start]


def disarm(host: Host, watchdog: Watchdog) -> None:
    """Before the deployer's own undo(): claim the verdict, so that the watchdog cannot run the same steps at the same time."""
    try:
        host.run(["mkdir", "-p", "--", watchdog.verdict], sudo=True)
    except NixfabError:
        pass  # unreachable: the watchdog will roll back, which is what we want anyway


def confirm(
    open_fresh: Callable[[], Host],
    watchdog: Watchdog,
    *,
    label: str,
    then: Sequence[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Prove, over new SSH connections, that the host is still reachable; else report its self-rollback.

    then: the deploy's last command (its lock's release), run in the same
    round trip once confirmed, when nothing else is left to do on the host.
    True when it ran and succeeded.
    """
    deadline = clock() + watchdog.confirm_timeout
    last_problem = "no attempt"
    while clock() < deadline:
        fresh = open_fresh()
        try:
            argv = ["sh", "-c", script("confirm_activation"), "sh", watchdog.directory, VERDICTS_DIR, *then]
            answer = fresh.run(argv, sudo=True, dry_stdout="confirmed\nended\n" if then else "confirmed\n")
            said = answer.stdout.splitlines() if answer.ok else []
            verdict = said[0].strip() if said else f"error {answer.tail(1)}"
            if verdict == "confirmed":
                return "ended" in said[1:]
            if verdict.startswith("failed"):
                last_problem = f"the activation exited {verdict.split()[-1]}"
                break
            if verdict == "too-late":
                last_problem = "the watchdog had already decided to roll back"
                break
            last_problem = "the activation has not finished" if verdict == "pending" else verdict
        except LoginRefused:
            raise
        except HostUnreachable as problem:
            last_problem = str(problem)
        finally:
            fresh.close()
        sleep(1.0)
    raise NotConfirmed(f"{label}: not confirmed within {watchdog.confirm_timeout}s after activation ({last_problem})")


def await_self_rollback(open_fresh: Callable[[], Host], watchdog: Watchdog, *, timeout: float, sleep: Callable[[float], None] = time.sleep) -> str | None:
    """After a missed confirmation: wait for the watchdog's rollback; the running system it left, if seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = open_fresh()
        try:
            if fresh.run(["test", "-e", f"{watchdog.directory}/rolled-back"], sudo=True).ok:
                return fresh.run(commands.read_link("/run/current-system")).stdout.strip() or None
        except LoginRefused:
            raise
        except HostUnreachable:
            pass
        finally:
            fresh.close()
        sleep(1.0)
    return None


def activation_status(
    open_fresh: Callable[[], Host],
    directory: str,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """After a lost channel: ask the host, over new connections, what became of the activation recorded in `directory`.

    "finished N" (its recorded exit status), "running" (still so at the
    deadline), "unknown" (no record and no process) or "unreachable: why".
    """
    deadline = clock() + timeout
    answer = "unreachable: no attempt"
    while True:
        fresh = open_fresh()
        try:
            reply = fresh.run(["sh", "-c", script("activation_status"), "sh", directory], sudo=True, dry_stdout="finished 0\n")
            answer = reply.stdout.strip() if reply.ok and reply.stdout.strip() else f"unreachable: {reply.tail(1) or 'no answer'}"
        except LoginRefused:
            raise
        except HostUnreachable as problem:
            answer = f"unreachable: {problem}"
        finally:
            fresh.close()
        if answer.startswith("finished") or answer == "unknown" or clock() >= deadline:
            return answer
        sleep(1.0)


@dataclass(frozen=True)
class Verdict:
    """What decided one guarded activation: its verdict file, VERDICTS_DIR/<token> (see rollback_watchdog.sh)."""

    token: str
    text: str  # its words: "confirmed", "rolled back by the watchdog: ...", "the watchdog undid nothing: ..."
    by: str  # "watchdog" or "deployer" (the confirmation)
    at: int | None = None  # when it was written, seconds since the epoch
    system: str | None = None  # the system the watchdog guarded
    generation: int | None = None  # the generation the watchdog rolled back, if it did
    undid: bool = False  # the watchdog put something back

    @property
    def rolled_back(self) -> bool:
        return self.by == "watchdog" and self.undid

    @property
    def when(self) -> str:
        """The time it was written, UTC, for one line of text."""
        if self.at is None:
            return "an unknown time"
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.at))

    def summary(self) -> str:
        """`inv status`'s words for it."""
        if self.by != "watchdog":
            return f"{self.text} at {self.when}"
        if not self.undid:
            return f"watchdog undid nothing at {self.when}"
        what = f"generation {self.generation}" if self.generation is not None else (self.system or "the activation")
        return f"watchdog rolled back {what} at {self.when}"


def is_token(text: str) -> bool:
    """A run's token (secrets.token_hex): only such names are ever asked about, or joined to a path on the host."""
    return bool(text) and all(character in "0123456789abcdef" for character in text)


def parse_verdicts(stdout: str) -> list[Verdict]:
    """read_verdicts.sh's "TOKEN<TAB>MTIME<TAB>LINE" lines, one Verdict per token in the order they came (the newest first).

    A file of `key<TAB>value` lines is today's format; a file of one line of
    words (what earlier nixfab versions wrote) is taken as it is.
    """
    lines: dict[str, list[str]] = {}
    times: dict[str, int | None] = {}
    for line in stdout.splitlines():
        token, _, rest = line.partition("\t")
        mtime, _, text = rest.partition("\t")
        if not is_token(token):
            continue
        if token not in lines:
            lines[token], times[token] = [], int(mtime) if mtime.isdigit() else None
        elif text in lines[token]:
            continue  # the newest was also asked for by name
        lines[token].append(text)
    verdicts = []
    for token, text_lines in lines.items():
        fields = tab_fields("\n".join(text_lines))
        if "verdict" in fields:
            words = fields["verdict"]
            generation = fields.get("generation", "")
            verdicts.append(Verdict(
                token, words, fields.get("by") or "watchdog", times[token], fields.get("system") or None,
                int(generation) if generation.isdigit() else None, fields.get("undid") == "1",
            ))
        else:
            words = " ".join(line.strip() for line in text_lines if line.strip())
            by_watchdog = words.startswith("rolled back by the watchdog")
            verdicts.append(Verdict(token, words, "watchdog" if by_watchdog else "deployer", times[token], undid=by_watchdog))
    return verdicts


def read_verdicts(host: Host, tokens: Sequence[str]) -> list[Verdict]:
    """The verdicts of these runs that the host has (and its newest one, first)."""
    result = host.run(["sh", "-c", script("read_verdicts"), "sh", VERDICTS_DIR, *(t for t in tokens if is_token(t))], sudo=True)
    return parse_verdicts(result.stdout) if result.ok else []


def parse_pending(stdout: str) -> dict[str, int]:
    """`TOKEN<TAB>AGE` lines (watchdogs_pending.sh; preflight.sh tags them `pending<TAB>` after "acquired")."""
    return {token: int(age) if age.lstrip("-").isdigit() else 0 for token, age in tab_fields(stdout).items() if token}


def pending_watchdogs(host: Host) -> dict[str, int]:
    """Watchdogs on the host without a verdict yet, by token, with their age in seconds."""
    result = host.run(["sh", "-c", script("watchdogs_pending"), "sh", STATE_DIR], sudo=True)
    if not result.ok:
        raise NixfabError(f"{host.label}: cannot list rollback watchdogs in {STATE_DIR}: {result.tail(1)}")
    return parse_pending(result.stdout)


def settle_leftovers(
    host: Host,
    pending: dict[str, int],
    *,
    timeout: float,
    note: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[Verdict]:
    """With the host's lock held: let any watchdog an earlier, gone deploy left behind decide now, and wait for it.

    Nobody else can still confirm it (its deployer would hold the lock), so
    the watchdog is told to hurry: it decides as soon as no activation runs,
    and undoes only what still is the system it guards. Returns their
    verdicts (for the journal). Raises HostBusy naming the watchdog when it
    has not decided within `timeout`.
    """
    from deploy.errors import HostBusy

    seen: list[Verdict] = []
    if not pending:
        return seen
    for token in pending:
        note(f"{host.label}: an earlier deploy's rollback watchdog {token} has no verdict; asking it to decide now")
        host.run(["touch", "--", f"{STATE_DIR}/{token}/hurry"], sudo=True)
    deadline = clock() + timeout
    while True:
        still = pending_watchdogs(host)
        decided = [token for token in pending if token not in still]
        if decided:
            verdicts = {verdict.token: verdict for verdict in read_verdicts(host, decided)}
            for token in decided:
                verdict = verdicts.get(token)
                note(f"{host.label}: watchdog {token}: {verdict.text if verdict else 'decided'}")
                if verdict is not None:
                    seen.append(verdict)
        pending = still
        if not pending:
            return seen
        if clock() >= deadline:
            names = ", ".join(f"{token} (armed {age}s ago)" for token, age in pending.items())
            raise HostBusy(
                f"{host.label}: the rollback watchdog {names} of an earlier deploy has no verdict yet; "
                f"see {STATE_DIR}/<token> and journalctl -u nixfab-watchdog-<token>, then try again"
            )
        sleep(1.0)
