"""systems/ discovery without Nix (deploy/discovery.py) and the rows of `inv hosts`.

The literal reader is checked against Nix itself where Nix is installed: every
sample it calls valid must parse with `nix-instantiate --parse`, every one it
refuses must not, and every value it reads must be what Nix evaluates.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.discovery import (
    HostRow,
    NonLiteral,
    SystemInfo,
    discover_systems,
    format_host_listing,
    host_listing,
    inventory_with_systems,
    read_nix_literal,
)
from deploy.errors import InventoryError
from deploy.inventory import Inventory, SshTarget, load_inventory

REPO = Path(__file__).resolve().parent.parent
NIX_INSTANTIATE = shutil.which("nix-instantiate")

# (name, text, expected literal reading; NonLiteral entries only say "not read").
VALID_SAMPLES: list[tuple[str, str, dict[str, object] | None]] = [
    ("plain", '{ system = "x86_64-linux"; tags = [ "a" "b" ]; }', {"system": "x86_64-linux", "tags": ["a", "b"]}),
    ("comments", '# top\n{ /* c */ system = "x"; # more\n tags = [ "a" /* } */ ]; }', {"system": "x", "tags": ["a"]}),
    ("nested", '{ a.b.c = "1"; a.b.d = [ ]; a = { e = true; }; n = 3; f = 1.5; z = null; }',
     {"a": {"b": {"c": "1", "d": []}, "e": True}, "n": 3, "f": 1.5, "z": None}),
    ("escapes", r'{ s = "$${x}"; t = "a\"b\n\t\\"; u = "a$b"; }', {"s": "$${x}", "t": 'a"b\n\t\\', "u": "a$b"}),
    ("quoted keys", '{ "a b" = 1; "" = 2; c-d = 3; e\' = 4; }', {"a b": 1, "": 2, "c-d": 3, "e'": 4}),
    ("let value", '{ tags = let x = "a"; in [ x ]; system = "y"; }', {"tags": NonLiteral(""), "system": "y"}),
    ("with value", '{ users = with builtins; [ "a" ]; system = "y"; }', {"users": NonLiteral(""), "system": "y"}),
    ("assert value", '{ a = assert true; "x"; b = "y"; }', {"a": NonLiteral(""), "b": "y"}),
    ("interpolation", '{ system = "${builtins.currentSystem}"; tags = [ "a" ]; }', {"system": NonLiteral(""), "tags": ["a"]}),
    ("nested interpolation", '{ a = "${ { b = "}"; }.b }"; c = "d"; }', {"a": NonLiteral(""), "c": "d"}),
    ("list concatenation", '{ tags = [ "a" ] ++ [ "b" ]; users = [ "x" ]; }', {"tags": NonLiteral(""), "users": ["x"]}),
    ("indented string", "{ s = ''\n  hi ${builtins.currentSystem} ''${y} '''\n''; t = \"ok\"; }", {"s": NonLiteral(""), "t": "ok"}),
    ("inherit", '{ inherit (builtins) currentSystem "nixVersion"; c = 1; }',
     {"currentSystem": NonLiteral(""), "nixVersion": NonLiteral(""), "c": 1}),
    ("paths and URIs", '{ p = ./foo/bar.nix; u = https://example.com/a?b=c; r = "ok"; }', {"p": NonLiteral(""), "u": NonLiteral(""), "r": "ok"}),
    ("functions", '{ f = x: x; g = { a ? "}" }: a; h = "ok"; }', {"f": NonLiteral(""), "g": NonLiteral(""), "h": "ok"}),
    ("if", '{ f = if true then "a" else "b"; }', {"f": NonLiteral("")}),
    ("rec", 'rec { a = "x"; b = a; }', {"a": "x", "b": NonLiteral("")}),
    ("dynamic name", '{ ${"a"} = 1; "b c" = 2; }', {"b c": 2}),
    ("select", '{ t = [ builtins.currentSystem ]; u = { a = 1; }.a; v = { a = 1; }.b or "d"; }',
     {"t": NonLiteral(""), "u": NonLiteral(""), "v": NonLiteral("")}),
    ("numbers", "{ a = 1.; b = 0.5; c = 01; d = 1.5e2; }", {"a": 1.0, "b": 0.5, "c": 1, "d": 150.0}),
    ("merged sets", "{ a = { b = 1; }; a.c = 2; }", {"a": {"b": 1, "c": 2}}),
    ("function file", '{ lib, ... }: { system = "x"; }', None),
    ("let file", 'let a = "x"; in { system = a; }', None),
    ("update file", '{ a = 1; } // { b = 2; }', None),
]

INVALID_SAMPLES: list[tuple[str, str, str]] = [
    # (name, text, "line:column: problem" prefix)
    ("missing ';' between bindings", '{ system = "x86_64-linux"\n  tags = [ ]; }', "2:8: unexpected '='"),
    ("missing ';' at the end", '{ system = "x86_64-linux" }', "1:27: expected ';' before '}'"),
    ("unterminated string", '{ system = "x86_64-linux; }', "1:12: unterminated string"),
    ("unclosed set", '{\n  system = "x";\n', "1:1: '{' is never closed"),
    ("mismatched bracket", '{ tags = [ "a" }; }', "1:16: '}' does not close '['"),
    ("duplicate attribute", '{ a = 1;\n  a = 2; }', "2:3: attribute 'a' is already defined"),
    ("duplicate through a path", "{ a.b = 1; a = 2; }", "1:12: attribute 'a' is already defined"),
    ("empty value", "{ a = ; }", "1:7: expected a value before ';'"),
    ("unterminated comment", "{ /* x }", "1:3: unterminated comment"),
    ("stray character", "{ a = 1 \\ 2; }", "1:9: unexpected character"),
    ("missing '='", '{ system "x"; }', "1:10: expected '='"),
    ("empty file", "# only a comment\n", "1:1: the file is empty"),
]


def _matches(actual: object, expected: object) -> bool:
    if isinstance(expected, NonLiteral):
        return isinstance(actual, NonLiteral)
    if isinstance(expected, dict):
        return isinstance(actual, dict) and actual.keys() == expected.keys() and all(_matches(actual[k], v) for k, v in expected.items())
    return type(actual) is type(expected) and actual == expected


def _literal_parts(value: object) -> object:
    """The value with NonLiteral entries dropped, for comparison with Nix's evaluation."""
    if isinstance(value, dict):
        return {key: _literal_parts(inner) for key, inner in value.items() if not isinstance(inner, NonLiteral)}
    return value


