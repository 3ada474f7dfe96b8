"""Which hosts a command means: names, comma lists, globs, tags, --all, and "this machine"."""
from __future__ import annotations

import difflib
import fnmatch
import socket
from collections.abc import Iterable, Mapping, Sequence

from deploy.config.inventory import Inventory
from deploy.errors import UsageError

GLOB_CHARACTERS = frozenset("*?[")


def split_names(values: Iterable[str]) -> list[str]:
    """`--host a,b --host c` → [a, b, c], in order, without repeats."""
    names: dict[str, None] = {}
    for value in values:
        for name in value.split(","):
            if name.strip():
                names[name.strip()] = None
    return list(names)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(name) for name in close)}?" if close else ""


def this_machine() -> str:
    return socket.gethostname().split(".", 1)[0]


def select_hosts(
    inventory: Inventory,
    systems: Mapping[str, Sequence[str]],
    *,
    names: Sequence[str] = (),
    tags: Sequence[str] = (),
    everything: bool = False,
) -> list[str]:
    """Machines ("name" or "user@name") to deploy, in a stable order.

    `systems` maps each systems/ host to the tags its meta.nix gives.
    Known hosts are those of hosts.yaml and of the flake's systems/. A name
    that neither knows is still accepted when there is nothing to check it
    against (no inventory hosts, no systems/), as nixos-rebuild accepts any
    --target-host; otherwise it is refused with the nearest known names.
    """
    known = list(dict.fromkeys([*inventory.hosts, *systems]))
    tags_of = {name: {*systems.get(name, ()), *(inventory.hosts[name].tags if name in inventory.hosts else ())} for name in known}
    wanted_names = split_names(names)
    wanted_tags = split_names(tags)
    if everything:
        if not known:
            raise UsageError("--all: there are no hosts (no hosts.yaml entries and no systems/ directory)")
        return known
    selected: dict[str, None] = {}
    for name in wanted_names:
        user, at, bare = name.rpartition("@")
        if GLOB_CHARACTERS & set(bare):
            matches = fnmatch.filter(known, bare)
            if not matches:
                raise UsageError(f"--host {name!r} matches no host (known: {', '.join(known) or 'none'})")
            selected.update((f"{user}{at}{match}", None) for match in matches)
        elif known and bare not in known and bare not in inventory.builders:
            raise UsageError(f"unknown host {bare!r}: not in hosts.yaml or systems/{did_you_mean(bare, known)}")
        else:
            selected[name] = None
    for tag in wanted_tags:
        tagged = [name for name in known if tag in tags_of[name]]
        if not tagged:
            all_tags = {t for host_tags in tags_of.values() for t in host_tags}
            raise UsageError(f"--tag {tag!r}: no host has this tag{did_you_mean(tag, all_tags)}")
        selected.update((name, None) for name in tagged)
    return list(selected)
