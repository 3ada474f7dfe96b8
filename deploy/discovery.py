"""systems/ discovery without Nix, and the data behind `inv hosts`.

flake.nix turns every `systems/<name>/` that holds a `default.nix` into
`nixosConfigurations.<name>`. Listing hosts and tab completion must not wait
for a Nix evaluation, so this module applies the same rule to the directory
tree and reads `meta.nix` with a small parser for the literal subset of Nix
(strings, lists, attribute sets, true/false/null, numbers, comments).

Anything valid but not literal (`let`, `import`, `with`, functions, string
interpolation, `++`, ...) makes that one field unknown (None) with a note; it
never raises. Only text that is not valid Nix at all, when we can tell,
raises InventoryError with `file:line:column`.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from deploy.errors import InventoryError
from deploy.inventory import (
    BUILD_LOCALLY,
    BUILD_ON_TARGET,
    NAME_PATTERN,
    USER_PATTERN,
    HostSpec,
    Inventory,
    parse_ssh_target,
)

SYSTEMS_DIRECTORY = "systems"
HOMES_DIRECTORY = "homes"
SYSTEM_FILE = "default.nix"
META_FILE = "meta.nix"
HARDWARE_FILE = "hardware.nix"

META_KEYS = ("buildOn", "system", "tags", "targetHost", "users")
# Big enough for any hand-written meta.nix; a bigger file is not one.
META_MAX_BYTES = 256 * 1024
MAX_NESTING = 64

# A Nix system double: arch-os. Anything else cannot be a nixpkgs platform.
SYSTEM_PATTERN: re.Pattern[str] = re.compile(r"\A[a-z0-9_]+-[a-z0-9_]+\Z")

Source = Literal["systems/", "hosts.yaml", "both"]


@dataclass(frozen=True)
class SystemInfo:
    """One `systems/<name>/`, as far as it can be known without evaluating Nix.

    A field is None when meta.nix does not give it as a literal; `notes` says why.
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


# ---------------------------------------------------------------- the Nix literal reader


