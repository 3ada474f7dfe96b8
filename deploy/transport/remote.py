"""One Fabric connection per host, reused for every remote step.

Where a host is comes from OpenSSH itself (`ssh -G`, see openssh.py), so
the connection reaches exactly the machine `ssh` and `nix copy` reach.
Commands arrive as argv lists and are quoted here, at the boundary, with
shlex.join. Host keys are checked against the known_hosts files OpenSSH
would read, under the name it would look them up by (HostKeyAlias, or
[host]:port): Fabric's default of accepting any key is replaced, and only
`StrictHostKeyChecking accept-new` (or `no`) lets an unknown key through.

A peer that goes silent never hangs a deploy: the socket is nixfab's own
(TCP_NODELAY), keepalives that want a reply go out after ServerAliveInterval
(default 5 s) of silence, and after ServerAliveCountMax intervals without a
word from the peer the connection is declared lost and closed, which ends
whatever command was waiting on it (HostUnreachable). Short commands also
have a fixed deadline (SHORT_COMMAND_TIMEOUT); long ones (streamed output:
builds, switch-to-configuration, GC; the closure import) have none and are
bounded by the keepalives alone.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from deploy.errors import HostKeyRejected, HostUnreachable, LoginRefused, RemoteCommandFailed, SudoFailed
from deploy.transport.channel_ahead import ChannelAhead
from deploy.transport.openssh import DEFAULT_CONNECT_TIMEOUT, SshOptions, SshResolver
from deploy.transport.process import Result
from deploy.ui import Emitter, read_secret

if TYPE_CHECKING:
    from fabric import Connection
    from fabric.runners import Remote
    from paramiko.channel import Channel
    from paramiko.client import MissingHostKeyPolicy, SSHClient
    from paramiko.pkey import PKey
    from paramiko.transport import Transport

# paramiko logs a failed handshake (a frozen sshd's missing banner) with a traceback; with no handler
# configured, Python would print it. Every failure reaches the user as one error line instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

_FABRIC_IMPORT = threading.Lock()


def import_fabric() -> None:
    """Import Fabric (and paramiko under it) one thread at a time: the preparation and each host's connection, opened
    while the systems build, may start at once, and threads importing paramiko together meet its modules partially
    initialised (ImportError: cannot import name 'Message' from partially initialized module 'paramiko.message')."""
    with _FABRIC_IMPORT:
        import fabric  # noqa: F401


class Preparation:
    """While Nix builds, in a thread of its own: import Fabric (and paramiko under it), then resolve each host's
    `ssh -G` (resolvers), so that a host's first connection, once its system is built, waits for neither.

    Only Fabric's own modules are imported: nothing they import imports
    nixfab's, so the thread never waits on an import lock a deploy thread
    holds. A failure is left for the connection itself to meet and report.
    """

    def __init__(self, resolvers: Sequence[Callable[[], object]]) -> None:
        self._resolvers = list(resolvers)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._prepare, name="prepare-connections", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        try:
            import_fabric()
        except Exception:  # noqa: BLE001 - the connection's own import fails again and says why
            pass
        for resolve in self._resolvers:
            if self._stopping.is_set():
                return
            try:
                resolve()
            except Exception:  # noqa: BLE001 - unresolved; the connection asks ssh -G again and says why
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Interrupted: start no more `ssh -G`, and let the one running end, so that no child outlives the run."""
        self._stopping.set()
        self._thread.join(timeout)


# The fixed deadline of a command whose output is not streamed (probes, reads, locks, profile
# changes); streamed ones and the closure import have none, the keepalives bound them.
SHORT_COMMAND_TIMEOUT = 300.0
NO_DEADLINE = math.inf