@pytest.mark.parametrize(("name", "text", "expected"), VALID_SAMPLES, ids=[s[0] for s in VALID_SAMPLES])
def test_literal_reader_reads_what_it_can_and_marks_the_rest(tmp_path: Path, name: str, text: str, expected: dict[str, object] | None) -> None:
    path = tmp_path / "meta.nix"
    path.write_text(text)
    result = read_nix_literal(path)
    if expected is None:
        assert result.values is None
        assert result.note and "not a literal attribute set" in result.note
    else:
        assert _matches(result.values, expected), result.values
        assert result.note is None


@pytest.mark.parametrize(("name", "text", "where"), INVALID_SAMPLES, ids=[s[0] for s in INVALID_SAMPLES])
def test_literal_reader_names_file_line_and_column_of_syntax_errors(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = tmp_path / "meta.nix"
    path.write_text(text)
    with pytest.raises(InventoryError) as raised:
        read_nix_literal(path)
    assert str(raised.value).startswith(f"{path}:{where}"), str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.skipif(NIX_INSTANTIATE is None, reason="nix-instantiate is not installed")
def test_literal_reader_agrees_with_nix(tmp_path: Path) -> None:
    """Nix parses every valid sample, refuses every invalid one, and evaluates literals to what we read."""
    disagreements = []
    for name, text, _ in VALID_SAMPLES:
        path = tmp_path / "valid.nix"
        path.write_text(text)
        parsed = subprocess.run([NIX_INSTANTIATE, "--parse", str(path)], capture_output=True, text=True)
        if parsed.returncode != 0:
            disagreements.append(f"{name}: Nix refuses it: {parsed.stderr.strip()[-200:]}")
            continue
        reading = read_nix_literal(path)
        if reading.values is None:
            continue
        literal = _literal_parts(reading.values)
        attributes = " ".join(json.dumps(key) for key in literal)
        # Only the attributes we read, evaluated strictly by Nix.
        evaluated = subprocess.run(
            [NIX_INSTANTIATE, "--eval", "--strict", "--json", "--expr",
             f"let value = import {path}; in builtins.intersectAttrs (builtins.listToAttrs (map (n: {{ name = n; value = null; }}) [ {attributes} ])) value"],
            capture_output=True, text=True,
        )
        if evaluated.returncode != 0:
            disagreements.append(f"{name}: Nix cannot evaluate what we read: {evaluated.stderr.strip()[-200:]}")
        elif json.loads(evaluated.stdout) != _jsonable(literal):
            disagreements.append(f"{name}: Nix says {evaluated.stdout.strip()}, we read {literal}")
    for name, text, _ in INVALID_SAMPLES:
        if "already defined" in _ or "empty file" in name:
            continue  # Nix reports these when evaluating (or accepts an empty file as a parse); checked below
        path = tmp_path / "invalid.nix"
        path.write_text(text)
        parsed = subprocess.run([NIX_INSTANTIATE, "--parse", str(path)], capture_output=True, text=True)
        if parsed.returncode == 0:
            disagreements.append(f"{name}: Nix parses it, we refuse it")
    for text in ("{ a = 1;\n  a = 2; }", "{ a.b = 1; a = 2; }"):
        path = tmp_path / "duplicate.nix"
        path.write_text(text)
        if subprocess.run([NIX_INSTANTIATE, "--parse", str(path)], capture_output=True).returncode == 0:
            disagreements.append(f"{text!r}: Nix accepts the duplicate")
    assert disagreements == []


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------- systems/


def _write(path: Path, text: str = "{ ... }: { }\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def flake(tmp_path: Path) -> Path:
    """A flake tree: two usable systems, one without default.nix, and Home Manager configs."""
    _write(tmp_path / "systems/alpha/default.nix")
    _write(tmp_path / "systems/alpha/hardware.nix")
    _write(
        tmp_path / "systems/alpha/meta.nix",
        """# the machine in the hall
{
  system = "x86_64-linux";
  users = [ "alice" "bob" ];
  tags = [ "lab" "web" ];
  targetHost = "root@10.0.0.7:2222";
  buildOn = "target";
}
""",
    )
    _write(tmp_path / "systems/beta/default.nix")
    _write(tmp_path / "systems/notyet/meta.nix", '{ system = "x86_64-linux"; }')  # no default.nix
    _write(tmp_path / "systems/README.md", "not a system")
    _write(tmp_path / "homes/alice/default.nix")
    _write(tmp_path / "homes/alice@alpha/default.nix")
    _write(tmp_path / "homes/carol@alpha/default.nix")  # carol is not in alpha's users
    return tmp_path


def test_discovery_follows_the_flake_rule_and_reads_meta(flake: Path) -> None:
    systems = discover_systems(flake)

    assert list(systems) == ["alpha", "beta"]
    alpha = systems["alpha"]
    assert alpha == SystemInfo(
        name="alpha",
        directory=flake / "systems/alpha",
        system="x86_64-linux",
        tags=("lab", "web"),
        users=("alice", "bob"),
        target_host="root@10.0.0.7:2222",
        build_on="target",
        has_hardware=True,
        has_meta=True,
        home_users=("alice",),
        notes=(
            "meta.nix lists user 'bob', but there is no homes/bob/ or homes/bob@alpha/",
            "homes/carol@alpha/ is not used: meta.nix users does not list 'carol'",
        ),
    )
    beta = systems["beta"]
    assert (beta.system, beta.tags, beta.users, beta.target_host, beta.build_on, beta.has_hardware, beta.has_meta) == (
        None, (), (), None, None, False, False,
    )
    assert beta.notes == ('no system architecture: set system = "x86_64-linux"; (or similar) in meta.nix',)


def test_discovery_of_a_flake_without_systems_is_empty(tmp_path: Path) -> None:
    assert discover_systems(tmp_path) == {}


def test_discovery_skips_symlinked_directories_as_readDir_does(flake: Path) -> None:
    (flake / "systems/gamma").symlink_to(flake / "systems/alpha")
    assert list(discover_systems(flake)) == ["alpha", "beta"]


def test_non_literal_meta_leaves_fields_unknown_with_notes(tmp_path: Path) -> None:
    _write(tmp_path / "systems/one/default.nix")
    _write(
        tmp_path / "systems/one/meta.nix",
        '{ system = "x86_64-linux"; tags = let t = "a"; in [ t ]; users = [ "alice" ] ++ [ ]; targetHost = "root@${"h"}"; tgas = [ ]; }',
    )
    _write(tmp_path / "systems/two/default.nix")
    _write(tmp_path / "systems/two/meta.nix", "{ lib, ... }: { system = \"x86_64-linux\"; }")

    systems = discover_systems(tmp_path)

    one = systems["one"]
    assert (one.system, one.tags, one.users, one.target_host) == ("x86_64-linux", None, None, None)
    assert one.notes == (
        "meta.nix: unknown key 'tgas' (nixfab reads buildOn, system, tags, targetHost, users)",
        "meta.nix: tags is a 'let' expression; nixfab cannot read it",
        "meta.nix: users is an expression; nixfab cannot read it",
        "meta.nix: targetHost is a string with ${...}; nixfab cannot read it",
    )
    two = systems["two"]
    assert (two.system, two.tags, two.users) == (None, None, None)
    assert two.notes == ("meta.nix: not a literal attribute set { ... }; nixfab reads only literal values",)


def test_invalid_meta_values_are_notes_not_values(tmp_path: Path) -> None:
    _write(tmp_path / "systems/one/default.nix")
    _write(
        tmp_path / "systems/one/meta.nix",
        '{ system = "x86 64"; tags = [ "ok" "not ok" ]; users = "alice"; targetHost = "-oProxyCommand=x"; buildOn = "a;b"; }',
    )
    one = discover_systems(tmp_path)["one"]
    assert (one.system, one.tags, one.users, one.target_host, one.build_on) == (None, None, None, None, None)
    assert one.notes[0] == "meta.nix: system 'x86 64' is not a system like 'x86_64-linux'"
    assert one.notes[1] == "meta.nix: tags has 'not ok', which is not a valid tag"
    assert one.notes[2] == "meta.nix: users must be a list of strings"
    assert one.notes[3].startswith("meta.nix: targetHost: invalid ssh target '-oProxyCommand=x': starts with '-'")
    assert one.notes[4] == "meta.nix: buildOn 'a;b' is not local, target or a host or builder name"


def test_a_system_name_nixfab_cannot_use_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "systems/my.host/default.nix")
    _write(tmp_path / "systems/_shared/default.nix")
    systems = discover_systems(tmp_path)
    assert list(systems) == ["_shared", "my.host"]
    assert systems["my.host"].notes[0].startswith("systems/my.host: nixfab cannot use this name")
    rows = host_listing(Inventory(), systems)
    assert [(row.name, row.destination) for row in rows] == [("_shared", "-"), ("my.host", "-")]
    assert all(any("cannot use this name" in problem for problem in row.problems) for row in rows)


def test_a_syntax_error_in_meta_names_the_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "systems/one/default.nix")
    meta = _write(tmp_path / "systems/one/meta.nix", '{\n  system = "x86_64-linux"\n  tags = [ ];\n}\n')
    with pytest.raises(InventoryError, match=rf"\A{meta}:3:8: unexpected '='"):
        discover_systems(tmp_path)


