"""Where a destination really is, by OpenSSH's own rules: `ssh -G`, parsed.

paramiko reads ssh_config by rules of its own (no `Include`, no
`HostKeyAlias`, no `ServerAliveInterval`), while `ssh` and so `nix copy`
use OpenSSH's. Reading the file twice by two sets of rules let one host name
mean two machines. So nixfab never interprets ssh_config itself: it asks
`ssh -G [-F config] [-p port] [-l user] destination` once per destination
per run, and the Fabric connection goes exactly where that says.

What `ssh -G` says is honoured (hostname, port, user, identity files and
IdentitiesOnly, IdentityAgent none, known_hosts files, HostKeyAlias,
HashKnownHosts, StrictHostKeyChecking, ConnectTimeout, ConnectionAttempts,
AddressFamily, BindAddress, TCPKeepAlive, ServerAliveInterval and
ServerAliveCountMax), refused (REFUSED below: options that change which
machine is reached or which host key is trusted, and that paramiko cannot
do exactly as OpenSSH would), or does not change which machine is reached
and is ignored (ciphers, HostKeyAlgorithms, forwarding, ControlMaster, ...).
"""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import SshOptionRefused, UsageError

DEFAULT_CONNECT_TIMEOUT = 10.0
# OpenSSH sends no keepalives unless told to; nixfab always does, so a frozen peer is noticed.
DEFAULT_ALIVE_INTERVAL = 5

# Option (as `ssh -G` spells it) -> why nixfab cannot honour it. Each changes
# which machine the connection reaches, or which host key proves it, in a way
# paramiko cannot reproduce exactly; connecting anyway could reach another
# machine than `ssh` and `nix copy` do, so it is refused instead.
REFUSED: Mapping[str, str] = {
    "proxycommand": "nixfab's SSH cannot run a ProxyCommand",
    "proxyjump": "nixfab's SSH cannot go through a jump host",
    "knownhostscommand": "nixfab's SSH cannot ask a KnownHostsCommand for host keys",
    "canonicalizehostname": "nixfab's SSH cannot canonicalize host names as OpenSSH does",
    "bindinterface": "nixfab's SSH cannot bind to an interface",
}
# The values that mean "not set" for the refused options.
UNSET = {"none", "false", "no", ""}