class Readable(Protocol):
    """What feed() reads a command's stdin from: a pipe, or a wrapper that counts what passes."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class SudoPassword:
    """Asked at most once per run, and only if some host needs it."""

    prompt_for: str = "sudo"
    _value: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> str:
        with self._lock:
            if self._value is None:
                self._value = read_secret(f"[nixfab] {self.prompt_for} password: ")
            return self._value


# What `sudo -S` prints when it wants the password (no `%`: sudo would expand it); answered on its stdin.
SUDO_PROMPT = "[nixfab] sudo password: "


class _SudoRefused(Exception):
    """sudo asked for the password again: it refused the one given."""


class _Abandoned(Exception):
    """The command passed its deadline."""


class _SecretSession:
    """One channel running a command that wants a secret on stdin: stdout and stderr read in threads, the handshake in run()."""

    def __init__(self, channel: Channel, ready: bytes) -> None:
        self.channel = channel
        self.ready = ready
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.changed = threading.Condition()
        self.open_streams = 2
        self.readers = [
            threading.Thread(target=self._read, args=(channel.recv, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(channel.recv_stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, receive: Callable[[int], bytes], into: bytearray) -> None:
        try:
            while chunk := receive(65536):
                with self.changed:
                    into.extend(chunk)
                    self.changed.notify_all()
        except (OSError, EOFError):
            pass  # the channel closed under us: run() finds out from the transport
        finally:
            with self.changed:
                self.open_streams -= 1
                self.changed.notify_all()

    def _is_ready(self) -> bool:
        return self.ready in bytes(self.stdout).splitlines()

    def run(self, secret: bytes, password: Callable[[], str] | None, deadline: float) -> int:
        """Answer sudo's prompt (once), send the secret once the command is ready, and return its exit status (-1: none came)."""
        prompts_answered = 0
        while True:
            with self.changed:
                while True:
                    if self._is_ready():
                        action = "send"
                        break
                    prompts = bytes(self.stderr).count(SUDO_PROMPT.encode())
                    if prompts > prompts_answered:
                        action = "answer"
                        break
                    if self.open_streams == 0:
                        action = "ended"
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _Abandoned
                    self.changed.wait(min(remaining, 1.0))
            if action == "answer":
                if password is None or prompts_answered:
                    raise _SudoRefused
                self.channel.sendall((password() + "\n").encode())
                prompts_answered += 1
                continue
            if action == "send":
                self.channel.sendall(secret)
                self.channel.shutdown_write()
            if not self.channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise _Abandoned
            return int(self.channel.recv_exit_status())

    def join(self, timeout: float) -> None:
        """Wait, up to `timeout` seconds in all, for both streams to end."""
        until = time.monotonic() + timeout
        for reader in self.readers:
            reader.join(timeout=max(0.0, until - time.monotonic()))


def _host_key_policy(checking: str, name: str, save_to: Path | None, hashed: bool, host_label: str) -> MissingHostKeyPolicy:
    """What to do with a key known_hosts does not have for `name` (the HostKeyAlias, or [host]:port)."""
    from paramiko.client import MissingHostKeyPolicy
    from paramiko.hostkeys import HostKeys

    class Policy(MissingHostKeyPolicy):
        def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
            if checking not in ("accept-new", "no"):
                raise HostKeyRejected(
                    f"{host_label}: unknown SSH host key for {name} ({key.get_name()} {key.get_fingerprint().hex()}); "
                    "add it to known_hosts, or set StrictHostKeyChecking accept-new in the ssh_config"
                )
            client.get_host_keys().add(hostname, key.get_name(), key)
            if checking == "accept-new" and save_to is not None:
                save_to.parent.mkdir(parents=True, exist_ok=True)
                filed_as = HostKeys.hash_host(name) if hashed else name
                with open(save_to, "a") as known:
                    known.write(f"{filed_as} {key.get_name()} {key.get_base64()}\n")

    return Policy()


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH's host pattern: `*` and `?` are wildcards, everything else (brackets too) is literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()))


