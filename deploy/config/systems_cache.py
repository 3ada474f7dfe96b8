"""The cache of what Nix said about systems/*/meta.nix, for discovery and tab completion.

deploy/config/discovery.py evaluates every meta.nix with one nix-instantiate call and
stores the result here; tab completion runs on every TAB and must never wait
for Nix, so it only reads this file, and on a miss uses the directory listing.

The cache is `.nixfab/systems-cache.json` in the state directory (see
deploy/record/history.py). It holds one entry per flake directory, valid while its
key is unchanged: a SHA-256 over the names of the system directories and the
bytes of each one's meta.nix. The files those meta.nix imported are recorded
with their own hashes, so editing an imported file is a miss too.

Standard library only, and no subprocess: completion imports this module.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from deploy.config.flakeref import copies_every_file, local_flake_directory

SYSTEMS_DIRECTORY = "systems"
SYSTEM_FILE = "default.nix"
META_FILE = "meta.nix"
CACHE_FILE_NAME = "systems-cache.json"
# Bump when the stored evaluation changes shape: an old file is then a miss, never misread.
FORMAT = 1
# Entries for other flake directories kept besides the current one (tests and `--flake` elsewhere add them).
KEEP_OTHER_FLAKES = 15

# Here, not in deploy/record/history.py: completion finds the systems cache too, and must not import sqlite3 and subprocess.
STATE_DIRECTORY_VARIABLE = "NIXFAB_STATE_DIR"
STATE_DIRECTORY_NAME = ".nixfab"


def system_names(flake_dir: str) -> list[str]:
    """The systems flake.nix makes: systems/<name>/ holding default.nix, sorted.

    Real directories only: builtins.readDir reports a symlink as "symlink", which flake.nix skips.
    """
    systems = os.path.join(flake_dir, SYSTEMS_DIRECTORY)
    try:
        entries = list(os.scandir(systems))
    except OSError:
        return []
    return sorted(
        entry.name for entry in entries
        if entry.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(entry.path, SYSTEM_FILE))
    )


def meta_path(flake_dir: str, name: str) -> str:
    return os.path.join(flake_dir, SYSTEMS_DIRECTORY, name, META_FILE)


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None


def cache_key(flake_dir: str, names: Sequence[str]) -> str:
    """SHA-256 of the format, the system names and each meta.nix's bytes (None where there is none)."""
    contents = {name: _file_digest(meta_path(flake_dir, name)) for name in names}
    return hashlib.sha256(json.dumps([FORMAT, contents], sort_keys=True).encode()).hexdigest()


def import_digests(paths: Sequence[str]) -> dict[str, str | None]:
    """The files an evaluation read besides meta.nix, by their hashes (None: it could not be read)."""
    return {path: _file_digest(path) for path in paths}


def nearest_checkout(directory: str) -> str | None:
    """The nearest directory upwards holding `.git` (a directory, or a file in a worktree), as `git rev-parse
    --show-toplevel` finds it without running git. Where the two disagree (git refusing a repository it does not
    trust), completion misses the cache and offers the directory names: never a wrong answer."""
    while True:
        if os.path.exists(os.path.join(directory, ".git")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def state_directory(flake: str, checkout_root: Callable[[str], str | None] = nearest_checkout) -> str:
    """Where nixfab keeps the state of runs on `flake`: $NIXFAB_STATE_DIR, else .nixfab/ at the root of the git checkout
    around the flake's directory (or the current one), else unversioned_state_directory().

    A path: reference is the exception: Nix copies its directory whole, untracked
    files too, so its state is kept outside it even in a checkout.
    deploy/record/history.py passes git's own answer as `checkout_root`.
    """
    configured = os.environ.get(STATE_DIRECTORY_VARIABLE)
    if configured:
        return configured
    start = os.path.abspath(local_flake_directory(flake) or ".")
    root = None if copies_every_file(flake) else checkout_root(start)
    return os.path.join(root, STATE_DIRECTORY_NAME) if root else unversioned_state_directory(start)


def unversioned_state_directory(directory: str) -> str:
    """The state of a flake directory outside any git checkout: $XDG_STATE_HOME/nixfab/<name>-<hash of its path>.

    Never inside the directory: a path: flake is every file in it, so state
    kept there would make each run's flake a new one (another narHash, a missed
    evaluation cache, the flake check again, the logs copied into the store).
    In a checkout, .nixfab/ is untracked and git flakes leave it out.
    """
    configured = os.environ.get("XDG_STATE_HOME", "")
    base = configured if os.path.isabs(configured) else os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha256(directory.encode()).hexdigest()[:16]
    return os.path.join(base, "nixfab", f"{os.path.basename(directory) or 'root'}-{digest}")


def cache_file(state_dir: str) -> str:
    return os.path.join(state_dir, CACHE_FILE_NAME)


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("flakes"), dict):
        return {}
    return document


def load(path: str, flake_dir: str, names: Sequence[str]) -> dict[str, Any] | None:
    """The stored evaluation of every system (name -> what Nix said), or None on a miss."""
    entry = _read(path).get("flakes", {}).get(os.path.abspath(flake_dir))
    if not isinstance(entry, dict) or entry.get("key") != cache_key(flake_dir, names):
        return None
    imports = entry.get("imports")
    systems = entry.get("systems")
    if not isinstance(imports, dict) or not isinstance(systems, dict) or sorted(systems) != sorted(names):
        return None
    if import_digests(list(imports)) != imports:
        return None
    return systems


def store(path: str, flake_dir: str, key: str, systems: Mapping[str, Any], imports: Mapping[str, str | None]) -> None:
    """Write this flake's entry (keeping a few others), atomically: a temporary file renamed over the old one.

    A cache that cannot be written is no error: the next run evaluates again.
    """
    flake = os.path.abspath(flake_dir)
    others = {
        directory: entry for directory, entry in _read(path).get("flakes", {}).items()
        if directory != flake and os.path.isdir(directory)
    }
    flakes = {**dict(list(others.items())[-KEEP_OTHER_FLAKES:]), flake: {"key": key, "imports": dict(imports), "systems": dict(systems)}}
    import tempfile  # here, not at the top: completion imports this module and never writes

    directory = os.path.dirname(path)
    temporary = None
    try:
        os.makedirs(directory, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{CACHE_FILE_NAME}.", suffix=".tmp", dir=directory)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump({"format": FORMAT, "flakes": flakes}, file, sort_keys=True)
        os.replace(temporary, path)
        temporary = None
    except OSError:
        pass  # a read-only or full state directory: no cache this time
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass  # the rename failed and so does the clean-up: a stray temporary file is harmless
