"""What identifies a locked flake to nixfab's memories: its locked contents, the options it is evaluated with, the Nix.

Under pure evaluation a flake's systems and its check depend on nothing but
what `nix flake metadata --json` locks (the flake's narHash and its inputs'
locks) and the options Nix is given. What was built or checked for one
identity therefore holds until one of those changes: the memories of passed
checks (flake_check) and of built systems (built_systems) are keyed by it.
The run asks Nix once, whoever asks first.

Beyond what Nix's own evaluation cache keys on, the identity includes the
`nix` binary and its configuration (NIX_CONFIG and the nix.conf files), so
that another Nix, or another setting, evaluates again. Impure evaluation, and
a user who turned Nix's evaluation cache off, have no identity: nixfab then
remembers nothing either.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from deploy.nix import commands
from deploy.transport.process import LocalRunner
from deploy.ui.emitter import Emitter
from deploy.ui.events import Event

# Options with which evaluation depends on more than the locked flake, or with which the user asked Nix to evaluate
# afresh: nothing is remembered under them.
UNREMEMBERED_FLAGS = frozenset({"--impure", "--no-pure-eval", "--no-eval-cache", "--recreate-lock-file"})
UNREMEMBERED_SETTINGS = {"pure-eval": "false", "eval-cache": "false"}
# A staged entry lives for the moment its text is written; one this old was left by a run that died meanwhile.
STAGED_FOR_AT_MOST = 3600.0


def remembers(extra: Sequence[str]) -> bool:
    """Whether evaluation under these extra Nix options may be remembered (pure)."""
    for index, option in enumerate(extra):
        if option in UNREMEMBERED_FLAGS:
            return False
        if option == "--option":
            setting, value = _at(extra, index + 1), _at(extra, index + 2)
        elif option.startswith("--"):
            setting, value = option.removeprefix("--"), _at(extra, index + 1)
        else:
            continue
        if setting is not None and UNREMEMBERED_SETTINGS.get(setting) == value:
            return False
    return True


def _at(items: Sequence[str], index: int) -> str | None:
    return items[index] if index < len(items) else None


def nix_configuration_files() -> list[str]:
    """The nix.conf files Nix reads: NIX_CONF_DIR's (/etc/nix), then NIX_USER_CONF_FILES or the XDG ones."""
    files = [os.path.join(os.environ.get("NIX_CONF_DIR", "/etc/nix"), "nix.conf")]
    user_files = os.environ.get("NIX_USER_CONF_FILES")
    if user_files:
        return files + [path for path in user_files.split(":") if path]
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    config_dirs = (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":")
    return files + [os.path.join(directory, "nix", "nix.conf") for directory in [*reversed(config_dirs), config_home] if directory]


def nix_identity() -> str:
    """The `nix` that evaluates and how it is configured: another binary or setting is another identity (no process)."""
    parts: list[str] = [os.environ.get("NIX_CONFIG", "")]
    binary = shutil.which("nix")
    if binary is not None:
        resolved = os.path.realpath(binary)
        try:
            status = os.stat(resolved)
            parts.append(f"{resolved}:{status.st_size}:{status.st_mtime_ns}")
        except OSError:
            parts.append(resolved)
    for path in nix_configuration_files():
        try:
            with open(path, "rb") as configuration:
                parts.append(f"{path}:{hashlib.sha256(configuration.read()).hexdigest()}")
        except OSError:
            continue  # absent: Nix reads none there either
    return "\n".join(parts)


