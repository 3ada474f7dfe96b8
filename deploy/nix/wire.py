"""Nix's serialisation, as its store protocols (`nix-store --serve`) and `nix-store --export` write it.

Integers are 64-bit little-endian; a string is its length, its bytes and
zeros up to a multiple of 8; a list or set of strings is their count, then
each string. Text is UTF-8; a NAR's file names are the bytes they are.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence


def number(value: int) -> bytes:
    return struct.pack("<Q", value)


def string(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return number(len(raw)) + raw + b"\0" * (-len(raw) % 8)


def strings(texts: Sequence[str]) -> bytes:
    return number(len(texts)) + b"".join(string(text) for text in texts)