class NonLiteral:
    """A valid Nix value this reader does not compute; `reason` says what it was."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NonLiteral({self.reason!r})"


NixValue: TypeAlias = str | int | float | bool | list["NixValue"] | dict[str, "NixValue"] | NonLiteral | None


@dataclass(frozen=True)
class _Token:
    kind: str  # "id", "str", "num", "punct", "eof", "other" (paths, URIs, indented strings)
    text: str
    offset: int
    value: str | None = None  # a string's value when it has no interpolation
    interpolated: bool = False


class _NixSyntaxError(Exception):
    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset = offset
        self.problem = problem


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
# Nix's own number rules: "1e3" is the integer 1 followed by the name e3, not a float.
_NUMBER = re.compile(r"(?:[1-9][0-9]*\.[0-9]*|0?\.[0-9]+)(?:[Ee][+-]?[0-9]+)?|[0-9]+")
# The lexer rules of Nix for these, so that their '/', '#' or ':' are not misread.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9%/?:@&=+$,_.!~*'-]+")
_PATH = re.compile(r"[A-Za-z0-9._+~-]*(?:/[A-Za-z0-9._+-]+)+/?")
_SEARCH_PATH = re.compile(r"<[A-Za-z0-9._+-]+(?:/[A-Za-z0-9._+-]+)*>")
_HOME_PATH = re.compile(r"~(?:/[A-Za-z0-9._+-]+)+/?")
_PUNCTUATION = ("...", "${", "==", "!=", "<=", ">=", "&&", "||", "->", "//", "++", "?", ":", ";", "=", ",", ".", "@",
                "{", "}", "[", "]", "(", ")", "+", "-", "*", "/", "<", ">", "!")
_OPENERS = {"{": "}", "${": "}", "[": "]", "(": ")"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_KEYWORDS = frozenset({"let", "in", "with", "assert", "if", "then", "else", "rec", "inherit", "or"})


class _Lexer:
    """Nix tokens, with strings (and their `${...}` nesting) read the way Nix's lexer does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.tokens: list[_Token] = []

    def run(self) -> list[_Token]:
        self._tokens_until(None)
        self.tokens.append(_Token("eof", "", len(self.text)))
        return self.tokens

    def _skip_space_and_comments(self) -> None:
        text = self.text
        while self.position < len(text):
            character = text[self.position]
            if character.isspace():
                self.position += 1
            elif character == "#":
                end = text.find("\n", self.position)
                self.position = len(text) if end == -1 else end + 1
            elif text.startswith("/*", self.position):
                end = text.find("*/", self.position + 2)
                if end == -1:
                    raise _NixSyntaxError(self.position, "unterminated comment '/*'")
                self.position = end + 2
            else:
                return

    def _tokens_until(self, closer_of: int | None) -> None:
        """Read tokens; when inside `${`, stop after its matching '}'."""
        stack: list[tuple[str, int]] = []
        text = self.text
        while True:
            self._skip_space_and_comments()
            if self.position >= len(text):
                if stack:
                    opener, offset = stack[-1]
                    raise _NixSyntaxError(offset, f"{opener!r} is never closed")
                if closer_of is not None:
                    raise _NixSyntaxError(closer_of, "'${' is never closed")
                return
            start = self.position
            character = text[start]
            if character == '"':
                self.tokens.append(self._string(start))
                continue
            if text.startswith("''", start):
                self.tokens.append(self._indented_string(start))
                continue
            for pattern in (_URI, _PATH, _SEARCH_PATH, _HOME_PATH):
                match = pattern.match(text, start)
                if match and match.end() > start and (pattern is not _PATH or "/" in match.group()):
                    break
            else:
                match = None
            if match:
                self.position = match.end()
                self.tokens.append(_Token("other", match.group(), start))
                continue
            match = _IDENTIFIER.match(text, start)
            if match:
                self.position = match.end()
                self.tokens.append(_Token("id", match.group(), start))
                continue
            match = _NUMBER.match(text, start)
            if match:
                self.position = match.end()
                self.tokens.append(_Token("num", match.group(), start))
                continue
            punctuation = next((p for p in _PUNCTUATION if text.startswith(p, start)), None)
            if punctuation is None:
                raise _NixSyntaxError(start, f"unexpected character {character!r}")
            self.position = start + len(punctuation)
            self.tokens.append(_Token("punct", punctuation, start))
            if punctuation in _OPENERS:
                stack.append((punctuation, start))
            elif punctuation in ("}", "]", ")"):
                if not stack:
                    if closer_of is not None and punctuation == "}":
                        self.tokens.pop()  # the end of the interpolation is not a token of its own
                        return
                    raise _NixSyntaxError(start, f"unexpected {punctuation!r}")
                opener, offset = stack.pop()
                if _OPENERS[opener] != punctuation:
                    raise _NixSyntaxError(start, f"{punctuation!r} does not close {opener!r} (line {self.line_of(offset)})")

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def _interpolation(self, start: int) -> None:
        """Skip `${ ... }` inside a string: its tokens are not part of the literal reading."""
        outer = self.tokens
        self.tokens = []
        self.position = start + 2
        try:
            self._tokens_until(start)
        finally:
            self.tokens = outer

    def _string(self, start: int) -> _Token:
        text = self.text
        self.position = start + 1
        pieces: list[str] = []
        interpolated = False
        while True:
            if self.position >= len(text):
                raise _NixSyntaxError(start, "unterminated string")
            character = text[self.position]
            if character == '"':
                self.position += 1
                value = "".join(pieces)
                return _Token("str", text[start : self.position], start, value=value, interpolated=interpolated)
            if character == "\\":
                if self.position + 1 >= len(text):
                    raise _NixSyntaxError(start, "unterminated string")
                escaped = text[self.position + 1]
                pieces.append(_ESCAPES.get(escaped, escaped))
                self.position += 2
            elif character == "$" and text.startswith("${", self.position):
                interpolated = True
                self._interpolation(self.position)
            elif character == "$" and text.startswith("$$", self.position):
                pieces.append("$$")  # Nix reads "$$" as two characters, so "$${" is no interpolation
                self.position += 2
            else:
                pieces.append(character)
                self.position += 1

    def _indented_string(self, start: int) -> _Token:
        text = self.text
        self.position = start + 2
        while True:
            if self.position >= len(text):
                raise _NixSyntaxError(start, "unterminated indented string \"''\"")
            if text.startswith("''", self.position):
                following = text[self.position + 2 : self.position + 3]
                if following in ("'", "$"):
                    self.position += 3
                elif following == "\\":
                    self.position += 4
                else:
                    self.position += 2
                    return _Token("other", text[start : self.position], start)
            elif text.startswith("${", self.position):
                self._interpolation(self.position)
            elif text.startswith("$$", self.position):
                self.position += 2
            else:
                self.position += 1


