"""systems/ discovery, and the data behind `inv hosts`.

flake.nix turns every `systems/<name>/` that holds a `default.nix` into
`nixosConfigurations.<name>`; this module applies the same rule to the
directory tree, and has Nix itself read every `meta.nix`: one
`nix-instantiate --eval` for all systems, so a meta.nix may use any Nix
(`let`, `import`, `with`, functions, interpolation). What Nix said is cached
in the state directory (deploy/config/systems_cache.py) and Nix runs again only
when a meta.nix, a file one imports, or the set of systems changed; tab
completion reads that cache and never runs Nix.

The values are checked here, as for hosts.yaml: a value nixfab cannot use is
left out (None) with a note naming `meta.nix:line:column` and the key. A
meta.nix that Nix cannot parse or evaluate raises InventoryError naming
`file:line:column` where Nix says where, else the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deploy.config import systems_cache
from deploy.config.inventory import (
    BUILD_LOCALLY,
    BUILD_ON_TARGET,
    NAME_PATTERN,
    USER_PATTERN,
    HostSpec,
    Inventory,
    parse_ssh_target,
)
from deploy.config.systems_cache import META_FILE, SYSTEM_FILE, SYSTEMS_DIRECTORY
from deploy.errors import InventoryError
from deploy.nix import commands

HOMES_DIRECTORY = "homes"
HARDWARE_FILE = "hardware.nix"

META_KEYS = ("buildOn", "system", "tags", "targetHost", "users")
# A meta.nix that loops for ever must not hang every task.
NIX_TIMEOUT_SECONDS = 120

# A Nix system double: arch-os. Anything else cannot be a nixpkgs platform.
SYSTEM_PATTERN: re.Pattern[str] = re.compile(r"\A[a-z0-9_]+-[a-z0-9_]+\Z")

Source = Literal["systems/", "hosts.yaml", "both"]

# What builtins.typeOf says, as a note says it.
_TYPE_NAMES = {"lambda": "a function", "list": "a list", "string": "a string", "int": "an integer", "float": "a number",
               "bool": "a boolean", "null": "null", "path": "a path", "set": "an attribute set"}


@dataclass(frozen=True)
class SystemInfo:
    """One `systems/<name>/` and the values of its meta.nix.

    A field is None when meta.nix's value is one nixfab cannot use; `notes` says why.
    `tags` and `users` are empty when meta.nix does not mention them.
    """

    name: str
    directory: Path
    system: str | None
    tags: tuple[str, ...] | None
    users: tuple[str, ...] | None
    target_host: str | None
    build_on: str | None
    has_hardware: bool
    has_meta: bool = False
    home_users: tuple[str, ...] = ()  # users who get Home Manager here (meta users with a homes/ entry)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostRow:
    """One line of `inv hosts`: the values nixfab uses, and what does not add up."""

    name: str
    source: Source
    destination: str
    build_on: str
    tags: tuple[str, ...]
    problems: tuple[str, ...] = ()


# ---------------------------------------------------------------- meta.nix, read by Nix


# One constant expression; the file names reach it as data (a JSON string, --argstr), never as Nix syntax.
# Only the keys nixfab reads are forced; any other key is reported by name without evaluating it.
META_EXPRESSION = """\
{ request }:
let
  inherit (builtins.fromJSON request) keys files;
  # JSON-safe: strings, numbers, booleans, null and lists of them as they are; anything else by its type.
  plain = value:
    let type = builtins.typeOf value; in
    if builtins.elem type [ "string" "int" "float" "bool" "null" ] then value
    else if type == "list" then map plain value
    else { nixfabType = type; };
  position = key: meta:
    let found = builtins.unsafeGetAttrPos key meta; in
    if found == null then null else found // { file = toString found.file; };
  read = file:
    let meta = import (/. + file); in
    if builtins.isAttrs meta then {
      type = "set";
      positions = builtins.mapAttrs (key: _: position key meta) meta;
      values = builtins.listToAttrs (map (key: { name = key; value = plain meta.${key}; }) (builtins.filter (key: meta ? ${key}) keys));
    } else { type = builtins.typeOf meta; };
in
builtins.mapAttrs (name: read) files
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_LINE = re.compile(r"\A\s*error: (?P<message>\S.*)\Z")
# `at /path/meta.nix:3:5:` (Nix 2.8 and current Nix alike); «string» and «none» are not files.
_AT_LINE = re.compile(r"\A\s*at (?P<file>[^«\s].*?):(?P<line>[0-9]+):(?P<column>[0-9]+):\s*\Z")
_EVALUATING_FILE = re.compile(r"\Aevaluating file '(?P<file>/.*)'\Z")


