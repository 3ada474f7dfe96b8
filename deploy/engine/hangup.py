"""SIGHUP (the terminal or the SSH session nixfab runs in went away): a handler for the length of a block.

Its default action would end the process on the spot, with no summary and a child or a
half-deployed host left behind; the CLI edge and a fleet each say what it means for them.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def handling_hangup(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` takes SIGHUP inside the block and the previous one comes back after it; off the main thread,
    where Python cannot install handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
