"""One `nix-store --serve` for a run: what this machine's store knows of closures, asked without a Nix process each time.

A fleet lists each host's closure (for its preflight and its export);
`nix path-info --json --recursive` costs about 25 ms of CPU per host, most
of it Nix's start-up, on the deployer that runs every other host's deploy
too. The serve protocol (the one `nix copy --to ssh://` speaks; 2.8 and 2.26
both answer it) asks the same questions of one long-lived process:
QueryClosure (7) and QueryPathInfos (2), in Nix's serialisation (deploy.nix.wire).

Threads take turns (one exchange at a time). Anything unexpected (the
process gone, an answer that is not what the protocol says, a path that is
not valid, which ends the server) closes it for good: the caller then asks
`nix path-info`, which also says what went wrong.
"""
from __future__ import annotations

import base64
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO

from deploy.nix import commands
from deploy.nix.wire import number, strings

SERVE_MAGIC_CLIENT = 0x390C9DEB
SERVE_MAGIC_SERVER = 0x5452EECB
PROTOCOL_VERSION = 0x206  # 2.6: path infos carry the NAR hash (from 2.4), as Nix 2.8 and 2.26 both send them
QUERY_PATH_INFOS = 2
QUERY_CLOSURE = 7
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32 alphabet (no e, o, u, t)


class Unanswered(Exception):
    """The server cannot answer (any more)."""


def nix32_decode(text: str) -> bytes:
    """Nix's base32 (least significant digit last, 5 bits each, little-endian bytes) as bytes (pure)."""
    size = len(text) * 5 // 8
    out = bytearray(size)
    for n, character in enumerate(reversed(text)):
        digit = NIX32.index(character)
        bit = n * 5
        index, shift = divmod(bit, 8)
        out[index] |= (digit << shift) & 0xFF
        if index + 1 < size:
            out[index + 1] |= digit >> (8 - shift)
        elif digit >> (8 - shift):
            raise ValueError(f"not a Nix base32 hash: {text}")
    return bytes(out)


def sri_of(nar_hash: str) -> str | None:
    """`sha256:<nix32>` (as the serve protocol says a NAR hash) as `sha256-<base64>` (as nix path-info --json does); None otherwise."""
    kind, _, digits = nar_hash.partition(":")
    if kind != "sha256" or len(digits) != 52:
        return None
    try:
        return "sha256-" + base64.b64encode(nix32_decode(digits)).decode()
    except ValueError:
        return None


class StoreServer:
    """`nix-store --serve`, started at the first question and ended by close()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._broken = False

    def closure_infos(self, roots: Sequence[str], *, on_start: Callable[[Sequence[str]], None] | None = None) -> list[dict[str, object]]:
        """Every path of the roots' closures as `nix path-info --json --recursive` describes it (path, narSize,
        references, deriver, narHash). Unanswered when the server cannot say. on_start hears the server's argv
        when this question starts it."""
        with self._lock:
            try:
                if self._process is None and not self._broken and on_start is not None:
                    on_start(commands.nix_store_serve())
                self._send(number(QUERY_CLOSURE) + number(0) + strings(roots))
                closure = self._read_strings()
                self._send(number(QUERY_PATH_INFOS) + strings(closure))
                infos = []
                while path := self._read_string():
                    deriver, references = self._read_string(), self._read_strings()
                    self._read_number()  # the download size, which is the NAR size here
                    nar_size, nar_hash = self._read_number(), self._read_string()
                    self._read_string()  # content address
                    self._read_strings()  # signatures
                    infos.append({"path": path, "narSize": nar_size, "references": references, "deriver": deriver or None, "narHash": sri_of(nar_hash)})
            except (OSError, ValueError, struct.error, Unanswered) as error:
                self._end()
                raise Unanswered(str(error)) from None
        if {info["path"] for info in infos} != set(closure):
            raise Unanswered("the store did not describe every path of the closure")
        return infos

    def close(self) -> None:
        with self._lock:
            self._end()

    def _end(self) -> None:
        self._broken = True
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)  # its stdin closed: it ends
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._broken:
            raise Unanswered("the store's server ended")
        if self._process is None:
            # Nix's complaint is not shown: when the server fails, nix path-info (the fallback) says why, in one line.
            process = subprocess.Popen(commands.nix_store_serve(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self._process = process
            assert process.stdin is not None
            process.stdin.write(number(SERVE_MAGIC_CLIENT) + number(PROTOCOL_VERSION))
            process.stdin.flush()
            if self._read_number() != SERVE_MAGIC_SERVER:
                raise Unanswered("nix-store --serve does not speak the serve protocol")
            if self._read_number() >> 8 != PROTOCOL_VERSION >> 8:
                raise Unanswered("nix-store --serve speaks another major version of the serve protocol")
        return self._process

    def _stdout(self) -> IO[bytes]:
        process = self._started()
        assert process.stdout is not None
        return process.stdout

    def _send(self, data: bytes) -> None:
        process = self._started()
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.flush()

    def _read_exactly(self, size: int) -> bytes:
        data = self._stdout().read(size)
        if len(data) != size:
            raise Unanswered("nix-store --serve ended")
        return data

    def _read_number(self) -> int:
        value: int = struct.unpack("<Q", self._read_exactly(8))[0]
        return value

    def _read_string(self) -> str:
        size = self._read_number()
        if size > 1 << 20:
            raise Unanswered("nix-store --serve sent what the protocol does not")
        data = self._read_exactly(size + (-size % 8))
        return data[:size].decode()

    def _read_strings(self) -> list[str]:
        count = self._read_number()
        if count > 1 << 24:
            raise Unanswered("nix-store --serve sent what the protocol does not")
        return [self._read_string() for _ in range(count)]
