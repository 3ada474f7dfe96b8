"""The deploy journal, the flake revision, and the revision files on a target."""
from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from deploy.config import systems_cache
from deploy.record import history
from deploy.record.history import DeployRecord, Journal

REPO = Path(__file__).resolve().parent.parent
HOSTILE = "a'b\"c $(touch pwned) `touch pwned2` ; rm -rf x \\ \n second line\t%s %n *"


def make_record(host: str = "alpha", **changes: object) -> DeployRecord:
    fields: dict[str, object] = dict(
        started_at="2024-05-01T10:00:00+00:00", local_user="ann", host=host, action="switch", flake="/src/flake",
        revision="0123456789abcdef0123456789abcdef01234567", dirty=False, store_path="/nix/store/abc-nixos-system",
        generation=4, result="ok", duration_seconds=12.5, error=None,
    )
    fields.update(changes)
    return DeployRecord(**fields)  # type: ignore[arg-type]


def git(directory: Path, *argv: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, "-C", str(directory), *argv], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "flake.nix").write_text("{ }\n")
    (repo / "sub" / "flake.nix").write_text("{ }\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


# --- the journal -----------------------------------------------------------------------------


def test_records_round_trip_with_every_field(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "state" / "history.sqlite")
    written = [
        make_record(),
        make_record(host="beta", revision=None, dirty=None, store_path=None, generation=None, result="failed",
                    error="activation failed:\nunit broken.service", duration_seconds=0.25),
        make_record(dirty=True, action="rollback", result="rolled-back"),
    ]
    for record in written:
        journal.record(record)
    assert Journal(journal.path).records() == written
    assert Journal(journal.path).records(host="beta") == [written[1]]
    assert journal.records(limit=2) == written[1:]
    assert journal.records(host="alpha", limit=1) == [written[2]]
    assert journal.records(host="nobody") == []


def test_missing_journal_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "never" / "history.sqlite"
    assert Journal(path).records() == []
    assert not path.exists()


def test_schema_is_versioned_once_and_the_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    for _ in range(3):
        Journal(path).record(make_record())
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(history.SCHEMA_VERSION,)]
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_journal_from_a_newer_nixfab_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    Journal(path).record(make_record())
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE schema_version SET version = ?", (history.SCHEMA_VERSION + 1,))
    with pytest.raises(history.JournalError, match="schema version"):
        Journal(path).record(make_record())


def test_an_unwritable_journal_is_a_nixfab_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(history.JournalError, match="cannot open the deploy journal"):
        Journal(tmp_path / "a-file" / "history.sqlite").record(make_record())


