"""systems/ discovery (deploy/config/discovery.py): meta.nix read by Nix, the cache, and the rows of `inv hosts`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.config import discovery, systems_cache
from deploy.config.discovery import (
    HostRow,
    SystemInfo,
    format_host_listing,
    host_listing,
    inventory_with_systems,
    parse_nix_error,
)
from deploy.config.inventory import Inventory, SshTarget, load_inventory
from deploy.errors import InventoryError
from deploy.record import history

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="meta.nix is read by nix-instantiate"),
    pytest.mark.usefixtures("state_directory"),  # the cache in the test's own directory, not the checkout's .nixfab/
]


def discover_systems(flake_dir: Path, *, cache: bool = True) -> dict[str, SystemInfo]:
    """As a task discovers them: cached in the state directory of the flake in `flake_dir`."""
    return discovery.discover_systems(flake_dir, history.state_directory(str(flake_dir)), cache=cache)


class NixRuns:
    """Counts nix-instantiate runs (each one, all systems at once)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[dict[str, Any]] = []
        real = discovery._run_nix

        def counted(files: dict[str, str], *, show_trace: bool = False) -> subprocess.CompletedProcess[str]:
            self.requests.append(dict(files))
            return real(files, show_trace=show_trace)

        monkeypatch.setattr(discovery, "_run_nix", counted)

    @property
    def count(self) -> int:
        return len(self.requests)


@pytest.fixture
def nix_runs(monkeypatch: pytest.MonkeyPatch) -> NixRuns:
    return NixRuns(monkeypatch)


# ---------------------------------------------------------------- meta.nix is Nix


