"""A TCP relay that delays each direction by a fixed time: a round trip of 2 x delay, without netem.

    python bench/relay.py --delay-ms 10 TARGET_PORT [TARGET_PORT ...]

Listens on 127.0.0.1, one port per target (chosen by the kernel), forwards
to 127.0.0.1:TARGET_PORT, and prints one JSON line {"TARGET_PORT": LISTEN_PORT, ...}
once it listens. Every chunk read on one side is written to the other
`delay` later, in order, so latency grows and bandwidth does not shrink.
TCP_NODELAY on every socket, so the relay adds no Nagle stalls of its own.
Runs until SIGTERM or SIGINT; bench/deploy.py starts and stops it by pid.
Standard library only.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import socket
import sys

EOF_MARK = b""  # in the queue: the other side sent EOF; None: it closed


class DelayedPipe(asyncio.Protocol):
    """One side of one connection: what arrives here is written to `peer` (the other side) `delay` seconds later."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.loop = asyncio.get_running_loop()
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._queue(data)

    def eof_received(self) -> bool:
        self._queue(EOF_MARK)
        return True  # half-open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue(None)

    def _queue(self, data: bytes | None) -> None:
        self.pending.append((self.loop.time() + self.delay, data))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_at(self.pending[0][0], self._deliver)

    def _deliver(self) -> None:
        self.scheduled = False
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            _, data = self.pending.popleft()
            peer = self.peer
            if peer is None or peer.is_closing():
                self.pending.clear()
                if self.transport is not None:
                    self.transport.close()
                return
            if data is None:
                peer.close()
            elif data == EOF_MARK:
                try:
                    peer.write_eof()
                except (OSError, RuntimeError, NotImplementedError):
                    peer.close()  # the peer reset meanwhile, or cannot half-close: as a real path would, end it
            else:
                peer.write(data)
        if self.pending:
            self.scheduled = True
            self.loop.call_at(self.pending[0][0], self._deliver)


class ClientSide(DelayedPipe):
    """The side a client connects to: it opens the target's side, and reads nothing until that exists."""

    def __init__(self, delay: float, target_port: int, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__(delay)
        self.target_port = target_port
        self.tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = self.loop.create_task(self.connect_upstream())
        self.tasks.add(task)  # kept, so the loop does not lose it
        task.add_done_callback(self.tasks.discard)

    async def connect_upstream(self) -> None:
        assert self.transport is not None
        try:
            upstream, upstream_side = await self.loop.create_connection(lambda: DelayedPipe(self.delay), "127.0.0.1", self.target_port)
        except OSError:
            self.transport.close()
            return
        self.peer = upstream
        upstream_side.peer = self.transport
        self.transport.resume_reading()


async def serve(targets: list[int], delay: float) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    ports: dict[str, int] = {}
    servers = []
    for target in targets:
        server = await loop.create_server(lambda target=target: ClientSide(delay, target, tasks), "127.0.0.1", 0)  # type: ignore[misc]
        servers.append(server)
        ports[str(target)] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=10.0, help="delay of each direction (default 10: a 20 ms round trip)")
    parser.add_argument("targets", type=int, nargs="+", help="ports on 127.0.0.1 to relay to")
    options = parser.parse_args()
    try:
        asyncio.run(serve(options.targets, options.delay_ms / 1000))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
