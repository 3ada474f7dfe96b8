"""What `nix-store --import` reads, written here from this machine's store, as `nix-store --export` writes it.

Why not `nix-store --export` itself: a Nix process costs about 20 ms of CPU
before it reads a byte (most of it the dynamic linking of Nix's libraries),
on the deployer that runs every other host's deploy at the same time; for
the few changed paths of a new generation that is most of the copy's work.
What Nix knows of each path (references, deriver, NAR hash) comes from the
`nix path-info --json` the deploy already ran for the closure.

The format is Nix's exportPaths, unchanged since Nix 1.x and what 2.8 and
2.26 write: for each path, 1, its NAR, 0x4558494e, the path, its references,
its deriver ('' for none), 0 (no signature); then 0, in Nix's
serialisation (deploy.nix.wire). A NAR is "nix-archive-1" and the path's tree: a symlink's
target, a file's contents (and whether its owner may execute it), a
directory's entries sorted by name, bytewise.

As `nix-store --export`, it refuses a path whose NAR no longer has the hash
Nix recorded for it, so that a corrupted store does not spread: the path's
trailer is never sent, and the import fails.
"""
from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from deploy.nix.wire import number, string, strings

EXPORT_MAGIC = 0x4558494E
READ_SIZE = 1 << 18


@dataclass(frozen=True)
class StoreObject:
    """What the export says of a store path besides its contents, as Nix recorded it."""

    path: str
    references: tuple[str, ...]  # all of them, itself included when it refers to itself
    deriver: str  # '' when Nix knows none
    nar_sha256: bytes  # the digest of the NAR hash Nix recorded


def nar_sha256(recorded: object) -> bytes | None:
    """The digest of a NAR hash as `nix path-info --json` gives it ("sha256-<base64>", Nix 2.8 to 2.26); None otherwise."""
    if not isinstance(recorded, str) or not recorded.startswith("sha256-"):
        return None
    try:
        digest = base64.b64decode(recorded.removeprefix("sha256-"), validate=True)
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


class ExportFailed(Exception):
    """The export cannot go on: a path changed, or could not be read."""


def nar(path: bytes) -> Iterator[bytes]:
    yield string(b"nix-archive-1")
    yield from tree(path)


def tree(path: bytes) -> Iterator[bytes]:
    status = os.lstat(path)
    yield string(b"(")
    if stat.S_ISLNK(status.st_mode):
        yield string(b"type") + string(b"symlink") + string(b"target") + string(os.readlink(path))
    elif stat.S_ISREG(status.st_mode):
        yield string(b"type") + string(b"regular")
        if status.st_mode & stat.S_IXUSR:
            yield string(b"executable") + string(b"")
        yield string(b"contents") + number(status.st_size)
        read = 0
        with open(path, "rb") as file:
            while chunk := file.read(READ_SIZE):
                read += len(chunk)
                if read > status.st_size:
                    break
                yield chunk
        if read != status.st_size:
            raise ExportFailed(f"{os.fsdecode(path)} changed size while it was read")
        yield b"\0" * (-status.st_size % 8)
    elif stat.S_ISDIR(status.st_mode):
        yield string(b"type") + string(b"directory")
        for name in sorted(os.listdir(path)):
            yield string(b"entry") + string(b"(") + string(b"name") + string(name) + string(b"node")
            yield from tree(os.path.join(path, name))
            yield string(b")")
    else:
        raise ExportFailed(f"{os.fsdecode(path)} is not a file, a directory or a symlink")
    yield string(b")")


def export_stream(objects: Sequence[StoreObject]) -> Iterator[bytes]:
    """The export of these paths, in this order (dependencies first, as the import needs them)."""
    for item in objects:
        yield number(1)
        digest = hashlib.sha256()
        for chunk in nar(os.fsencode(item.path)):
            digest.update(chunk)
            yield chunk
        if digest.digest() != item.nar_sha256:
            raise ExportFailed(f"hash of path '{item.path}' has changed since Nix recorded it")
        yield number(EXPORT_MAGIC) + string(item.path) + strings(sorted(item.references)) + string(item.deriver) + number(0)
    yield number(0)


class ExportReader:
    """export_stream as a stream to read (what the SSH channel is fed), counting what it gave.

    A failure ends the stream early (the import then fails on it) and is kept in `error`, for the copy to say.
    """

    def __init__(self, objects: Sequence[StoreObject], *, describe: str = "(the export, written here)") -> None:
        self._chunks = export_stream(objects)
        self.describe = describe
        self._buffer = bytearray()
        self.count = 0
        self.error: str | None = None

    def read(self, size: int = -1) -> bytes:
        while self.error is None and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
            except (OSError, ExportFailed) as error:
                self.error = str(error) if isinstance(error, ExportFailed) else f"{os.fsdecode(error.filename or '')}: {error.strerror}"
                self._buffer.clear()
        if self.error is not None:
            return b""
        taken = bytes(self._buffer if size < 0 else self._buffer[:size])
        del self._buffer[: len(taken)]
        self.count += len(taken)
        return taken