def _names_match(patterns: list[str], name: str) -> bool:
    """known_hosts' host field against a name: hashed entries, plain names, `*`/`?` patterns and `!` negations."""
    from paramiko.hostkeys import HostKeys

    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        hashed = pattern.startswith("|1|")
        hit = HostKeys.hash_host(name, pattern) == pattern if hashed else _wildcard(pattern).fullmatch(name.lower()) is not None
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def known_keys(options: SshOptions) -> dict[str, PKey]:
    """The host keys known_hosts holds for this destination, by key type, as OpenSSH would find them.

    Lines paramiko cannot read (a key type it lacks, @cert-authority, @revoked) are skipped, as
    OpenSSH skips what it cannot use; the first key of each type wins.
    """
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

    user_files, system_files = options.known_hosts_files()
    keys: dict[str, PKey] = {}
    for known in system_files + user_files:
        try:
            lines = known.read_text(errors="replace").splitlines()
        except OSError:
            continue  # OpenSSH skips a known_hosts file it cannot read
        for line in lines:
            line = line.strip()
            if not line or line.startswith(("#", "@")):
                continue
            try:
                entry = HostKeyEntry.from_line(line)
            except (InvalidHostKey, ValueError, TypeError, IndexError):
                continue
            if entry is None or entry.key is None or not _names_match(entry.hostnames, options.known_hosts_name):
                continue
            keys.setdefault(entry.key.get_name(), entry.key)
    return keys


def open_socket(options: SshOptions, timeout: float) -> socket.socket:
    """A TCP connection to where OpenSSH would connect (AddressFamily, BindAddress, ConnectionAttempts), TCP_NODELAY set."""
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(options.address_family, socket.AF_UNSPEC)
    last_error: OSError = OSError(f"{options.hostname} has no address")
    for attempt in range(options.connection_attempts):
        if attempt:
            time.sleep(1)  # as OpenSSH waits between ConnectionAttempts
        try:
            addresses = socket.getaddrinfo(options.hostname, options.port, family, socket.SOCK_STREAM)
        except OSError as error:
            last_error = error
            continue
        for address_family, kind, protocol, _, address in addresses:
            sock = socket.socket(address_family, kind, protocol)
            try:
                sock.settimeout(timeout)
                if options.bind_address:
                    sock.bind((options.bind_address, 0))
                sock.connect(address)
            except OSError as error:
                sock.close()
                last_error = error
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if options.tcp_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            return sock
    raise last_error


QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux's; macOS has none


