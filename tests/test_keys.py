"""Keys on this machine: reading their sources, and upload_key.sh itself (run here, into a temporary directory)."""
from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from deploy.config.inventory import KeySpec
from deploy.errors import KeysFailed
from deploy.keys.sources import LoadedKey, read_keys
from deploy.keys.upload import READY, upload_argv, upload_keys, upload_problem
from deploy.model import KeyUpload
from deploy.transport.hosts import LocalHost
from deploy.transport.process import LocalRunner, Result
from deploy.ui import Emitter


def runner(*, dry_run: bool = False) -> tuple[LocalRunner, io.StringIO]:
    shown = io.StringIO()
    return LocalRunner(Emitter.plain(shown), dry_run=dry_run), shown


def test_sources_are_read_here_and_commands_run_in_the_inventorys_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"from a file\x00\xff")
    (tmp_path / "for-command").write_text("from a command")
    specs = [
        KeySpec("a", "/run/keys/a", source=tmp_path / "file"),
        KeySpec("b", "/run/keys/b", command=("cat", "for-command"), directory=tmp_path),
    ]
    here, shown = runner()
    keys = read_keys(here, specs, host="alpha")
    assert [key.content for key in keys] == [b"from a file\x00\xff", b"from a command"]
    assert "from a command" not in shown.getvalue() and "+ cat for-command" in shown.getvalue()
    assert "from a file" not in repr(keys)  # a traceback or a debug print never shows a key


def test_every_key_that_cannot_be_read_is_named_at_once(tmp_path: Path) -> None:
    specs = [
        KeySpec("missing", "/run/keys/m", source=tmp_path / "nope"),
        KeySpec("folder", "/run/keys/f", source=tmp_path),
        KeySpec("failing", "/run/keys/x", command=("sh", "-c", "echo first >&2; echo sealed >&2; exit 3"), directory=tmp_path),
        KeySpec("absent", "/run/keys/y", command=("no-such-program-here",), directory=tmp_path),
    ]
    with pytest.raises(KeysFailed) as caught:
        read_keys(runner()[0], specs, host="alpha")
    assert str(caught.value) == (
        f"alpha: key 'missing': {tmp_path / 'nope'} does not exist; key 'folder': {tmp_path} is a directory; "
        "key 'failing': command `echo first >&2; echo sealed >&2; exit 3` failed (exit 3): sealed; "
        "key 'absent': command `no-such-program-here` failed (exit 127): no-such-program-here: command not found; "
        "nothing was changed on alpha"
    )
    assert caught.value.exit_code == 19


def test_a_dry_run_reads_no_file_and_runs_no_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    specs = [KeySpec("a", "/run/keys/a", source=tmp_path / "nope"), KeySpec("b", "/k", command=("touch", str(marker)), directory=tmp_path)]
    dry, shown = runner(dry_run=True)
    keys = read_keys(dry, specs, host="alpha")
    assert [key.content for key in keys] == [None, None] and not marker.exists()
    assert f"+ touch {marker}" in shown.getvalue()
    assert upload_argv(keys[0])[-1] == "SIZE"


def owner(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_upload_key_writes_the_key_with_its_owner_and_mode_and_makes_a_missing_directory(tmp_path: Path) -> None:
    uid, gid = os.getuid(), os.getgid()
    dest = tmp_path / "new" / "dir" / "key"
    key = LoadedKey(KeySpec("k", str(dest), source=tmp_path, user=str(uid), group=str(gid), mode=0o640), b"s3cret\n")
    notes: list[str] = []
    upload_keys(LocalHost(runner()[0], label="here"), [key], note=notes.append)
    assert dest.read_bytes() == b"s3cret\n" and owner(dest) == (uid, gid, 0o640)
    assert owner(dest.parent)[2] == 0o750 and owner(dest.parent.parent)[2] == 0o755
    assert os.listdir(dest.parent) == ["key"]  # no temporary file left
    assert notes == [f"here: key k uploaded to {dest} (7 bytes, {uid}:{gid} 0640, pre-activation)"]


def test_a_short_upload_leaves_the_old_key_as_it_was(tmp_path: Path) -> None:
    dest = tmp_path / "key"
    dest.write_text("old")
    key = LoadedKey(KeySpec("k", str(dest), source=tmp_path, user=str(os.getuid()), group=str(os.getgid())), b"new12")
    # Only 3 of the 5 bytes arrive, as when the connection dies halfway.
    result = LocalHost(runner()[0]).run_with_secret(upload_argv(key), b"new", describe="(key k)", ready=READY)
    assert result.returncode == 3
    assert upload_problem(key, result) == "only 3 of its 5 bytes arrived; the key was left as it was"
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["key"]


def test_what_upload_key_says_becomes_one_reason() -> None:
    key = LoadedKey(KeySpec("k", "/run/keys/k", source=Path("/x"), user="pg", upload=KeyUpload.PRE_ACTIVATION), b"abc")
    assert upload_problem(key, Result((), 0, f"{READY}\nuploaded 3\n")) is None
    assert upload_problem(key, Result((), 3, "no-user\n")) == (
        "user 'pg' does not exist on the host (if the new system creates it, upload the key post-activation)"
    )
    assert upload_problem(key, Result((), 3, "is-directory\n")) == "/run/keys/k is a directory"
    assert upload_problem(key, Result((), 1, "", "chown: changing ownership: Operation not permitted\n")) == (
        "chown: changing ownership: Operation not permitted"
    )
    assert upload_problem(key, Result((), 0, "")) == "upload_key.sh exited 0"


def test_a_directory_where_the_key_goes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").mkdir()
    key = LoadedKey(KeySpec("k", str(tmp_path / "key"), source=tmp_path, user=str(os.getuid()), group=str(os.getgid())), b"x")
    with pytest.raises(KeysFailed, match=f"key 'k' was not uploaded to {tmp_path / 'key'}: {tmp_path / 'key'} is a directory"):
        upload_keys(LocalHost(runner()[0]), [key], note=lambda text: None)
