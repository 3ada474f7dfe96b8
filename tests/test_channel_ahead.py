"""ChannelAhead against a stand-in transport: what it does when the host refuses a channel."""

from __future__ import annotations

import pytest
from paramiko import ChannelException

from deploy.transport import channel_ahead
from deploy.transport.channel_ahead import ChannelAhead


class Opened:
    closed = False
    active = True


class RefusingTransport:
    """Refuses the first `refusals` opens, as sshd with MaxSessions 1 does while it still ends the session before."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.opens = 0

    def open_session(self) -> Opened:
        self.opens += 1
        if self.opens <= self.refusals:
            raise ChannelException(2, "Connect failed")
        return Opened()

    def is_active(self) -> bool:
        return True


def test_an_open_the_host_refuses_for_a_moment_is_asked_again() -> None:
    # Seen in a fresh Debian 13 root: a host with MaxSessions 1 refused the activation's channel (our close of the
    # import's and this open reached sshd together), and the deploy failed as a lost connection.
    transport = RefusingTransport(refusals=3)
    channels = ChannelAhead(transport, "box", ahead=False)  # type: ignore[arg-type]
    assert isinstance(channels.take(), Opened)
    assert transport.opens == 4


def test_an_open_the_host_keeps_refusing_is_the_commands_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_ahead, "REFUSED_OPEN_PATIENCE_SECONDS", 0.2)
    transport = RefusingTransport(refusals=10**6)
    channels = ChannelAhead(transport, "box", ahead=False)  # type: ignore[arg-type]
    with pytest.raises(ChannelException):
        channels.take()
    assert 1 < transport.opens < 50  # asked again, with pauses, then given up