class WatchedSocket:
    """The socket paramiko talks through, noting when the peer last sent anything, and acknowledging it at once.

    sshd keeps Nagle's algorithm on until a session starts: after authentication it sends its host keys and holds its
    answer to our first channel open until they are acknowledged, so a delayed ACK cost every connection some 40 ms
    before its first command. The kernel leaves quick-ACK mode on its own, hence the setsockopt before every read.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.last_received = time.monotonic()

    def recv(self, size: int) -> bytes:
        if QUICKACK is not None:
            self._sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        data = self._sock.recv(size)
        if data:
            self.last_received = time.monotonic()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Liveness:
    """Keepalives that want a reply, and the dead-peer limit: ServerAliveCountMax intervals of silence end the connection."""

    def __init__(self, transport: Transport, sock: WatchedSocket, options: SshOptions, label: str) -> None:
        self.transport = transport
        self.sock = sock
        self.interval = float(options.alive_interval)
        self.limit = options.dead_after
        self.where = options.where
        self.lost: str | None = None
        self._stop = threading.Event()
        transport.set_keepalive(options.alive_interval)
        self._thread = threading.Thread(target=self._watch, name=f"ssh-alive-{label}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last_probe = 0.0
        prober: threading.Thread | None = None
        while not self._stop.wait(min(1.0, self.interval / 2)):
            if not self.transport.is_active():
                return
            now = time.monotonic()
            silent = now - self.sock.last_received
            if silent >= self.limit:
                self.lost = f"{self.where} sent nothing for {silent:.0f}s, not even an answer to a keepalive"
                self.transport.close()
                return
            if silent >= self.interval and now - last_probe >= self.interval and (prober is None or not prober.is_alive()):
                # In a thread of its own: a send to a frozen peer may block until the transport closes.
                prober = threading.Thread(target=self._probe, name="ssh-keepalive", daemon=True)
                prober.start()
                last_probe = now

    def _probe(self) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)  # any answer, even a refusal, proves life
        except Exception:  # noqa: BLE001 - a transport closing under the probe is what _watch reports
            pass

    def stop(self) -> None:
        self._stop.set()


@functools.cache
def deadline_runner() -> type[Remote]:
    """Fabric's Remote runner, whose timeout says it fired the moment it fires, and that ends when the command does.

    Invoke's Runner.timed_out is "the timer's thread has ended", but the
    timer's kill() closes the channel first, which wakes run() up while that
    thread may still be sending the close (or failing to, with EOFError, on a
    transport that closed meanwhile): run() then returned a result, exit -1,
    for an abandoned command, and the thread died with a traceback.
    """
    import paramiko
    from fabric.runners import Remote

    class DeadlineRemote(Remote):  # type: ignore[misc]  # Fabric is untyped
        fired = False

        def kill(self) -> None:
            self.fired = True  # before the close below can wake run() up
            try:
                super().kill()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the transport went away meanwhile: the channel is closed either way

        @property
        def timed_out(self) -> bool:
            return self.fired

        def wait(self) -> None:
            # Invoke polls every input_sleep (10 ms), which each command paid on average as 5 ms of latency; the
            # channel's status event is set the moment its exit status arrives, or it closes.
            while not (self.process_is_finished or self.has_dead_threads):
                self.channel.status_event.wait(self.input_sleep)

    return DeadlineRemote


class RemoteHost:
    """A host reached over SSH: `run` takes argv, announces it (a CommandRun event), and runs it once connected."""

    def __init__(
        self,
        label: str,
        destination: str,
        *,
        port: int | None,
        ssh_config: Path | None,
        echo: Emitter,
        dry_run: bool = False,
        use_sudo: bool = False,
        sudo_password: SudoPassword | None = None,
        connect_timeout: float | None = None,  # None: the ssh_config's ConnectTimeout, else 10 s
        resolver: SshResolver | None = None,  # a Session shares one, so `ssh -G` runs once per destination
        channels_ahead: bool = True,  # each command's channel opened while the one before runs (ChannelAhead)
    ) -> None:
        self.label = label
        self.destination = destination
        self.port = port
        self.ssh_config = ssh_config
        self.echo = echo
        self.dry_run = dry_run
        self.use_sudo = use_sudo
        self.sudo_password = sudo_password or SudoPassword()
        self.connect_timeout = connect_timeout
        self.resolver = resolver or SshResolver()
        self.channels_ahead = channels_ahead
        self._connection: Connection | None = None
        self._liveness: Liveness | None = None
        self._connect_lock = threading.Lock()
        self._failed_ahead: Exception | None = None
        # A connection opened ahead (connect_ahead) and the closes since: a close that comes while it is being opened
        # leaves its closing to the thread opening it.
        self._ahead_lock = threading.Lock()
        self._connecting_ahead = False
        self._closes = 0
        self.facts: dict[str, bool] = {}

    def fresh(self) -> RemoteHost:
        """A new connection to the same host, as this one would open it, never shared: to ask a host after the
        channel to it closed, or to prove that a new connection still gets in (magic rollback). It runs a command
        or two, so no channel is opened ahead for a command that never comes."""
        return RemoteHost(
            self.label, self.destination, port=self.port, ssh_config=self.ssh_config, echo=self.echo, dry_run=self.dry_run,
            use_sudo=self.use_sudo, sudo_password=self.sudo_password, connect_timeout=self.connect_timeout, resolver=self.resolver,
            channels_ahead=False,
        )

    def connect(self) -> None:
        """Open the connection now, rather than at the first command."""
        _ = self.connection

    def connect_ahead(self) -> None:
        """Open the connection in a thread of its own (while this machine builds the host's system), so that the
        first command finds it open: the handshake's round trips overlap the build instead of following it. Its
        failure is kept for that command to meet, once, rather than tried again (an unreachable host would cost its
        timeout twice); nothing is said or run on the host meanwhile."""
        if self.dry_run:
            return
        with self._ahead_lock:
            self._connecting_ahead = True
            closes = self._closes

        def connect() -> None:
            with self._connect_lock:
                try:
                    if self._connection is None and self._closes == closes:
                        self._connection = self._connect()
                except Exception as error:  # noqa: BLE001 - whatever the first command would have met, it meets
                    self._failed_ahead = error
                finally:
                    with self._ahead_lock:
                        self._connecting_ahead = False
                        if self._closes != closes:  # closed meanwhile, without waiting for this: it is left to us
                            self._drop()
                            self._failed_ahead = None

        try:
            threading.Thread(target=connect, name=f"connect-{self.label}", daemon=True).start()
        except BaseException:
            with self._ahead_lock:
                self._connecting_ahead = False
            raise

    @property
    def connection(self) -> Connection:
        """The open connection; a lost one is dropped and a new one opened (never Fabric's silent reconnect)."""
        with self._connect_lock:
            failed, self._failed_ahead = self._failed_ahead, None
            if failed is not None:
                raise failed
            if self._connection is not None and not self._connection.is_connected:
                self._drop()
            if self._connection is None:
                self._connection = self._connect()
            return self._connection

    def ssh_options(self) -> SshOptions:
        """Where OpenSSH says this destination is (`ssh -G`, cached per run)."""
        return self.resolver.resolve(self.destination, port=self.port, ssh_config=self.ssh_config, label=self.label)

    def _connect(self) -> Connection:
        import_fabric()
        import paramiko
        from fabric import Config, Connection

        options = self.ssh_options()
        timeout = self.connect_timeout or options.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        where = options.where
        # An empty SSHConfig: Fabric and paramiko interpret no ssh_config; everything comes from `ssh -G`.
        config = Config(ssh_config=paramiko.SSHConfig(), overrides={"runners": {"remote": deadline_runner()}})
        connection = Connection(
            options.hostname, user=options.user, port=options.port, config=config, gateway=False, forward_agent=False,
            connect_timeout=math.ceil(timeout),
        )
        client = connection.client
        for key_type, key in known_keys(options).items():
            # Filed under the name paramiko looks up, so a HostKeyAlias's keys prove this host.
            lookup = options.hostname if options.port == 22 else f"[{options.hostname}]:{options.port}"
            client.get_host_keys().add(lookup, key_type, key)
        user_files, _ = options.known_hosts_files()
        client.set_missing_host_key_policy(
            _host_key_policy(
                options.strict_host_key_checking, options.known_hosts_name, user_files[0] if user_files else None,
                options.hash_known_hosts, self.label,
            )
        )
        try:
            sock = WatchedSocket(open_socket(options, timeout))
        except TimeoutError:
            raise HostUnreachable(f"{self.label}: no answer from {where} within {timeout:.0f}s") from None
        except OSError as error:
            raise HostUnreachable(f"{self.label}: cannot reach {where}: {error.strerror or error}") from None
        identities = options.existing_identity_files()
        connection.connect_kwargs.update(
            sock=sock,
            key_filename=identities,
            look_for_keys=False,  # ssh -G already listed the default identity files that apply
            allow_agent=options.use_agent and not options.identities_only,
            banner_timeout=timeout,
            auth_timeout=max(timeout, 30.0),
            channel_timeout=max(timeout, 30.0),
        )
        try:
            connection.open()
        except HostKeyRejected:
            sock.close()
            raise
        except paramiko.BadHostKeyException as error:
            sock.close()
            raise HostKeyRejected(
                f"{self.label}: the SSH host key of {where} CHANGED (got {error.key.get_name()} "
                f"{error.key.get_fingerprint().hex()}); refusing to connect; if this is expected, remove the old key from known_hosts"
            ) from None
        except paramiko.AuthenticationException:
            sock.close()
            raise LoginRefused(f"{self.label}: {where} refused our SSH key for user {options.user}") from None
        except TimeoutError:
            sock.close()
            raise HostUnreachable(f"{self.label}: no answer from {where} within {timeout:.0f}s") from None
        except (OSError, paramiko.SSHException, EOFError) as error:
            sock.close()
            reason = str(error).strip() or type(error).__name__
            raise HostUnreachable(f"{self.label}: cannot reach {where}: {reason}") from None
        transport = client.get_transport()
        assert transport is not None
        self._liveness = Liveness(transport, sock, options, self.label)
        channels = ChannelAhead(transport, self.label, ahead=self.channels_ahead)
        channels.open_next()  # the first command's, while (with connect_ahead) the system still builds
        # Fabric opens each command's channel with create_session(): every command's channel comes from here.
        object.__setattr__(connection, "create_session", channels.take)
        return connection

    def _open_channel(self) -> Channel:
        """A session channel for a command run here outside Fabric (feed, run_with_secret), opened as Fabric opens
        its commands' (ChannelAhead)."""
        channel: Channel = self.connection.create_session()
        return channel

    @property
    def login_user(self) -> str:
        return str(self.connection.user)

    def _lost(self, argv: Sequence[str], error: object = None) -> HostUnreachable:
        reason = (self._liveness.lost if self._liveness else None) or str(error or "").strip() or "the connection closed"
        return HostUnreachable(f"{self.label}: connection lost while running {argv[0]}: {reason}")

    def _timed_out(self, argv: Sequence[str], deadline: float | None) -> HostUnreachable | RemoteCommandFailed:
        if self._liveness is not None and self._liveness.lost:
            return self._lost(argv)
        return RemoteCommandFailed(f"{self.label}: {argv[0]} did not finish within {deadline or 0:.0f}s; abandoned")

    def _transport_active(self) -> bool:
        transport = self._connection.client.get_transport() if self._connection is not None else None
        return transport is not None and transport.is_active()

    def _deadline(self, timeout: float | None, stream: bool) -> float | None:
        """Seconds a command may take; None: no fixed deadline (the keepalives still bound it)."""
        if timeout is None:
            timeout = NO_DEADLINE if stream else SHORT_COMMAND_TIMEOUT
        return None if math.isinf(timeout) else timeout

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stream: bool = False,
        dry_stdout: str = "",
        dry_returncode: int = 0,
        timeout: float | None = None,
    ) -> Result:
        """Run argv on the host; `sudo` only takes effect when this host needs sudo.

        timeout: seconds before the command is abandoned (RemoteCommandFailed); None is the
        default (SHORT_COMMAND_TIMEOUT, or no fixed deadline for streamed output), NO_DEADLINE none.
        """
        needs_sudo = sudo and self.use_sudo
        self.echo.command(["sudo", *argv] if needs_sudo else argv, where=self.label)
        if self.dry_run:
            return Result(tuple(argv), dry_returncode, dry_stdout)
        import paramiko
        from invoke.exceptions import AuthFailure, CommandTimedOut

        command = shlex.join(argv)
        deadline = self._deadline(timeout, stream)
        options: dict[str, Any] = {"warn": True, "hide": not stream, "in_stream": False, "timeout": deadline}
        # Streamed output reaches the emitter line by line, stdout's and stderr's lines each whole.
        writers = (self.echo.lines(), self.echo.lines()) if stream else ()
        if writers:
            options.update(out_stream=writers[0], err_stream=writers[1])
        try:
            if needs_sudo:
                outcome = self.connection.sudo(command, password=self.sudo_password.get(), user="root", **options)
            else:
                outcome = self.connection.run(command, **options)
        except AuthFailure:
            raise SudoFailed(f"{self.label}: sudo refused the password for {self.login_user}") from None
        except CommandTimedOut:
            raise self._timed_out(argv, deadline) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._lost(argv, error) from None
        finally:
            for writer in writers:
                writer.close()
        if self._liveness is not None and self._liveness.lost:
            raise self._lost(argv)
        if outcome.exited in (None, -1) and not self._transport_active():
            raise self._lost(argv)  # no exit status, and nothing left to bring one: never a result
        if not stream:
            self.echo.record(outcome.stdout + outcome.stderr)
        return Result(tuple(argv), int(outcome.exited if outcome.exited is not None else 255), outcome.stdout, outcome.stderr)

    def feed(self, argv: Sequence[str], source: IO[bytes] | Readable, *, describe_source: str) -> Result:
        """Run argv with `source` as its stdin, over the connection we already have.

        Fabric's in_stream reads text a byte at a time; a NAR stream needs a raw channel.
        No fixed deadline (an import takes as long as the closure is big): the keepalives bound it.
        """
        self.echo.command([*argv, "<", describe_source], where=self.label)
        if self.dry_run:
            return Result(tuple(argv), 0)
        import paramiko

        try:
            channel = self._open_channel()
            channel.set_combine_stderr(True)
            channel.exec_command(shlex.join(argv))
            output: list[bytes] = []
            reader = threading.Thread(target=lambda: output.extend(iter(lambda: channel.recv(65536), b"")), daemon=True)
            reader.start()
            while chunk := source.read(1 << 18):
                channel.sendall(chunk)
            channel.shutdown_write()
            returncode = channel.recv_exit_status()
            reader.join()
            channel.close()
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._lost(argv, error) from None
        if self._liveness is not None and self._liveness.lost:
            raise self._lost(argv)
        text = b"".join(output).decode("utf-8", "replace")
        self.echo.record(text)
        return Result(tuple(argv), returncode, text, text)

    def run_with_secret(self, argv: Sequence[str], secret: bytes, *, sudo: bool = False, describe: str, ready: str) -> Result:
        """Run argv and give it `secret` on stdin once it printed the line `ready`; the secret is never in argv, shown or logged.

        With sudo, the password is sudo's to read on stdin first (`sudo -S`,
        answered only when its prompt appears, so a NOPASSWD sudo works too);
        waiting for `ready` keeps the secret out of sudo's reading, and a
        command that ends before it is ready gets none of it. `describe`
        stands for the secret in the command line shown. Bounded by
        SHORT_COMMAND_TIMEOUT and the keepalives.
        """
        needs_sudo = sudo and self.use_sudo
        self.echo.command([*(["sudo"] if needs_sudo else []), *argv, "<", describe], where=self.label)
        if self.dry_run:
            return Result(tuple(argv), 0, f"{ready}\n")
        import paramiko

        command = shlex.join(["sudo", "-S", "-p", SUDO_PROMPT, "-u", "root", "--", *argv] if needs_sudo else argv)
        deadline = time.monotonic() + SHORT_COMMAND_TIMEOUT
        try:
            channel = self._open_channel()
            channel.exec_command(command)
            session = _SecretSession(channel, ready.encode())
            try:
                returncode = session.run(secret, self.sudo_password.get if needs_sudo else None, deadline)
                # sshd may send the exit status before the last of the output: read to the end of both before closing.
                session.join(max(1.0, deadline - time.monotonic()))
            finally:
                channel.close()
                session.join(5.0)
        except _SudoRefused:
            raise SudoFailed(f"{self.label}: sudo refused the password for {self.login_user}") from None
        except _Abandoned:
            raise self._timed_out(argv, SHORT_COMMAND_TIMEOUT) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._lost(argv, error) from None
        if self._liveness is not None and self._liveness.lost:
            raise self._lost(argv)
        if returncode == -1 and not self._transport_active():
            raise self._lost(argv)
        stdout, stderr = (bytes(text).decode("utf-8", "replace") for text in (session.stdout, session.stderr))
        self.echo.record(stdout + stderr)
        return Result(tuple(argv), returncode, stdout, stderr)

    def _drop(self) -> None:
        if self._liveness is not None:
            self._liveness.stop()
            self._liveness = None
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a host that just rebooted may fail to close cleanly
                pass
            self._connection = None

    def close(self) -> None:
        with self._ahead_lock:
            self._closes += 1
            if self._connecting_ahead:
                # Its thread closes what it opens: a host done with (its build failed, say) is not held up for as long
                # as a connection attempt lasts, which to an unreachable host is its whole timeout.
                return
        with self._connect_lock:
            self._drop()
            self._failed_ahead = None
