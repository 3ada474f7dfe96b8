"""hosts.yaml: which machines exist, how to reach them, and where to build for them.

The file is read with yaml.compose() rather than yaml.safe_load() so that every problem can be
reported as `file:line:column: problem`, and so that duplicate keys are caught: safe_load keeps the
last duplicate silently, which would quietly drop a host or a whole `hosts:` section. The composed
nodes become plain data and a position index (_Document); the schema (_Schema) validates the
data, strictly and with unknown keys refused, and each of its errors is worded from the node its
`loc` leads to. Every problem in the file is reported at once, in file order (InventoryError.problems).

Every name that ends up on an ssh or nix command line is checked here against a strict pattern,
so later code never has to wonder whether a host name could be read as an option or a shell word.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from deploy.errors import InventoryError
from deploy.model import KeyUpload

NAME_MAX_LENGTH = 63
USER_MAX_LENGTH = 32
ADDRESS_MAX_LENGTH = 253

# \A...\Z rather than ^...$: `$` also matches before a trailing newline, so "alpha\n" would pass.
# The length limits live in the patterns too, so callers that only use .match() get them.
NAME_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
# Like NAME_PATTERN but may also start with '_'; a leading digit stays allowed so that a host
# called "1box" can use its own name as its attribute (nixosConfigurations."1box" is legal Nix).
ATTR_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
USER_PATTERN: re.Pattern[str] = re.compile(r"\A[a-z_][a-z0-9_.-]{0,31}\Z")
# '_' is allowed (unlike in DNS) because a host's address defaults to its name, and names may
# contain '_'; ssh_config aliases with '_' are common and harmless on a command line.
ADDRESS_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,252}\Z")
# A key's name is its file's name under /run/keys by default: '.' is allowed (tls.key), but not first.
KEY_NAME_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,254}\Z")
# A key's owner: a user or group name as useradd/groupadd take them (a trailing '$' for machine accounts), or a number.
OWNER_PATTERN: re.Pattern[str] = re.compile(r"\A(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10})\Z")

BUILD_LOCALLY = "local"
BUILD_ON_TARGET = "target"

_LETTERS_AND_DIGITS = frozenset(string.ascii_letters + string.digits)
_NAME_CHARACTERS = _LETTERS_AND_DIGITS | frozenset("_-")
_SSH_TARGET_CHARACTERS = _LETTERS_AND_DIGITS | frozenset("._-@:[]")
_IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")

_YAML_TAG = "tag:yaml.org,2002:"
_STR_TAG = _YAML_TAG + "str"
_INT_TAG = _YAML_TAG + "int"
_FLOAT_TAG = _YAML_TAG + "float"
_BOOL_TAG = _YAML_TAG + "bool"
_NULL_TAG = _YAML_TAG + "null"
_MERGE_TAG = _YAML_TAG + "merge"
_TIMESTAMP_TAG = _YAML_TAG + "timestamp"
# Integers keep their source text in the node, so `123:` or `ssh: 1234` mean what they look like.
_TEXT_TAGS = frozenset({_STR_TAG, _INT_TAG})

_QUOTE_LIMIT = 80


def _quote(text: str) -> str:
    """Quote untrusted text so an error message stays one unambiguous line (a newline shows as \\n)."""
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT]) + "..."
    return repr(text)


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return matches[0] if matches else None


def _first_character_not_in(text: str, allowed: frozenset[str]) -> str | None:
    for character in text:
        if character not in allowed:
            return character
    return None


def _describe_forbidden(character: str) -> str:
    if character.isspace():
        return f"contains whitespace ({character!r})"
    return f"contains {character!r}"


def _name_problem(name: str) -> str | None:
    """Why `name` is not a valid host, builder or tag name, or None if it is."""
    if NAME_PATTERN.match(name):
        return None
    if not name:
        return "empty"
    if len(name) > NAME_MAX_LENGTH:
        return f"longer than {NAME_MAX_LENGTH} characters"
    rule = "use letters, digits, '_' and '-', starting with a letter or digit"
    if name[0] not in _LETTERS_AND_DIGITS:
        return f"starts with {name[0]!r} ({rule})"
    bad = _first_character_not_in(name, _NAME_CHARACTERS)
    return f"{_describe_forbidden(bad or name[0])} ({rule})"


def _attr_problem(attr: str) -> str | None:
    if ATTR_PATTERN.match(attr):
        return None
    if not attr:
        return "empty"
    return "use letters, digits, '_' and '-', not starting with '-'"


def _user_problem(user: str) -> str | None:
    if USER_PATTERN.match(user):
        return None
    if not user:
        return "user name is empty"
    if len(user) > USER_MAX_LENGTH:
        return f"user name is longer than {USER_MAX_LENGTH} characters"
    return "user name must start with a lowercase letter or '_' and contain only a-z, 0-9, '_', '.' and '-'"


def _ipv6_problem(address: str) -> str | None:
    # Only hex digits, ':' and '.': ipaddress would also accept a "%scope" suffix of any characters.
    if _first_character_not_in(address, _IPV6_CHARACTERS) is None:
        try:
            ipaddress.IPv6Address(address)
            return None
        except ValueError:
            pass
    return f"{_quote(address)} is not an IPv6 address"


def _address_problem(address: str) -> str | None:
    """Why `address` (stored form: IPv6 without brackets) cannot be an ssh destination's host."""
    if not address:
        return "address is empty"
    if ":" in address:
        return _ipv6_problem(address)
    if ADDRESS_PATTERN.match(address):
        return None
    if len(address) > ADDRESS_MAX_LENGTH:
        return f"address is longer than {ADDRESS_MAX_LENGTH} characters"
    if address.startswith("-"):
        return "address starts with '-', which ssh would read as an option"
    return "address must start with a letter or digit and contain only letters, digits, '.', '_' and '-'"


def _port_problem(port: int) -> str | None:
    if 1 <= port <= 65535:
        return None
    return f"port {port} is not between 1 and 65535"