# ---------------------------------------------------------------- `inv hosts` rows


def _inventory(tmp_path: Path, text: str) -> Inventory:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    return load_inventory(path, required=True)


def test_listing_merges_hosts_yaml_and_systems(flake: Path) -> None:
    inventory = _inventory(
        flake,
        """
defaults: { build_on: local, tags: [base] }
hosts:
  alpha: { ssh: root@10.0.0.7:2222, build_on: target, tags: [web, lab] }
  web1: { ssh: root@web1.example.org, attr: beta }
  ghost: { ssh: root@ghost.example.org }
builders:
  buildbox: { ssh: root@10.0.0.5 }
""",
    )
    rows = host_listing(inventory, discover_systems(flake))

    assert [(row.name, row.source, row.destination, row.build_on, row.tags) for row in rows] == [
        ("alpha", "both", "root@10.0.0.7:2222", "target", ("web", "lab")),
        ("ghost", "hosts.yaml", "root@ghost.example.org", "local", ("base",)),
        ("web1", "both", "root@web1.example.org", "local", ("base",)),
    ]
    problems = {row.name: row.problems for row in rows}
    # alpha's meta.nix agrees with hosts.yaml (tag order aside): only its homes/ notes remain.
    assert problems["alpha"] == discover_systems(flake)["alpha"].notes
    assert problems["ghost"] == (
        "no systems/ghost/ (with default.nix) for it: hosts.yaml names a system the flake may not have",
    )
    assert problems["web1"] == ('no system architecture: set system = "x86_64-linux"; (or similar) in meta.nix',)