def test_a_corrupt_journal_is_a_journal_error_with_exit_17(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not an SQLite database, just garbage\x00\xff" * 100)
    with pytest.raises(history.JournalError, match="file is not a database") as raised:
        Journal(path).record(make_record())
    assert raised.value.exit_code == 17
    with pytest.raises(history.JournalError, match="file is not a database"):
        Journal(path).records()


def test_a_fleet_hosts_row_is_unfinished_from_its_start_until_it_ends(tmp_path: Path) -> None:
    from deploy.cli.cli import FleetJournal
    from deploy.config.inventory import HostSpec, SshTarget
    from deploy.engine.fleet import HostResult
    from deploy.engine.host_run import HostRun
    from deploy.engine.request import DeployRequest
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    journal = Journal(tmp_path / "history.sqlite")
    fleet_journal = FleetJournal(journal, DeployRequest(flake="/src/flake", action="switch", revision="abc", dirty=False))
    runs = {
        name: HostRun(HostSpec(name=name, ssh=SshTarget(name), attr=name, build_on=name, tags=(), sudo=False, declared=True), Emitter(), LocalRunner(Emitter()))
        for name in ("alpha", "beta", "gamma")
    }
    fleet_journal.started(runs["alpha"])
    fleet_journal.started(runs["beta"])
    # The run is killed here: what the journal holds says so.
    unfinished = journal.records()
    assert [(r.host, r.result, r.action, r.revision) for r in unfinished] == [("alpha", "unfinished", "switch", "abc"), ("beta", "unfinished", "switch", "abc")]
    assert "unfinished" in history.format_history(unfinished)

    fleet_journal.finished(HostResult("alpha", "ok", 3.5, "/nix/store/a-system", 4), runs["alpha"])
    fleet_journal.finished(HostResult("beta", "rolled-back", 2.0, "/nix/store/b-system", 5, error="beta: health check failed"), runs["beta"])
    fleet_journal.finished(HostResult("gamma", "not started", 0.0), runs["gamma"])  # never started: no row
    ended = journal.records()
    assert [(r.host, r.result, r.store_path, r.generation, r.duration_seconds, r.error) for r in ended] == [
        ("alpha", "ok", "/nix/store/a-system", 4, 3.5, None),
        ("beta", "rolled-back", "/nix/store/b-system", 5, 2.0, "beta: health check failed"),
    ]
    assert [r.started_at for r in ended] == [r.started_at for r in unfinished]  # the same rows, rewritten


def test_a_journal_written_before_tokens_and_verdicts_gets_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as connection:  # what schema version 1 was first written as
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (1)")
        connection.execute(
            "CREATE TABLE deploys (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, local_user TEXT NOT NULL, "
            "host TEXT NOT NULL, action TEXT NOT NULL, flake TEXT NOT NULL, revision TEXT, dirty INTEGER, store_path TEXT, "
            "generation INTEGER, result TEXT NOT NULL, duration_seconds REAL NOT NULL, error TEXT)"
        )
        connection.execute(
            "INSERT INTO deploys (started_at, local_user, host, action, flake, result, duration_seconds) VALUES ('t', 'ann', 'alpha', 'switch', '.', 'ok', 1)"
        )
    journal = Journal(path)
    journal.record(make_record(token="0123456789ab"))
    assert [(r.token, r.verdict) for r in journal.records()] == [(None, None), ("0123456789ab", None)]


def test_a_watchdogs_verdict_seen_later_settles_the_row_it_guarded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "history.sqlite")
    rows = {
        "killed": make_record(result="unfinished", token="aaaaaaaaaaaa"),
        "unknown": make_record(result="failed", token="bbbbbbbbbbbb", error="alpha: lost the connection during switch-to-configuration"),
        "killed early": make_record(result="unfinished", token="cccccccccccc"),
        "confirmed": make_record(result="ok", token="dddddddddddd"),
        "boot": make_record(result="failed", action="boot", token="eeeeeeeeeeee"),
        "elsewhere": make_record(host="beta", result="unfinished", token="ffffffffffff"),
        "day-2": make_record(result="failed", action="switch-generation"),
    }
    for record in rows.values():
        journal.record(record)
    # Only guarded deploys (switch, test) that did not end known can have a verdict to learn; the newest first.
    assert journal.awaiting_verdicts(["alpha", "beta", "gamma"]) == {
        "alpha": ["cccccccccccc", "bbbbbbbbbbbb", "aaaaaaaaaaaa"], "beta": ["ffffffffffff"],
    }
    assert journal.record_verdict("alpha", "aaaaaaaaaaaa", "rolled back by the watchdog: profile and boot default back to generation 3", undid=True)
    assert journal.record_verdict("alpha", "bbbbbbbbbbbb", "rolled back by the watchdog: running system back to /nix/store/x", undid=True)
    assert journal.record_verdict("alpha", "cccccccccccc", "the watchdog undid nothing: the profile was not changed", undid=False)
    assert not journal.record_verdict("alpha", "dddddddddddd", "rolled back by the watchdog: ?", undid=True)  # an ok row stays ok
    assert not journal.record_verdict("alpha", "aaaaaaaaaaaa", "again", undid=False)  # once
    assert not journal.record_verdict("alpha", "ffffffffffff", "another host's", undid=True)
    assert [(r.result, r.verdict) for r in journal.records(host="alpha")[:4]] == [
        ("rolled-back", "rolled back by the watchdog: profile and boot default back to generation 3"),
        ("rolled-back", "rolled back by the watchdog: running system back to /nix/store/x"),
        ("interrupted", "the watchdog undid nothing: the profile was not changed"),
        ("ok", None),
    ]
    assert journal.awaiting_verdicts(["alpha"]) == {}
    table = history.format_history(journal.records(host="alpha")[:2])
    assert "\n    error: alpha: lost the connection during switch-to-configuration\n    watchdog: rolled back by the watchdog: running" in table


