"""The deploy journal, and which flake revision each generation on a target came from.

Locally, every deploy and rollback becomes one row of an SQLite database in the
state directory. Several `inv` processes (and several threads of one parallel
deploy) write to it at once, so each record is one short IMMEDIATE transaction
on its own connection, in WAL mode with a busy timeout: writers queue instead
of failing, and readers never block them.

On the target, `/nix/var/nix/nixfab/generations/<N>.json` says which commit
generation N was built from, in the spirit of nixos-rebuild's
system.configurationRevision, but without changing the system closure. Those
files are written and read by constant shell scripts whose data travel only as
positional arguments, so no value (a revision, a user name) is ever parsed as
shell code.

Nothing here imports Fabric, paramiko, rich or yaml.
"""
from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.config import flakeref, systems_cache
from deploy.errors import JournalError
from deploy.model import Result
from deploy.scripts import script

JOURNAL_FILE_NAME = "history.sqlite"
SCHEMA_VERSION = 1
# Long enough for dozens of parallel deploys to queue behind each other's
# one-row transactions; short enough that a wedged lock still surfaces.
BUSY_TIMEOUT_SECONDS = 30.0

TARGET_REVISIONS_DIRECTORY = "/nix/var/nix/nixfab/generations"

_GENERATION_LINE = re.compile(r"\A([0-9]+)\t(.*)\Z")


@dataclass(frozen=True)
class DeployRecord:
    started_at: str
    local_user: str
    host: str
    action: str
    flake: str
    revision: str | None
    dirty: bool | None
    store_path: str | None
    generation: int | None
    result: Result
    duration_seconds: float
    error: str | None = None
    # The run's token: it names the switch's unit (nixfab-switch-<token>) and the rollback watchdog's verdict on the host.
    token: str | None = None
    # What the rollback watchdog decided, once `inv status` or a later deploy saw its verdict on the host.
    verdict: str | None = None

    def __post_init__(self) -> None:
        # Only Result's strings go into the journal (and come out of it as members); anything else is a bug, refused here.
        try:
            result = Result(self.result)
        except ValueError:
            raise ValueError(f"a deploy's result is one of {', '.join(map(repr, Result))}, not {self.result!r}") from None
        object.__setattr__(self, "result", result)


_COLUMNS = tuple(field.name for field in dataclasses.fields(DeployRecord))

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS deploys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at TEXT NOT NULL,
        local_user TEXT NOT NULL,
        host TEXT NOT NULL,
        action TEXT NOT NULL,
        flake TEXT NOT NULL,
        revision TEXT,
        dirty INTEGER,
        store_path TEXT,
        generation INTEGER,
        result TEXT NOT NULL,
        duration_seconds REAL NOT NULL,
        error TEXT,
        token TEXT,
        verdict TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS deploys_by_host ON deploys (host, id)",
)
# Columns added since schema version 1 was first written; a journal without them gets them, empty. Adding
# nullable columns changes nothing an older nixfab reads (it names its columns), so the version stays 1.
_ADDED_COLUMNS = (("token", "TEXT"), ("verdict", "TEXT"))
# Only these actions arm a rollback watchdog, so only their rows can have a verdict.
_GUARDED_ACTIONS = ("switch", "test")
# How many of a host's newest rows still waiting for a verdict `inv status` asks about.
VERDICTS_ASKED_PER_HOST = 20


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No passwd entry for our uid (some containers): the uid still says who.
        return str(os.getuid())


def deployed_by() -> str:
    return f"{local_user()}@{socket.gethostname()}"


def _git_toplevel(directory: Path) -> Path | None:
    output = _quiet_git(git_toplevel_argv(directory))
    return Path(output.strip()) if output else None


def _checkout_root(directory: str) -> str | None:
    toplevel = _git_toplevel(Path(directory))
    return str(toplevel) if toplevel else None


def state_directory(flake: str = ".") -> Path:
    """Where nixfab keeps the state of runs on `flake` (systems_cache.state_directory), with git finding the checkout,
    so running from a subdirectory still finds the same journal."""
    return Path(systems_cache.state_directory(flake, _checkout_root))


def journal_path(flake: str = ".") -> Path:
    return state_directory(flake) / JOURNAL_FILE_NAME