class _Reader:
    """Reads the literal parts of one attribute set; skips (and checks the shape of) the rest."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def at(self, text: str) -> bool:
        return self.token.kind == "punct" and self.token.text == text

    def at_keyword(self, word: str) -> bool:
        return self.token.kind == "id" and self.token.text == word

    def expect(self, text: str, where: str) -> None:
        if not self.at(text):
            raise _NixSyntaxError(self.token.offset, f"expected {text!r} {where}, found {self._shown(self.token)}")
        self.index += 1

    @staticmethod
    def _shown(token: _Token) -> str:
        return "end of file" if token.kind == "eof" else repr(token.text[:20])

    def matching(self, index: int) -> int:
        """The index of the bracket closing the one at `index` (the lexer checked they balance)."""
        depth = 0
        for position in range(index, len(self.tokens)):
            token = self.tokens[position]
            if token.kind == "punct" and token.text in _OPENERS:
                depth += 1
            elif token.kind == "punct" and token.text in ("}", "]", ")"):
                depth -= 1
                if depth == 0:
                    return position
        raise _NixSyntaxError(self.tokens[index].offset, f"{self.tokens[index].text!r} is never closed")

    def attribute_set(self, depth: int) -> dict[str, NixValue]:
        """At `{` (or `rec {`): the bindings, up to and including the closing `}`."""
        if depth > MAX_NESTING:
            raise _NixSyntaxError(self.token.offset, "nested too deeply")
        if self.at_keyword("rec"):
            self.index += 1
        self.expect("{", "to open an attribute set")
        result: dict[str, NixValue] = {}
        while not self.at("}"):
            if self.token.kind == "eof":
                raise _NixSyntaxError(self.token.offset, "attribute set is never closed")
            if self.at_keyword("inherit"):
                self._inherit(result)
                continue
            key_token = self.token
            path = self._attribute_path()
            self.expect("=", f"after the attribute name {key_token.text!r}")
            value = self.binding_value(depth + 1)
            self.expect(";", f"after the value of {'.'.join(p or '${...}' for p in path)!r}")
            _assign(result, path, value, key_token.offset)
        self.index += 1
        return result

    def _inherit(self, result: dict[str, NixValue]) -> None:
        start = self.token.offset
        self.index += 1
        source = "inherited from an expression"
        if self.at("("):
            self.index = self.matching(self.index) + 1
        else:
            source = "inherited from the enclosing scope"
        while not self.at(";"):
            token = self.token
            if token.kind == "id" or (token.kind == "str" and not token.interpolated):
                name = token.value if token.kind == "str" else token.text
                assert name is not None
                _assign(result, [name], NonLiteral(source), token.offset)
                self.index += 1
            else:
                raise _NixSyntaxError(token.offset if token.kind != "eof" else start, f"expected a name or ';' after 'inherit', found {self._shown(token)}")
        self.index += 1

    def _attribute_path(self) -> list[str | None]:
        """`a.b."c"`; a `${...}` part is None (its name is only known to Nix)."""
        path: list[str | None] = []
        while True:
            token = self.token
            if token.kind == "id":
                path.append(token.text)
                self.index += 1
            elif token.kind == "str":
                path.append(None if token.interpolated else token.value)
                self.index += 1
            elif self.at("${"):
                path.append(None)
                self.index = self.matching(self.index) + 1
            else:
                raise _NixSyntaxError(token.offset, f"expected an attribute name, found {self._shown(token)}")
            if not self.at("."):
                return path
            self.index += 1

    def binding_value(self, depth: int) -> NixValue:
        """The value of `name = value;`: literal if it is one, else skipped up to the ';'."""
        start = self.index
        literal = self._literal(depth)
        if literal is not None and self.at(";"):
            return literal[0]
        self.index = start
        return self._skip_expression()

    def _literal(self, depth: int) -> tuple[NixValue] | None:
        """One literal value (in a 1-tuple, since None is the Nix null), or None if it is not one."""
        if depth > MAX_NESTING:
            return None  # valid, but deeper than any meta.nix: skipped like any other expression
        token = self.token
        if token.kind == "str":
            self.index += 1
            return (NonLiteral("a string with ${...}"),) if token.interpolated else (token.value,)
        if token.kind == "num":
            self.index += 1
            number = float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
            return (number,)
        if token.kind == "id" and token.text in ("true", "false", "null"):
            self.index += 1
            return ({"true": True, "false": False, "null": None}[token.text],)
        if self.at("[") :
            return (self._list(depth),)
        if self.at("{") or (self.at_keyword("rec") and self.tokens[self.index + 1].text == "{"):
            opening = self.index + (1 if self.at_keyword("rec") else 0)
            closing = self.matching(opening)
            following = self.tokens[closing + 1]
            if following.kind == "punct" and following.text in (":", "@"):
                return None  # a function's argument set, not an attribute set
            return (self.attribute_set(depth + 1),)
        return None

    def _list(self, depth: int) -> NixValue:
        closing = self.matching(self.index)
        self.index += 1
        items: list[NixValue] = []
        while self.index < closing:
            item = self._literal(depth + 1)
            # `[ x.y ]` or `[ {..}.a ]` select from the element: not a literal element.
            if item is None or self.at(".") or self.at_keyword("or"):
                self.index = closing + 1
                return NonLiteral("a list with an element that is not a literal")
            items.append(item[0])
        self.index = closing + 1
        return items

    def _skip_expression(self) -> NonLiteral:
        """Skip a valid expression up to the ';' ending its binding; fail on what Nix would refuse.

        `let ... in` and `with e;` / `assert e;` contain ';' of their own, so they are counted.
        """
        start = self.token
        if start.kind == "punct" and start.text == ";":
            raise _NixSyntaxError(start.offset, "expected a value before ';'")
        pending_semicolons = 0
        open_lets = 0
        while True:
            token = self.token
            if token.kind == "eof":
                raise _NixSyntaxError(start.offset, "expected ';' after this value, found end of file")
            if token.kind == "punct":
                if token.text in _OPENERS:
                    self.index = self.matching(self.index) + 1
                    continue
                if token.text in ("}", "]", ")"):
                    raise _NixSyntaxError(token.offset, f"expected ';' before {token.text!r}")
                if token.text == ";":
                    if pending_semicolons:
                        pending_semicolons -= 1
                    elif open_lets:
                        pass  # ends a binding of the `let`
                    else:
                        break
                elif token.text == "=" and not open_lets:
                    raise _NixSyntaxError(token.offset, "unexpected '=': is a ';' missing before it?")
            elif token.kind == "id":
                if token.text == "let":
                    open_lets += 1
                elif token.text == "in" and open_lets:
                    open_lets -= 1
                elif token.text in ("with", "assert"):
                    pending_semicolons += 1
            self.index += 1
        return NonLiteral(_describe_expression(start))


def _describe_expression(first: _Token) -> str:
    if first.kind == "id" and first.text in _KEYWORDS:
        return f"a '{first.text}' expression"
    if first.kind == "id":
        return f"an expression ({first.text} ...)"
    if first.kind == "other" and first.text.startswith("''"):
        return "an indented string"
    if first.kind == "other":
        return "a path or URI"
    return "an expression"


def _assign(target: dict[str, NixValue], path: list[str | None], value: NixValue, offset: int) -> None:
    """Bind `a.b.c = value`, merging attribute sets as Nix does and refusing a second definition."""
    if any(part is None for part in path):
        return  # a dynamic name: Nix knows it, we do not
    *parents, last = path
    node = target
    for part in parents:
        assert part is not None
        existing = node.get(part)
        if existing is None and part not in node:
            existing = node[part] = {}
        if not isinstance(existing, dict):
            raise _NixSyntaxError(offset, f"attribute {'.'.join(p for p in path if p)!r} is already defined")
        node = existing
    assert last is not None
    if last in node:
        existing = node[last]
        if isinstance(existing, dict) and isinstance(value, dict):
            for key, inner in value.items():
                _assign(existing, [key], inner, offset)
            return
        raise _NixSyntaxError(offset, f"attribute {'.'.join(p for p in path if p)!r} is already defined")
    node[last] = value


@dataclass(frozen=True)
class NixFile:
    """The literal reading of a .nix file. `values` is None when the file is not an attribute set."""

    values: dict[str, NixValue] | None
    note: str | None = None


def read_nix_literal(path: Path, text: str | None = None) -> NixFile:
    """Read a file holding one literal attribute set.

    Raises InventoryError (`path:line:column: problem`) for what cannot be valid Nix.
    """
    if text is None:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InventoryError(f"{path}: cannot read: {error.strerror}") from None
        if len(data) > META_MAX_BYTES:
            raise InventoryError(f"{path}: larger than {META_MAX_BYTES // 1024} KiB; not a meta.nix")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise InventoryError(f"{path}:{line}: not valid UTF-8") from None
    try:
        tokens = _Lexer(text).run()
        reader = _Reader(tokens)
        if tokens[0].kind == "eof":
            raise _NixSyntaxError(0, "the file is empty; it must hold an attribute set")
        opening = 1 if reader.at_keyword("rec") else 0
        if not (tokens[opening].kind == "punct" and tokens[opening].text == "{") or reader.matching(opening) != len(tokens) - 2:
            # A function, `let ... in`, `import`, `//`: valid Nix, but reading it needs an evaluator.
            return NixFile(None, "not a literal attribute set { ... }; nixfab reads only literal values")
        return NixFile(reader.attribute_set(0))
    except RecursionError:
        return NixFile(None, "nested too deeply to read")
    except _NixSyntaxError as error:
        line = text.count("\n", 0, error.offset) + 1
        column = error.offset - (text.rfind("\n", 0, error.offset) + 1) + 1
        raise InventoryError(f"{path}:{line}:{column}: {error.problem}") from None


# ---------------------------------------------------------------- systems/


def _list_of_names(value: NixValue, key: str, pattern: re.Pattern[str], kind: str, notes: list[str]) -> tuple[str, ...] | None:
    if isinstance(value, NonLiteral):
        notes.append(f"meta.nix: {key} is {value.reason}; nixfab cannot read it")
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        notes.append(f"meta.nix: {key} must be a list of strings")
        return None
    names: dict[str, None] = {}
    for item in value:
        assert isinstance(item, str)
        if not pattern.match(item):
            notes.append(f"meta.nix: {key} has {item!r}, which is not a valid {kind}")
            return None
        names[item] = None
    return tuple(names)


def _text(value: NixValue, key: str, notes: list[str]) -> str | None:
    if isinstance(value, NonLiteral):
        notes.append(f"meta.nix: {key} is {value.reason}; nixfab cannot read it")
        return None
    if not isinstance(value, str):
        notes.append(f"meta.nix: {key} must be a string")
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


def read_system(flake_dir: Path, directory: Path) -> SystemInfo:
    """One system directory (which holds default.nix) as SystemInfo."""
    name = directory.name
    notes: list[str] = []
    if not NAME_PATTERN.match(name):
        notes.append(
            f"systems/{name}: nixfab cannot use this name (letters, digits, '_' and '-', starting with a letter or digit)"
        )
    meta_path = directory / META_FILE
    has_meta = meta_path.is_file()
    values: Mapping[str, NixValue] = {}
    unreadable = False  # meta.nix is valid Nix but not literal: every field is unknown
    if has_meta:
        meta = read_nix_literal(meta_path)
        if meta.values is None:
            notes.append(f"meta.nix: {meta.note}")
            unreadable = True
        else:
            values = meta.values
            for key in values:
                if key not in META_KEYS:
                    notes.append(f"meta.nix: unknown key {key!r} (nixfab reads {', '.join(META_KEYS)})")

    absent: tuple[str, ...] | None = None if unreadable else ()
    system = _text(values["system"], "system", notes) if "system" in values else None
    if system is not None and not SYSTEM_PATTERN.match(system):
        notes.append(f"meta.nix: system {system!r} is not a system like 'x86_64-linux'")
        system = None
    tags = _list_of_names(values["tags"], "tags", NAME_PATTERN, "tag", notes) if "tags" in values else absent
    users = _list_of_names(values["users"], "users", USER_PATTERN, "user name", notes) if "users" in values else absent
    target_host = _text(values["targetHost"], "targetHost", notes) if "targetHost" in values else None
    if target_host is not None:
        try:
            parse_ssh_target(target_host)
        except ValueError as error:
            notes.append(f"meta.nix: targetHost: {error}")
            target_host = None
    build_on = _text(values["buildOn"], "buildOn", notes) if "buildOn" in values else None
    if build_on is not None and not NAME_PATTERN.match(build_on):
        notes.append(f"meta.nix: buildOn {build_on!r} is not local, target or a host or builder name")
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


def system_directories(flake_dir: Path) -> list[Path]:
    """The directories flake.nix makes systems of: systems/<name>/ holding default.nix, sorted by name."""
    systems = flake_dir / SYSTEMS_DIRECTORY
    if not systems.is_dir():
        return []
    # Real directories only: builtins.readDir reports a symlink as "symlink", which flake.nix skips.
    return sorted(
        (entry for entry in systems.iterdir() if entry.is_dir() and not entry.is_symlink() and (entry / SYSTEM_FILE).exists()),
        key=lambda entry: entry.name,
    )


def discover_systems(flake_dir: Path) -> dict[str, SystemInfo]:
    """Every system of the flake in `flake_dir`, by name, without evaluating Nix."""
    flake_dir = Path(flake_dir)
    return {directory.name: read_system(flake_dir, directory) for directory in system_directories(flake_dir)}


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