def test_a_fleet_row_carries_its_runs_token_and_the_verdicts_its_deploy_saw(tmp_path: Path) -> None:
    from deploy.cli.cli import FleetJournal
    from deploy.config.inventory import HostSpec, SshTarget
    from deploy.confirm.magic_rollback import Verdict
    from deploy.engine.fleet import HostResult
    from deploy.engine.host_run import HostRun
    from deploy.engine.request import DeployRequest
    from deploy.transport.process import LocalRunner
    from deploy.ui import Emitter

    journal = Journal(tmp_path / "history.sqlite")
    fleet_journal = FleetJournal(journal, DeployRequest(flake="/src/flake", action="switch"))
    spec = HostSpec(name="alpha", ssh=SshTarget("alpha"), attr="alpha", build_on="alpha", tags=(), sudo=False, declared=True)
    killed, later = (HostRun(spec, Emitter(), LocalRunner(Emitter())) for _ in range(2))
    assert killed.token != later.token and len(killed.token) == 12
    fleet_journal.started(killed)  # and never finished
    fleet_journal.started(later)
    later.verdicts_seen.append(Verdict(killed.token, "rolled back by the watchdog: running system back to /nix/store/x", "watchdog", 0, undid=True))
    fleet_journal.finished(HostResult("alpha", "ok", 1.0, "/nix/store/y", 2), later)
    assert [(r.token, r.result, r.verdict) for r in journal.records()] == [
        (killed.token, "rolled-back", "rolled back by the watchdog: running system back to /nix/store/x (at 1970-01-01 00:00:00Z)"),
        (later.token, "ok", None),
    ]


