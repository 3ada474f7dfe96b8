"""The target's system generations: list them, switch to one, roll back.

Everything is read from the target's own system profile in one round trip
(commands.list_generations), and switching reuses activation.py's
switch-to-configuration wrapper and undo, as `nixos-rebuild --rollback` and
`nix-env --switch-generation` would.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from deploy.activate.activation import (
    SWITCH_RECORDS_DIR,
    Activation,
    SwitchLost,
    SystemState,
    forget_record,
    lost_activation,
    new_token,
    parse_generation,
    run_switch_to_configuration,
    settle_lost_switch,
    undo,
)
from deploy.errors import ActivationFailed, ActivationUnknown, NotInStore, RemoteCommandFailed, UsageError
from deploy.model import Action
from deploy.nix import commands
from deploy.transport.hosts import Host
from deploy.transport.remote import RemoteHost

Note = Callable[[str], None]
# How long a switch whose channel closed may still run before nixfab says it cannot tell how it ended (seconds):
# a deploy's --confirm-timeout default.
LOST_SWITCH_TIMEOUT = 30.0


@dataclass(frozen=True)
class Generation:
    number: int
    created: datetime  # UTC; the mtime of system-N-link, when nix-env made it
    current: bool  # the profile points at it (the boot default after a switch or boot)
    path: str
    nixos_version: str | None  # None: the path has no nixos-version, so it is not a NixOS system
    running: bool  # it is /run/current-system
    booted: bool  # it is /run/booted-system
    revision: str | None  # the flake revision nixfab recorded for it, "<rev>-dirty" for a dirty tree


@dataclass(frozen=True)
class GenerationListing:
    generations: tuple[Generation, ...]
    running: str | None
    booted: str | None

    @property
    def current(self) -> Generation | None:
        return next((g for g in self.generations if g.current), None)

    def numbered(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.number == number), None)


def revision_label(record_json: str) -> str | None:
    """`<rev>` or `<rev>-dirty` from a generations/<N>.json record; None when it says nothing usable."""
    try:
        record = json.loads(record_json)
    except ValueError:
        return None
    revision = record.get("revision") if isinstance(record, dict) else None
    if not isinstance(revision, str) or not revision:
        return None
    return f"{revision}-dirty" if record.get("dirty") is True else revision


def _optional(field: str) -> str | None:
    # The listing script writes "=value" for a file that exists and "" for one that does not.
    return field[1:].strip() if field.startswith("=") else None


def parse_generation_listing(stdout: str) -> GenerationListing:
    """Parse what commands.list_generations prints (pure)."""
    rows: list[tuple[int, int, str, str | None, str | None]] = []
    links: dict[str, str | None] = {"profile": None, "running": None, "booted": None}
    for line in stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "generation" and len(fields) == 6 and fields[1].isdigit() and fields[2].isdigit():
            version = _optional(fields[4])
            revision_json = _optional(fields[5])
            rows.append((int(fields[1]), int(fields[2]), fields[3], version, revision_label(revision_json) if revision_json else None))
        elif fields[0] in links and len(fields) == 2:
            links[fields[0]] = fields[1].strip() or None
    current_number = parse_generation(links["profile"]) if links["profile"] else None
    generations = tuple(
        Generation(
            number=number,
            created=datetime.fromtimestamp(mtime, tz=UTC),
            current=number == current_number,
            path=path,
            nixos_version=version,
            running=path == links["running"],
            booted=path == links["booted"],
            revision=revision,
        )
        for number, mtime, path, version, revision in sorted(rows)
    )
    return GenerationListing(generations, links["running"], links["booted"])


def read_generations(host: Host) -> GenerationListing:
    result = host.run(commands.list_generations())
    if not result.ok:
        raise RemoteCommandFailed(f"{host.label}: cannot list the system generations: {result.tail(1)}")
    return parse_generation_listing(result.stdout)


def list_generations(host: Host) -> list[Generation]:
    """The target's system generations, oldest first, in one round trip."""
    return list(read_generations(host).generations)