def test_listing_flags_conflicting_metadata(flake: Path) -> None:
    inventory = _inventory(
        flake,
        """
hosts:
  alpha: { ssh: admin@alpha.example.org, build_on: local, tags: [db] }
""",
    )
    [alpha, beta] = host_listing(inventory, discover_systems(flake))
    assert (alpha.destination, alpha.build_on, alpha.tags) == ("admin@alpha.example.org", "local", ("db",))
    conflicts = [problem for problem in alpha.problems if "differ" in problem]
    assert conflicts == [
        "tags differ: hosts.yaml [db], meta.nix [lab, web] (hosts.yaml wins)",
        "destination differs: hosts.yaml admin@alpha.example.org, meta.nix targetHost root@10.0.0.7:2222 (hosts.yaml wins)",
        "build_on differs: hosts.yaml local, meta.nix buildOn target (hosts.yaml wins)",
    ]
    assert (beta.name, beta.source) == ("beta", "systems/")


def test_systems_without_inventory_entry_use_meta_then_defaults(flake: Path) -> None:
    _write(flake / "systems/gamma/default.nix")
    _write(flake / "systems/gamma/meta.nix", '{ system = "aarch64-linux"; buildOn = "nowhere"; }')
    _write(flake / "systems/buildbox/default.nix")
    _write(flake / "systems/buildbox/meta.nix", '{ system = "x86_64-linux"; buildOn = "buildbox"; }')
    inventory = _inventory(
        flake,
        """
defaults: { build_on: buildbox, tags: [fleet] }
builders:
  buildbox: { ssh: root@10.0.0.5 }
""",
    )
    systems = discover_systems(flake)
    rows = {row.name: row for row in host_listing(inventory, systems)}

    assert {name: (row.source, row.destination, row.build_on, row.tags) for name, row in rows.items()} == {
        "alpha": ("systems/", "root@10.0.0.7:2222", "target", ("lab", "web")),
        "beta": ("systems/", "beta", "buildbox", ("fleet",)),
        "buildbox": ("systems/", "root@10.0.0.5", "target", ("fleet",)),
        "gamma": ("systems/", "gamma", "buildbox", ("fleet",)),
    }
    assert rows["gamma"].problems == ("meta.nix: build_on 'nowhere' is not local, target, a builder or a host; using buildbox",)
    assert rows["buildbox"].problems == ()

    merged = inventory_with_systems(inventory, systems)
    alpha = merged.host("alpha")
    assert (alpha.ssh, alpha.build_on, alpha.tags, alpha.declared, alpha.sudo) == (
        SshTarget("10.0.0.7", "root", 2222), "target", ("lab", "web"), False, False,
    )
    assert merged.host("deploy@beta").sudo is True
    assert merged.builder_target("gamma") == SshTarget("gamma")  # systems can be build_on targets once merged
    assert set(merged.hosts) == {"alpha", "beta", "buildbox", "gamma"}
    assert inventory.hosts == {}  # the original is unchanged