def test_threads_sharing_one_journal_lose_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "history.sqlite")
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            start.wait()
            for index in range(25):
                journal.record(make_record(host=f"t{worker}", generation=index))
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    records = journal.records()
    assert len(records) == 200
    for worker in range(8):
        assert [r.generation for r in records if r.host == f"t{worker}"] == list(range(25))


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from deploy.record.history import DeployRecord, Journal

    journal = Journal(Path(sys.argv[1]))
    sys.stdin.read()  # the start gate: every writer waits until the test closes its stdin
    for index in range(25):
        journal.record(DeployRecord("2024-05-01T10:00:00+00:00", "ann", sys.argv[2], "switch", "/f", None, None, None, index, "ok", 1.0))
    """
)


def test_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    """8 processes x 25 records into a journal none of them has created yet."""
    path = tmp_path / "fresh" / "history.sqlite"
    writers: list[subprocess.Popen[str]] = []
    try:
        for worker in range(8):
            writers.append(subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path), f"p{worker}"], cwd=REPO,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.close()
        outcomes = [(writer.wait(timeout=120), writer.stderr.read() if writer.stderr else "") for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert outcomes == [(0, "")] * 8
    records = Journal(path).records()
    assert len(records) == 200
    for worker in range(8):
        assert [r.generation for r in records if r.host == f"p{worker}"] == list(range(25))


def test_recording_a_deploy_that_succeeds(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "history.sqlite")
    with history.recording(journal, host="alpha", action="switch", flake="/f", revision="abc", dirty=True) as deploy:
        deploy.store_path, deploy.generation = "/nix/store/x-nixos-system", 7
    [record] = journal.records()
    assert (record.host, record.action, record.result, record.error) == ("alpha", "switch", "ok", None)
    assert (record.store_path, record.generation, record.revision, record.dirty) == ("/nix/store/x-nixos-system", 7, "abc", True)
    assert record.duration_seconds >= 0 and record.started_at.endswith("+00:00")
    assert record.local_user == history.local_user()


def test_recording_a_deploy_that_fails_or_is_interrupted(tmp_path: Path) -> None:
    from deploy.errors import ActivationFailed

    journal = Journal(tmp_path / "history.sqlite")
    with pytest.raises(ActivationFailed):
        with history.recording(journal, host="alpha", action="switch", flake="/f", revision=None, dirty=None):
            raise ActivationFailed("switch-to-configuration failed; rolled back to generation 3")
    with pytest.raises(ActivationFailed):
        with history.recording(journal, host="alpha", action="switch", flake="/f", revision=None, dirty=None) as deploy:
            deploy.result = "rolled-back"
            raise ActivationFailed("broken unit")
    with pytest.raises(KeyboardInterrupt):
        with history.recording(journal, host="beta", action="boot", flake="/f", revision=None, dirty=None):
            raise KeyboardInterrupt
    results = [(r.host, r.result, r.error) for r in journal.records()]
    assert results == [
        ("alpha", "failed", "switch-to-configuration failed; rolled back to generation 3"),
        ("alpha", "rolled-back", "broken unit"),
        ("beta", "interrupted", "interrupted"),
    ]


def test_an_unwritable_journal_does_not_hide_the_deploys_own_error(tmp_path: Path) -> None:
    from deploy.errors import BuildError

    (tmp_path / "a-file").write_text("")
    broken = Journal(tmp_path / "a-file" / "history.sqlite")
    with pytest.raises(BuildError):
        with history.recording(broken, host="a", action="build", flake="/f", revision=None, dirty=None):
            raise BuildError("evaluation failed")
    with pytest.raises(history.JournalError):
        with history.recording(broken, host="a", action="build", flake="/f", revision=None, dirty=None):
            pass


# --- showing it ------------------------------------------------------------------------------


def test_format_history_is_a_table_with_errors_on_their_own_line() -> None:
    text = history.format_history([
        make_record(dirty=True),
        make_record(host="beta", revision=None, dirty=None, generation=None, store_path=None, result="failed",
                    error="activation failed:\n  unit broken", duration_seconds=125),
    ])
    lines = text.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "USER", "HOST", "ACTION", "RESULT", "GEN", "REVISION", "DURATION", "STORE", "PATH"]
    assert lines[1].split() == ["2024-05-01T10:00:00Z", "ann", "alpha", "switch", "ok", "4", "0123456789ab-dirty", "12.5s", "/nix/store/abc-nixos-system"]
    assert lines[2].split() == ["2024-05-01T10:00:00Z", "ann", "beta", "switch", "failed", "-", "-", "2m05s", "-"]
    assert lines[3] == "    error: activation failed: unit broken"
    assert len(lines) == 4
    # Columns line up: every row's HOST starts where the header's does.
    column = lines[0].index("HOST")
    assert lines[1][column:].startswith("alpha") and lines[2][column:].startswith("beta")
    assert history.format_history([]) == "no deploys recorded\n"


def test_history_json_is_every_field() -> None:
    record = make_record(error="x\ny")
    assert json.loads(history.history_json([record])) == [
        {
            "started_at": "2024-05-01T10:00:00+00:00", "local_user": "ann", "host": "alpha", "action": "switch",
            "flake": "/src/flake", "revision": "0123456789abcdef0123456789abcdef01234567", "dirty": False,
            "store_path": "/nix/store/abc-nixos-system", "generation": 4, "result": "ok", "duration_seconds": 12.5,
            "error": "x\ny", "token": None, "verdict": None,
        }
    ]


# --- where the state lives, and which revision a flake is --------------------------------------


def test_state_directory_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "elsewhere"))
    assert history.state_directory() == tmp_path / "elsewhere"
    assert history.journal_path(f"path:{tmp_path}") == tmp_path / "elsewhere" / "history.sqlite"


def test_state_directory_is_at_the_repository_root(monkeypatch: pytest.MonkeyPatch, repository: Path, tmp_path: Path) -> None:
    monkeypatch.delenv("NIXFAB_STATE_DIR", raising=False)
    assert history.state_directory(str(repository / "sub")) == repository / ".nixfab"
    assert history.state_directory(f"git+file://{repository / 'sub'}?ref=main#alpha") == repository / ".nixfab"
    monkeypatch.chdir(repository / "sub")
    assert history.state_directory() == repository / ".nixfab"
    assert history.state_directory("github:owner/flake") == repository / ".nixfab"  # not local: the current directory's
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    # Outside git, never in the directory itself (a path: flake would change with every run): under XDG_STATE_HOME,
    # one directory per flake directory.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    outside = history.state_directory()
    assert outside.parent == tmp_path / "state" / "nixfab" and outside.name.startswith("plain-")
    other = tmp_path / "other" / "plain"
    other.mkdir(parents=True)
    assert history.state_directory(str(other)) == history.state_directory(f"path:{other}") != outside
    assert history.state_directory(str(other)).parent == outside.parent
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert history.state_directory().parent == tmp_path / "home" / ".local" / "state" / "nixfab"


def test_a_path_flake_in_a_checkout_keeps_its_state_outside_it(monkeypatch: pytest.MonkeyPatch, repository: Path, tmp_path: Path) -> None:
    """Nix copies a path: flake's directory whole, untracked files too: .nixfab/ there would go into the store."""
    monkeypatch.delenv("NIXFAB_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    state = history.state_directory(f"path:{repository / 'sub'}#alpha")
    assert state.parent == tmp_path / "state" / "nixfab" and state.name.startswith("sub-")
    assert history.state_directory(f"path:{repository / 'sub'}?dir=.") == state
    # Completion finds the same directory without git.
    assert systems_cache.state_directory(f"path:{repository / 'sub'}#alpha") == str(state)
    assert systems_cache.state_directory(str(repository / "sub")) == str(repository / ".nixfab")


def test_flake_revision_of_a_clean_and_a_dirty_checkout(repository: Path) -> None:
    head = git(repository, "rev-parse", "HEAD").strip()
    assert history.flake_revision(str(repository)) == (head, False)
    assert history.flake_revision(f"path:{repository / 'sub'}#alpha") == (head, False)
    assert history.flake_revision(f"git+file://{repository}?ref=main") == (head, False)
    (repository / "untracked.nix").write_text("{ }\n")
    assert history.flake_revision(str(repository)) == (head, False)  # Nix ignores untracked files too
    (repository / "sub" / "flake.nix").write_text("{ changed = true; }\n")
    assert history.flake_revision(str(repository / "sub")) == (head, True)


def test_flake_revision_when_there_is_none(repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_git = tmp_path / "not-git"
    not_git.mkdir()
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    git(empty, "init", "-q")
    assert history.flake_revision(str(not_git)) == (None, None)
    assert history.flake_revision(str(empty)) == (None, None)
    assert history.flake_revision("github:NixOS/nixpkgs") == (None, None)
    assert history.flake_revision(str(tmp_path / "missing")) == (None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    assert history.flake_revision(str(repository)) == (None, None)


def test_git_queries_are_argv_without_a_shell() -> None:
    assert history.git_head_argv(Path("/a b")) == ["git", "-C", "/a b", "rev-parse", "--verify", "--quiet", "HEAD"]
    assert history.git_dirty_argv(Path("/a b")) == ["git", "-C", "/a b", "status", "--porcelain", "--untracked-files=no"]


# --- the revision files on a target ------------------------------------------------------------


def run_locally(argv: list[str], cwd: Path, *, through_a_shell: bool) -> subprocess.CompletedProcess[str]:
    """Run argv as is, or as the remote layer sends it: one shlex.join'ed line read by a shell."""
    command = ["sh", "-c", shlex.join(argv)] if through_a_shell else argv
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


@pytest.mark.parametrize("through_a_shell", [False, True])
def test_hostile_values_are_written_exactly_and_run_nothing(tmp_path: Path, through_a_shell: bool) -> None:
    directory = tmp_path / "gen $(touch pwned3) 'q'" / "generations"
    payload = {"revision": HOSTILE, "dirty": True, "deployed_by": "ann@$(hostname)", "time": "`date`"}
    result = run_locally(history.revision_record_argv(12, payload, str(directory)), tmp_path, through_a_shell=through_a_shell)
    assert result.returncode == 0, result.stderr
    written = directory / "12.json"
    assert json.loads(written.read_text()) == payload
    assert written.read_text() == json.dumps(payload, sort_keys=True, ensure_ascii=True)
    assert sorted(path.name for path in directory.iterdir()) == ["12.json"]  # no temporary file left
    leftovers = {path.name for path in tmp_path.rglob("*")} & {"pwned", "pwned2", "pwned3"}
    assert leftovers == set()


@pytest.mark.parametrize("through_a_shell", [False, True])
def test_revisions_are_read_back_as_one_mapping(tmp_path: Path, through_a_shell: bool) -> None:
    directory = tmp_path / "var nix" / "generations"
    payloads = {
        3: {"revision": "abc", "dirty": False, "deployed_by": "ann@box", "time": "t1"},
        11: {"revision": HOSTILE, "dirty": None, "deployed_by": "bob@box", "time": "t2"},
    }
    for generation, payload in payloads.items():
        assert run_locally(history.revision_record_argv(generation, payload, str(directory)), tmp_path, through_a_shell=through_a_shell).returncode == 0
    # A later write for the same generation replaces the earlier one.
    payloads[3] = {"revision": "def", "dirty": True, "deployed_by": "ann@box", "time": "t3"}
    assert run_locally(history.revision_record_argv(3, payloads[3], str(directory)), tmp_path, through_a_shell=through_a_shell).returncode == 0
    # Things that are not a generation's record are ignored.
    (directory / "notes.json").write_text('{"revision": "x"}')
    (directory / "7.json").write_text("not json")
    (directory / "8.json").write_text("[1, 2]")
    (directory / "9.txt").write_text("{}")
    result = run_locally(history.revisions_read_argv(str(directory)), tmp_path, through_a_shell=through_a_shell)
    assert result.returncode == 0, result.stderr
    assert history.parse_revisions(result.stdout) == payloads


def test_no_revisions_yet_reads_as_empty(tmp_path: Path) -> None:
    result = run_locally(history.revisions_read_argv(str(tmp_path / "missing")), tmp_path, through_a_shell=True)
    assert (result.returncode, result.stdout) == (0, "")
    assert history.parse_revisions(result.stdout) == {}


def test_revision_argv_is_a_constant_script_with_data_in_arguments() -> None:
    first = history.revision_record_argv(1, {"revision": "a"})
    second = history.revision_record_argv(2, {"revision": "$(reboot)"})
    assert first[:4] == second[:4] == ["sh", "-c", first[2], "sh"]
    assert first[4] == history.TARGET_REVISIONS_DIRECTORY and second[5:] == ['{"revision": "$(reboot)"}', "2"]
    for bad in (-1, True, "3"):
        with pytest.raises(ValueError):
            history.revision_record_argv(bad, {})  # type: ignore[arg-type]


def test_revision_payload_names_who_deployed() -> None:
    payload = history.revision_payload("abc", False, by="ann@box", at="2024-05-01T10:00:00+00:00")
    assert payload == {"revision": "abc", "dirty": False, "deployed_by": "ann@box", "time": "2024-05-01T10:00:00+00:00"}
    assert history.revision_payload(None, None)["deployed_by"].startswith(history.local_user() + "@")


def test_revisions_over_ssh_on_a_lab_host(lab) -> None:  # type: ignore[no-untyped-def]
    """The real path: argv joined by shlex.join, read by the login shell of a simulated NixOS host."""
    lab.up(["alpha"])
    payload = history.revision_payload(HOSTILE, True, by="ann@box", at="t")
    lab.ssh("alpha", history.revision_record_argv(5, payload))
    inside = lab.inside("alpha", ["cat", f"{history.TARGET_REVISIONS_DIRECTORY}/5.json"]).stdout
    assert json.loads(inside) == payload
    private_nix = lab.host("alpha").directory / "nix"
    assert json.loads((private_nix / "var/nix/nixfab/generations/5.json").read_text()) == payload
    assert lab.ssh("alpha", ["sh", "-c", "ls / /root /tmp | grep -c pwned || true"]).stdout.strip() == "0"
    read = lab.ssh("alpha", history.revisions_read_argv())
    assert history.parse_revisions(read.stdout) == {5: payload}