@dataclass(frozen=True)
class SshTarget:
    """Where ssh connects. Validated on construction, so every instance is safe on a command line."""

    address: str  # hostname, IPv4, ssh_config alias, or IPv6 literal without brackets
    user: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.address, str):
            raise ValueError(f"invalid ssh address {self.address!r}: not a string")
        problem = _address_problem(self.address)
        if problem:
            raise ValueError(f"invalid ssh address {_quote(self.address)}: {problem}")
        if self.user is not None:
            problem = _user_problem(self.user) if isinstance(self.user, str) else "not a string"
            if problem:
                raise ValueError(f"invalid ssh user {self.user!r}: {problem}")
        if self.port is not None:
            # bool is an int subclass; True as a port is always a mistake.
            problem = _port_problem(self.port) if type(self.port) is int else "not an integer"
            if problem:
                raise ValueError(f"invalid ssh port {self.port!r}: {problem}")

    def destination(self) -> str:
        """The ssh destination argument; the port travels separately (ssh -p)."""
        return f"{self.user}@{self.address}" if self.user else self.address

    def with_user(self, user: str | None) -> SshTarget:
        return dataclasses.replace(self, user=user)

    def __str__(self) -> str:
        """The text form parse_ssh_target() reads back: [user@]address[:port], IPv6 in brackets."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        text = f"{self.user}@{address}" if self.user else address
        return f"{text}:{self.port}" if self.port is not None else text


def parse_ssh_target(text: str) -> SshTarget:
    """Parse `[user@]address[:port]` (IPv6 as `[addr]` or `[addr]:port`); ValueError says why not."""

    def invalid(reason: str) -> ValueError:
        return ValueError(f"invalid ssh target {_quote(text)}: {reason}")

    if not isinstance(text, str):
        raise ValueError(f"invalid ssh target {text!r}: not a string")
    if not text:
        raise invalid("empty")
    if text.startswith("-"):
        raise invalid("starts with '-', which ssh would read as an option")
    forbidden = _first_character_not_in(text, _SSH_TARGET_CHARACTERS)
    if forbidden is not None:
        raise invalid(_describe_forbidden(forbidden))

    user: str | None = None
    rest = text
    if "@" in text:
        user, _, rest = text.partition("@")
        if "@" in rest:
            raise invalid("more than one '@'")
        if not user:
            raise invalid("empty user name before '@'")
        problem = _user_problem(user)
        if problem:
            raise invalid(problem)

    port_text: str | None = None
    if rest.startswith("["):
        closing = rest.find("]")
        if closing == -1:
            raise invalid("'[' without a closing ']'")
        address, after = rest[1:closing], rest[closing + 1 :]
        if not address:
            raise invalid("empty address in '[]'")
        if after:
            if not after.startswith(":"):
                raise invalid("unexpected text after ']'")
            port_text = after[1:]
        problem = _ipv6_problem(address)
        if problem:
            raise invalid(problem)
    elif rest.count(":") > 1:
        raise invalid("an IPv6 address must be written in brackets, like [::1] or [::1]:22")
    else:
        address, colon, after = rest.partition(":")
        if colon:
            port_text = after
        if not address:
            raise invalid("empty address")
        problem = _address_problem(address)
        if problem:
            raise invalid(problem)

    port: int | None = None
    if port_text is not None:
        if not port_text:
            raise invalid("empty port after ':'")
        if not port_text.isdigit():
            raise invalid(f"port {_quote(port_text)} is not a number")
        port = int(port_text)
        problem = _port_problem(port)
        if problem:
            raise invalid(problem)

    return SshTarget(address, user, port)


@dataclass(frozen=True)
class HealthCheck:
    """What must hold after activation, or the host is rolled back."""

    command: str | None = None  # run on the target by `sh -c`; must exit 0
    url: str | None = None  # fetched from the deployer; must answer 2xx
    timeout: float = 10.0  # seconds per attempt
    retries: int = 3  # attempts after the first one
    interval: float = 2.0  # seconds between attempts


KEYS_DIR = "/run/keys"  # where a key goes unless it says `dest`, as on NixOS with colmena
DEFAULT_KEY_MODE = 0o600


@dataclass(frozen=True)
class KeySpec:
    """A secret for the host that must not enter the Nix store (hosts.yaml `keys`): where it comes from, where it goes.

    Exactly one of `source` and `command`. Nothing is read when the inventory
    is loaded: the content is read (or the command run) on this machine when
    a deploy or `inv keys` is about to upload it.
    """

    name: str
    dest: str  # the absolute path on the host
    source: Path | None = None  # a file on this machine (absolute: resolved against the inventory's directory)
    command: tuple[str, ...] | None = None  # an argv run on this machine; its stdout is the key (a string in hosts.yaml is `sh -c` it)
    directory: Path | None = None  # where the command runs: the inventory's directory
    user: str = "root"
    group: str = "root"
    mode: int = DEFAULT_KEY_MODE
    upload: KeyUpload = KeyUpload.PRE_ACTIVATION

    def __post_init__(self) -> None:
        if (self.source is None) == (self.command is None):
            raise ValueError(f"key {self.name!r} needs exactly one of source and command")
        # Callers and tests may say the plain string; the field always holds the member (a bad one is a ValueError).
        object.__setattr__(self, "upload", KeyUpload(self.upload))

    @property
    def mode_text(self) -> str:
        """The mode as chmod takes it and hosts.yaml writes it: "0640"."""
        return f"{self.mode:04o}"


@dataclass(frozen=True)
class HostSpec:
    name: str
    ssh: SshTarget
    attr: str  # the nixosConfigurations attribute
    build_on: str  # "local", "target", or the name of a builder or another host
    tags: tuple[str, ...]
    sudo: bool
    declared: bool  # False when synthesized for a host that only the flake knows
    health: HealthCheck | None = None
    keys: tuple[KeySpec, ...] = ()  # the defaults' keys and the host's own, by name (the host's win)


@dataclass(frozen=True)
class BuilderSpec:
    name: str
    ssh: SshTarget


def _frozen_mapping(mapping: Mapping[str, object] | None) -> Mapping[str, object]:
    if isinstance(mapping, MappingProxyType):
        return mapping
    # Copy first: a proxy over the caller's dict would still change when they change it.
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Inventory:
    path: Path | None = None  # the inventory file, or None when there was none
    ssh_config: Path | None = None  # absolute
    # Read-only views; hash=False because mappingproxy is unhashable and the rest identifies us.
    hosts: Mapping[str, HostSpec] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    builders: Mapping[str, BuilderSpec] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    default_build_on: str = BUILD_LOCALLY
    default_sudo: bool = False
    default_tags: tuple[str, ...] = ()
    default_health: HealthCheck | None = None
    default_keys: tuple[KeySpec, ...] = ()
    check: bool = False  # run `nix flake check` with every activating deploy (defaults: check: true)

    def __post_init__(self) -> None:
        # Callers (tests, other modules) may pass plain dicts; freeze them so the inventory stays immutable.
        object.__setattr__(self, "hosts", _frozen_mapping(self.hosts))
        object.__setattr__(self, "builders", _frozen_mapping(self.builders))

    def host(self, machine: str) -> HostSpec:
        """The spec to deploy `machine` ("name" or "user@name") with.

        Names the inventory does not declare are still deployable, since the flake may define
        them. A login user other than root cannot activate a system by itself, so it implies sudo.
        `hosts[name]` holds the spec as written; this returns the effective one.
        """
        user: str | None = None
        name = machine
        if "@" in machine:
            user, _, name = machine.partition("@")
            problem = _user_problem(user)
            if problem:
                raise InventoryError(f"invalid user {_quote(user)} in {_quote(machine)}: {problem}")
        problem = _name_problem(name)
        if problem:
            raise InventoryError(f"invalid host name {_quote(name)}: {problem}")

        declared = self.hosts.get(name)
        if declared is None:
            # A builder may itself be a NixOS machine of the flake; reach it the way builds do.
            builder = self.builders.get(name)
            ssh = builder.ssh if builder is not None else SshTarget(name)
            if user is not None:
                ssh = ssh.with_user(user)
            return HostSpec(
                name=name,
                ssh=ssh,
                attr=name,
                build_on=BUILD_ON_TARGET if self.default_build_on == name else self.default_build_on,
                tags=self.default_tags,
                sudo=self.default_sudo or _needs_sudo(ssh.user),
                declared=False,
                health=self.default_health,
                keys=self.default_keys,
            )
        ssh = declared.ssh.with_user(user) if user is not None else declared.ssh
        return dataclasses.replace(declared, ssh=ssh, sudo=declared.sudo or _needs_sudo(ssh.user))

    def builder_target(self, name: str) -> SshTarget:
        """Where to build when a host says `build_on: name`: a builder's or a host's ssh target."""
        builder = self.builders.get(name)
        if builder is not None:
            return builder.ssh
        host = self.hosts.get(name)
        if host is not None:
            return host.ssh
        known = [*self.builders, *self.hosts]
        suggestion = _did_you_mean(name, known)
        where = f"in {self.path}" if self.path is not None else "(there is no inventory file)"
        hint = f" (did you mean {_quote(suggestion)}?)" if suggestion else ""
        raise InventoryError(f"{_quote(name)} is not a builder or host {where}{hint}")


def _needs_sudo(user: str | None) -> bool:
    return user not in (None, "root")


def _describe(node: yaml.Node) -> str:
    """What a node is, for "must be X, not Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = str(node.value)
    if node.tag == _NULL_TAG:
        return "empty (null)"
    if node.tag == _BOOL_TAG:
        return f"the boolean {_quote(value)}"
    if node.tag in (_INT_TAG, _FLOAT_TAG):
        return f"the number {_quote(value)}"
    if node.tag == _TIMESTAMP_TAG:
        return f"the date {_quote(value)}"
    if node.tag == _STR_TAG:
        return _quote(value)
    return f"{_quote(value)} (tagged {_quote(node.tag)})"