@dataclass(frozen=True)
class NixProblem:
    """What Nix's stderr says went wrong, and where, when it says so."""

    message: str
    file: str | None = None
    line: int = 0
    column: int = 0


def parse_nix_error(stderr: str) -> NixProblem:
    """The last `error: ...` of Nix's output, and the `at file:line:column:` that goes with it.

    Nix 2.8 prints the message, then its position. Current Nix may first print
    trace frames (`… while evaluating ...` with their `at` lines), then the
    message and its position; when the message has none, the innermost frame
    shown is the nearest place Nix names.
    """
    lines = [_ANSI.sub("", line).rstrip() for line in stderr.splitlines()]
    last = max((index for index, line in enumerate(lines) if _ERROR_LINE.match(line)), default=None)
    if last is None:
        shown = [line.strip() for line in lines if line.strip() and not _EVALUATING_FILE.match(line)]
        return NixProblem(shown[-1] if shown else "no output")
    error = _ERROR_LINE.match(lines[last])
    assert error is not None
    message = error.group("message")
    after = (_AT_LINE.match(line) for line in lines[last + 1 :])
    before = (_AT_LINE.match(line) for line in reversed(lines[:last]))
    place = next((match for match in after if match), None) or next((match for match in before if match), None)
    if place is None:
        return NixProblem(message)
    return NixProblem(message, place.group("file"), int(place.group("line")), int(place.group("column")))


def _shown_path(flake_dir: Path, file: str) -> str:
    """A file as the user would name it: under the flake as `--flake` spelled it, else as Nix gave it."""
    try:
        return str(flake_dir / Path(file).relative_to(flake_dir.absolute()))
    except ValueError:
        return file


