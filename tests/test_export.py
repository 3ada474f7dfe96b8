"""deploy.copy.export: the stream nix-store --import reads, written here, byte for byte what `nix-store --export` writes.

Against the real Nix: a tree with every kind of node nix-store --add takes,
and the lab's fixture system (references, one to itself, and a deriver).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.build.build import build_system
from deploy.copy.closure import closure_of
from deploy.copy.export import ExportReader, StoreObject, export_stream
from deploy.lab import write_fixture_flake
from deploy.transport.process import LocalRunner
from deploy.ui import Emitter

needs_nix = pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix is not installed")


def nix_store_export(path: str) -> bytes:
    return subprocess.run(["nix-store", "--export", path], check=True, capture_output=True).stdout


def odd_tree(root: Path) -> Path:
    """Every kind of node, and names and sizes that test the padding and the order."""
    (root / "dir" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "seven").write_bytes(b"1234567")
    (root / "eight").write_bytes(b"12345678")
    (root / "dir" / "deeper" / "big").write_bytes(os.urandom(700_000))  # more than one read
    tool = root / "dir" / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (root / "link").symlink_to("dir/tool")
    (root / "dangling").symlink_to("/nowhere/at/all")
    (root / "B-upper").write_text("sorted before the lower-case names")
    (root / os.fsdecode(b"not-utf8-\xff")).write_text("a name that is not UTF-8")
    return root


@needs_nix
def test_the_export_written_here_is_nix_store_exports_byte_for_byte(tmp_path: Path) -> None:
    runner = LocalRunner(Emitter())
    added = subprocess.run(["nix-store", "--add", str(odd_tree(tmp_path / "odd"))], check=True, capture_output=True, text=True).stdout.strip()
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    system = build_system(runner, f"path:{flake}", "alpha", gc_root=tmp_path / "root")
    for root in (added, system):
        closure = closure_of(runner, root)
        assert root in closure.objects[root].references or root == added  # the system refers to itself
        for path in closure.paths:
            objects = closure.export_of([path])
            assert objects is not None, path
            assert b"".join(export_stream(objects)) == nix_store_export(path), path
    # Several at once: one after the other, then the end.
    closure = closure_of(runner, system)
    objects = closure.export_of(closure.paths)
    assert objects is not None
    reader = ExportReader(objects)
    together = b"".join(iter(lambda: reader.read(1000), b""))
    assert together == b"".join(nix_store_export(path)[:-8] for path in closure.paths) + bytes(8)
    assert reader.count == len(together) and reader.error is None


@needs_nix
def test_a_path_whose_contents_no_longer_have_the_recorded_hash_is_refused_before_its_trailer(tmp_path: Path) -> None:
    runner = LocalRunner(Emitter())
    added = subprocess.run(["nix-store", "--add", str(odd_tree(tmp_path / "odd"))], check=True, capture_output=True, text=True).stdout.strip()
    good = closure_of(runner, added).objects[added]
    corrupted = StoreObject(good.path, good.references, good.deriver, bytes(32))
    reader = ExportReader([corrupted])
    sent = b"".join(iter(lambda: reader.read(1 << 16), b""))
    assert reader.error == f"hash of path '{added}' has changed since Nix recorded it"
    assert len(sent) < len(nix_store_export(added))  # the import never sees the path whole


def test_a_path_that_cannot_be_read_ends_the_stream_and_says_which(tmp_path: Path) -> None:
    reader = ExportReader([StoreObject(str(tmp_path / "gone"), (), "", bytes(32))])
    assert reader.read(1 << 16) == b""
    assert reader.error == f"{tmp_path / 'gone'}: No such file or directory"