# ---- hosts.yaml as plain data, and where each part of it is written --------------------------------

Loc = tuple[str | int, ...]  # keys and list indices from the top of the document
_Problem = tuple[yaml.Node, str]  # the node a problem points at, and the problem


class _YamlInt(int):
    """A YAML integer that keeps the text it was written as: `ssh: 4567` and `123:` are names, not numbers."""

    text: str

    def __new__(cls, value: int, text: str) -> _YamlInt:
        number = super().__new__(cls, value)
        number.text = text
        return number


@dataclass(frozen=True)
class _Unreadable:
    """A value that no field takes (a date, !!binary, a custom tag): every type refuses it, and the message describes its node."""

    node: yaml.Node


@dataclass(frozen=True)
class _Place:
    key: yaml.Node | None  # the key it is written under; None for the document itself and for list items
    value: yaml.Node


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.ScalarNode) -> object:
    text = str(node.value)
    if node.tag == _STR_TAG:
        return text
    if node.tag == _NULL_TAG:
        return None
    if node.tag == _BOOL_TAG:
        flag = yaml.constructor.SafeConstructor.bool_values.get(text.lower())
        return _Unreadable(node) if flag is None else flag
    try:
        if node.tag == _INT_TAG:
            return _YamlInt(_CONSTRUCTOR.construct_yaml_int(node), text)
        if node.tag == _FLOAT_TAG:
            return float(_CONSTRUCTOR.construct_yaml_float(node))
    except ValueError:
        pass  # `!!int abc`: tagged by hand, and not a number after all
    return _Unreadable(node)


class _Document:
    """hosts.yaml as the plain data the schema validates, and the position index its messages need.

    `place(loc)` turns a schema error's loc into the nodes of the key and of the value, for
    line:column and for saying what is written there. Keys that cannot be names (a list, null, '<<')
    and repeated keys are recorded as problems and left out of the data, so the schema never sees
    them. A node reached again through an alias is converted once and shared; positions below the
    alias are found under its anchor.
    """

    def __init__(self, root: yaml.Node) -> None:
        self.places: dict[Loc, _Place] = {}
        self.aliases: dict[Loc, Loc] = {}  # where an alias is used -> where its anchor was first converted
        self.problems: list[_Problem] = []
        self._converted: dict[int, tuple[object, Loc]] = {}  # id(node) -> (its data, its first loc)
        self.data = self._plain(root, (), None)

    def place(self, loc: Loc) -> _Place:
        """Where `loc` is written; the nearest enclosing place when it is not written at all."""
        while loc not in self.places:
            alias = next((loc[:end] for end in range(len(loc), 0, -1) if loc[:end] in self.aliases), None)
            loc = self.aliases[alias] + loc[len(alias) :] if alias is not None else loc[:-1]
        return self.places[loc]

    def key_node(self, loc: Loc) -> yaml.Node:
        place = self.place(loc)
        return place.key if place.key is not None else place.value

    def _plain(self, node: yaml.Node, loc: Loc, key: yaml.Node | None) -> object:
        self.places[loc] = _Place(key, node)
        converted = self._converted.get(id(node))
        if converted is not None:
            data, anchor = converted
            self.aliases[loc] = anchor
            return data
        if isinstance(node, yaml.MappingNode):
            mapping: dict[str, object] = {}
            self._converted[id(node)] = (mapping, loc)  # before the entries, so a recursive alias ends here
            for key_node, value_node in node.value:
                name = self._key(key_node)
                if name is None:
                    continue
                if name in mapping:
                    self.problems.append((key_node, _duplicate(loc, name, self.key_node((*loc, name)))))
                    continue
                mapping[name] = self._plain(value_node, (*loc, name), key_node)
            return mapping
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            self._converted[id(node)] = (items, loc)
            items.extend(self._plain(item, (*loc, index), None) for index, item in enumerate(node.value))
            return items
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node)
        return _Unreadable(node)

    def _key(self, node: yaml.Node) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _MERGE_TAG:
                self.problems.append((node, "YAML merge keys ('<<') are not supported; put shared settings under 'defaults'"))
                return None
            if node.tag in _TEXT_TAGS:
                return str(node.value)
        self.problems.append((node, f"keys must be names, not {_describe(node)}"))
        return None