def identity_key(metadata_json: str, extra: Sequence[str] = (), nix: str = "") -> str | None:
    """The identity of a locked flake from `nix flake metadata --json`, the extra options and nix_identity(); None when
    the flake is not locked or the options make evaluation depend on more (pure).

    Nix 2.8 puts the narHash under "locked", later versions also at the top.
    """
    if not remembers(extra):
        return None
    try:
        metadata = json.loads(metadata_json)
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    locked = metadata.get("locked")
    nar_hash = (locked.get("narHash") if isinstance(locked, dict) else None) or metadata.get("narHash")
    if not isinstance(nar_hash, str) or not nar_hash:
        return None
    identity = json.dumps({"narHash": nar_hash, "locks": metadata.get("locks"), "extra": list(extra), "nix": nix}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()


class HeldEvents:
    """Events kept to be said later, by another emitter."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event, /) -> None:
        self.events.append(event)


class LockedFlake:
    """A run's flake and extra options; key() asks Nix for its identity once, from whichever thread asks first."""

    def __init__(self, flake: str, extra: Sequence[str] = ()) -> None:
        self.flake = flake
        self.extra = tuple(extra)
        self._lock = threading.Lock()
        self._asked = False
        self._key: str | None = None
        self._early: threading.Thread | None = None
        self._held: HeldEvents | None = None

    def ask_early(self, runner: LocalRunner) -> None:
        """Start asking now, in a thread, so that the answer is there when the build wants it (within `with`).

        What the question says (its command line, under -v) is held until
        someone asks key(), and then said by that one's runner: the run's own
        log is open by then.
        """
        held = HeldEvents()
        self._held = held
        early = dataclasses.replace(runner, echo=Emitter(held))
        self._early = threading.Thread(target=self._ask, args=(early,), name="flake-metadata", daemon=True)
        self._early.start()

    def _ask(self, runner: LocalRunner) -> None:
        try:
            with self._lock:
                self._ask_once(runner)
        except Exception:  # noqa: BLE001 - out of descriptors, say: no identity this run, so nothing is remembered
            pass

    def __enter__(self) -> LockedFlake:
        return self

    def __exit__(self, *_exception: object) -> None:
        """The early question's process has ended before the run does: no child outlives it."""
        if self._early is not None:
            self._early.join()

    def key(self, runner: LocalRunner) -> str | None:
        """The identity, or None (not locked, impure, a dry run, Nix could not say): then nothing is remembered."""
        with self._lock:
            self._ask_once(runner)
            if self._held is not None:  # the early question's lines, said by the first who wants its answer
                for event in self._held.events:
                    runner.echo.emit(event)
                self._held = None
            return self._key

    def _ask_once(self, runner: LocalRunner) -> None:
        if self._asked:
            return
        self._asked = True  # before asking: a question that failed is not asked again
        if remembers(self.extra):
            result = runner.run(commands.nix_flake_metadata(self.flake, self.extra), show_stderr=False, dry_stdout="{}")
            self._key = identity_key(result.stdout, self.extra, nix_identity()) if result.ok else None


class Memory:
    """What is remembered on this machine per key: a file each in `directory`, holding its text; the `keep` used last kept.

    Forgetting costs only the work again, so a memory that cannot be read or written is no error.
    """

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def recall(self, key: str) -> str | None:
        """key's text, if remembered; recalling it makes it new again, so that what is still used is kept."""
        entry = self.directory / key
        try:
            text = entry.read_text()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            os.utime(entry)
        except OSError:
            pass  # a memory we cannot touch still answers
        return text

    def remember(self, key: str, text: str = "") -> None:
        self.remember_all({key: text})

    def remember_all(self, texts: Mapping[str, str]) -> None:
        """Each key's text, then the oldest forgotten (once for all: a fleet remembers forty at a time)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for key, text in texts.items():
                staged = self.directory / f".{key}.{os.getpid()}.{threading.get_ident()}"
                staged.write_text(text)
                staged.replace(self.directory / key)  # whole or not at all, for a run reading it at the same time
            entries, staged_before = [], time.time() - STAGED_FOR_AT_MOST
            for entry in self.directory.iterdir():
                if not entry.name.startswith("."):
                    entries.append(entry)
                elif _modified(entry) < staged_before:
                    entry.unlink(missing_ok=True)  # staged by a run that died before it was in place
            entries.sort(key=_modified, reverse=True)
            for stale in entries[self.keep:]:
                stale.unlink(missing_ok=True)
        except OSError:
            pass


def _modified(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except OSError:
        return 0.0  # removed meanwhile, by a run that pruned too
