"""A session channel opened ahead, so that the next command on a connection finds its channel open.

Every remote command needs a channel of its own, and opening one is a round
trip (CHANNEL_OPEN, then its confirmation) before the command can even be
sent. A deploy runs its few commands on a connection one after another, so the
next one's channel can be opened while the one before runs (and the first
one's while the host's system still builds): each command then starts at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from paramiko import Channel, Transport

# How long a refused open is asked again: see ChannelAhead._open_now.
REFUSED_OPEN_PATIENCE_SECONDS = 2.0


class ChannelAhead:
    """Hands out session channels on one transport; with `ahead`, keeps one opened ahead for the next taker."""

    def __init__(self, transport: Transport, label: str, *, ahead: bool = True) -> None:
        self._transport = transport
        self._label = label
        self._ahead = ahead
        self._lock = threading.Lock()
        self._next: Future[Channel | None] | None = None

    def open_next(self) -> None:
        """Start opening the next command's channel, unless one is already on its way."""
        with self._lock:
            if not self._ahead or self._next is not None:
                return
            future: Future[Channel | None] = Future()
            self._next = future
        threading.Thread(target=self._open, args=(future,), name=f"channel-{self._label}", daemon=True).start()

    def _open(self, future: Future[Channel | None]) -> None:
        try:
            channel: Channel | None = self._transport.open_session()
        except Exception:  # noqa: BLE001 - the command that wants a channel opens its own, and meets the failure itself
            channel = None
        future.set_result(channel)

    def take(self) -> Channel:
        """A channel for a command about to start: the one opened ahead while it is still open, else a new one."""
        with self._lock:
            future, self._next = self._next, None
        channel = future.result() if future is not None else None
        if channel is None or channel.closed or not channel.active:
            channel = self._open_now()
        self.open_next()
        return channel

    def _open_now(self) -> Channel:
        """A channel opened now. A host that allows few sessions per connection (sshd's MaxSessions) refuses one
        while it still ends the session of the command before: our close of that one and this open can reach sshd
        in one read, and it frees the session only after it has read both. Such a refusal is asked again for a
        moment; one that lasts is the command's failure, as before."""
        from paramiko import ChannelException

        deadline = time.monotonic() + REFUSED_OPEN_PATIENCE_SECONDS
        pause = 0.01
        while True:
            try:
                return self._transport.open_session()
            except ChannelException:
                if time.monotonic() + pause > deadline or not self._transport.is_active():
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.2)
