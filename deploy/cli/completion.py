"""Candidates for the shell completion scripts in completion/: host names, tags, and whole command lines.

    python -m deploy.cli.completion hosts|tags [--inventory FILE] [--flake DIR] [PREFIX]
    python -m deploy.cli.completion words [--binary NAME] [--current PREFIX] -- WORD...

`hosts` and `tags` run on every TAB after --host or --tag, so they avoid
every import they can: hosts.yaml is read by a line scanner that understands
the block style nixfab's own examples use, and only a file it does not
understand is handed to PyYAML. `words` is for everything that is not a flag:
it loads the task collection the way `inv` does, so that it knows which slot
the cursor is in (a positional machine, `-h VALUE`, a task name).

A broken hosts.yaml, a missing directory, an unreadable file: every problem
prints nothing and exits 0. A completer that prints a traceback into the
middle of a command line is worse than one that offers nothing.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from deploy.config import systems_cache
from deploy.config.flakeref import local_flake_directory

if TYPE_CHECKING:
    from invoke.parser.context import ParserContext
    from invoke.program import Program

# The task arguments whose values are host names or tags. Invoke gives them
# short flags (-h, -t, ...) that differ between tasks, so `words` maps a short
# flag back to one of these names through the task itself.
HOST_ARGUMENTS = frozenset({"host", "machine"})
TAG_ARGUMENTS = frozenset({"tag"})

_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_KEY_LINE = re.compile(r"\A(?P<indent> *)(?P<key>[A-Za-z0-9_][A-Za-z0-9_.-]*) *:(?: +(?P<value>.*))?\Z")
_ITEM_LINE = re.compile(r"\A(?P<indent> *)- +(?P<value>.*)\Z")
_FLOW_TAGS = re.compile(r"(?:\A|[{,\s])tags *: *\[(?P<items>[^\[\]{}]*)\]")
# Anything the scanner does not understand sends the whole file to PyYAML.
_NOT_SIMPLE = re.compile(r"""['"&*!|>%?]|\A---|\A\.\.\.|\t""")


class _Unsure(Exception):
    """The scanner met YAML it does not handle; PyYAML decides instead."""


def _strip_comment(line: str) -> str:
    if line.lstrip().startswith("#"):
        return ""
    position = line.find(" #")
    return (line if position < 0 else line[:position]).rstrip()


def _flow_items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _flow_list(value: str) -> list[str]:
    if not (value.startswith("[") and value.endswith("]")) or "[" in value[1:-1] or "]" in value[1:-1]:
        raise _Unsure
    return _flow_items(value[1:-1])


def scan_inventory(text: str) -> tuple[list[str], list[str]]:
    """(host names, tags) of a hosts.yaml written in plain block style; raises _Unsure otherwise."""
    hosts: list[str] = []
    tags: list[str] = []
    # (indent, key) of every open mapping key above the current line
    open_keys: list[tuple[int, str]] = []
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        if _NOT_SIMPLE.search(line):
            raise _Unsure
        item = _ITEM_LINE.match(line)
        match = item or _KEY_LINE.match(line)
        if match is None:
            raise _Unsure
        indent = len(match.group("indent"))
        # A block list may sit at its key's own indentation (`tags:` / `- web`), a mapping may not.
        while open_keys and (open_keys[-1][0] > indent or (open_keys[-1][0] == indent and not item)):
            open_keys.pop()
        path = tuple(key for _, key in open_keys)
        value = (match.group("value") or "").strip()
        if item:
            if path in (("defaults", "tags"),) or (len(path) == 3 and path[0] == "hosts" and path[2] == "tags"):
                if value.startswith(("[", "{")):
                    raise _Unsure
                tags.append(value)
            elif len(path) <= 1:
                raise _Unsure  # a list where nixfab expects a mapping: let PyYAML and the caller judge it
            continue
        key = match.group("key")
        full = (*path, key)
        if len(full) == 1 and value and key in ("hosts", "defaults", "builders"):
            raise _Unsure  # `hosts: {...}` and friends: flow style at the top
        if len(full) == 2 and full[0] == "hosts":
            hosts.append(key)
            if value.startswith("{"):
                if not value.endswith("}"):
                    raise _Unsure
                for flow in _FLOW_TAGS.finditer(value):
                    tags.extend(_flow_items(flow.group("items")))
            elif value:
                raise _Unsure
        elif full == ("defaults", "tags") or (len(full) == 3 and full[0] == "hosts" and key == "tags"):  # noqa: SIM102 - one branch per key
            if value:
                tags.extend(_flow_list(value))
        if value and value.startswith(("[", "{")) and not value.endswith(("]", "}")):
            raise _Unsure  # a flow collection continued on the next line
        if not value:
            open_keys.append((indent, key))
    return hosts, tags


def _yaml_inventory(text: str) -> tuple[list[str], list[str]]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    if document is None:
        return [], []
    if not isinstance(document, dict):
        raise ValueError("not a mapping")
    hosts = document.get("hosts") or {}
    defaults = document.get("defaults") or {}
    if not isinstance(hosts, dict) or not isinstance(defaults, dict):
        raise ValueError("hosts and defaults are mappings")
    tags = list(defaults.get("tags") or [])
    for entry in hosts.values():
        if isinstance(entry, dict):
            tags.extend(entry.get("tags") or [])
    return [str(name) for name in hosts], [str(tag) for tag in tags]


def read_inventory(path: str) -> tuple[list[str], list[str]]:
    """(host names, tags) of hosts.yaml; ([], []) when it is missing or broken."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, ValueError):
        return [], []
    try:
        return scan_inventory(text)
    except _Unsure:
        pass
    try:
        return _yaml_inventory(text)
    except Exception:  # noqa: BLE001 - any problem in a broken file means: offer nothing
        return [], []


def flake_directory(flake: str) -> str | None:
    return local_flake_directory(flake)


def _systems(flake: str) -> list[str]:
    directory = flake_directory(flake)
    return [] if directory is None else systems_cache.system_names(directory)


def _meta_tags(flake: str, systems: Sequence[str]) -> list[str]:
    """The tags of every meta.nix, as the last task that evaluated them cached them; none on a miss.

    Never Nix: a TAB must not wait for an evaluation. A miss (nothing cached
    yet, or a meta.nix changed since) costs only the tags; names still come
    from the directory listing.
    """
    directory = flake_directory(flake)
    if directory is None:
        return []
    cache_file = systems_cache.cache_file(systems_cache.state_directory(flake))
    readings = systems_cache.load(cache_file, directory, systems) or {}
    tags: list[str] = []
    for reading in readings.values():
        values = reading.get("values") if isinstance(reading, dict) else None
        value = values.get("tags") if isinstance(values, dict) else None
        if isinstance(value, list):
            tags.extend(tag for tag in value if isinstance(tag, str))
    return tags


def host_names(inventory: str = "hosts.yaml", flake: str = ".") -> list[str]:
    hosts, _ = read_inventory(inventory)
    return _valid_unique([*hosts, *_systems(flake)])


def tag_names(inventory: str = "hosts.yaml", flake: str = ".") -> list[str]:
    _, tags = read_inventory(inventory)
    return _valid_unique([*tags, *_meta_tags(flake, _systems(flake))])


def _valid_unique(names: Iterable[str]) -> list[str]:
    # Only names nixfab accepts; anything else could not be deployed and might confuse the shell.
    return sorted({name for name in names if _NAME.match(name)})


def matching(candidates: Iterable[str], prefix: str) -> list[str]:
    """Complete the last element of a comma list, keeping `user@` and skipping names already listed."""
    head, _, last = prefix.rpartition(",")
    head = head + "," if head else ""
    user, at, partial = last.rpartition("@")
    user = user + at
    chosen = {element.rpartition("@")[2] for element in head.split(",")}
    return [f"{head}{user}{name}" for name in candidates if name.startswith(partial) and name not in chosen]


# --- `words`: where in the command line the cursor is -----------------------------------------


def _load_program(binary: str) -> Program:
    """An Invoke Program with its collection loaded the way `binary` would load it."""
    from invoke.collection import Collection
    from invoke.program import Program

    if os.path.basename(binary) in ("inv", "invoke"):
        return Program(binary_names=["inv", "invoke"])
    import tasks  # nixfab's own binary serves the installed tasks module

    return Program(namespace=Collection.from_module(tasks), binary_names=[os.path.basename(binary)])


def value_slot(binary: str, words: Sequence[str]) -> tuple[str, object | None, object | None]:
    """What the word after `words` is: ("hosts"|"tags"|"value"|"task", task context, program).

    "value" is a flag's value that we do not complete (files, numbers);
    "task" is where Invoke would offer task names.
    """
    from invoke.exceptions import ParseError

    program = _load_program(binary)
    program.create_config()
    program.parse_core([binary, *words])
    program.parse_collection()
    parser = program._make_parser()
    contexts: list[ParserContext]
    try:
        contexts = parser.parse_argv(program.core.unparsed)
    except ParseError as error:
        contexts = [error.context] if error.context is not None else []
    context = contexts[-1] if contexts else None
    if context is None or not getattr(context, "name", None):
        return "task", None, program
    last = words[-1] if words else ""
    if last.startswith("-") and "=" not in last:  # noqa: SIM102 - the comment below is about the inner test
        # Lexicon.get() skips aliases (short flags are aliases); `in` and [] resolve them.
        if last in context.flags:
            flag = context.flags[last]
            if flag.takes_value:
                return _slot_of(flag.name), context, program
    # Not `is None`: tasks.py lets an omitted machine through as "" (deploy.cli.invoke_compat.install).
    missing = [argument for argument in context.positional_args if not argument.value]
    if missing:
        return _slot_of(missing[0].name), context, program
    return "task", context, program


def _slot_of(argument_name: str | None) -> str:
    if argument_name in HOST_ARGUMENTS:
        return "hosts"
    if argument_name in TAG_ARGUMENTS:
        return "tags"
    return "value"


def _argument_value(context: object | None, name: str, default: str) -> str:
    arguments = getattr(context, "args", {})
    argument = arguments.get(name) if hasattr(arguments, "get") else None
    value = getattr(argument, "value", None)
    return value if isinstance(value, str) and value else default


def complete_words(binary: str, words: Sequence[str], current: str) -> list[str]:
    slot, context, program = value_slot(binary, words)
    inventory = _argument_value(context, "inventory", "hosts.yaml")
    flake = _argument_value(context, "flake", ".")
    if slot == "hosts":
        return matching(host_names(inventory, flake), current)
    if slot == "tags":
        return matching(tag_names(inventory, flake), current)
    if slot == "value":
        return []
    from invoke.util import task_name_sort_key

    collection = getattr(program, "collection", None)
    if collection is None:
        return []
    names: list[str] = []
    for name in sorted(collection.task_names, key=task_name_sort_key):
        names += [name, *collection.task_names[name]]
    return [name for name in names if name.startswith(current)]


# --- command line ------------------------------------------------------------------------------


def _options(argv: list[str], names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Pull `--name VALUE` / `--name=VALUE` out of argv without argparse (which costs an import)."""
    found: dict[str, str] = {}
    rest: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--":
            rest.extend(arguments)
            break
        name, equals, value = argument.partition("=")
        if name in names:
            found[name] = value if equals else next(arguments, "")
        else:
            rest.append(argument)
    return found, rest


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        mode = arguments.pop(0) if arguments else ""
        if mode in ("hosts", "tags"):
            options, rest = _options(arguments, ("--inventory", "--flake"))
            inventory = options.get("--inventory") or "hosts.yaml"
            flake = options.get("--flake") or "."
            names = host_names(inventory, flake) if mode == "hosts" else tag_names(inventory, flake)
            candidates = matching(names, rest[0] if rest else "")
        elif mode == "words":
            options, rest = _options(arguments, ("--binary", "--current"))
            candidates = complete_words(options.get("--binary") or "inv", rest, options.get("--current", ""))
        else:
            print("usage: python -m deploy.cli.completion hosts|tags [--inventory FILE] [--flake DIR] [PREFIX]", file=sys.stderr)
            print("       python -m deploy.cli.completion words [--binary NAME] [--current PREFIX] -- WORD...", file=sys.stderr)
            return 2
    except BaseException:  # noqa: BLE001 - see the module docstring: never a traceback on a TAB
        return 0
    if candidates:
        sys.stdout.write("\n".join(candidates) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
