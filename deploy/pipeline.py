"""One deploy of one host, from evaluation to garbage collection.

The steps live in their own modules (build, closure, activation, reboot,
gc); this module decides which of them a request needs, where they run, and
that every temporary GC root is released however the deploy ends.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy import commands
from deploy.activation import activate
from deploy.build import build_locally, build_remotely, evaluate
from deploy.closure import copy_closure
from deploy.errors import UsageError
from deploy.gc import collect_garbage
from deploy.hosts import Host, LocalHost
from deploy.inventory import HostSpec, Inventory, SshTarget
from deploy.process import Echo, LocalRunner
from deploy.reboot import reboot_and_wait
from deploy.remote import RemoteHost, SudoPassword


@dataclass(frozen=True)
class DeployRequest:
    machine: str  # "name" or "user@name", as flakem takes it
    flake: str
    action: str | None  # None builds only
    build_on: str | None = None  # overrides hosts.yaml: local, target, or a builder's name
    local: bool = False  # the target is this machine (`switch`)
    reboot: bool = False
    collect_garbage: bool = False
    delete_older_than: str | None = None
    substitute_on_destination: bool = False
    extra_nix: tuple[str, ...] = ()
    out_link: Path | None = None  # `build` leaves ./result, as nixos-rebuild build does
    reboot_timeout: float = 300.0
    reboot_interval: float = 2.0


@dataclass(frozen=True)
class DeployOutcome:
    host: str
    path: str
    built_on: str
    copied: bool
    generation: int | None
    boot_id: str | None


@dataclass
class Session:
    """What one run shares between hosts: output, dry-run, the sudo password, connections."""

    inventory: Inventory
    echo: Echo = field(default_factory=Echo)
    dry_run: bool = False
    sudo_password: SudoPassword = field(default_factory=SudoPassword)
    _remotes: dict[tuple[str, int | None], RemoteHost] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runner = LocalRunner(self.echo, dry_run=self.dry_run)

    def remote(self, label: str, ssh: SshTarget, *, use_sudo: bool) -> RemoteHost:
        key = (ssh.destination(), ssh.port)
        if key not in self._remotes:
            self._remotes[key] = RemoteHost(
                label,
                ssh.destination(),
                port=ssh.port,
                ssh_config=self.inventory.ssh_config,
                echo=self.echo,
                dry_run=self.dry_run,
                use_sudo=use_sudo,
                sudo_password=self.sudo_password,
            )
        return self._remotes[key]

    def target(self, spec: HostSpec) -> RemoteHost:
        return self.remote(spec.name, spec.ssh, use_sudo=spec.sudo)

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

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.close()


@contextmanager
def temporary_gc_root(out_link: Path | None) -> Iterator[Path]:
    """A link that roots the build for the length of the deploy (or ./result for `build`)."""
    if out_link is not None:
        yield out_link
        return
    with tempfile.TemporaryDirectory(prefix="nixfab-gcroot-") as directory:
        yield Path(directory) / "result"


def deploy(session: Session, request: DeployRequest) -> DeployOutcome:
    spec = session.inventory.host(request.machine)
    build_on = "local" if request.local else (request.build_on or spec.build_on)
    if build_on == spec.name:
        build_on = "target"
    target: Host = LocalHost(session.runner) if request.local else session.target(spec)
    echo, runner, extra = session.echo, session.runner, request.extra_nix

    with temporary_gc_root(request.out_link) as gc_root:
        remote_root: tuple[Host, str] | None = None
        source_store: str | None = None
        try:
            if build_on == "local":
                echo.note(f"==> {spec.name}: building {spec.attr} on this machine")
                path = build_locally(runner, request.flake, [spec.attr], out_link=gc_root, extra=extra)[spec.attr]
            else:
                builder: RemoteHost = session.target(spec) if build_on == "target" else session.builder(build_on)
                echo.note(f"==> {spec.name}: building {spec.attr} on {builder.label}")
                evaluation = evaluate(runner, request.flake, spec.attr, extra)
                builder_ssh = spec.ssh if build_on == "target" else session.ssh_of(build_on)
                built = build_remotely(
                    runner,
                    builder,
                    commands.ssh_store_uri(builder.destination),
                    evaluation,
                    nix_env=session.nix_env(builder_ssh),
                    extra=extra,
                )
                remote_root = (builder, built.gc_root_dir)
                path = built.out_path
                if builder is not target:
                    source_store = commands.ssh_store_uri(builder.destination)

            if request.action is None:
                echo.note(f"==> {spec.name}: built {path}")
                return DeployOutcome(spec.name, path, build_on, False, None, None)

            copied = False
            if not request.local and not (build_on == "target"):
                echo.note(f"==> {spec.name}: copying the closure")
                sources = [spec.ssh] + ([session.ssh_of(build_on)] if source_store else [])
                copied = copy_closure(
                    runner,
                    path,
                    target=target,
                    target_store=commands.ssh_store_uri(spec.ssh.destination()),
                    source_store=source_store,
                    substitute_on_destination=request.substitute_on_destination,
                    nix_env=session.nix_env(*sources),
                    extra=extra,
                )
            echo.note(f"==> {spec.name}: activating ({request.action})")
            activation = activate(target, path, request.action)
            boot_id = None
            if request.reboot:
                echo.note(f"==> {spec.name}: rebooting and waiting for it to come back")
                boot_id = reboot_and_wait(
                    target, expected_system=path, timeout=request.reboot_timeout, interval=request.reboot_interval
                )
            if request.collect_garbage:
                echo.note(f"==> {spec.name}: collecting garbage")
                collect_garbage(target, request.delete_older_than)
            generation = "a new generation" if activation.generation is None else f"generation {activation.generation}"
            echo.note(f"==> {spec.name}: done: {generation} is {path}")
            return DeployOutcome(spec.name, path, build_on, copied, activation.generation, boot_id)
        finally:
            if remote_root is not None:
                builder_host, root_dir = remote_root
                try:
                    builder_host.run(commands.remove_tree(root_dir))
                except Exception:  # noqa: BLE001 - a host that went away keeps a stale temp root; harmless
                    pass
