"""What one run shares between its hosts: the inventory, dry-run, the sudo password, the connections.

Apart from pipeline.py, so that opening a session does not import every step of a deploy.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from deploy.config.inventory import HostSpec, Inventory, SshTarget
from deploy.errors import UsageError
from deploy.nix import commands
from deploy.transport.openssh import SshResolver
from deploy.transport.process import LocalRunner
from deploy.transport.remote import RemoteHost, SudoPassword
from deploy.ui import Emitter


@dataclass
class Session:
    """What one run shares between hosts: the inventory, dry-run, the sudo password, connections."""

    inventory: Inventory
    echo: Emitter = field(default_factory=Emitter)
    dry_run: bool = False
    sudo_password: SudoPassword = field(default_factory=SudoPassword)
    ssh_resolver: SshResolver = field(default_factory=SshResolver)  # `ssh -G` once per destination per run
    _remotes: dict[tuple[str, int | None], RemoteHost] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from deploy.transport.local_store import StoreServer

        self.store = StoreServer()
        self.runner = LocalRunner(self.echo, dry_run=self.dry_run, store=self.store)

    def local_runner(self, echo: Emitter) -> LocalRunner:
        """A runner of this run's (a host's, with its own output), sharing the run's store server."""
        return LocalRunner(echo, dry_run=self.dry_run, store=self.store)

    def new_remote(self, label: str, ssh: SshTarget, *, use_sudo: bool, echo: Emitter | None = None) -> RemoteHost:
        return RemoteHost(
            label,
            ssh.destination(),
            port=ssh.port,
            ssh_config=self.inventory.ssh_config,
            echo=echo or self.echo,
            dry_run=self.dry_run,
            use_sudo=use_sudo,
            sudo_password=self.sudo_password,
            resolver=self.ssh_resolver,
        )

    def remote(self, label: str, ssh: SshTarget, *, use_sudo: bool, echo: Emitter | None = None) -> RemoteHost:
        """The connection to a host or builder, opened once per run and shared."""
        key = (ssh.destination(), ssh.port)
        with self._lock:
            if key not in self._remotes:
                self._remotes[key] = self.new_remote(label, ssh, use_sudo=use_sudo, echo=echo)
            return self._remotes[key]

    def target(self, spec: HostSpec, echo: Emitter | None = None) -> RemoteHost:
        """The host's own connection, speaking with the host's current emitter: a fleet host's connection opens while
        its system builds, before its log does (Fleet.deploy_one), and its commands go to that log."""
        remote = self.remote(spec.name, spec.ssh, use_sudo=spec.sudo, echo=echo)
        if echo is not None:
            remote.echo = echo
        return remote

    def fresh_target(self, spec: HostSpec, echo: Emitter | None = None) -> RemoteHost:
        """A new connection, never shared: magic rollback's proof that SSH still works."""
        return self.new_remote(spec.name, spec.ssh, use_sudo=spec.sudo, echo=echo)

    def ssh_of(self, name: str) -> SshTarget:
        """A host's or a builder's SSH target, by name."""
        if name in self.inventory.hosts:
            return self.inventory.hosts[name].ssh
        return self.inventory.builder_target(name)

    def builder(self, name: str) -> RemoteHost:
        if name in self.inventory.hosts:
            return self.target(self.inventory.hosts[name])
        return self.remote(name, self.ssh_of(name), use_sudo=False)

    def nix_env(self, *targets: SshTarget) -> dict[str, str]:
        ports = {t.port for t in targets if t.port}
        if len(ports) > 1:
            raise UsageError(
                f"{' and '.join(t.destination() for t in targets)} use different SSH ports; "
                "one nix copy cannot reach both: name them as Host aliases in the inventory's ssh_config"
            )
        return {"NIX_SSHOPTS": commands.nix_sshopts(self.inventory.ssh_config, ports.pop() if ports else None)}

    def release(self, destination: str, port: int | None) -> None:
        """Close the shared connection to destination:port, if one is open (a fleet host is done with it)."""
        with self._lock:
            remote = self._remotes.pop((destination, port), None)
        if remote is not None:
            remote.close()

    def close(self) -> None:
        with self._lock:
            remotes = list(self._remotes.values())
        for remote in remotes:
            remote.close()
        self.store.close()