def _run_nix(files: Mapping[str, str], *, show_trace: bool = False) -> subprocess.CompletedProcess[str]:
    request = json.dumps({"keys": list(META_KEYS), "files": dict(files)})
    try:
        return subprocess.run(
            commands.nix_instantiate_meta(request, META_EXPRESSION, show_trace=show_trace),
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=NIX_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise InventoryError("reading systems/*/meta.nix needs nix-instantiate, which is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise InventoryError(
            f"nix-instantiate did not finish reading systems/*/meta.nix in {NIX_TIMEOUT_SECONDS} s: does a meta.nix loop?"
        ) from None


def _evaluation_error(flake_dir: Path, files: Mapping[str, str], stderr: str) -> InventoryError:
    """One line: `file:line:column: problem`, or `meta file: problem` when Nix names no place (a `throw` in Nix 2.8)."""
    problem = parse_nix_error(stderr)
    if problem.file is None:
        # Which meta.nix it was: each alone, until one fails (this costs Nix runs only on the way to an error).
        # With the full trace, current Nix names where a `throw` was called; Nix 2.8 does not.
        for path in files.values():
            alone = _run_nix({"meta": path}, show_trace=True)
            if alone.returncode != 0:
                problem = parse_nix_error(alone.stderr)
                if problem.file is None:
                    return InventoryError(f"{_shown_path(flake_dir, path)}: {problem.message}")
                break
        else:
            return InventoryError(f"reading systems/*/meta.nix with nix-instantiate failed: {problem.message}")
    assert problem.file is not None
    return InventoryError(f"{_shown_path(flake_dir, problem.file)}:{problem.line}:{problem.column}: {problem.message}")


def evaluate_meta(flake_dir: Path, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """What Nix says of each system's meta.nix (name -> reading), and the other files it imported.

    One nix-instantiate for all systems; systems without meta.nix are not asked about.
    """
    files = {
        name: os.path.abspath(path) for name in names
        if os.path.isfile(path := systems_cache.meta_path(str(flake_dir), name))
    }
    if not files:
        return {}, []
    result = _run_nix(files)
    if result.returncode != 0:
        raise _evaluation_error(flake_dir, files, result.stderr)
    try:
        readings = json.loads(result.stdout)
    except ValueError:
        readings = None
    if not isinstance(readings, dict):
        raise InventoryError(f"nix-instantiate printed no JSON object for systems/*/meta.nix: {result.stdout[:200]!r}")
    read = (_EVALUATING_FILE.match(line) for line in result.stderr.splitlines())
    metas = set(files.values())
    imports = sorted({match.group("file") for match in read if match} - metas)
    # The store is immutable: what an evaluation read there cannot change under the cache.
    return readings, [path for path in imports if not path.startswith("/nix/store/")]


def read_meta(flake_dir: Path, names: Sequence[str], state_dir: Path, *, cache: bool = True) -> dict[str, Any]:
    """The readings of every system's meta.nix: from the cache when its key still holds, else from Nix (then cached)."""
    directory = str(flake_dir)
    cache_path = systems_cache.cache_file(str(state_dir))
    key = systems_cache.cache_key(directory, names)
    if cache:
        cached = systems_cache.load(cache_path, directory, names)
        if cached is not None:
            return cached
    readings, imports = evaluate_meta(flake_dir, names)
    readings = {name: readings.get(name) for name in names}
    # Without any meta.nix there is nothing a cache would spare (and no .nixfab/ to create);
    # a meta.nix edited while Nix read it may have been read in either version: not cached either.
    has_meta = any(reading is not None for reading in readings.values())
    if cache and has_meta and systems_cache.cache_key(directory, names) == key:
        systems_cache.store(cache_path, directory, key, readings, systems_cache.import_digests(imports))
    return readings


# ---------------------------------------------------------------- systems/


def _where(flake_dir: Path, name: str, position: object) -> str:
    """Where a key is defined: `meta.nix:3:5` (its own), `systems/common.nix:3:5` (another file), else `meta.nix`."""
    if not isinstance(position, dict):
        return META_FILE
    file, line, column = position.get("file"), position.get("line"), position.get("column")
    if not isinstance(file, str) or not isinstance(line, int) or not isinstance(column, int):
        return META_FILE
    if file == os.path.abspath(systems_cache.meta_path(str(flake_dir), name)):
        return f"{META_FILE}:{line}:{column}"
    try:
        file = str(Path(file).relative_to(flake_dir.absolute()))
    except ValueError:
        pass  # outside the flake: the absolute path
    return f"{file}:{line}:{column}"


def _list_of_names(value: object, where: str, key: str, pattern: re.Pattern[str], kind: str, notes: list[str]) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        notes.append(f"{where}: {key} must be a list of strings")
        return None
    names: dict[str, None] = {}
    for item in value:
        assert isinstance(item, str)
        if not pattern.match(item):
            notes.append(f"{where}: {key} has {item!r}, which is not a valid {kind}")
            return None
        names[item] = None
    return tuple(names)


def _text(value: object, where: str, key: str, notes: list[str]) -> str | None:
    if not isinstance(value, str):
        notes.append(f"{where}: {key} must be a string")
        return None
    return value


def _home_users(homes: Path, name: str, users: Iterable[str], notes: list[str]) -> tuple[str, ...]:
    """The users flake.nix gives Home Manager on `name`, and host overrides it would ignore."""
    listed = set(users)
    with_home = tuple(
        user for user in users
        if (homes / user / SYSTEM_FILE).exists() or (homes / f"{user}@{name}" / SYSTEM_FILE).exists()
    )
    for user in users:
        if user not in with_home:
            notes.append(f"meta.nix lists user {user!r}, but there is no homes/{user}/ or homes/{user}@{name}/")
    if homes.is_dir():
        for entry in sorted(homes.iterdir()):
            user, at, host = entry.name.rpartition("@")
            if at and host == name and (entry / SYSTEM_FILE).exists() and user not in listed:
                notes.append(f"homes/{entry.name}/ is not used: meta.nix users does not list {user!r}")
    return with_home


def system_info(flake_dir: Path, name: str, reading: object) -> SystemInfo:
    """One system directory as SystemInfo, from what Nix said of its meta.nix (None: it has none)."""
    directory = flake_dir / SYSTEMS_DIRECTORY / name
    notes: list[str] = []
    if not NAME_PATTERN.match(name):
        notes.append(
            f"systems/{name}: nixfab cannot use this name (letters, digits, '_' and '-', starting with a letter or digit)"
        )
    has_meta = reading is not None
    values: Mapping[str, object] = {}
    positions: Mapping[str, object] = {}
    unreadable = False  # meta.nix is not an attribute set: every field is unknown
    if isinstance(reading, dict) and reading.get("type") == "set":
        values = reading.get("values") or {}
        positions = reading.get("positions") or {}
        for key in positions:
            if key not in META_KEYS:
                notes.append(f"{_where(flake_dir, name, positions[key])}: unknown key {key!r} (nixfab reads {', '.join(META_KEYS)})")
    elif has_meta:
        kind = _TYPE_NAMES.get(str(reading.get("type") if isinstance(reading, dict) else None), "something else")
        notes.append(f"meta.nix: evaluates to {kind}, not to an attribute set {{ ... }}; nixfab reads none of its values")
        unreadable = True

    def where(key: str) -> str:
        return _where(flake_dir, name, positions.get(key))

    absent: tuple[str, ...] | None = None if unreadable else ()
    system = _text(values["system"], where("system"), "system", notes) if "system" in values else None
    if system is not None and not SYSTEM_PATTERN.match(system):
        notes.append(f"{where('system')}: system {system!r} is not a system like 'x86_64-linux'")
        system = None
    tags = _list_of_names(values["tags"], where("tags"), "tags", NAME_PATTERN, "tag", notes) if "tags" in values else absent
    users = _list_of_names(values["users"], where("users"), "users", USER_PATTERN, "user name", notes) if "users" in values else absent
    target_host = _text(values["targetHost"], where("targetHost"), "targetHost", notes) if "targetHost" in values else None
    if target_host is not None:
        try:
            parse_ssh_target(target_host)
        except ValueError as error:
            notes.append(f"{where('targetHost')}: targetHost: {error}")
            target_host = None
    build_on = _text(values["buildOn"], where("buildOn"), "buildOn", notes) if "buildOn" in values else None
    if build_on is not None and not NAME_PATTERN.match(build_on):
        notes.append(f"{where('buildOn')}: buildOn {build_on!r} is not local, target or a host or builder name")
        build_on = None
    has_hardware = (directory / HARDWARE_FILE).is_file()
    if system is None and "system" not in values and not unreadable and not has_hardware:
        notes.append("no system architecture: set system = \"x86_64-linux\"; (or similar) in meta.nix")
    home_users = _home_users(flake_dir / HOMES_DIRECTORY, name, users or (), notes)
    return SystemInfo(
        name=name,
        directory=directory,
        system=system,
        tags=tags,
        users=users,
        target_host=target_host,
        build_on=build_on,
        has_hardware=has_hardware,
        has_meta=has_meta,
        home_users=home_users,
        notes=tuple(notes),
    )


def discover_systems(flake_dir: Path, state_dir: Path, *, cache: bool = True) -> dict[str, SystemInfo]:
    """Every system of the flake in `flake_dir`, by name, with its meta.nix as Nix evaluates it (or as cached in the
    flake's `state_dir`, deploy/record/history.py's state_directory)."""
    flake_dir = Path(flake_dir)
    names = systems_cache.system_names(str(flake_dir))
    readings = read_meta(flake_dir, names, state_dir, cache=cache)
    return {name: system_info(flake_dir, name, readings.get(name)) for name in names}


# ---------------------------------------------------------------- `inv hosts`


def _build_on_problem(build_on: str, inventory: Inventory, systems: Mapping[str, SystemInfo]) -> str | None:
    if build_on in (BUILD_LOCALLY, BUILD_ON_TARGET) or build_on in inventory.builders or build_on in inventory.hosts:
        return None
    if build_on in systems:
        return None  # a machine of the flake, reached by its name
    return f"build_on {build_on!r} is not local, target, a builder or a host"


def _row_for_declared(spec: HostSpec, inventory: Inventory, systems: Mapping[str, SystemInfo]) -> HostRow:
    system = systems.get(spec.attr)
    problems: list[str] = []
    if system is None:
        what = f"attr {spec.attr!r}" if spec.attr != spec.name else "it"
        problems.append(f"no systems/{spec.attr}/ (with default.nix) for {what}: hosts.yaml names a system the flake may not have")
        source: Source = "hosts.yaml"
    else:
        source = "both"
        problems.extend(system.notes)
        if system.tags is not None and system.tags and set(system.tags) != set(spec.tags):
            problems.append(
                f"tags differ: hosts.yaml [{', '.join(spec.tags)}], meta.nix [{', '.join(system.tags)}] (hosts.yaml wins)"
            )
        if system.target_host is not None and str(parse_ssh_target(system.target_host)) != str(spec.ssh):
            problems.append(f"destination differs: hosts.yaml {spec.ssh}, meta.nix targetHost {system.target_host} (hosts.yaml wins)")
        if system.build_on is not None and system.build_on != spec.build_on:
            problems.append(f"build_on differs: hosts.yaml {spec.build_on}, meta.nix buildOn {system.build_on} (hosts.yaml wins)")
    return HostRow(spec.name, source, str(spec.ssh), spec.build_on, spec.tags, tuple(problems))


def _undeclared_spec(system: SystemInfo, inventory: Inventory, systems: Mapping[str, SystemInfo]) -> tuple[HostSpec, list[str]]:
    """How nixfab deploys a system that hosts.yaml does not mention: the inventory's defaults, then meta.nix.

    Inventory.host() gives what every undeclared name gets (defaults, health, a builder's address);
    meta.nix's values go over it, so the two can never disagree about the rest.
    """
    problems: list[str] = []
    base = inventory.host(system.name)
    builder = inventory.builders.get(system.name)
    ssh = base.ssh
    if system.target_host is not None:
        ssh = parse_ssh_target(system.target_host)
        if builder is not None and builder.ssh != ssh:
            problems.append(f"destination differs: builders.{system.name} in hosts.yaml {builder.ssh}, meta.nix targetHost {ssh} (meta.nix wins)")
    build_on = system.build_on or inventory.default_build_on
    problem = _build_on_problem(build_on, inventory, systems)
    if problem:
        problems.append(f"meta.nix: {problem}; using {inventory.default_build_on}")
        build_on = inventory.default_build_on
    if build_on == system.name:
        build_on = BUILD_ON_TARGET  # building "on itself" is building on the target, as Inventory.host() says
    spec = dataclasses.replace(
        base,
        ssh=ssh,
        build_on=build_on,
        tags=system.tags if system.tags else inventory.default_tags,
        sudo=inventory.default_sudo or ssh.user not in (None, "root"),
    )
    return spec, problems


def _row_for_system(system: SystemInfo, inventory: Inventory, systems: Mapping[str, SystemInfo]) -> HostRow:
    if not NAME_PATTERN.match(system.name):
        return HostRow(system.name, "systems/", "-", "-", system.tags or (), system.notes)
    spec, problems = _undeclared_spec(system, inventory, systems)
    return HostRow(system.name, "systems/", str(spec.ssh), spec.build_on, spec.tags, (*system.notes, *problems))


def host_listing(inventory: Inventory, systems: Mapping[str, SystemInfo]) -> list[HostRow]:
    """Every machine nixfab knows, from hosts.yaml and systems/, sorted by name.

    A system that a hosts.yaml entry deploys (by name or `attr:`) has no row of its own.
    Values are the ones a deploy uses; `problems` lists what does not add up.
    """
    rows = [_row_for_declared(spec, inventory, systems) for spec in inventory.hosts.values()]
    covered = {spec.attr for spec in inventory.hosts.values()} | set(inventory.hosts)
    rows.extend(_row_for_system(system, inventory, systems) for name, system in systems.items() if name not in covered)
    return sorted(rows, key=lambda row: row.name)


def inventory_with_systems(inventory: Inventory, systems: Mapping[str, SystemInfo]) -> Inventory:
    """The inventory plus a host for each system that hosts.yaml does not mention, from its meta.nix.

    So `targetHost`, `buildOn` and `tags` of meta.nix take effect for machines without a hosts.yaml
    entry. Systems whose name or meta values nixfab cannot use are left out (the listing reports them).
    """
    covered = {spec.attr for spec in inventory.hosts.values()} | set(inventory.hosts)
    hosts = dict(inventory.hosts)
    for name, system in systems.items():
        if name not in covered and NAME_PATTERN.match(name):
            hosts[name], _ = _undeclared_spec(system, inventory, systems)
    return dataclasses.replace(inventory, hosts=hosts)


def format_host_listing(rows: Iterable[HostRow]) -> str:
    """A plain-text table of the rows, problems indented under their host (no rich needed)."""
    rows = list(rows)
    header = ("NAME", "SOURCE", "DESTINATION", "BUILD ON", "TAGS")
    table = [header] + [(row.name, row.source, row.destination, row.build_on, ",".join(row.tags) or "-") for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines: list[str] = []
    for index, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index:
            lines.extend(f"  ! {problem}" for problem in rows[index - 1].problems)
    if not rows:
        lines.append("(no hosts: no hosts.yaml entries and no systems/<name>/default.nix)")
    return "\n".join(lines) + "\n"