@dataclass(frozen=True)
class SshOptions:
    """What OpenSSH would use to reach one destination."""

    destination: str  # as asked: an alias, [user@]address
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()  # as ssh -G prints them: `~` and %-tokens not yet expanded
    identities_only: bool = False
    use_agent: bool = True
    user_known_hosts: tuple[str, ...] = ()
    global_known_hosts: tuple[str, ...] = ()
    host_key_alias: str | None = None
    hash_known_hosts: bool = False
    strict_host_key_checking: str = "ask"  # yes, no, ask or accept-new
    connect_timeout: float | None = None  # None: ConnectTimeout none
    connection_attempts: int = 1
    address_family: str = "any"  # any, inet or inet6
    bind_address: str | None = None
    tcp_keepalive: bool = True
    server_alive_interval: int = 0  # 0: OpenSSH sends none (nixfab then uses DEFAULT_ALIVE_INTERVAL)
    server_alive_count_max: int = 3

    @property
    def where(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name the host's key is filed under in known_hosts, as OpenSSH looks it up."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def alive_interval(self) -> int:
        return self.server_alive_interval or DEFAULT_ALIVE_INTERVAL

    @property
    def dead_after(self) -> float:
        """Seconds without a word from the peer after which the connection is declared lost."""
        return float(self.alive_interval * max(self.server_alive_count_max, 1))

    def expand(self, path: str, *, home: str, local_user: str, local_host: str) -> str:
        """An ssh_config path with `~` and OpenSSH's %-tokens expanded (unknown tokens stay as written)."""
        tokens = {
            "%": "%", "d": home, "u": local_user, "h": self.hostname, "p": str(self.port), "r": self.user,
            "n": self.destination.rpartition("@")[2], "l": local_host.split(".")[0], "L": local_host,
            "i": str(os.getuid()),
        }
        out = []
        index = 0
        while index < len(path):
            character = path[index]
            if character == "%" and index + 1 < len(path) and path[index + 1] in tokens:
                out.append(tokens[path[index + 1]])
                index += 2
                continue
            out.append(character)
            index += 1
        text = "".join(out)
        if text == "~" or text.startswith("~/"):
            text = home + text[1:]
        return text

    def existing_identity_files(self) -> list[str]:
        """The identity files that exist here, expanded, in ssh_config order (OpenSSH skips missing ones too)."""
        home, user, host = os.path.expanduser("~"), getpass.getuser(), socket.gethostname()
        found = []
        for written in self.identity_files:
            path = self.expand(written, home=home, local_user=user, local_host=host)
            if os.path.isfile(path) and path not in found:
                found.append(path)
        return found

    def known_hosts_files(self) -> tuple[list[Path], list[Path]]:
        """(user files, global files), expanded."""
        home, user, host = os.path.expanduser("~"), getpass.getuser(), socket.gethostname()

        def paths(items: tuple[str, ...]) -> list[Path]:
            return [Path(self.expand(item, home=home, local_user=user, local_host=host)) for item in items if item != "none"]

        return paths(self.user_known_hosts), paths(self.global_known_hosts)


def _yes(value: str) -> bool:
    return value.lower() in ("yes", "true")


def _number(label: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{label}: ssh -G says {key} {value!r}, which is not a number") from None


def parse_ssh_g(output: str, *, destination: str, label: str) -> SshOptions:
    """The options `ssh -G` printed for destination; SshOptionRefused names the first option nixfab cannot honour.

    Pure: reads no file, runs nothing. Keys are lower case, one `key value` a line; a
    key may repeat (identityfile), and a value may hold several words (known hosts files).
    """
    values: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value.strip())

    def one(key: str, default: str = "") -> str:
        return values.get(key, [default])[0]

    for key, why in REFUSED.items():
        value = one(key)
        if value.lower() not in UNSET:
            spelled = {"proxycommand": "ProxyCommand", "proxyjump": "ProxyJump", "knownhostscommand": "KnownHostsCommand",
                       "canonicalizehostname": "CanonicalizeHostname", "bindinterface": "BindInterface"}[key]
            raise SshOptionRefused(
                f"{label}: the ssh_config sets {spelled} {value} for {destination}; {why}, and connecting "
                "without it could reach another machine than ssh and nix copy do: remove it for this host"
            )
    hostname = one("hostname")
    if not hostname:
        raise UsageError(f"{label}: ssh -G printed no hostname for {destination}")
    checking = one("stricthostkeychecking", "ask").lower()
    checking = {"true": "yes", "false": "no", "off": "no", "on": "yes"}.get(checking, checking)
    timeout = one("connecttimeout", "none")
    family = one("addressfamily", "any").lower()
    bind = one("bindaddress", "none")
    return SshOptions(
        destination=destination,
        hostname=hostname,
        port=_number(label, "port", one("port", "22")),
        user=one("user") or getpass.getuser(),
        identity_files=tuple(values.get("identityfile", [])),
        identities_only=_yes(one("identitiesonly", "no")),
        use_agent=one("identityagent", "SSH_AUTH_SOCK").lower() != "none",
        user_known_hosts=tuple(" ".join(values.get("userknownhostsfile", [])).split()),
        global_known_hosts=tuple(" ".join(values.get("globalknownhostsfile", [])).split()),
        host_key_alias=one("hostkeyalias") or None,
        hash_known_hosts=_yes(one("hashknownhosts", "no")),
        strict_host_key_checking=checking,
        connect_timeout=None if timeout.lower() == "none" else float(_number(label, "connecttimeout", timeout)),
        connection_attempts=max(1, _number(label, "connectionattempts", one("connectionattempts", "1"))),
        address_family=family if family in ("inet", "inet6") else "any",
        bind_address=None if bind.lower() in ("none", "") else bind,
        tcp_keepalive=_yes(one("tcpkeepalive", "yes")),
        server_alive_interval=_number(label, "serveraliveinterval", one("serveraliveinterval", "0")),
        server_alive_count_max=_number(label, "serveralivecountmax", one("serveralivecountmax", "3")),
    )


def ssh_g_argv(destination: str, *, ssh_config: Path | None, port: int | None) -> list[str]:
    user, _, address = destination.rpartition("@")
    argv = ["ssh", "-G"]
    if ssh_config is not None:
        argv += ["-F", str(ssh_config)]
    if port is not None:
        argv += ["-p", str(port)]
    if user:
        argv += ["-l", user]
    return [*argv, "--", address]


def run_ssh_g(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


@dataclass
class SshResolver:
    """`ssh -G` once per (destination, port, ssh_config) per run; a Session holds one for all its hosts."""

    run: Callable[[list[str]], subprocess.CompletedProcess[str]] = run_ssh_g
    _cache: dict[tuple[str, int | None, str | None], SshOptions] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # guards _key_locks
    _key_locks: dict[tuple[str, int | None, str | None], threading.Lock] = field(default_factory=dict)

    def resolve(self, destination: str, *, port: int | None, ssh_config: Path | None, label: str) -> SshOptions:
        key = (destination, port, str(ssh_config) if ssh_config else None)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one `ssh -G` per destination; different destinations resolve side by side
            if key not in self._cache:
                argv = ssh_g_argv(destination, ssh_config=ssh_config, port=port)
                try:
                    result = self.run(argv)
                except FileNotFoundError:
                    raise UsageError(f"{label}: OpenSSH's ssh is not installed; nixfab needs `ssh -G` to read the ssh_config") from None
                except subprocess.TimeoutExpired:
                    raise UsageError(f"{label}: `ssh -G {destination}` did not answer within 60s (a Match exec that hangs?)") from None
                if result.returncode != 0:
                    reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
                    raise UsageError(f"{label}: OpenSSH cannot resolve {destination}: {reason}")
                self._cache[key] = parse_ssh_g(result.stdout, destination=destination, label=label)
            return self._cache[key]
