"""What a deploy task asks of every host it selects: built once at the CLI edge, read by the engine.

Apart from pipeline.py, so that a run can start its builds before the
engine's steps are imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.model import Action

if TYPE_CHECKING:
    from deploy.config.inventory import HostSpec


@dataclass(frozen=True)
class DeployRequest:
    flake: str
    action: Action | None  # None builds only
    build_on: str | None = None  # overrides hosts.yaml: local, target, or a builder's name
    local: bool = False  # the target is this machine (`switch`, or no --host)
    reboot: bool = False
    collect_garbage: bool = False
    delete_older_than: str | None = None
    substitute_on_destination: bool = False
    extra_nix: tuple[str, ...] = ()
    out_link: Path | None = None  # `build` leaves ./result, as nixos-rebuild build does
    reboot_timeout: float = 300.0
    reboot_interval: float = 2.0
    force: bool = False  # activate even when the host already runs this system
    magic_rollback: bool = True
    confirm_timeout: float = 30.0
    health_checks: bool = True
    show_diff: bool = False
    ask: bool = False
    lock: bool = True
    diff_only: bool = False  # `diff`: build, copy and show the difference; activate nothing
    revision: str | None = None  # the flake's git revision, recorded on the target per generation
    dirty: bool | None = None
    keys_only: bool = False  # `keys`: upload the hosts' keys, and build, copy and activate nothing

    def __post_init__(self) -> None:
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        if self.action is not None:
            object.__setattr__(self, "action", Action(self.action))

    @property
    def uploads_keys(self) -> bool:
        """hosts.yaml's keys go up: with `keys`, and with every deploy that changes the host (not build, diff, dry-activate)."""
        return self.keys_only or (self.action is not None and self.action.changes_system and not self.diff_only)



def build_location(request: DeployRequest, spec: HostSpec) -> str:
    if request.local:
        return "local"
    build_on = request.build_on or spec.build_on
    return "target" if build_on == spec.name else build_on
