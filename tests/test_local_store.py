"""deploy.transport.local_store: one nix-store --serve answers what nix path-info --json --recursive would, for every host.

Against the real Nix: the lab's fixture system (references, one to itself,
a deriver, a content-addressed path) and a path added with nix-store --add.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.build.build import build_system
from deploy.copy.closure import closures_of
from deploy.errors import RemoteCommandFailed
from deploy.lab import write_fixture_flake
from deploy.transport.local_store import StoreServer, Unanswered, nix32_decode, sri_of
from deploy.transport.process import LocalRunner
from deploy.ui import Emitter

needs_nix = pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix is not installed")


def test_nix32_is_nixs_base32() -> None:
    # `nix hash to-base32` of sha256("") is 0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73.
    assert nix32_decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert sri_of("sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73") == "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert sri_of("sha512:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73") is None
    assert sri_of("sha256:tooshort") is None


def server_pid(store: StoreServer) -> int | None:
    process = store._process
    return process.pid if process is not None else None


@needs_nix
def test_the_servers_closures_are_path_infos_and_it_ends_with_the_run(tmp_path: Path) -> None:
    quiet = LocalRunner(Emitter())
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    systems = [build_system(quiet, f"path:{flake}", name, gc_root=tmp_path / f"root-{name}") for name in ("alpha", "beta")]
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "file").write_text("contents")
    added = subprocess.run(["nix-store", "--add", str(tmp_path / "tree")], check=True, capture_output=True, text=True).stdout.strip()
    store = StoreServer()
    served = LocalRunner(Emitter(), store=store)
    try:
        for roots in ([systems[0]], systems, [added]):
            assert closures_of(served, roots) == closures_of(quiet, roots)
        pid = server_pid(store)
        assert pid is not None  # one process answered all of it
    finally:
        store.close()
    assert server_pid(store) is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped


@needs_nix
def test_a_path_the_store_lacks_ends_the_server_and_nix_path_info_says_why(tmp_path: Path) -> None:
    store = StoreServer()
    runner = LocalRunner(Emitter(), store=store)
    missing = "/nix/store/00000000000000000000000000000000-nixfab-not-there"
    try:
        with pytest.raises(RemoteCommandFailed, match=f"cannot list the closure of {missing}: .*is not valid"):
            closures_of(runner, [missing])
        assert server_pid(store) is None
        with pytest.raises(Unanswered):
            store.closure_infos([missing])  # it is not started again: path-info answers for the rest of the run
    finally:
        store.close()