# ---- what each place is called in messages ------------------------------------------------------


def _subject(loc: Loc) -> str:
    """What the value at `loc` is called: "the inventory", "host 'alpha'", "'sudo'", "'health.timeout'", "each tag"."""
    match loc:
        case ():
            return "the inventory"
        case ("hosts", str(name)):
            return f"host {_quote(name)}"
        case ("builders", str(name)):
            return f"builder {_quote(name)}"
        case ("defaults", "health", str(field)) | ("hosts", str(), "health", str(field)):
            return f"'health.{field}'"
        case ("defaults", "keys", str(key)) | ("hosts", str(), "keys", str(key)):
            return f"key {_quote(key)}"
        case ("defaults", "keys", str(key), str(field)) | ("hosts", str(), "keys", str(key), str(field)):
            return f"'keys.{key}.{field}'"
        case (*_, int()):
            return "each tag"  # tags are the only lists
        case (*_, str(last)):
            return _quote(last)
    return _quote(str(loc[-1]))


def _where(loc: Loc) -> str:
    """Where the keys of the mapping at `loc` are: "at the top level", "in host 'alpha'", "in 'health' in 'defaults'"."""
    match loc:
        case ():
            return "at the top level"
        case ("defaults", "health") | ("hosts", str(), "health"):
            return f"in 'health' {_where(loc[:-1])}"
        case ("defaults", "keys", str(key)) | ("hosts", str(), "keys", str(key)):
            return f"in key {_quote(key)} {_where(loc[:-2])}"
    return f"in {_subject(loc)}"


def _keys_at(loc: Loc) -> tuple[str, ...]:
    """The keys the mapping at `loc` may have."""
    match loc:
        case ():
            return TOP_LEVEL_KEYS
        case ("defaults",):
            return DEFAULTS_KEYS
        case ("hosts", str()):
            return HOST_KEYS
        case ("builders", str()):
            return BUILDER_KEYS
        case ("defaults", "health") | ("hosts", str(), "health"):
            return HEALTH_KEYS
        case ("defaults", "keys", str()) | ("hosts", str(), "keys", str()):
            return KEY_KEYS
    return ()


def _duplicate(loc: Loc, key: str, first: yaml.Node) -> str:
    first_line = first.start_mark.line + 1
    if loc in (("hosts",), ("builders",)):
        return f"duplicate {'host' if loc == ('hosts',) else 'builder'} {_quote(key)} (first defined on line {first_line})"
    return f"duplicate key {_quote(key)} {_where(loc)} (first on line {first_line})"


# ---- the schema -------------------------------------------------------------------------------------
# The schema checks the structure: which keys each mapping may have, mapping or list or scalar, strict
# booleans and numbers and their bounds. The validators below check what only nixfab knows (names safe
# on a command line, ssh targets, paths). Their messages are complete; the structural ones are worded
# by _schema_problem() from the error's kind and the node at its loc.
#
# It is written out here rather than declared with a schema library: pydantic took 90 ms to import and
# build its schemas, a third of the time every task took to start, for seven small mappings.


class _Invalid(Exception):
    """A value refused. kind: one of _EXPECTED's (the value is of the wrong kind), "nixfab" (message is the
    whole problem), "nixfab_about" (message is said of what the loc names), "greater_than" or
    "greater_than_equal" (bound: the limit)."""

    def __init__(self, kind: str, message: str = "", bound: float = 0) -> None:
        super().__init__(message or kind)
        self.kind = kind
        self.message = message
        self.bound = bound


@dataclass(frozen=True)
class _SchemaError:
    loc: Loc
    kind: str
    message: str = ""
    bound: float = 0


def _problem(text: str) -> _Invalid:
    """A validator's error whose message is the whole problem (the position is added from the loc)."""
    return _Invalid("nixfab", text)


def _text(value: object) -> str:
    """A string, or an integer read as the text it was written as; anything else (null too) is not a string."""
    if isinstance(value, _YamlInt):
        return value.text
    if isinstance(value, str):
        return value
    raise _Invalid("string_type")


def _as_text(value: object) -> str | None:
    try:
        return _text(value)
    except _Invalid:
        return None


def _host_name(name: str) -> str:
    problem = _name_problem(name)
    if problem:
        raise _problem(f"invalid host name {_quote(name)}: {problem}")
    return name


def _builder_name(name: str) -> str:
    problem = _name_problem(name)
    if problem:
        raise _problem(f"invalid builder name {_quote(name)}: {problem}")
    if name in (BUILD_LOCALLY, BUILD_ON_TARGET):
        # `build_on: local` must keep meaning this machine.
        raise _problem(f"builder name {_quote(name)} is reserved (build_on: {name} has its own meaning)")
    return name


def _checked_text(value: object, kind: str, problem_of: Callable[[str], str | None]) -> str:
    text = _text(value)
    problem = problem_of(text)
    if problem:
        raise _problem(f"invalid {kind} {_quote(text)}: {problem}")
    return text


def _tag(value: object) -> str:
    return _checked_text(value, "tag", _name_problem)


def _attr(value: object) -> str:
    return _checked_text(value, "attr", _attr_problem)


def _ssh_target(value: object) -> SshTarget:
    text = _text(value)
    try:
        return parse_ssh_target(text)
    except ValueError as error:
        raise _problem(str(error)) from None


def _command(value: object) -> str:
    command = _text(value)
    if not command.strip():
        raise _problem("'health.command' is empty")
    if "\0" in command:
        raise _problem("'health.command' contains a NUL character")
    return command


def _url(value: object) -> str:
    url = _text(value)
    if not re.match(r"\Ahttps?://[^\s]+\Z", url):
        raise _problem(f"'health.url' must be an http:// or https:// URL without spaces, not {_quote(url)}")
    return url


def _about(text: str) -> _Invalid:
    """A validator's error that _schema_problem() words as "<what the loc names> <text>": "'keys.db.mode' must be ..."."""
    return _Invalid("nixfab_about", text)


