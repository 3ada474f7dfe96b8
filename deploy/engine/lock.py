"""One deploy per host at a time: a lock directory on the target, with who holds it.

The lock lives on the host, in /run, so that deploys from two laptops see
each other and a reboot clears it. The holder refreshes its timestamp while
it works. A lock is stale when its holder is a process on this machine that
no longer exists, or when nobody has refreshed it for STALE_AFTER seconds
(a deploy from another machine that died); a stale lock is cleared and taken.

Taking the lock also lists the rollback watchdogs that have no verdict yet
(a deploy that died left one behind): the new holder lets them decide before
it changes anything (pipeline.host_lock), so a lock is never free for a
change while a watchdog may still revert the host.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from deploy.confirm.magic_rollback import STATE_DIR as WATCHDOG_DIR
from deploy.confirm.magic_rollback import parse_pending
from deploy.engine.preflight import Answers, Questions, parse_answers
from deploy.errors import HostBusy, NixfabError
from deploy.scripts import script
from deploy.transport.hosts import Host

LOCK_DIR = "/run/nixfab/deploy.engine.lock"
HEARTBEAT_SECONDS = 15.0
STALE_AFTER_SECONDS = 90


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat), so a reused pid is not mistaken for ours."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def describe_holder(holder: dict[str, object]) -> str:
    since = holder.get("since")
    when = "?"
    # json.loads takes NaN and 1e300: neither is a time localtime() can show.
    if isinstance(since, (int, float)) and not isinstance(since, bool) and math.isfinite(since):
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since)))
        except (OverflowError, ValueError, OSError):
            when = "?"
    return f"{holder.get('user', '?')}@{holder.get('machine', '?')} (pid {holder.get('pid', '?')}, {holder.get('action', 'deploy')}, since {when})"


def is_stale(holder: dict[str, object], age_seconds: int, this_machine: str) -> bool:
    if age_seconds > STALE_AFTER_SECONDS:
        return True
    pid = holder.get("pid")
    # bool is an int too, but `"pid": true` names no process.
    if holder.get("machine") == this_machine and isinstance(pid, int) and not isinstance(pid, bool):
        return process_start_time(pid) != holder.get("start")
    return False


@dataclass
class HostLock:
    host: Host
    holder_text: str
    cleared_stale: str | None = None
    # Rollback watchdogs without a verdict, by token, with their age: the holder lets them decide first.
    pending_watchdogs: dict[str, int] = field(default_factory=dict)
    # What the deploy asked in the same round trip (preflight.Questions); None when it asked nothing.
    answers: Answers | None = None
    # The flake's revision of the generation made, written by the release (history.revision_record_args).
    revision_record: tuple[str, str, str] | None = None
    # Paths on the host the release removes (what the deploy kept there until it knew how its switch ended).
    leftovers: list[str] = field(default_factory=list)
    _stop: threading.Event | None = None
    released: bool = False  # by release(), or by the confirmation's connection (let_go)

    @property
    def held(self) -> bool:
        """False when the host already had the system and the lock was let go in the same round trip."""
        return not (self.answers is not None and self.answers.current)

    def release_argv(self) -> list[str]:
        """lock_release.sh with what the deploy leaves on the host (the revision, the leftovers): the deploy's last command."""
        record = ("", "", "", "") if self.revision_record is None else (script("write_revision"), *self.revision_record)
        return ["sh", "-c", script("lock_release"), "sh", LOCK_DIR, self.holder_text, script("lock_clear_if_held_by"), *record, *self.leftovers]

    def let_go(self) -> None:
        """Another connection ran release_argv() (the confirmation's, in the same round trip): stop refreshing the lock."""
        if self._stop is not None:
            self._stop.set()
        self.released = True

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if not self.held or self.released:
            return
        self.released = True
        try:
            self.host.run(self.release_argv(), sudo=True)
        except NixfabError:
            pass  # a host that went away (rebooted) lost its /run, and with it the lock


def acquire(host: Host, action: str, questions: Questions | None = None) -> HostLock:
    """Take the host's lock or raise HostBusy naming the holder; clears a stale lock first.

    With questions, the same round trip answers them (HostLock.answers).
    """
    machine = socket.gethostname()
    me = {
        "user": getpass.getuser(),
        "machine": machine,
        "pid": os.getpid(),
        "start": process_start_time(os.getpid()),
        "action": action,
        "since": int(time.time()),
        "token": secrets.token_hex(4),
    }
    holder_text = json.dumps(me, sort_keys=True)
    asked = questions.argv() if questions is not None else []
    cleared: str | None = None
    for _attempt in range(2):
        result = host.run(
            ["sh", "-c", script("preflight"), "sh", LOCK_DIR, holder_text, WATCHDOG_DIR, script("watchdogs_pending"), *asked],
            sudo=True, dry_stdout="acquired\n",
        )
        if not result.ok:
            raise NixfabError(f"{host.label}: cannot take the deploy lock {LOCK_DIR}: {result.tail(1)}")
        lines = result.stdout.splitlines()
        if lines and lines[0] == "acquired":
            pending = [line.removeprefix("pending\t") for line in lines[1:] if line.startswith("pending\t")]
            answers = None
            if questions is not None:
                answers = parse_answers([line for line in lines[1:] if not line.startswith("pending\t")], questions, host.label, dry_run=host.dry_run)
            lock = HostLock(host, holder_text, cleared, parse_pending("\n".join(pending)), answers)
            if not host.dry_run and lock.held:
                lock._stop = start_heartbeat(host)
            return lock
        age = int(lines[1]) if len(lines) > 1 and lines[1].lstrip("-").isdigit() else 0
        held_by = lines[2] if len(lines) > 2 else ""
        try:
            holder = json.loads(held_by)
        except ValueError:
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        if not is_stale(holder, age, machine):
            raise HostBusy(f"{host.label}: another deploy is running: {describe_holder(holder)}; lock {LOCK_DIR}")
        host.run(["sh", "-c", script("lock_clear_if_held_by"), "sh", LOCK_DIR, held_by], sudo=True)
        cleared = describe_holder(holder)
    raise HostBusy(f"{host.label}: the deploy lock {LOCK_DIR} changed hands while a stale one was cleared; try again")


def start_heartbeat(host: Host) -> threading.Event:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                # -c: a lock released meanwhile (on the confirmation's connection, say) is not made again as a file.
                host.run(["touch", "-c", "--", LOCK_DIR], sudo=True)
            except NixfabError:
                return

    threading.Thread(target=beat, name=f"lock-heartbeat-{host.label}", daemon=True).start()
    return stop