@contextmanager
def _immediate_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class Journal:
    """The local deploy journal. Cheap to create; each call opens its own connection.

    A connection per call is what makes one Journal safe to share between
    threads (sqlite3 connections are not) and keeps every lock short.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._schema_ready = False

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock
            # is taken up front, where the busy timeout applies, not halfway through.
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise JournalError(f"cannot open the deploy journal {self.path}: {error}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            if not self._schema_ready:
                self._create_schema(connection)
                self._schema_ready = True
            yield connection
        except sqlite3.Error as error:
            raise JournalError(f"deploy journal {self.path}: {error}") from None
        finally:
            connection.close()

    @staticmethod
    def _create_schema(connection: sqlite3.Connection) -> None:
        # WAL persists in the file; switching needs a moment of exclusive access, which
        # the busy timeout does not always cover, hence the few retries.
        for attempt in range(50):
            try:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    connection.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                time.sleep(0.01 * (attempt + 1))
        with _immediate_transaction(connection):
            for statement in _SCHEMA:
                connection.execute(statement)
            have = {row[1] for row in connection.execute("PRAGMA table_info(deploys)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in have:
                    connection.execute(f"ALTER TABLE deploys ADD COLUMN {column} {kind}")
            versions = [row[0] for row in connection.execute("SELECT version FROM schema_version")]
            if not versions:
                connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif max(versions) > SCHEMA_VERSION:
                raise JournalError(
                    f"deploy journal {connection_path(connection)} has schema version {max(versions)}; "
                    f"this nixfab knows up to {SCHEMA_VERSION} (a newer nixfab wrote it)"
                )

    def record(self, record: DeployRecord) -> int:
        """Add one row; returns its id, for update()."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._connection() as connection:
            with _immediate_transaction(connection):
                cursor = connection.execute(f"INSERT INTO deploys ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _values(record))
                return int(cursor.lastrowid or 0)

    def update(self, row: int, record: DeployRecord) -> None:
        """Rewrite row `row` (from record()): how a deploy recorded as unfinished when it started ends."""
        assignments = ", ".join(f"{column} = ?" for column in _COLUMNS)
        with self._connection() as connection:
            with _immediate_transaction(connection):
                cursor = connection.execute(f"UPDATE deploys SET {assignments} WHERE id = ?", (*_values(record), row))
                if cursor.rowcount != 1:
                    raise JournalError(f"deploy journal {self.path}: row {row} is gone; cannot record how the deploy ended")

    def awaiting_verdicts(self, hosts: Sequence[str]) -> dict[str, list[str]]:
        """By host, the tokens of its newest guarded deploys that ended unfinished or failed and whose watchdog's verdict was never seen."""
        if not self.path.exists():
            return {}
        wanted: dict[str, list[str]] = {}
        with self._connection() as connection:
            for host in hosts:
                rows = connection.execute(
                    "SELECT token FROM deploys WHERE host = ? AND token IS NOT NULL AND verdict IS NULL AND result IN (?, ?) "
                    f"AND action IN ({', '.join('?' for _ in _GUARDED_ACTIONS)}) ORDER BY id DESC LIMIT ?",
                    (host, Result.UNFINISHED, Result.FAILED, *_GUARDED_ACTIONS, VERDICTS_ASKED_PER_HOST),
                ).fetchall()
                if rows:
                    wanted[host] = [str(row[0]) for row in rows]
        return wanted

    def record_verdict(self, host: str, token: str, verdict: str, *, undid: bool) -> bool:
        """A rollback watchdog's verdict on deploy `token` to `host`, seen after that deploy ended (or died).

        Only a row that is still unfinished or failed, without a verdict, takes
        it: its watchdog having put something back makes it rolled-back; an
        unfinished one whose watchdog found nothing to undo (it was killed
        before it changed the host) becomes interrupted; a failed one stays
        failed. True when a row changed.
        """
        if not self.path.exists():
            return False
        with self._connection() as connection:
            with _immediate_transaction(connection):
                row = connection.execute(
                    "SELECT id, result FROM deploys WHERE host = ? AND token = ? AND verdict IS NULL AND result IN (?, ?) ORDER BY id DESC",
                    (host, token, Result.UNFINISHED, Result.FAILED),
                ).fetchone()
                if row is None:
                    return False
                was = Result(row[1])
                result = Result.ROLLED_BACK if undid else Result.INTERRUPTED if was == Result.UNFINISHED else was
                connection.execute("UPDATE deploys SET result = ?, verdict = ? WHERE id = ?", (result, verdict, row[0]))
                return True

    def records(self, host: str | None = None, limit: int | None = None) -> list[DeployRecord]:
        """Records in the order they were written, oldest first; `limit` keeps the newest."""
        if not self.path.exists():
            return []
        query = f"SELECT {', '.join(_COLUMNS)} FROM deploys"
        parameters: list[Any] = []
        if host is not None:
            query += " WHERE host = ?"
            parameters.append(host)
        query += " ORDER BY id DESC"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(max(limit, 0))
        with self._connection() as connection:
            rows = connection.execute(query, parameters).fetchall()
        try:
            return [_record_from_row(row) for row in reversed(rows)]
        except ValueError as error:
            raise JournalError(f"deploy journal {self.path}: {error}") from None


def _values(record: DeployRecord) -> tuple[Any, ...]:
    return tuple(int(value) if isinstance(value, bool) else value for value in dataclasses.astuple(record))


def connection_path(connection: sqlite3.Connection) -> str:
    return str(connection.execute("PRAGMA database_list").fetchone()[2])


def _record_from_row(row: Sequence[Any]) -> DeployRecord:
    values = dict(zip(_COLUMNS, row))
    values["dirty"] = None if values["dirty"] is None else bool(values["dirty"])
    return DeployRecord(**values)


@dataclass
class DeployInProgress:
    """What a deploy fills in as it goes; `recording` turns it into a DeployRecord at the end."""

    store_path: str | None = None
    generation: int | None = None
    result: Result = Result.OK


@contextmanager
def recording(
    journal: Journal, *, host: str, action: str, flake: str, revision: str | None, dirty: bool | None
) -> Iterator[DeployInProgress]:
    """Record one deploy, whatever happens: failed with the error's message, or interrupted.

    The error itself propagates unchanged. A journal that cannot be written
    must not hide the deploy's own error, so in that case the JournalError is
    dropped and the original error wins.
    """
    started_at, started = utc_now(), time.monotonic()
    progress = DeployInProgress()
    error_text: str | None = None
    try:
        yield progress
    except KeyboardInterrupt:
        progress.result, error_text = Result.INTERRUPTED, "interrupted"
        raise
    except BaseException as error:
        if progress.result == Result.OK:
            progress.result = Result.FAILED
        error_text = str(error) or type(error).__name__
        raise
    finally:
        record = DeployRecord(
            started_at=started_at, local_user=local_user(), host=host, action=action, flake=flake,
            revision=revision, dirty=dirty, store_path=progress.store_path, generation=progress.generation,
            result=progress.result, duration_seconds=round(time.monotonic() - started, 3), error=error_text,
        )
        try:
            journal.record(record)
        except JournalError:
            if error_text is None:
                raise


# --- the flake's revision, on this machine ---------------------------------------------------


def git_toplevel_argv(directory: Path) -> list[str]:
    return ["git", "-C", str(directory), "rev-parse", "--show-toplevel"]


def git_head_argv(directory: Path) -> list[str]:
    return ["git", "-C", str(directory), "rev-parse", "--verify", "--quiet", "HEAD"]


def git_dirty_argv(directory: Path) -> list[str]:
    # Untracked files are not part of a git flake, so Nix does not count them as dirty; neither do we.
    return ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"]


def git_dirty_directory_argv(directory: Path) -> list[str]:
    # A path: flake is the directory as it is, untracked files too, and nothing outside it.
    return ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=all", "--", "."]


def git_tracks_argv(directory: Path, name: str) -> list[str]:
    """Succeeds when the checkout around `directory` tracks its file `name` (prints it); fails outside git or for an untracked file."""
    return ["git", "-C", str(directory), "ls-files", "--error-unmatch", "--", name]


def git_tracks(directory: Path, name: str) -> bool:
    """Whether the git checkout around `directory` tracks its file `name`; False outside git, or without git."""
    return _quiet_git(git_tracks_argv(directory, name)) is not None


def _quiet_git(argv: Sequence[str]) -> str | None:
    """stdout of a read-only git query, or None if git is missing or says no."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def local_flake_directory(flake: str) -> Path | None:
    """The directory a flake reference points at, if it is a local one (., /x, path:/x, git+file:///x)."""
    directory = flakeref.local_flake_directory(flake)
    return Path(directory) if directory else None


def untracked_flake_checkout(directory: Path) -> Path | None:
    """The root of the git checkout around `directory` when that checkout does not track the flake.nix there; else None."""
    if not (directory / "flake.nix").is_file() or _quiet_git(git_tracks_argv(directory, "flake.nix")) is not None:
        return None
    return _git_toplevel(directory)


def flake_revision(flake: str) -> tuple[str | None, bool | None]:
    """(HEAD commit, dirty?) of the git checkout the deployed flake belongs to; (None, None) when it belongs to none.

    A flake directory that merely sits inside a checkout without being part of it (its flake.nix
    untracked or ignored, as the lab's .lab/flake in nixfab's own checkout) has no revision: the
    checkout's HEAD says nothing about it. A `path:` flake is dirty when anything in its directory,
    untracked files too, differs from HEAD; a git flake when a tracked file of the checkout does.
    """
    directory = local_flake_directory(flake)
    if directory is None:
        return None, None
    if _quiet_git(git_tracks_argv(directory, "flake.nix")) is None:
        return None, None
    head = _quiet_git(git_head_argv(directory))
    if not head or not head.strip():
        return None, None
    status = _quiet_git(git_dirty_directory_argv(directory) if flakeref.copies_every_file(flake) else git_dirty_argv(directory))
    return head.strip(), (None if status is None else bool(status.strip()))


# --- showing the journal ----------------------------------------------------------------------


def short_revision(revision: str | None, dirty: bool | None) -> str:
    if revision is None:
        return "-"
    return revision[:12] + ("-dirty" if dirty else "")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, remainder = divmod(round(seconds), 60)
    return f"{minutes}m{remainder:02d}s"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_history(records: Iterable[DeployRecord]) -> str:
    """A plain text table, oldest first; a failed deploy's error, and its rollback watchdog's verdict, follow on lines of their own."""
    header = ("TIME (UTC)", "USER", "HOST", "ACTION", "RESULT", "GEN", "REVISION", "DURATION", "STORE PATH")
    rows: list[tuple[tuple[str, ...], str | None, str | None]] = []
    for record in records:
        cells: tuple[str, ...] = (
            record.started_at.replace("+00:00", "Z"),
            record.local_user,
            record.host,
            record.action,
            record.result,
            "-" if record.generation is None else str(record.generation),
            short_revision(record.revision, record.dirty),
            _duration(record.duration_seconds),
            record.store_path or "-",
        )
        rows.append((
            tuple(_one_line(cell) for cell in cells),
            _one_line(record.error) if record.error else None,
            _one_line(record.verdict) if record.verdict else None,
        ))
    if not rows:
        return "no deploys recorded\n"
    widths = [max(len(header[i]), *(len(cells[i]) for cells, _, _ in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    lines = [line(header)]
    for cells, error, verdict in rows:
        lines.append(line(cells))
        if error:
            lines.append(f"    error: {error}")
        if verdict:
            lines.append(f"    watchdog: {verdict}")
    return "\n".join(lines) + "\n"


def history_json(records: Iterable[DeployRecord]) -> str:
    return json.dumps([dataclasses.asdict(record) for record in records], indent=2) + "\n"


# --- the revision on the target ---------------------------------------------------------------


def revision_payload(revision: str | None, dirty: bool | None, *, by: str | None = None, at: str | None = None) -> dict[str, Any]:
    return {"revision": revision, "dirty": dirty, "deployed_by": by or deployed_by(), "time": at or utc_now()}


def _check_generation(generation: int) -> int:
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"a generation is a non-negative integer, not {generation!r}")
    return generation


def revision_record_argv(generation: int, payload: dict[str, Any], directory: str = TARGET_REVISIONS_DIRECTORY) -> list[str]:
    """Write payload as <directory>/<generation>.json on the target.

    The script is a constant; the directory, the JSON text and the number are
    its positional parameters, so nothing in them can become shell code even
    after the remote layer joins this argv into one command line.
    """
    return ["sh", "-c", script("write_revision"), "sh", *revision_record_args(generation, payload, directory)]


def revision_record_args(generation: int, payload: dict[str, Any], directory: str = TARGET_REVISIONS_DIRECTORY) -> tuple[str, str, str]:
    """write_revision.sh's arguments: the directory, the JSON text and the generation (pure)."""
    return directory, json.dumps(payload, sort_keys=True, ensure_ascii=True), str(_check_generation(generation))


def revisions_read_argv(directory: str = TARGET_REVISIONS_DIRECTORY) -> list[str]:
    """Print one `N<TAB>json` line per recorded generation (nothing if there are none)."""
    return ["sh", "-c", script("read_revisions"), "sh", directory]


def parse_revisions(stdout: str) -> dict[int, dict[str, Any]]:
    """The output of revisions_read_argv; lines that are not a generation and a JSON object are skipped."""
    revisions: dict[int, dict[str, Any]] = {}
    for line in stdout.splitlines():
        match = _GENERATION_LINE.match(line)
        if not match:
            continue
        try:
            payload = json.loads(match.group(2))
        except ValueError:
            continue
        if isinstance(payload, dict):
            revisions[int(match.group(1))] = payload
    return revisions