def format_generations(generations: Sequence[Generation]) -> str:
    """A plain-text table; `*` marks the current generation, and the running and booted ones are named."""
    if not generations:
        return "no system generations"
    header = ("", "GEN", "DATE (UTC)", "NIXOS VERSION", "REVISION", "STATE", "STORE PATH")
    rows = [header]
    for generation in generations:
        state = [name for name, flag in (("current", generation.current), ("running", generation.running), ("booted", generation.booted)) if flag]
        revision = generation.revision or "-"
        if len(revision) > 12 and not revision.startswith("<"):
            # A git commit id is unique well before 40 characters; keep the -dirty mark.
            revision = revision[:12] + ("-dirty" if revision.endswith("-dirty") else "")
        rows.append((
            "*" if generation.current else "",
            str(generation.number),
            generation.created.strftime("%Y-%m-%d %H:%M:%S"),
            generation.nixos_version or "-",
            revision,
            ",".join(state) or "-",
            generation.path,
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def generation_record(generation: Generation) -> dict[str, object]:
    return {
        "number": generation.number,
        "created": generation.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "current": generation.current,
        "running": generation.running,
        "booted": generation.booted,
        "path": generation.path,
        "nixos_version": generation.nixos_version,
        "revision": generation.revision,
    }


def generations_json(generations: Sequence[Generation]) -> str:
    return json.dumps([generation_record(g) for g in generations], indent=2)


def _names(generations: Sequence[Generation]) -> str:
    return ", ".join(str(g.number) for g in generations) or "none"


def _switch_to(host: Host, listing: GenerationListing, generation: Generation, note: Note | None) -> Activation:
    """Make an existing generation current and activate it; undo on failure."""
    if generation.nixos_version is None:
        raise NotInStore(f"{host.label}: generation {generation.number} ({generation.path}) has no nixos-version; refusing to activate it")
    current = listing.current
    previous = SystemState(
        generation=current.number if current else None,
        generation_path=current.path if current else None,
        running=listing.running,
    )
    if note is not None and current is not None and current.number == generation.number:
        note(f"[{host.label}] generation {generation.number} is already current; activating it again")
    switched = host.run(commands.switch_system_generation(generation.number), sudo=True)
    if not switched.ok:
        raise RemoteCommandFailed(f"{host.label}: nix-env --switch-generation {generation.number} failed: {switched.tail(1)}")
    activation = Activation(generation.path, Action.SWITCH, generation.number, previous, created_generation=False, token=new_token())
    if not isinstance(host, RemoteHost):  # this machine: no channel to lose
        _switch_or_undo(host, activation)
        return activation
    from deploy.confirm import magic_rollback

    # The switch records its exit status, as a deploy's does: going back to a generation whose switch restarts the
    # network (the usual reason to go back by hand) loses the channel, and the host can still say how it ended.
    record = f"{SWITCH_RECORDS_DIR}/{activation.token}"
    try:
        try:
            _switch_or_undo(host, activation, lambda argv: magic_rollback.mark_activated(f"{record}/activated", argv))
        except ActivationUnknown as unknown:
            if note is not None:
                note(f"[{host.label}] lost the connection during the switch; asking the host over a new one how it ended")
            host.close()
            answer = magic_rollback.activation_status(host.fresh, record, timeout=LOST_SWITCH_TIMEOUT)
            activation = settle_lost_switch(host, unknown, answer, label=host.label, record=record, note=note or (lambda _: None))
    except ActivationFailed:  # known, and undone; still unknown (ActivationUnknown) keeps it for the error's `cat`
        forget_record(host, record)
        raise
    forget_record(host, record)
    return activation


def _switch_or_undo(host: Host, activation: Activation, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
    """switch-to-configuration of the generation made current; on failure, everything back as it was."""
    try:
        run_switch_to_configuration(host, activation.path, Action.SWITCH, wrap, unit=activation.unit)
    except ActivationFailed as failure:
        undone = undo(host, activation)
        raise ActivationFailed(f"{failure}; {undone}") from None
    except SwitchLost as lost:
        raise lost_activation(host.label, activation, lost.why) from None


def _dry_run_switch(host: Host, number: int | None) -> Activation:
    """What a dry run prints: the commands, with the generation the host would tell us as a placeholder."""
    if number is None:
        host.run(commands.rollback_system_profile(), sudo=True)
        path = "<previous generation>"
    else:
        host.run(commands.switch_system_generation(number), sudo=True)
        path = f"<generation {number}>"
    run_switch_to_configuration(host, path, Action.SWITCH)
    return Activation(path, Action.SWITCH, number, SystemState(None, None, None), created_generation=False)


def switch_generation(host: Host, number: int, *, note: Note | None = None) -> Activation:
    """`nix-env --switch-generation N` on the target's system profile, then `switch-to-configuration switch`.

    An unknown N is a UsageError naming the generations there are, and
    changes nothing. If activation fails, the profile, boot default and
    running system go back to what they were, and ActivationFailed says so.
    `note` hears about things worth saying (such as N being current already).
    """
    if host.dry_run:
        return _dry_run_switch(host, number)
    listing = read_generations(host)
    generation = listing.numbered(number)
    if generation is None:
        raise UsageError(f"{host.label} has no system generation {number}; it has: {_names(listing.generations)}")
    return _switch_to(host, listing, generation, note)


def previous_generation(listing: GenerationListing) -> Generation | None:
    """nix-env --rollback's choice: the highest-numbered generation below the current one."""
    current = listing.current
    if current is None:
        return None
    older = [g for g in listing.generations if g.number < current.number]
    return older[-1] if older else None


def rollback(host: Host, *, note: Note | None = None) -> Activation:
    """nixos-rebuild --rollback switch: the previous generation becomes current, boot default and running system."""
    if host.dry_run:
        return _dry_run_switch(host, None)
    listing = read_generations(host)
    target = previous_generation(listing)
    if target is None:
        current = listing.current
        where = f"before generation {current.number}" if current else "(the system profile has no current generation)"
        raise UsageError(f"{host.label}: no generation to roll back to {where}; it has: {_names(listing.generations)}")
    if note is not None:
        note(f"[{host.label}] rolling back from generation {listing.current.number if listing.current else '?'} to {target.number}")
    return _switch_to(host, listing, target, note)