def test_inventory_with_systems_keeps_declared_hosts_and_skips_unusable_names(flake: Path) -> None:
    _write(flake / "systems/bad.name/default.nix")
    inventory = _inventory(flake, "hosts:\n  web1: { ssh: root@web1, attr: alpha }\n")
    merged = inventory_with_systems(inventory, discover_systems(flake))
    assert set(merged.hosts) == {"web1", "beta"}  # alpha is deployed as web1
    assert merged.hosts["web1"] == inventory.hosts["web1"]


def test_format_host_listing_is_a_plain_table_with_problems_under_their_host() -> None:
    rows = [
        HostRow("alpha", "both", "root@10.0.0.7:2222", "target", ("lab", "web")),
        HostRow("ghost", "hosts.yaml", "root@ghost", "local", (), ("no systems/ghost/",)),
    ]
    assert format_host_listing(rows) == (
        "NAME   SOURCE      DESTINATION         BUILD ON  TAGS\n"
        "alpha  both        root@10.0.0.7:2222  target    lab,web\n"
        "ghost  hosts.yaml  root@ghost          local     -\n"
        "  ! no systems/ghost/\n"
    )
    assert format_host_listing([]).splitlines()[1].startswith("(no hosts")


def test_the_repository_systems_and_hosts_yaml_agree() -> None:
    systems = discover_systems(REPO)
    rows = host_listing(load_inventory(REPO / "hosts.yaml", required=True), systems)
    assert [(row.name, row.source, row.problems) for row in rows] == [
        ("bigmachine", "both", ()),
        ("smallbox", "both", ()),
    ]
    assert systems["bigmachine"].has_hardware and not systems["smallbox"].has_hardware
    assert systems["bigmachine"].home_users == ("alice",)
