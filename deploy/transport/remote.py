"""One Fabric connection per host, reused for every remote step.

Commands arrive as argv lists and are quoted here, at the boundary, with
shlex.join. Host keys are checked against known_hosts (the user's and the
ones the ssh_config names): Fabric's default of accepting any key is
replaced, and only `StrictHostKeyChecking accept-new` (or `no`) in the
ssh_config lets an unknown key through.
"""
from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from deploy.errors import HostKeyRejected, HostUnreachable, LoginRefused, SudoFailed
from deploy.transport.process import Result
from deploy.ui import Emitter, read_secret

if TYPE_CHECKING:
    from fabric import Connection
    from paramiko.client import MissingHostKeyPolicy, SSHClient
    from paramiko.pkey import PKey


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


def known_hosts_files(ssh_options: dict[str, Any]) -> tuple[list[Path], list[Path]]:
    """(user files, global files) as OpenSSH would read them for this host."""

    def paths(value: Any, default: list[str]) -> list[Path]:
        items = value if isinstance(value, list) else (value.split() if value else default)
        return [Path(os.path.expanduser(item)) for item in items if item != "none"]

    user = paths(ssh_options.get("userknownhostsfile"), ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"])
    system = paths(ssh_options.get("globalknownhostsfile"), ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"])
    return user, system


def _host_key_policy(checking: str, save_to: Path | None, host_label: str) -> MissingHostKeyPolicy:
    from paramiko.client import MissingHostKeyPolicy

    class Policy(MissingHostKeyPolicy):
        def missing_host_key(self, client: SSHClient, hostname: str, key: PKey) -> None:
            if checking not in ("accept-new", "no"):
                raise HostKeyRejected(
                    f"{host_label}: unknown SSH host key for {hostname} ({key.get_name()} {key.get_fingerprint().hex()}); "
                    "add it to known_hosts, or set StrictHostKeyChecking accept-new in the ssh_config"
                )
            client.get_host_keys().add(hostname, key.get_name(), key)
            if checking == "accept-new" and save_to is not None:
                save_to.parent.mkdir(parents=True, exist_ok=True)
                with open(save_to, "a") as known:
                    known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")

    return Policy()


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
        connect_timeout: int = 10,
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
        self._connection: Connection | None = None
        self.facts: dict[str, bool] = {}

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> Connection:
        import paramiko
        from fabric import Config, Connection

        config = Config(runtime_ssh_path=str(self.ssh_config) if self.ssh_config else None)
        config.load_ssh_config()
        connection = Connection(self.destination, port=self.port, config=config, connect_timeout=self.connect_timeout)
        options = dict(connection.ssh_config)
        user_files, system_files = known_hosts_files(options)
        client = connection.client
        for known in system_files + user_files:
            if known.exists():
                client.get_host_keys().load(str(known))
        checking = str(options.get("stricthostkeychecking", "ask")).lower()
        client.set_missing_host_key_policy(
            _host_key_policy(checking, user_files[0] if user_files else None, self.label)
        )
        where = f"{connection.user}@{connection.host}:{connection.port}"
        try:
            connection.open()
        except HostKeyRejected:
            raise
        except paramiko.BadHostKeyException as error:
            raise HostKeyRejected(
                f"{self.label}: the SSH host key of {where} CHANGED (got {error.key.get_name()} "
                f"{error.key.get_fingerprint().hex()}); refusing to connect; if this is expected, remove the old key from known_hosts"
            ) from None
        except paramiko.AuthenticationException:
            raise LoginRefused(f"{self.label}: {where} refused our SSH key for user {connection.user}") from None
        except TimeoutError:
            raise HostUnreachable(f"{self.label}: no answer from {where} within {self.connect_timeout}s") from None
        except (OSError, paramiko.SSHException, EOFError) as error:
            reason = str(error).strip() or type(error).__name__
            raise HostUnreachable(f"{self.label}: cannot reach {where}: {reason}") from None
        return connection

    @property
    def login_user(self) -> str:
        return str(self.connection.user)

    def run(
        self,
        argv: Sequence[str],
        *,
        sudo: bool = False,
        stream: bool = False,
        dry_stdout: str = "",
        dry_returncode: int = 0,
    ) -> Result:
        """Run argv on the host; `sudo` only takes effect when this host needs sudo."""
        needs_sudo = sudo and self.use_sudo
        self.echo.command(["sudo", *argv] if needs_sudo else argv, where=self.label)
        if self.dry_run:
            return Result(tuple(argv), dry_returncode, dry_stdout)
        from invoke.exceptions import AuthFailure

        command = shlex.join(argv)
        options: dict[str, Any] = {"warn": True, "hide": not stream, "in_stream": False}
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
        except (OSError, EOFError) as error:
            raise HostUnreachable(f"{self.label}: connection lost while running {argv[0]}: {error}") from None
        finally:
            for writer in writers:
                writer.close()
        if not stream:
            self.echo.record(outcome.stdout + outcome.stderr)
        return Result(tuple(argv), int(outcome.exited if outcome.exited is not None else 255), outcome.stdout, outcome.stderr)

    def feed(self, argv: Sequence[str], source: IO[bytes], *, describe_source: str) -> Result:
        """Run argv with `source` as its stdin, over the connection we already have.

        Fabric's in_stream reads text a byte at a time; a NAR stream needs a raw channel.
        """
        self.echo.command([*argv, "<", describe_source], where=self.label)
        if self.dry_run:
            return Result(tuple(argv), 0)
        try:
            channel = self.connection.client.get_transport().open_session()
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
        except (OSError, EOFError) as error:
            raise HostUnreachable(f"{self.label}: connection lost while running {argv[0]}: {error}") from None
        text = b"".join(output).decode("utf-8", "replace")
        self.echo.record(text)
        return Result(tuple(argv), returncode, text, text)

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # noqa: BLE001 - a host that just rebooted may fail to close cleanly
                pass
            self._connection = None