def _write(path: Path, text: str = "{ ... }: { }\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _system(flake: Path, name: str, meta: str | None) -> Path:
    _write(flake / "systems" / name / "default.nix")
    if meta is None:
        return flake / "systems" / name / "meta.nix"
    return _write(flake / "systems" / name / "meta.nix", meta)


ANY_NIX: dict[str, tuple[str, tuple[str, tuple[str, ...], tuple[str, ...]]]] = {
    "let": ('let arch = "x86_64"; in { system = "${arch}-linux"; tags = [ "lab" ]; }', ("x86_64-linux", ("lab",), ())),
    "import": ('{ system = "aarch64-linux"; } // import ../common.nix', ("aarch64-linux", ("shared", "fleet"), ("alice",))),
    "with and ++": ('with builtins; { system = head [ "x86_64-linux" ]; tags = [ "a" ] ++ map (n: "n${toString n}") [ 1 2 ]; }',
                    ("x86_64-linux", ("a", "n1", "n2"), ())),
    "functions": ('let tagged = base: extra: base ++ extra; in { system = "x86_64-linux"; tags = tagged [ "x" ] [ "y" ]; }',
                  ("x86_64-linux", ("x", "y"), ())),
    "rec and inherit": ('let users = [ "alice" "bob" ]; in rec { inherit users; system = "riscv64-linux"; tags = [ system ]; }',
                        ("riscv64-linux", ("riscv64-linux",), ("alice", "bob"))),
    "if and interpolation": ('{ system = if true then "x86_64-linux" else "no"; targetHost = "root@${"host"}.lan:${toString 22}"; }',
                             ("x86_64-linux", (), ())),
}


@pytest.mark.parametrize("case", list(ANY_NIX), ids=list(ANY_NIX))
def test_meta_nix_may_use_any_nix(tmp_path: Path, case: str) -> None:
    text, (system, tags, users) = ANY_NIX[case]
    _write(tmp_path / "systems/common.nix", '{ tags = [ "shared" "fleet" ]; users = [ "alice" ]; }\n')
    _system(tmp_path, "one", text + "\n")
    one = discover_systems(tmp_path)["one"]
    assert (one.system, one.users or ()) == (system, users)
    assert one.tags == tags
    if case == "if and interpolation":
        assert one.target_host == "root@host.lan:22"


def test_one_nix_run_reads_every_system_and_only_nixfabs_keys(tmp_path: Path, nix_runs: NixRuns) -> None:
    _system(tmp_path, "one", '{ system = "x86_64-linux"; hostKey = throw "never evaluated"; }\n')
    _system(tmp_path, "two", '{ system = "aarch64-linux"; }\n')
    _system(tmp_path, "three", None)
    systems = discover_systems(tmp_path)
    assert [(name, info.system, info.has_meta) for name, info in systems.items()] == [
        ("one", "x86_64-linux", True), ("three", None, False), ("two", "aarch64-linux", True),
    ]
    assert systems["one"].notes == ("meta.nix:1:28: unknown key 'hostKey' (nixfab reads buildOn, system, tags, targetHost, users)",)
    assert [sorted(request) for request in nix_runs.requests] == [["one", "two"]]


def test_a_meta_that_is_not_an_attribute_set_leaves_every_field_unknown(tmp_path: Path) -> None:
    _system(tmp_path, "two", '{ lib, ... }: { system = "x86_64-linux"; }\n')
    _system(tmp_path, "three", '[ "x86_64-linux" ]\n')
    systems = discover_systems(tmp_path)
    two, three = systems["two"], systems["three"]
    assert (two.system, two.tags, two.users, two.has_meta) == (None, None, None, True)
    assert two.notes == ("meta.nix: evaluates to a function, not to an attribute set { ... }; nixfab reads none of its values",)
    assert three.notes == ("meta.nix: evaluates to a list, not to an attribute set { ... }; nixfab reads none of its values",)


def test_no_meta_nix_means_no_nix_run_and_no_cache(tmp_path: Path, nix_runs: NixRuns, state_directory: Path) -> None:
    _system(tmp_path, "beta", None)
    assert discover_systems(tmp_path)["beta"].has_meta is False
    assert nix_runs.count == 0
    assert not state_directory.exists()


# ---------------------------------------------------------------- errors: one line, file:line:column


def _error(tmp_path: Path) -> str:
    with pytest.raises(InventoryError) as raised:
        discover_systems(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_syntax_error_in_meta_names_the_file_and_line(tmp_path: Path) -> None:
    _system(tmp_path, "good", '{ system = "x86_64-linux"; }\n')
    meta = _system(tmp_path, "one", '{\n  system = "x86_64-linux"\n  tags = [ ];\n}\n')
    assert _error(tmp_path) == f"{meta}:3:8: syntax error, unexpected '=', expecting ';'"


@pytest.mark.parametrize(("text", "problem"), [
    ('{ system = 1 + "x"; }', "cannot add a string to an integer"),
    ('{ system = "x86_64-linux"; tags = [ undefinedName ]; }', "undefined variable 'undefinedName'"),
    ('{ a = 1; a = 2; }', "attribute 'a' already defined at "),
    ('{ tags = [ "a" }; }', "syntax error, unexpected '}'"),
    ('{ system = "x86_64-linux; }', "syntax error"),
    ('{ system = "x86_64-linux"; tags = [ (throw "no tags today") ]; }', "no tags today"),
])
def test_an_evaluation_error_names_the_file_and_where_nix_says(tmp_path: Path, text: str, problem: str) -> None:
    _system(tmp_path, "good", '{ system = "x86_64-linux"; }\n')
    meta = _system(tmp_path, "bad", text + "\n")
    message = _error(tmp_path)
    # `throw` carries no position in Nix 2.8: then the file is named without one.
    position = "(:[0-9]+:[0-9]+)?" if "throw" in text else ":[0-9]+:[0-9]+"
    assert re.match(rf"{re.escape(str(meta))}{position}: {re.escape(problem)}", message), message


def test_an_error_in_an_imported_file_names_that_file(tmp_path: Path) -> None:
    common = _write(tmp_path / "common.nix", "{ tags = [ \"a\" ]\n  ; users = [ }\n")
    _system(tmp_path, "one", '{ system = "x86_64-linux"; } // import ../../common.nix\n')
    assert _error(tmp_path).startswith(f"{common}:2:15: syntax error")


def test_error_paths_are_spelled_as_the_flake_directory_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _system(tmp_path, "one", '{\n  system = "x86_64-linux"\n  tags = [ ];\n}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InventoryError, match=r"\Asystems/one/meta.nix:3:8: syntax error"):
        discover_systems(Path("."))


def test_names_and_paths_are_data_never_nix_syntax(tmp_path: Path) -> None:
    """Directory names and the flake's path reach Nix as a JSON string: quotes and ${ } in them are just characters."""
    # Spliced into Nix source, either name would end the string or throw.
    flake = tmp_path / 'we"ird ${throw "x"} \\ dir \'\''
    _system(flake, 'a"b${throw "y"}', '{ system = "x86_64-linux"; }\n')
    _system(flake, "plain", '{ system = "aarch64-linux"; }\n')
    systems = discover_systems(flake)
    assert [(info.name, info.system) for info in systems.values()] == [('a"b${throw "y"}', "x86_64-linux"), ("plain", "aarch64-linux")]
    assert systems['a"b${throw "y"}'].notes[0].startswith('systems/a"b${throw "y"}: nixfab cannot use this name')


NIX_2_8_SYNTAX = """\
evaluating file '/f/systems/a/meta.nix'
error: syntax error, unexpected '=', expecting ';'

       at /f/systems/a/meta.nix:3:8:

            2|   system = "x86_64-linux"
            3|   tags = [ ];
             |        ^
            4| }
"""
# Nix 2.26.3's own output for META_EXPRESSION (source excerpts shortened).
NIX_2_26_TRACE = """\
evaluating file '<nix/derivation-internal.nix>'
evaluating file '/f/systems/bad/meta.nix'
error:
       … while evaluating attribute 'bad'

       … while evaluating attribute 'values'
         at «string»:18:7:
           17|       positions = builtins.mapAttrs (key: _: position key meta) meta;
             |       ^

       … while evaluating attribute 'tags'
         at «string»:18:62:
           18|       values = builtins.listToAttrs (map (key: { name = key; value = plain meta.${key}; }) ...
             |                                                              ^

       (stack trace truncated; use '--show-trace' to show the full, detailed trace)

       error: cannot add a string to an integer
       at /f/systems/bad/meta.nix:1:42:
            1| { system = "x86_64-linux"; tags = [ (1 + "x") ]; }
             |                                          ^
            2|
"""
NIX_2_26_THROW = """\
error:
       … while evaluating attribute 'bad'

       … while evaluating attribute 'tags'
         at «string»:18:62:

       (stack trace truncated; use '--show-trace' to show the full, detailed trace)

       error: no tags today
"""
NIX_2_26_THROW_TRACE = """\
error:
       … while evaluating attribute 'bad'

       … while calling 'plain'
         at «string»:5:11:

       … while calling the 'throw' builtin
         at /f/systems/bad/meta.nix:1:38:
            1| { system = "x86_64-linux"; tags = [ (throw "no tags today") ]; }
             |                                      ^

       error: no tags today
"""


@pytest.mark.parametrize(("stderr", "expected"), [
    (NIX_2_8_SYNTAX, ("syntax error, unexpected '=', expecting ';'", "/f/systems/a/meta.nix", 3, 8)),
    (NIX_2_26_TRACE, ("cannot add a string to an integer", "/f/systems/bad/meta.nix", 1, 42)),
    (NIX_2_26_THROW, ("no tags today", None, 0, 0)),
    (NIX_2_26_THROW_TRACE, ("no tags today", "/f/systems/bad/meta.nix", 1, 38)),
    ("error: boom\n", ("boom", None, 0, 0)),
    ("error: undefined variable 'x'\n\n       at «string»:1:5:\n", ("undefined variable 'x'", None, 0, 0)),
    ("\x1b[31;1merror:\x1b[0m bad\n       at \x1b[35;1m/f/m.nix:2:3\x1b[0m:\n", ("bad", "/f/m.nix", 2, 3)),
    ("warning: something\nnix-instantiate: cannot open the store\n", ("nix-instantiate: cannot open the store", None, 0, 0)),
])
def test_nix_errors_of_2_8_and_current_nix_are_parsed(stderr: str, expected: tuple[str, str | None, int, int]) -> None:
    problem = parse_nix_error(stderr)
    assert (problem.message, problem.file, problem.line, problem.column) == expected


# ---------------------------------------------------------------- wrong values: notes with file:line:column and key


def test_invalid_meta_values_are_notes_not_values(tmp_path: Path) -> None:
    _system(
        tmp_path, "one",
        '{ system = "x86 64"; tags = [ "ok" "not ok" ]; users = "alice"; targetHost = "-oProxyCommand=x"; buildOn = "a;b"; }',
    )
    one = discover_systems(tmp_path)["one"]
    assert (one.system, one.tags, one.users, one.target_host, one.build_on) == (None, None, None, None, None)
    assert one.notes[0] == "meta.nix:1:3: system 'x86 64' is not a system like 'x86_64-linux'"
    assert one.notes[1] == "meta.nix:1:22: tags has 'not ok', which is not a valid tag"
    assert one.notes[2] == "meta.nix:1:48: users must be a list of strings"
    assert one.notes[3].startswith("meta.nix:1:65: targetHost: invalid ssh target '-oProxyCommand=x': starts with '-'")
    assert one.notes[4] == "meta.nix:1:98: buildOn 'a;b' is not local, target or a host or builder name"


def test_values_json_cannot_carry_are_wrong_types_not_errors(tmp_path: Path) -> None:
    _system(tmp_path, "one", '{\n  system = x: x;\n  tags = [ ./a ];\n  users = { alice = true; };\n  targetHost = ./host;\n  buildOn = null;\n}\n')
    one = discover_systems(tmp_path)["one"]
    assert (one.system, one.tags, one.users, one.target_host, one.build_on) == (None, None, None, None, None)
    assert one.notes == (
        "meta.nix:2:3: system must be a string",
        "meta.nix:3:3: tags must be a list of strings",
        "meta.nix:4:3: users must be a list of strings",
        "meta.nix:5:3: targetHost must be a string",
        "meta.nix:6:3: buildOn must be a string",
    )


def test_a_value_from_an_imported_file_is_placed_in_that_file(tmp_path: Path) -> None:
    _write(tmp_path / "systems/common.nix", '{\n  tags = [ "bad tag" ];\n}\n')
    _system(tmp_path, "one", '{ system = "x86_64-linux"; } // import ../common.nix\n')
    assert discover_systems(tmp_path)["one"].notes == ("systems/common.nix:2:3: tags has 'bad tag', which is not a valid tag",)


# ---------------------------------------------------------------- the cache


def test_the_cache_spares_nix_until_a_meta_nix_changes(tmp_path: Path, nix_runs: NixRuns, state_directory: Path) -> None:
    meta = _system(tmp_path, "one", '{ system = "x86_64-linux"; tags = [ "a" ]; }\n')
    assert discover_systems(tmp_path)["one"].tags == ("a",)
    assert (state_directory / "systems-cache.json").is_file()
    assert discover_systems(tmp_path)["one"].tags == ("a",)
    assert nix_runs.count == 1

    meta.write_text('{ system = "x86_64-linux"; tags = [ "b" ]; }\n')
    assert discover_systems(tmp_path)["one"].tags == ("b",)
    assert nix_runs.count == 2

    _system(tmp_path, "two", None)  # a new system, even without meta.nix, changes the key
    assert list(discover_systems(tmp_path)) == ["one", "two"]
    assert nix_runs.count == 3
    assert discover_systems(tmp_path, cache=False)["one"].tags == ("b",)
    assert nix_runs.count == 4
    assert not list(state_directory.glob(".systems-cache.json.*"))  # no temporary file left behind


def test_an_edited_import_is_a_cache_miss(tmp_path: Path, nix_runs: NixRuns) -> None:
    common = _write(tmp_path / "lib/common.nix", '{ tags = [ "old" ]; }\n')
    _system(tmp_path, "one", '{ system = "x86_64-linux"; } // import ../../lib/common.nix\n')
    assert discover_systems(tmp_path)["one"].tags == ("old",)
    assert discover_systems(tmp_path)["one"].tags == ("old",)
    assert nix_runs.count == 1
    common.write_text('{ tags = [ "new" ]; }\n')
    assert discover_systems(tmp_path)["one"].tags == ("new",)
    assert nix_runs.count == 2


def test_a_broken_cache_file_is_a_miss(tmp_path: Path, nix_runs: NixRuns, state_directory: Path) -> None:
    _system(tmp_path, "one", '{ system = "x86_64-linux"; }\n')
    state_directory.mkdir()
    for text in ("not json", "[]", '{"format": 1, "flakes": {"' + str(tmp_path) + '": {"key": 3}}}'):
        (state_directory / "systems-cache.json").write_text(text)
        assert discover_systems(tmp_path)["one"].system == "x86_64-linux"
    assert nix_runs.count == 3
    assert json.loads((state_directory / "systems-cache.json").read_text())["format"] == systems_cache.FORMAT


def test_an_unwritable_state_directory_costs_only_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nix_runs: NixRuns) -> None:
    blocker = _write(tmp_path / "not-a-directory", "")
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(blocker / "state"))
    _system(tmp_path, "one", '{ system = "x86_64-linux"; }\n')
    assert discover_systems(tmp_path)["one"].system == "x86_64-linux"
    assert discover_systems(tmp_path)["one"].system == "x86_64-linux"
    assert nix_runs.count == 2


def test_an_error_is_not_cached(tmp_path: Path, nix_runs: NixRuns) -> None:
    meta = _system(tmp_path, "one", "{ system = ; }\n")
    for _ in range(2):
        with pytest.raises(InventoryError):
            discover_systems(tmp_path)
    assert nix_runs.count == 2
    meta.write_text('{ system = "x86_64-linux"; }\n')
    assert discover_systems(tmp_path)["one"].system == "x86_64-linux"


def test_completions_state_directory_is_historys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion finds the cache without running git; it must look where discovery wrote it."""
    monkeypatch.delenv("NIXFAB_STATE_DIR")
    plain = tmp_path / "plain"
    repository = tmp_path / "repository"
    (repository / "sub" / "flake").mkdir(parents=True)
    plain.mkdir()
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    for directory in (plain, repository, repository / "sub" / "flake"):
        for flake in (str(directory), f"path:{directory}#alpha", f"git+file://{directory}"):
            assert Path(systems_cache.state_directory(flake)) == history.state_directory(flake), flake
    monkeypatch.setenv("NIXFAB_STATE_DIR", str(tmp_path / "elsewhere"))
    assert Path(systems_cache.state_directory(str(plain))) == history.state_directory(str(plain)) == tmp_path / "elsewhere"
    assert os.path.basename(systems_cache.cache_file(str(tmp_path))) == "systems-cache.json"


# ---------------------------------------------------------------- systems/


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


def test_a_system_name_nixfab_cannot_use_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "systems/my.host/default.nix")
    _write(tmp_path / "systems/_shared/default.nix")
    systems = discover_systems(tmp_path)
    assert list(systems) == ["_shared", "my.host"]
    assert systems["my.host"].notes[0].startswith("systems/my.host: nixfab cannot use this name")
    rows = host_listing(Inventory(), systems)
    assert [(row.name, row.destination) for row in rows] == [("_shared", "-"), ("my.host", "-")]
    assert all(any("cannot use this name" in problem for problem in row.problems) for row in rows)


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