def _key_name(name: str) -> str:
    if KEY_NAME_PATTERN.match(name):
        return name
    if not name:
        problem = "empty"
    elif len(name) > 255:
        problem = "longer than 255 characters"
    else:
        problem = "use letters, digits, '.', '_' and '-', starting with a letter, digit or '_'"
    raise _problem(f"invalid key name {_quote(name)}: {problem}")


def _key_source(value: object, directory: Path) -> Path:
    """The absolute path of a key's `source`, resolved against the inventory's directory; nothing is read now."""
    written = _text(value)
    if not written.strip():
        raise _about("is empty")
    if "\0" in written:
        raise _about("contains a NUL character")
    return Path(os.path.normpath(os.path.abspath(directory / os.path.expanduser(written))))


def _key_command(value: object) -> tuple[str, ...]:
    """A key's `command` as an argv: a list of words as written, a string as `sh -c STRING`."""
    if isinstance(value, str | _YamlInt):
        text = _text(value)
        if not text.strip():
            raise _about("is empty")
        if "\0" in text:
            raise _about("contains a NUL character")
        return ("sh", "-c", text)
    if not isinstance(value, list):
        raise _Invalid("command_type")
    if not value:
        raise _about("is an empty list")
    words: list[str] = []
    for number, word in enumerate(value, start=1):
        if not isinstance(word, str | _YamlInt):
            raise _about(f"must be a list of strings, and word {number} is not one")
        words.append(_text(word))
    if not words[0]:
        raise _about("starts with an empty word")
    if any("\0" in word for word in words):
        raise _about("contains a NUL character")
    return tuple(words)


def _key_dest(value: object) -> str:
    dest = _text(value)
    if not dest.startswith("/"):
        raise _about(f"must be an absolute path, not {_quote(dest)}")
    control = next((character for character in dest if ord(character) < 0x20 or character == "\x7f"), None)
    if control is not None:
        raise _about(f"contains a control character ({control!r})")
    plain = "/" + "/".join(part for part in dest.split("/") if part not in ("", "."))
    if dest == "/" or dest.endswith("/"):
        raise _about(f"must name a file, not a directory ({_quote(dest)})")
    if dest != plain or "/../" in f"{dest}/":
        raise _about(f"must be a plain absolute path without '.', '..' or '//', not {_quote(dest)}")
    if dest == "/nix" or dest.startswith("/nix/"):
        raise _about(f"is in /nix ({_quote(dest)}): a key stays out of the Nix store")
    return dest


def _key_owner(value: object) -> str:
    name = _text(value)
    if not OWNER_PATTERN.match(name):
        raise _about(f"must be a name (letters, digits, '_', '.' and '-', starting with a letter or '_') or a number, not {_quote(name)}")
    return name


_MODE_PATTERN = re.compile(r"\A(?:0o|0)?([0-7]{3})\Z")


def _key_mode(value: object) -> int:
    """Permissions in octal, as text ("0640") or as written unquoted (0640, 640): the digits are read as octal either way."""
    text = _as_text(value)
    if text is None:
        raise _Invalid("mode_type")
    matched = _MODE_PATTERN.match(text)
    if matched:
        return int(matched.group(1), 8)
    if re.fullmatch(r"(?:0o|0)?[0-7]{4}", text):
        raise _about(f"is {_quote(text)}, which sets the setuid, setgid or sticky bit a key never needs; give three octal digits such as \"0640\"")
    raise _about(f"must be permissions in octal such as \"0640\", not {_quote(text)}")


def _key_upload(value: object) -> KeyUpload:
    text = _text(value)
    try:
        return KeyUpload(text)
    except ValueError:
        pass
    suggestion = _did_you_mean(text, [upload.value for upload in KeyUpload])
    hint = f"; did you mean {_quote(suggestion)}?" if suggestion else ""
    raise _about(f"must be {' or '.join(KeyUpload)}, not {_quote(text)}{hint}")


def _ssh_config(value: object, directory: Path) -> Path:
    """The absolute path of `ssh_config`, resolved against the inventory's directory (the validation context)."""
    written = _text(value)
    if not written:
        raise _problem("'ssh_config' is empty")
    # Nix 2.8 splits NIX_SSHOPTS on whitespace, so `-F <path>` must be a single word.
    if any(character.isspace() for character in written):
        raise _problem(f"ssh_config {_quote(written)} contains whitespace, which NIX_SSHOPTS cannot carry (Nix splits it on whitespace)")
    resolved = Path(os.path.normpath(os.path.abspath(directory / os.path.expanduser(written))))
    if any(character.isspace() for character in str(resolved)):
        raise _problem(
            f"ssh_config resolves to {str(resolved)!r}, which contains whitespace that NIX_SSHOPTS cannot carry "
            "(Nix splits it on whitespace); move the file or give an absolute path without spaces"
        )
    # Paths are not truncated: a cut-off path would not tell the reader where we looked.
    looked_for = f" (looked for {str(resolved)!r})" if str(resolved) != written else ""
    try:
        mode = os.stat(resolved).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise _problem(f"ssh_config {_quote(written)} does not exist{looked_for}") from None
    except OSError as error:
        raise _problem(f"ssh_config {_quote(written)} cannot be read: {error.strerror or error}") from None
    # Not is_file(): `ssh_config: /dev/null` is the usual way to make ssh ignore ~/.ssh/config.
    if stat.S_ISDIR(mode):
        raise _problem(f"ssh_config {_quote(written)} is a directory{looked_for}")
    return resolved


def _flag(value: object) -> bool:
    """true or false, as YAML writes them; null too is refused (`sudo:` with nothing after it is a mistake, not the default)."""
    if isinstance(value, bool):
        return value
    raise _Invalid("bool_type")


