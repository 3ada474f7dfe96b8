"""hosts.yaml: which machines exist, how to reach them, and where to build for them.

The file is read with yaml.compose() rather than yaml.safe_load() so that every problem can be
reported as `file:line:column: problem`, and so that duplicate keys are caught: safe_load keeps the
last duplicate silently, which would quietly drop a host or a whole `hosts:` section.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from deploy.errors import InventoryError

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

BUILD_LOCALLY = "local"
BUILD_ON_TARGET = "target"

TOP_LEVEL_KEYS = ("builders", "defaults", "hosts", "ssh_config")
DEFAULTS_KEYS = ("build_on", "health", "sudo", "tags")
HOST_KEYS = ("attr", "build_on", "health", "ssh", "sudo", "tags")
HEALTH_KEYS = ("command", "interval", "retries", "timeout", "url")
BUILDER_KEYS = ("ssh",)

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


@dataclass
class _Entry:
    """A mapping entry with the nodes its errors point at."""

    key: yaml.ScalarNode
    value: yaml.Node


@dataclass
class _HostDraft:
    name: str
    key: yaml.ScalarNode
    ssh: SshTarget
    attr: str
    build_on: str | None
    build_on_node: yaml.Node | None
    tags: tuple[str, ...] | None
    sudo: bool | None
    health: HealthCheck | None = None


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


class _InventoryReader:
    """Walks the composed node tree; every error carries the position of the node at fault."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, node: yaml.Node, problem: str) -> InventoryError:
        mark = node.start_mark
        return InventoryError(f"{self.path}:{mark.line + 1}:{mark.column + 1}: {problem}")

    # ---- typed accessors -------------------------------------------------------------------

    def key_text(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _MERGE_TAG:
                raise self.error(node, "YAML merge keys ('<<') are not supported; put shared settings under 'defaults'")
            if node.tag in _TEXT_TAGS:
                return str(node.value)
        raise self.error(node, f"keys must be names, not {_describe(node)}")

    def mapping(
        self,
        node: yaml.Node,
        subject: str,
        where: str,
        allowed: tuple[str, ...] | None,
        entry_kind: str | None = None,
    ) -> dict[str, _Entry]:
        """Entries of a mapping node in file order, refusing duplicates and (if `allowed`) unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{subject} must be a mapping, not {_describe(node)}")
        entries: dict[str, _Entry] = {}
        for key_node, value_node in node.value:
            key = self.key_text(key_node)
            earlier = entries.get(key)
            if earlier is not None:
                first_line = earlier.key.start_mark.line + 1
                if entry_kind:
                    raise self.error(key_node, f"duplicate {entry_kind} {_quote(key)} (first defined on line {first_line})")
                raise self.error(key_node, f"duplicate key {_quote(key)} {where} (first on line {first_line})")
            if allowed is not None and key not in allowed:
                message = f"unknown key {_quote(key)} {where} (expected one of: {', '.join(allowed)})"
                suggestion = _did_you_mean(key, allowed)
                if suggestion:
                    message += f"; did you mean {_quote(suggestion)}?"
                raise self.error(key_node, message)
            entries[key] = _Entry(key_node, value_node)
        return entries

    def optional_mapping(self, node: yaml.Node, subject: str, where: str, allowed: tuple[str, ...] | None, entry_kind: str | None = None) -> dict[str, _Entry]:
        """A mapping where an empty value (`hosts:` with nothing after it) means no entries."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return {}
        return self.mapping(node, subject, where, allowed, entry_kind)

    def text(self, node: yaml.Node, subject: str) -> str:
        if isinstance(node, yaml.ScalarNode) and node.tag in _TEXT_TAGS:
            return str(node.value)
        raise self.error(node, f"{subject} must be a string, not {_describe(node)}")

    def boolean(self, node: yaml.Node, subject: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL_TAG:
            return bool(yaml.constructor.SafeConstructor.bool_values[str(node.value).lower()])
        message = f"{subject} must be true or false, not {_describe(node)}"
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and str(node.value).lower() in ("true", "false"):
            message += " (remove the quotes)"
        raise self.error(node, message)

    def name(self, node: yaml.Node, name: str, kind: str) -> str:
        problem = _name_problem(name)
        if problem:
            raise self.error(node, f"invalid {kind} {_quote(name)}: {problem}")
        return name

    def tags(self, node: yaml.Node) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            message = f"'tags' must be a list of names, not {_describe(node)}"
            if isinstance(node, yaml.ScalarNode) and node.tag in _TEXT_TAGS and not _name_problem(str(node.value)):
                message += f" (write [{node.value}])"
            raise self.error(node, message)
        tags: dict[str, None] = {}  # a dict keeps file order while dropping repeats
        for item in node.value:
            tag = self.name(item, self.text(item, "each tag"), "tag")
            tags[tag] = None
        return tuple(tags)

    def number(self, node: yaml.Node, subject: str, *, integer: bool = False) -> float:
        allowed = (_INT_TAG,) if integer else (_INT_TAG, _FLOAT_TAG)
        if not (isinstance(node, yaml.ScalarNode) and node.tag in allowed):
            raise self.error(node, f"{subject} must be {'a whole number' if integer else 'a number'}, not {_describe(node)}")
        value = float(yaml.safe_load(str(node.value)))
        # Zero retries is a sensible choice; a zero timeout or interval is not.
        if value < 0 or (value == 0 and not integer):
            raise self.error(node, f"{subject} must be {'0 or more' if integer else 'more than 0'}, not {node.value}")
        return value

    def health(self, node: yaml.Node, where: str) -> HealthCheck:
        fields = self.mapping(node, "'health'", f"in 'health' {where}", HEALTH_KEYS)
        command = self.text(fields["command"].value, "'health.command'") if "command" in fields else None
        url = self.text(fields["url"].value, "'health.url'") if "url" in fields else None
        if command is not None and (not command.strip() or "\0" in command):
            raise self.error(fields["command"].value, "'health.command' is empty")
        if url is not None and not re.match(r"\Ahttps?://[^\s]+\Z", url):
            raise self.error(fields["url"].value, f"'health.url' must be an http:// or https:// URL without spaces, not {_quote(url)}")
        if command is None and url is None:
            raise self.error(node, f"'health' {where} needs a 'command', a 'url', or both")
        check = HealthCheck(command=command, url=url)
        if "timeout" in fields:
            check = dataclasses.replace(check, timeout=self.number(fields["timeout"].value, "'health.timeout'"))
        if "interval" in fields:
            check = dataclasses.replace(check, interval=self.number(fields["interval"].value, "'health.interval'"))
        if "retries" in fields:
            check = dataclasses.replace(check, retries=int(self.number(fields["retries"].value, "'health.retries'", integer=True)))
        return check

    def ssh_target(self, node: yaml.Node) -> SshTarget:
        text = self.text(node, "'ssh'")
        try:
            return parse_ssh_target(text)
        except ValueError as error:
            raise self.error(node, str(error)) from None

    # ---- sections ----------------------------------------------------------------------------

    def ssh_config(self, node: yaml.Node) -> Path:
        written = self.text(node, "'ssh_config'")
        if not written:
            raise self.error(node, "'ssh_config' is empty")
        # Nix 2.8 splits NIX_SSHOPTS on whitespace, so `-F <path>` must be a single word.
        if any(character.isspace() for character in written):
            raise self.error(node, f"ssh_config {_quote(written)} contains whitespace, which NIX_SSHOPTS cannot carry (Nix splits it on whitespace)")
        base = self.path.parent
        resolved = Path(os.path.normpath(os.path.abspath(base / os.path.expanduser(written))))
        if any(character.isspace() for character in str(resolved)):
            raise self.error(
                node,
                f"ssh_config resolves to {str(resolved)!r}, which contains whitespace that NIX_SSHOPTS cannot carry "
                "(Nix splits it on whitespace); move the file or give an absolute path without spaces",
            )
        # Paths are not truncated: a cut-off path would not tell the reader where we looked.
        looked_for = f" (looked for {str(resolved)!r})" if str(resolved) != written else ""
        try:
            mode = os.stat(resolved).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise self.error(node, f"ssh_config {_quote(written)} does not exist{looked_for}") from None
        except OSError as error:
            raise self.error(node, f"ssh_config {_quote(written)} cannot be read: {error.strerror or error}") from None
        # Not is_file(): `ssh_config: /dev/null` is the usual way to make ssh ignore ~/.ssh/config.
        if stat.S_ISDIR(mode):
            raise self.error(node, f"ssh_config {_quote(written)} is a directory{looked_for}")
        return resolved

    def builder(self, name: str, entry: _Entry) -> BuilderSpec:
        self.name(entry.key, name, "builder name")
        if name in (BUILD_LOCALLY, BUILD_ON_TARGET):
            # `build_on: local` must keep meaning this machine.
            raise self.error(entry.key, f"builder name {_quote(name)} is reserved (build_on: {name} has its own meaning)")
        fields = self.optional_mapping(entry.value, f"builder {_quote(name)}", f"in builder {_quote(name)}", BUILDER_KEYS)
        ssh = self.ssh_target(fields["ssh"].value) if "ssh" in fields else SshTarget(name)
        return BuilderSpec(name, ssh)

    def host(self, name: str, entry: _Entry) -> _HostDraft:
        self.name(entry.key, name, "host name")
        where = f"in host {_quote(name)}"
        fields = self.optional_mapping(entry.value, f"host {_quote(name)}", where, HOST_KEYS)
        ssh = self.ssh_target(fields["ssh"].value) if "ssh" in fields else SshTarget(name)
        attr = name
        if "attr" in fields:
            attr = self.text(fields["attr"].value, "'attr'")
            problem = _attr_problem(attr)
            if problem:
                raise self.error(fields["attr"].value, f"invalid attr {_quote(attr)}: {problem}")
        build_on_node = fields["build_on"].value if "build_on" in fields else None
        build_on = self.text(build_on_node, "'build_on'") if build_on_node is not None else None
        tags = self.tags(fields["tags"].value) if "tags" in fields else None
        sudo = self.boolean(fields["sudo"].value, "'sudo'") if "sudo" in fields else None
        health = self.health(fields["health"].value, where) if "health" in fields else None
        return _HostDraft(name, entry.key, ssh, attr, build_on, build_on_node, tags, sudo, health)

    def check_build_on(self, node: yaml.Node, build_on: str, hosts: Mapping[str, object], builders: Mapping[str, object]) -> None:
        if build_on in (BUILD_LOCALLY, BUILD_ON_TARGET) or build_on in builders or build_on in hosts:
            return
        suggestion = _did_you_mean(build_on, [BUILD_LOCALLY, BUILD_ON_TARGET, *builders, *hosts])
        hint = f"did you mean {_quote(suggestion)}?" if suggestion else "expected local, target, or the name of a builder or host"
        raise self.error(node, f"build_on: {_quote(build_on)} is not a builder or host ({hint})")

    def inventory(self, root: yaml.Node) -> Inventory:
        if not isinstance(root, yaml.MappingNode):
            raise self.error(root, f"the inventory must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, not {_describe(root)}")
        sections = self.mapping(root, "the inventory", "at the top level", TOP_LEVEL_KEYS)

        ssh_config = self.ssh_config(sections["ssh_config"].value) if "ssh_config" in sections else None

        default_build_on, default_build_on_node = BUILD_LOCALLY, None
        default_sudo = False
        default_tags: tuple[str, ...] = ()
        default_health: HealthCheck | None = None
        if "defaults" in sections:
            defaults_node = sections["defaults"].value
            if isinstance(defaults_node, yaml.MappingNode):
                # Say why per-host keys are refused here, not just that they are.
                for key_node, _ in defaults_node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value in ("ssh", "attr"):
                        raise self.error(key_node, f"{_quote(key_node.value)} is not allowed in 'defaults': it is per host and defaults to the host's name")
            defaults = self.optional_mapping(defaults_node, "'defaults'", "in 'defaults'", DEFAULTS_KEYS)
            if "build_on" in defaults:
                default_build_on_node = defaults["build_on"].value
                default_build_on = self.text(default_build_on_node, "'build_on'")
            if "sudo" in defaults:
                default_sudo = self.boolean(defaults["sudo"].value, "'sudo'")
            if "tags" in defaults:
                default_tags = self.tags(defaults["tags"].value)
            if "health" in defaults:
                default_health = self.health(defaults["health"].value, "in 'defaults'")

        builders: dict[str, BuilderSpec] = {}
        builder_keys: dict[str, yaml.ScalarNode] = {}
        if "builders" in sections:
            for name, entry in self.optional_mapping(sections["builders"].value, "'builders'", "in 'builders'", None, "builder").items():
                builders[name] = self.builder(name, entry)
                builder_keys[name] = entry.key

        drafts: dict[str, _HostDraft] = {}
        if "hosts" in sections:
            for name, entry in self.optional_mapping(sections["hosts"].value, "'hosts'", "in 'hosts'", None, "host").items():
                drafts[name] = self.host(name, entry)

        for name, builder_key in builder_keys.items():
            if name in drafts:
                host_key = drafts[name].key
                later, earlier, earlier_kind = (
                    (builder_key, host_key, "host") if builder_key.start_mark.index > host_key.start_mark.index else (host_key, builder_key, "builder")
                )
                raise self.error(later, f"{_quote(name)} is both a host and a builder (the {earlier_kind} is on line {earlier.start_mark.line + 1})")

        if default_build_on_node is not None:
            self.check_build_on(default_build_on_node, default_build_on, drafts, builders)
        hosts: dict[str, HostSpec] = {}
        for name, draft in drafts.items():
            if draft.build_on is not None and draft.build_on_node is not None:
                self.check_build_on(draft.build_on_node, draft.build_on, drafts, builders)
            build_on = draft.build_on if draft.build_on is not None else default_build_on
            hosts[name] = HostSpec(
                name=name,
                ssh=draft.ssh,
                attr=draft.attr,
                # Building "on itself by name" is building on the target.
                build_on=BUILD_ON_TARGET if build_on == name else build_on,
                tags=draft.tags if draft.tags is not None else default_tags,
                sudo=draft.sudo if draft.sudo is not None else default_sudo,
                declared=True,
                health=draft.health if draft.health is not None else default_health,
            )

        return Inventory(
            path=self.path,
            ssh_config=ssh_config,
            hosts=MappingProxyType(hosts),
            builders=MappingProxyType(builders),
            default_build_on=default_build_on,
            default_sudo=default_sudo,
            default_tags=default_tags,
            default_health=default_health,
        )


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
        return _InventoryReader(path).inventory(root)
    except RecursionError:
        raise InventoryError(f"{path}: inventory is nested too deeply") from None
