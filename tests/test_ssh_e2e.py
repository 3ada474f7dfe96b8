"""SSH against the lab: every destination resolved as OpenSSH resolves it, and a silent peer never hangs a deploy.

Assertions are on the lab hosts' state (generations, the running system), not only on what nixfab printed.
"""
from __future__ import annotations

import io
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy.errors import ActivationUnknown, RemoteCommandFailed
from deploy.lab import Lab, write_fixture_flake
from deploy.transport.remote import RemoteHost
from deploy.ui import Emitter
from lab_helpers import BIN, REPO, inv, ok, toplevel_of, write_inventory


def lab_client_options(lab: Lab) -> str:
    """What the lab's own ssh_config says for every host, less where the host is."""
    return "\n".join(
        [
            "  User root",
            f'  IdentityFile "{lab.identity}"',
            "  IdentitiesOnly yes",
            f'  UserKnownHostsFile "{lab.known_hosts}"',
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  ConnectTimeout 5",
            "  LogLevel ERROR",
            "",
        ]
    )


def test_an_included_host_block_wins_over_a_later_host_star(lab: Lab, tmp_path: Path) -> None:
    """OpenSSH takes the first value of each option: alpha's Port comes from the Include, not from `Host *`."""
    lab.up(["alpha", "beta"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha", "beta"])
    other = tmp_path / "other.conf"
    other.write_text(f"Host alpha\n  HostName 127.0.0.1\n  Port {lab.host('alpha').port}\n")
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Include {other}\n\nHost *\n  HostName 127.0.0.1\n  Port {lab.host('beta').port}\n" + lab_client_options(lab))
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"ssh_config: {ssh_config}\nhosts:\n  alpha: {{}}\n")

    ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    system = toplevel_of(flake, "alpha")
    alpha = lab.state("alpha")
    assert [g.path for g in alpha.generations] == [system] and alpha.current_system == system
    beta = lab.state("beta")
    assert beta.generations == () and beta.current_system != system


def alpha_config(lab: Lab, path: Path, extra: str = "") -> Path:
    """An ssh_config for lab host alpha alone, with extra options first (OpenSSH takes the first value)."""
    path.write_text(f"Host alpha\n{extra}  HostName 127.0.0.1\n  Port {lab.host('alpha').port}\n" + lab_client_options(lab))
    return path


def test_host_keys_are_looked_up_under_the_host_key_alias(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"])
    known = tmp_path / "known_hosts"
    key = (lab.host("alpha").directory / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known.write_text(f"alpha-by-alias {' '.join(key)}\n")
    config = alpha_config(lab, tmp_path / "ssh_config", f"  HostKeyAlias alpha-by-alias\n  UserKnownHostsFile {known}\n")
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=config, echo=Emitter.plain(io.StringIO()))
    try:
        assert host.run(["true"]).ok
    finally:
        host.close()
    # Under [127.0.0.1]:port only (the lab's own file), the alias finds no key: refused, as ssh refuses it.
    known.write_text((lab.known_hosts).read_text())
    refused = RemoteHost("alpha", "alpha", port=None, ssh_config=config, echo=Emitter.plain(io.StringIO()))
    with pytest.raises(Exception, match="unknown SSH host key for alpha-by-alias"):
        refused.run(["true"])
    refused.close()


def test_a_short_command_has_a_deadline(lab: Lab, tmp_path: Path) -> None:
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    try:
        started = time.monotonic()
        with pytest.raises(RemoteCommandFailed, match=r"^alpha: sleep did not finish within 1s; abandoned$"):
            host.run(["sleep", "30"], timeout=1)
        assert time.monotonic() - started < 10
        assert host.run(["echo", "still", "usable"]).stdout == "still usable\n"
    finally:
        host.close()


def test_a_deadline_whose_timer_is_still_closing_the_channel_is_still_a_deadline(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-suite flake of the test above, made certain: the timer's close of the channel wakes run() up while that
    close is still being sent. run() used to return a result then (exit -1) instead of abandoning the command."""
    import paramiko.transport

    send = paramiko.transport.Transport._send_user_message
    timer_sends = threading.Event()

    def slow_from_a_timer(self: paramiko.transport.Transport, data: object) -> None:
        if isinstance(threading.current_thread(), threading.Timer):
            timer_sends.set()
            time.sleep(1.0)  # the main thread runs meanwhile, as it may under load
        send(self, data)

    monkeypatch.setattr(paramiko.transport.Transport, "_send_user_message", slow_from_a_timer)
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    try:
        with pytest.raises(RemoteCommandFailed, match=r"^alpha: sleep did not finish within 1s; abandoned$"):
            host.run(["sleep", "30"], timeout=1)
        assert timer_sends.is_set()  # the race was there to lose
        assert host.run(["echo", "still", "usable"]).stdout == "still usable\n"
    finally:
        host.close()


def sshd_connections(lab: Lab, name: str) -> list[str]:
    """The host's sshd processes that serve a connection (sshd forks one per client), not the listener."""
    return [command for command in lab.processes(name).values() if command.startswith("sshd: root")]


def test_a_connection_opened_ahead_never_outlives_a_close_that_came_first(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose build had already failed was released (closed) before its connect-ahead thread began; that thread
    then opened a connection nobody closed, held to the end of the process. Seen as a fresh Debian 12 root's run out of
    descriptors: the run's last cleanup met EMFILE and the summary was lost. Here the thread is made to begin late."""
    import types

    import deploy.transport.remote as remote

    deferred: list[threading.Thread] = []

    class BeginsWhenTold(threading.Thread):
        def start(self) -> None:
            deferred.append(self)

    monkeypatch.setattr(remote, "threading", types.SimpleNamespace(**{**vars(threading), "Thread": BeginsWhenTold}))
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    logins = lab.accepted_ssh_logins("alpha")
    host.connect_ahead()
    host.close()
    assert len(deferred) == 1
    threading.Thread.start(deferred[0])
    deferred[0].join(30)
    assert not deferred[0].is_alive()
    deadline = time.monotonic() + 10
    while sshd_connections(lab, "alpha") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sshd_connections(lab, "alpha") == [], lab.accepted_ssh_logins("alpha") - logins


def test_closing_a_host_does_not_wait_for_its_connection_opened_ahead(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed host is released at once: its release (and so the run's end) does not wait out a connection attempt
    that nobody needs any more, which to an unreachable host lasts its whole timeout."""
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    connecting, go_on = threading.Event(), threading.Event()
    connect = host._connect

    def held_connect() -> object:
        connecting.set()
        go_on.wait(30)
        return connect()

    monkeypatch.setattr(host, "_connect", held_connect)
    host.connect_ahead()
    assert connecting.wait(30)
    closer = threading.Thread(target=host.close)
    closer.start()
    closer.join(10)
    try:
        assert not closer.is_alive(), "close() waited for the connection attempt"
    finally:
        go_on.set()
        closer.join(30)
    deadline = time.monotonic() + 10
    while sshd_connections(lab, "alpha") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sshd_connections(lab, "alpha") == []  # the attempt, once it got in, closed what it opened


class ChannelLog:
    """What happened on paramiko's channels, in order: ("asked", ticket) as a channel's open is asked for,
    ("opened", (ticket, channel)) as it returns, ("exec", channel) as a command is sent, and the test's marks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import paramiko

        self.events: list[tuple[str, object]] = []
        open_session, exec_command = paramiko.Transport.open_session, paramiko.Channel.exec_command
        log = self.events

        def logged_open(transport: paramiko.Transport, *args: object, **kwargs: object) -> paramiko.Channel:
            ticket = object()
            log.append(("asked", ticket))
            channel = open_session(transport, *args, **kwargs)
            log.append(("opened", (ticket, channel)))
            return channel

        def logged_exec(channel: paramiko.Channel, command: str) -> None:
            log.append(("exec", channel))
            exec_command(channel, command)

        monkeypatch.setattr(paramiko.Transport, "open_session", logged_open)
        monkeypatch.setattr(paramiko.Channel, "exec_command", logged_exec)

    def mark(self, name: str) -> None:
        self.events.append(("mark", name))

    def asked_before(self, channel: object, mark: str) -> bool:
        """Whether channel's open was asked for before the mark."""
        tickets = {id(value[1]): value[0] for kind, value in self.events if kind == "opened"}  # type: ignore[index]
        order = [value for kind, value in self.events if kind in ("asked", "mark")]
        return order.index(tickets[id(channel)]) < order.index(mark)

    def settled(self) -> bool:
        """Every open asked for has returned (a channel opened ahead is opened in a thread of its own)."""
        kinds = [kind for kind, _ in self.events]
        return kinds.count("asked") == kinds.count("opened")

    def execs(self) -> list[object]:
        return [value for kind, value in self.events if kind == "exec"]

    def opened(self) -> list[object]:
        return [value[1] for kind, value in self.events if kind == "opened"]  # type: ignore[index]


def test_each_commands_channel_is_opened_while_the_one_before_runs(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a channel is a round trip each command paid before it could be sent: 3-4 per deploy, 20 ms each at a
    20 ms round trip. The next command's channel is now opened as the one before starts."""
    channels = ChannelLog(monkeypatch)
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    try:
        host.connect()
        channels.mark("first command")
        assert host.run(["echo", "one"]).stdout == "one\n"
        channels.mark("second command")
        assert host.feed(["cat"], io.BytesIO(b"two"), describe_source="two").stdout == "two"
        channels.mark("third command")
        assert host.run(["echo", "three"]).stdout == "three\n"
        first, second, third = channels.execs()
        assert channels.asked_before(first, "first command")  # opened with the connection
        assert channels.asked_before(second, "second command")
        assert channels.asked_before(third, "third command")
        # A channel opened ahead that is closed by the time its command comes is not used: the command opens its own.
        deadline = time.monotonic() + 10
        while not channels.settled() and time.monotonic() < deadline:
            time.sleep(0.05)
        spare = channels.opened()[-1]
        assert spare not in channels.execs()  # the one opened ahead for the fourth command
        spare.close()  # type: ignore[attr-defined]
        assert host.run(["echo", "four"]).stdout == "four\n"
        assert channels.execs()[-1] is not spare
    finally:
        host.close()


def test_a_host_that_allows_one_session_per_connection_is_deployed_without_channels_opened_ahead(lab: Lab, tmp_path: Path) -> None:
    """Hardened sshd configurations allow few sessions per connection (MaxSessions): with one, the host refuses the
    channel opened ahead while a command runs (its log says "no more sessions"), and each command opens its own."""
    lab.up(["alpha"], max_sessions=1)
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"])
    inventory = write_inventory(lab, tmp_path / "hosts.yaml", "  alpha: {}\n")
    result = ok(inv("switch-push", "alpha", "--flake", str(flake), "--inventory", str(inventory)))
    assert "confirmed over a new SSH connection" in result.stderr
    state = lab.state("alpha")
    assert state.current_system == toplevel_of(flake, "alpha") and [g.number for g in state.generations] == [1]
    assert "no more sessions" in (lab.host("alpha").directory / "sshd.log").read_text()  # the host did refuse one


def test_a_fresh_connection_opens_no_channel_ahead(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh connection (magic rollback's confirmation) runs one command: a channel opened ahead would be wasted."""
    channels = ChannelLog(monkeypatch)
    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO())).fresh()
    try:
        assert host.run(["true"]).ok
        time.sleep(0.5)  # a channel opened ahead, if any, would have been asked for by now
        assert len(channels.opened()) == 1 and channels.execs() == channels.opened()
    finally:
        host.close()


def test_the_connection_sends_small_packets_at_once(lab: Lab) -> None:
    """TCP_NODELAY: without it each command's small packets wait for a delayed ACK (some 40 ms a command)."""
    import socket

    lab.up(["alpha"])
    host = RemoteHost("alpha", "alpha", port=None, ssh_config=lab.ssh_config, echo=Emitter.plain(io.StringIO()))
    try:
        assert host.run(["true"]).ok
        transport = host.connection.client.get_transport()
        assert transport is not None
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        host.close()


def test_what_the_host_sends_is_acknowledged_at_once() -> None:
    """sshd has Nagle on until a session starts: after authentication it sends its host keys, then holds the answer to
    our first channel open until they are acknowledged. A delayed ACK from us cost each connection some 40 ms before
    its first command. TCP_QUICKACK, set again before every read (the kernel does not keep it), acknowledges at once."""
    import socket
    from typing import cast

    from deploy.transport.remote import WatchedSocket

    calls: list[tuple[object, ...]] = []

    class Recording:
        def setsockopt(self, *arguments: object) -> None:
            calls.append(("setsockopt", *arguments))

        def recv(self, size: int) -> bytes:
            calls.append(("recv", size))
            return b"data"

    watched = WatchedSocket(cast(socket.socket, Recording()))
    assert watched.recv(64) == b"data" and watched.recv(32) == b"data"
    quickack = ("setsockopt", socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    assert calls == [quickack, ("recv", 64), quickack, ("recv", 32)]


def test_a_command_ends_the_moment_its_exit_status_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invoke's runner looked every 10 ms whether the command had ended: 5 ms of latency per command on average."""
    import invoke.runners

    from deploy.transport.remote import deadline_runner

    def polled(seconds: float) -> None:
        raise AssertionError(f"the runner polled (sleep {seconds})")

    monkeypatch.setattr(invoke.runners.time, "sleep", polled)
    status = threading.Event()

    class Channel:
        status_event = status

        def exit_status_ready(self) -> bool:
            return status.is_set()

    runner_class = deadline_runner()
    runner = runner_class.__new__(runner_class)  # wait() needs only its channel, its IO threads and input_sleep
    runner.channel, runner.threads, runner.input_sleep = Channel(), {}, 60.0
    threading.Timer(0.05, status.set).start()
    runner.wait()
    assert status.is_set()


def wait_for(what: str, predicate: object, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


# OpenSSH 9.8 and later serve each session from an sshd-session process (Debian 13); earlier, from sshd.
SSHD_PROCESSES = "sshd(-session)?"


def test_a_frozen_host_ends_the_deploy_with_one_line_instead_of_hanging(lab: Lab, tmp_path: Path, background, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """sshd stopped mid-activation: the keepalives go unanswered and the deploy ends, exit 4, instead of waiting forever."""
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "state"))
    lab.up(["alpha"])
    flake = write_fixture_flake(tmp_path / "flake", ["alpha"], slow_seconds=40)
    config = alpha_config(lab, tmp_path / "ssh_config", "  ServerAliveInterval 1\n  ServerAliveCountMax 3\n")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"ssh_config: {config}\nhosts:\n  alpha: {{ attr: alpha-slow }}\n")
    errors = tmp_path / "deploy.err"
    with open(tmp_path / "deploy.out", "wb") as stdout, open(errors, "wb") as stderr:
        deploy = subprocess.Popen(
            [str(BIN / "inv"), "--search-root", str(REPO), "switch-push", "alpha", "--flake", str(flake),
             "--inventory", str(inventory), "--no-magic-rollback", "--confirm-timeout", "3", "-v"],  # -v: the switch's output says when it runs
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    background.append(deploy)
    wait_for("the slow activation to start", lambda: "activating slowly" in errors.read_text() or deploy.poll() is not None)
    assert deploy.poll() is None, errors.read_text()
    try:
        lab.inside("alpha", ["pkill", "-STOP", "-x", SSHD_PROCESSES])
        frozen = time.monotonic()
        try:
            returncode = deploy.wait(timeout=60)  # only a hang detector: the dead-peer limit here is 3 s
        except subprocess.TimeoutExpired:
            raise AssertionError("the deploy still hangs 60 s after its host froze:\n" + errors.read_text()) from None
        took = time.monotonic() - frozen
    finally:
        lab.inside("alpha", ["pkill", "-CONT", "-x", SSHD_PROCESSES], check=False)
    stderr_text = errors.read_text()
    # The host went silent mid-switch: nixfab cannot know whether the switch finished, so it says so (the
    # activation protocol's UNKNOWN), names what to check, and undoes nothing over a guess.
    assert returncode == ActivationUnknown.exit_code, stderr_text
    assert "Traceback" not in stderr_text
    # Said once, under the host's name; the last line is the run's totals.
    said = [line for line in stderr_text.splitlines() if line.startswith("alpha | error: lost the connection during switch-to-configuration ")]
    assert len(said) == 1, stderr_text
    assert "127.0.0.1" in said[0] and "sent nothing for" in said[0] and "undid nothing" in said[0], said[0]
    assert stderr_text.rstrip("\n").splitlines()[-1].startswith("nixfab: error: 1 failed (alpha) in "), stderr_text
    assert took < 30, f"took {took:.0f}s after the freeze"
    # The host answers again once sshd runs again.
    assert lab.ssh("alpha", ["true"], check=False).returncode == 0