def _more_than_zero(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("float_type")
    if not value > 0:  # NaN too
        raise _Invalid("greater_than", bound=0)
    return float(value)


def _zero_or_more(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid("int_type")
    if value < 0:
        raise _Invalid("greater_than_equal", bound=0)
    return int(value)


@dataclass(frozen=True)
class _Health:
    command: str | None = None
    url: str | None = None
    timeout: float = HealthCheck.timeout
    retries: int = HealthCheck.retries
    interval: float = HealthCheck.interval
    # "A command, a url, or both" is checked in _cross_checks(), so that it is found together with any
    # other problem in the same mapping.


@dataclass(frozen=True)
class _Key:
    source: Path | None = None
    command: tuple[str, ...] | None = None
    dest: str | None = None
    user: str | None = None
    group: str | None = None
    mode: int | None = None
    upload: KeyUpload | None = None
    # "A source or a command, not both" is checked in _cross_checks(), as health's "a command, a url, or both" is.


@dataclass(frozen=True)
class _HostSettings:
    """What a host says for itself, or 'defaults' for every host."""

    build_on: str | None = None
    sudo: bool | None = None
    tags: tuple[str, ...] | None = None
    health: _Health | None = None
    # A key set to null in a host drops the defaults' key of that name (in 'defaults' it is refused: _cross_checks()).
    keys: Mapping[str, _Key | None] | None = None


@dataclass(frozen=True)
class _Defaults(_HostSettings):
    check: bool | None = None  # of the whole flake, so never per host


@dataclass(frozen=True)
class _Host(_HostSettings):
    ssh: SshTarget | None = None
    attr: str | None = None


@dataclass(frozen=True)
class _Builder:
    ssh: SshTarget | None = None


@dataclass(frozen=True)
class _File:
    ssh_config: Path | None = None
    defaults: _Defaults | None = None
    hosts: Mapping[str, _Host | None] | None = None
    builders: Mapping[str, _Builder | None] | None = None


_ModelT = TypeVar("_ModelT")
_Check = Callable[[object, Loc], object]  # a value and where it is -> the value as the model keeps it; raises _Invalid


class _Schema:
    """Validates the plain data of hosts.yaml strictly (no "1" for 1, no 1 for true) and closed (a key a
    mapping does not name is an error), noting every problem at its loc rather than stopping at the first."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory  # where relative paths (ssh_config, a key's source) are resolved
        self.errors: list[_SchemaError] = []

    def file(self, data: object) -> _File | None:
        """The whole document; None when anything in it is refused (self.errors says what), the document itself too."""
        checked = self._value(data, (), lambda document, loc: self._mapping(document, loc, _File, {
            "ssh_config": lambda value, at: _ssh_config(value, self.directory),
            # Null is a value here: no defaults, no hosts, no builders.
            "defaults": lambda value, at: None if value is None else self._settings(value, at, _Defaults),
            "hosts": lambda value, at: self._named(value, at, _host_name, lambda host, where: self._settings(host, where, _Host)),
            "builders": lambda value, at: self._named(value, at, _builder_name, self._builder),
        }))
        return checked if isinstance(checked, _File) else None

    def _settings(self, data: object, loc: Loc, model: type[_HostSettings]) -> _HostSettings | None:
        fields: dict[str, _Check] = {
            "build_on": lambda value, at: _text(value),
            "sudo": lambda value, at: _flag(value),
            "tags": self._tags,
            "health": self._health,
            "keys": self._keys,
        }
        if model is _Defaults:
            fields["check"] = lambda value, at: _flag(value)
        else:
            fields.update(ssh=lambda value, at: _ssh_target(value), attr=lambda value, at: _attr(value))
        return self._mapping(data, loc, model, fields)

    def _builder(self, data: object, loc: Loc) -> _Builder | None:
        return self._mapping(data, loc, _Builder, {"ssh": lambda value, at: _ssh_target(value)})

    def _health(self, data: object, loc: Loc) -> _Health | None:
        if data is None:
            raise _Invalid("dict_type")  # `health:` with nothing after it
        return self._mapping(data, loc, _Health, {
            "command": lambda value, at: _command(value),
            "url": lambda value, at: _url(value),
            # Zero retries is a sensible choice; a zero timeout or interval is not.
            "timeout": lambda value, at: _more_than_zero(value),
            "retries": lambda value, at: _zero_or_more(value),
            "interval": lambda value, at: _more_than_zero(value),
        })

    def _key(self, data: object, loc: Loc) -> _Key | None:
        return self._mapping(data, loc, _Key, {
            "source": lambda value, at: _key_source(value, self.directory),
            "command": lambda value, at: _key_command(value),
            "dest": lambda value, at: _key_dest(value),
            "user": lambda value, at: _key_owner(value),
            "group": lambda value, at: _key_owner(value),
            "mode": lambda value, at: _key_mode(value),
            "upload": lambda value, at: _key_upload(value),
        })

    def _keys(self, data: object, loc: Loc) -> Mapping[str, _Key | None] | None:
        if data is None:
            raise _Invalid("dict_type")  # `keys:` with nothing after it
        return self._named(data, loc, _key_name, self._key)

    def _tags(self, data: object, loc: Loc) -> tuple[str, ...] | None:
        if data is None:
            return ()  # `tags:` with nothing after it: no tags, not the defaults'
        if not isinstance(data, list):
            raise _Invalid("list_type")
        tags = [self._value(item, (*loc, index), lambda value, at: _tag(value)) for index, item in enumerate(data)]
        return None if any(tag is None for tag in tags) else tuple(str(tag) for tag in tags)

    def _named(self, data: object, loc: Loc, name: Callable[[str], str], entry: _Check) -> Mapping[str, Any] | None:
        """A mapping from names (hosts, builders, keys) to their settings, each of which may be null."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise _Invalid("dict_type")
        before = len(self.errors)
        entries = {}
        for key, value in data.items():
            self._value(key, (*loc, key, "[key]"), lambda text, at: name(str(text)))
            entries[key] = None if value is None else self._value(value, (*loc, key), entry)
        return MappingProxyType(entries) if len(self.errors) == before else None

    def _mapping(self, data: object, loc: Loc, model: type[_ModelT], fields: Mapping[str, _Check]) -> _ModelT | None:
        """model made of the mapping's values, each checked by its key's check; None if anything in it is refused."""
        if not isinstance(data, dict):
            raise _Invalid("model_type")
        before = len(self.errors)
        self.errors.extend(_SchemaError((*loc, key), "extra_forbidden") for key in data if key not in fields)
        values = {key: self._value(data[key], (*loc, key), check) for key, check in fields.items() if key in data}
        return model(**values) if len(self.errors) == before else None

    def _value(self, value: object, loc: Loc, check: _Check) -> object:
        """check's result for value; None when it is refused, the problem noted at loc."""
        try:
            return check(value, loc)
        except _Invalid as invalid:
            self.errors.append(_SchemaError(loc, invalid.kind, invalid.message, invalid.bound))
            return None


def _keys_of(model: type) -> tuple[str, ...]:
    return tuple(sorted(field.name for field in dataclasses.fields(model)))


TOP_LEVEL_KEYS = _keys_of(_File)
DEFAULTS_KEYS = _keys_of(_Defaults)
HOST_KEYS = _keys_of(_Host)
HEALTH_KEYS = _keys_of(_Health)
KEY_KEYS = _keys_of(_Key)
BUILDER_KEYS = _keys_of(_Builder)


# An error kind that says the value is of the wrong kind -> what the key wants instead.
_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list of names",
    "command_type": "a string (run with sh -c) or a list of words (an argv)",
    "mode_type": 'permissions in octal, such as "0640"',
}


def _schema_problem(error: _SchemaError, document: _Document) -> _Problem:
    """One schema error as a message, at the node its loc leads to."""
    loc, kind = error.loc, error.kind
    if loc and loc[-1] == "[key]":  # a mapping key refused by its validator (a host, builder or key name)
        return document.key_node(loc[:-1]), error.message
    if kind == "extra_forbidden":
        return document.key_node(loc), _unknown_key(loc[:-1], str(loc[-1]))
    node = document.place(loc).value
    if kind in _EXPECTED:
        return node, _wrong_type(loc, _EXPECTED[kind], node)
    if kind == "greater_than":
        return node, f"{_subject(loc)} must be more than {error.bound:g}, not {node.value}"
    if kind == "greater_than_equal":
        return node, f"{_subject(loc)} must be {error.bound:g} or more, not {node.value}"
    if kind == "nixfab_about":
        return node, f"{_subject(loc)} {error.message}"
    return node, error.message


def _unknown_key(loc: Loc, key: str) -> str:
    if loc == ("defaults",) and key in ("ssh", "attr"):
        # Say why per-host keys are refused here, not just that they are.
        return f"{_quote(key)} is not allowed in 'defaults': it is per host and defaults to the host's name"
    if loc[:1] == ("hosts",) and len(loc) == 2 and key == "check":
        return "'check' is allowed only in 'defaults': `nix flake check` checks the whole flake, not one host"
    allowed = _keys_at(loc)
    message = f"unknown key {_quote(key)} {_where(loc)} (expected one of: {', '.join(allowed)})"
    suggestion = _did_you_mean(key, allowed)
    return f"{message}; did you mean {_quote(suggestion)}?" if suggestion else message


def _wrong_type(loc: Loc, expected: str, node: yaml.Node) -> str:
    if not loc:
        return f"the inventory must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, not {_describe(node)}"
    message = f"{_subject(loc)} must be {expected}, not {_describe(node)}"
    if isinstance(node, yaml.ScalarNode):
        text = str(node.value)
        if expected == _EXPECTED["bool_type"] and node.tag == _STR_TAG and text.lower() in ("true", "false"):
            message += " (remove the quotes)"
        if expected == _EXPECTED["list_type"] and node.tag in _TEXT_TAGS and not _name_problem(text):
            message += f" (write [{text}])"
    return message


# ---- rules between keys ------------------------------------------------------------------------------


def _cross_checks(document: _Document) -> Iterator[_Problem]:
    """A name that is both a host and a builder, a build_on that names neither, a health check that checks nothing.

    Read from the plain data rather than from a validated model, so that they are found together with
    whatever else the schema refuses in the file.
    """
    data = document.data
    if not isinstance(data, dict):
        return
    hosts, builders = ({} if not isinstance(section, dict) else section for section in (data.get("hosts"), data.get("builders")))

    for name in (name for name in builders if name in hosts):
        builder_key, host_key = document.key_node(("builders", name)), document.key_node(("hosts", name))
        later, earlier, earlier_kind = (
            (builder_key, host_key, "host") if builder_key.start_mark.index > host_key.start_mark.index else (host_key, builder_key, "builder")
        )
        yield later, f"{_quote(name)} is both a host and a builder (the {earlier_kind} is on line {earlier.start_mark.line + 1})"

    known = [BUILD_LOCALLY, BUILD_ON_TARGET, *builders, *hosts]
    for loc, settings in [(("defaults",), data.get("defaults")), *((("hosts", name), host) for name, host in hosts.items())]:
        if not isinstance(settings, dict):
            continue
        build_on = _as_text(settings.get("build_on"))
        if build_on is not None and build_on not in known:  # not text at all: the schema says so
            suggestion = _did_you_mean(build_on, known)
            hint = f"did you mean {_quote(suggestion)}?" if suggestion else "expected local, target, or the name of a builder or host"
            yield document.place((*loc, "build_on")).value, f"build_on: {_quote(build_on)} is not a builder or host ({hint})"
        health = settings.get("health")
        if isinstance(health, dict) and "command" not in health and "url" not in health:
            yield document.place((*loc, "health")).value, f"'health' {_where(loc)} needs a 'command', a 'url', or both"

    yield from _key_checks(document)


def _key_checks(document: _Document) -> Iterator[_Problem]:
    """Each key has a source or a command, not both; a null key only drops a default one; no two keys of a host share a dest."""
    data = document.data
    assert isinstance(data, dict)
    defaults, hosts = (section if isinstance(section, dict) else {} for section in (data.get("defaults"), data.get("hosts")))
    default_keys = defaults.get("keys") if isinstance(defaults.get("keys"), dict) else {}
    assert isinstance(default_keys, dict)
    places: list[tuple[Loc, object]] = [(("defaults",), default_keys)]
    places += [(("hosts", name), host.get("keys")) for name, host in hosts.items() if isinstance(host, dict)]
    for loc, keys in places:
        if not isinstance(keys, dict):
            continue
        for name, key in keys.items():
            key_loc = (*loc, "keys", name)
            if key is None:
                if loc == ("defaults",):
                    yield document.place(key_loc).value, f"key {_quote(name)} in 'defaults' is empty: give it a 'source' or a 'command'"
                elif name not in default_keys:
                    yield document.place(key_loc).value, (
                        f"key {_quote(name)} {_where(loc)} is empty, and 'defaults' has no key {_quote(name)} for it to drop"
                    )
            elif isinstance(key, dict) and "source" in key and "command" in key:
                yield document.key_node((*key_loc, "command")), f"key {_quote(name)} {_where(loc)} has both 'source' and 'command'; give one"
            elif isinstance(key, dict) and "source" not in key and "command" not in key:
                yield document.place(key_loc).value, (
                    f"key {_quote(name)} {_where(loc)} needs a 'source' (a file on this machine) or a 'command' (whose output is the key)"
                )
    # Two keys of one host written to one file: the second would silently replace the first.
    yield from _shared_dests(document, [(("defaults", "keys", name), key) for name, key in default_keys.items()], lambda loc: True)
    for host_name, host in hosts.items():
        host_keys = host.get("keys") if isinstance(host, dict) else None
        if not isinstance(host_keys, dict):
            continue
        effective: dict[str, tuple[Loc, object]] = {name: (("defaults", "keys", name), key) for name, key in default_keys.items()}
        for name, key in host_keys.items():
            effective.pop(name, None)
            if key is not None:
                effective[name] = (("hosts", host_name, "keys", name), key)
        yield from _shared_dests(document, list(effective.values()), lambda loc: loc[0] == "hosts")


def _shared_dests(document: _Document, keys: list[tuple[Loc, object]], reported: Callable[[Loc], bool]) -> Iterator[_Problem]:
    """Keys (in order) whose dest an earlier one already has; only those whose loc `reported` accepts are reported."""
    first_by_dest: dict[str, Loc] = {}
    for loc, key in keys:
        if not isinstance(key, dict):
            continue
        written = _as_text(key.get("dest")) if "dest" in key else f"{KEYS_DIR}/{loc[-1]}"
        if written is None:
            continue  # not text: the schema says so
        first = first_by_dest.setdefault(written, loc)
        if first != loc and reported(loc):
            node = document.place((*loc, "dest")).value if "dest" in key else document.key_node(loc)
            line = document.key_node(first).start_mark.line + 1
            yield node, f"key {_quote(str(loc[-1]))} {_where(loc[:-2])} goes to {written}, as key {_quote(str(first[-1]))} (line {line}) does"


# ---- from the validated schema to the Inventory ------------------------------------------------------


def _health_check(health: _Health | None) -> HealthCheck | None:
    if health is None:
        return None
    return HealthCheck(command=health.command, url=health.url, timeout=health.timeout, retries=health.retries, interval=health.interval)


def _key_spec(name: str, key: _Key, directory: Path) -> KeySpec:
    return KeySpec(
        name=name,
        dest=key.dest if key.dest is not None else f"{KEYS_DIR}/{name}",
        source=key.source,
        command=key.command,
        directory=directory if key.command is not None else None,
        user=key.user if key.user is not None else "root",
        group=key.group if key.group is not None else "root",
        mode=key.mode if key.mode is not None else DEFAULT_KEY_MODE,
        upload=key.upload if key.upload is not None else KeyUpload.PRE_ACTIVATION,
    )


def _host_keys(default_keys: tuple[KeySpec, ...], own: Mapping[str, _Key | None] | None, directory: Path) -> tuple[KeySpec, ...]:
    """The defaults' keys, each replaced by the host's key of that name or dropped by its null; then the host's other keys."""
    keys = {key.name: key for key in default_keys}
    for name, key in (own or {}).items():
        if key is None:
            keys.pop(name, None)
        else:
            keys[name] = _key_spec(name, key, directory)
    return tuple(keys.values())


def _inventory(path: Path, file: _File) -> Inventory:
    defaults = file.defaults or _Defaults()
    directory = Path(os.path.abspath(path.parent))  # where key commands run, as `source` paths are read from there
    default_keys = tuple(_key_spec(name, key, directory) for name, key in (defaults.keys or {}).items() if key is not None)
    default_build_on = defaults.build_on if defaults.build_on is not None else BUILD_LOCALLY
    default_sudo = defaults.sudo if defaults.sudo is not None else False
    default_tags = tuple(dict.fromkeys(defaults.tags or ()))
    default_health = _health_check(defaults.health)

    builders = {}
    for name, builder in (file.builders or {}).items():
        ssh = builder.ssh if builder is not None else None
        builders[name] = BuilderSpec(name, ssh if ssh is not None else SshTarget(name))

    hosts = {}
    for name, declared in (file.hosts or {}).items():
        host = declared if declared is not None else _Host()
        build_on = host.build_on if host.build_on is not None else default_build_on
        hosts[name] = HostSpec(
            name=name,
            ssh=host.ssh if host.ssh is not None else SshTarget(name),
            attr=host.attr if host.attr is not None else name,
            # Building "on itself by name" is building on the target.
            build_on=BUILD_ON_TARGET if build_on == name else build_on,
            tags=tuple(dict.fromkeys(host.tags)) if host.tags is not None else default_tags,  # repeats dropped, order kept
            sudo=host.sudo if host.sudo is not None else default_sudo,
            declared=True,
            health=_health_check(host.health) if host.health is not None else default_health,
            keys=_host_keys(default_keys, host.keys, directory),
        )

    return Inventory(
        path=path,
        ssh_config=file.ssh_config,
        hosts=MappingProxyType(hosts),
        builders=MappingProxyType(builders),
        default_build_on=default_build_on,
        default_sudo=default_sudo,
        default_tags=default_tags,
        default_health=default_health,
        default_keys=default_keys,
        check=bool(defaults.check),
    )


def _read(path: Path, root: yaml.Node) -> Inventory:
    """Validate the composed document; every problem in it, or the Inventory."""
    document = _Document(root)
    problems = list(document.problems)
    schema = _Schema(path.parent)
    file = schema.file(document.data)
    problems.extend(_schema_problem(error, document) for error in schema.errors)
    problems.extend(_cross_checks(document))
    if file is not None and not problems:
        return _inventory(path, file)
    # In file order, each once: a problem under an anchor is found again through each alias of it.
    problems.sort(key=lambda problem: problem[0].start_mark.index)
    located = (f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: {text}" for node, text in problems)
    raise InventoryError(*dict.fromkeys(located))


def _line_and_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_inventory(path: Path | str, *, required: bool = False) -> Inventory:
    """Read hosts.yaml. A missing file is an empty inventory unless `required`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise InventoryError(f"{path}: no such inventory file") from None
        return Inventory()
    except IsADirectoryError:
        raise InventoryError(f"{path}: is a directory, not an inventory file") from None
    except OSError as error:
        raise InventoryError(f"{path}: cannot read inventory: {error.strerror or error}") from None

    # Strip a BOM ourselves so that columns on line 1 are not off by one.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line = data.count(b"\n", 0, error.start) + 1
        column = len(data[line_start : error.start].decode("utf-8")) + 1
        raise InventoryError(f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{data[error.start]:02x})") from None

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = _one_line(error.problem or error.context or "syntax error")
        location = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise InventoryError(f"{location}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as error:
        line, column = _line_and_column(text, error.position)
        raise InventoryError(f"{path}:{line}:{column}: invalid YAML: unacceptable character #x{error.character:04x}: {error.reason}") from None
    except yaml.YAMLError as error:
        raise InventoryError(f"{path}: invalid YAML: {_one_line(str(error))}") from None
    except RecursionError:
        raise InventoryError(f"{path}: invalid YAML: nested too deeply") from None

    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
        return Inventory(path=path)
    try:
        return _read(path, root)
    except RecursionError:
        raise InventoryError(f"{path}: inventory is nested too deeply") from None
