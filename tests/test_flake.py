"""The repository's flake.nix, evaluated for real by Nix, offline.

nixpkgs and home-manager are replaced by stubs (tests/fixtures/stub-*) whose
lib.nixosSystem and homeManagerConfiguration record what they were given, so
these tests show which modules, system and arguments each configuration gets.
Every flake here is a `path:` copy in a temporary directory, never the checkout.

To keep the number of Nix runs small, one `nix eval --json --apply` reads
everything about a flake: a tiny probe flake takes the flake under test as its
input (with the stubs overriding that input's nixpkgs and home-manager).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deploy.config.discovery import discover_systems
from deploy.record.history import state_directory

REPO = Path(__file__).resolve().parent.parent
STUB_NIXPKGS = REPO / "tests/fixtures/stub-nixpkgs"
STUB_HOME_MANAGER = REPO / "tests/fixtures/stub-home-manager"
NIX = shutil.which("nix")
STORE_PREFIX = re.compile(r"\A/nix/store/[a-z0-9]{32}-[^/]*/")

pytestmark = pytest.mark.skipif(NIX is None, reason="nix is not installed")

TASKS_OF_APPS = {
    "build", "build-there", "switch", "switch-pull", "switch-push", "switch-pull-reset", "switch-push-reset",
    "ssh-wait", "boot", "test", "dry-activate", "check", "generations", "rollback", "diff", "update", "status",
    "history", "hosts",
}

# What a system's configuration got, with store paths made relative to the flake's source.
DESCRIBE = """
flake:
let
  describe = m:
    if builtins.isPath m then toString m
    else if builtins.isAttrs m then (m.key or m._file or "<attrs>")
    else "<function>";
  homeWiring = modules:
    let wiring = builtins.filter (m: builtins.isAttrs m && m ? home-manager) modules;
    in if wiring == [ ] then null
       else builtins.mapAttrs (user: value: map toString value.imports) (builtins.head wiring).home-manager.users;
  hostNameModule = modules: builtins.head (builtins.filter (m: builtins.isAttrs m && m ? networking) modules);
  system = "x86_64-linux";
  stub = (builtins.head (builtins.attrValues flake.nixosConfigurations)).stubNixosSystem.specialArgs.inputs.nixpkgs;
  module = builtins.head flake.nixosModules.default.imports {
    config.programs.nixfab = { enable = true; package = "the-package"; };
    lib = stub.lib;
    pkgs = stub.legacyPackages.${system};
  };
in
{
  systems = builtins.mapAttrs (name: configuration:
    let recorded = configuration.stubNixosSystem; in {
      inherit (recorded) system;
      modules = map describe recorded.modules;
      homes = homeWiring recorded.modules;
      hostNameDefault = (hostNameModule recorded.modules).networking.hostName;
      specialArgs = { inherit (recorded.specialArgs) hostName hostMeta; inputs = builtins.attrNames recorded.specialArgs.inputs; };
    }) flake.nixosConfigurations;
  homes = builtins.mapAttrs (name: home:
    let recorded = home.stubHomeManagerConfiguration; in {
      system = (builtins.tryEval recorded.system).value;
      nixpkgsIsStub = (builtins.tryEval recorded.nixpkgsIsStub).value;
      modules = map describe recorded.modules;
      hostName = recorded.extraSpecialArgs.hostName;
    }) flake.homeConfigurations;
  discovered = builtins.attrNames (flake.lib.discover (flake.outPath + "/systems"));
  appTasks = flake.lib.appTasks;
  apps = builtins.mapAttrs (name: app: { inherit (app) type program; }) flake.apps.${system};
  appSystems = builtins.attrNames flake.apps;
  package = {
    inherit (flake.packages.${system}.default) name;
    same = flake.packages.${system}.default.drvPath == flake.packages.${system}.nixfab.drvPath;
    args = flake.packages.${system}.nixfab.stubArgs;
    source = flake.packages.${system}.nixfab.src;
  };
  shell = flake.devShells.${system}.default.stubPackages;
  module = {
    key = flake.nixosModules.default.key;
    alias = builtins.head module.imports;
    enableDefault = module.options.programs.nixfab.enable.default;
    packageDefault = module.options.programs.nixfab.package.default.name;
    config = module.config;
  };
}
"""


def _relative(value: Any) -> Any:
    """Store paths of the flake's source, made relative ("systems/alpha")."""
    if isinstance(value, str):
        return STORE_PREFIX.sub("", value)
    if isinstance(value, list):
        return [_relative(item) for item in value]
    if isinstance(value, dict):
        return {key: _relative(item) for key, item in value.items()}
    return value


def _nix(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert NIX is not None
    return subprocess.run([NIX, *arguments], capture_output=True, text=True, cwd=cwd, timeout=300)


def _evaluate(flake: Path, apply: str = DESCRIBE) -> Any:
    """`apply` of the flake's outputs, with the stubs for nixpkgs and home-manager."""
    probe = flake.parent / f"{flake.name}-probe"
    probe.mkdir(exist_ok=True)
    (probe / "flake.nix").write_text(
        f'{{ inputs.homelab.url = "path:{flake}"; outputs = {{ self, homelab }}: {{ inherit homelab; }}; }}\n'
    )
    result = _nix(
        "eval", "--json", "--no-write-lock-file",
        "--override-input", "homelab/nixpkgs", f"path:{STUB_NIXPKGS}",
        "--override-input", "homelab/home-manager", f"path:{STUB_HOME_MANAGER}",
        f"path:{probe}#homelab", "--apply", apply,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _copy_repository_flake(destination: Path) -> Path:
    """The flake as it is in the checkout, minus everything it does not read."""
    destination.mkdir()
    for name in ("flake.nix", "pyproject.toml", "README.md", "tasks.py"):
        shutil.copy2(REPO / name, destination / name)
    for name in ("systems", "homes", "deploy"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


STUB_HM = "stub-home-manager#nixosModules.home-manager"


def test_repository_flake_outputs(tmp_path: Path) -> None:
    flake = _copy_repository_flake(tmp_path / "homelab")
    outputs = _relative(_evaluate(flake))

    assert outputs["systems"] == {
        "bigmachine": {
            "system": "x86_64-linux",
            "modules": [
                "systems/bigmachine",
                "flake.nix#mkSystem",
                "nixfab#nixosModules.default",
                "systems/bigmachine/hardware.nix",
                STUB_HM,
                "flake.nix#homeManagerWiring",
            ],
            "homes": {"alice": ["homes/alice", "homes/alice@bigmachine"]},
            "hostNameDefault": {"_type": "override", "priority": 1000, "content": "bigmachine"},
            "specialArgs": {
                "hostName": "bigmachine",
                "hostMeta": {"system": "x86_64-linux", "users": ["alice"], "tags": ["lab"],
                             "targetHost": "myname@bigmachine", "buildOn": "target"},
                "inputs": ["home-manager", "nixpkgs", "self"],
            },
        },
        "smallbox": {
            "system": "aarch64-linux",
            "modules": [
                "systems/smallbox",
                "flake.nix#mkSystem",
                "nixfab#nixosModules.default",
                STUB_HM,
                "flake.nix#homeManagerWiring",
            ],
            "homes": {"alice": ["homes/alice"]},
            "hostNameDefault": {"_type": "override", "priority": 1000, "content": "smallbox"},
            "specialArgs": {
                "hostName": "smallbox",
                "hostMeta": {"system": "aarch64-linux", "users": ["alice"], "tags": ["lab", "web"],
                             "targetHost": "root@smallbox.example.org", "buildOn": "buildbox"},
                "inputs": ["home-manager", "nixpkgs", "self"],
            },
        },
    }
    assert outputs["homes"] == {
        "alice@bigmachine": {
            "system": "x86_64-linux", "nixpkgsIsStub": True, "hostName": "bigmachine",
            "modules": ["homes/alice", "homes/alice@bigmachine", "flake.nix#mkHome"],
        },
        "alice@smallbox": {
            "system": "aarch64-linux", "nixpkgsIsStub": True, "hostName": "smallbox",
            "modules": ["homes/alice", "flake.nix#mkHome"],
        },
    }
    assert outputs["discovered"] == ["bigmachine", "smallbox"]

    # One app per task, each a wrapper in /bin that names its task; `default` is nixfab itself.
    apps = outputs["apps"]
    assert set(outputs["appTasks"].values()) >= TASKS_OF_APPS
    assert set(apps) == set(outputs["appTasks"]) | {"default"}
    assert apps["default"] == {"type": "app", "program": "bin/nixfab"}
    for app in outputs["appTasks"]:
        assert apps[app] == {"type": "app", "program": f"bin/nixfab-{app}"}, app
    assert outputs["appSystems"] == ["aarch64-darwin", "aarch64-linux", "x86_64-darwin", "x86_64-linux"]

    package = outputs["package"]
    assert package["name"] == "nixfab-0.1.0" and package["same"] is True
    assert package["args"]["pyproject"] is True
    assert package["args"]["build-system"] == ["python3.12-setuptools-75.1.0"]
    assert [name.split("-")[1] for name in package["args"]["dependencies"]] == ["invoke", "fabric", "rich", "pyyaml"]
    assert package["args"]["meta"]["mainProgram"] == "nixfab"
    assert package["args"]["pythonImportsCheck"] == ["deploy.cli.program", "tasks"]
    assert outputs["shell"][1:] == ["openssh-9.8p1"] and outputs["shell"][0].startswith("python3-")

    # The package's source is what setuptools needs, and nothing of the homelab or the tests.
    source = Path(_evaluate(flake, 'flake: flake.packages.x86_64-linux.nixfab.src'))
    assert sorted(entry.name for entry in source.iterdir()) == ["README.md", "deploy", "pyproject.toml", "tasks.py"]
    assert (source / "deploy/cli/program.py").is_file()
    assert not list(source.rglob("__pycache__"))

    module = outputs["module"]
    assert module["key"] == "nixfab#nixosModules.default"
    assert module["alias"] == {"_type": "stub-alias", "from": ["packages", "nixfab", "enable"], "to": ["programs", "nixfab", "enable"]}
    assert module["enableDefault"] is False
    assert module["packageDefault"] == "nixfab-0.1.0"
    assert module["config"] == {"_type": "if", "condition": True, "content": {"environment": {"systemPackages": ["the-package"]}}}


def test_discovery_and_homes_wiring_of_a_made_up_flake(tmp_path: Path) -> None:
    flake = tmp_path / "homelab"
    flake.mkdir()
    for name in ("flake.nix", "pyproject.toml"):
        shutil.copy2(REPO / name, flake / name)
    module = "{ ... }: { }\n"
    _write(flake / "systems/alpha/default.nix", module)
    _write(flake / "systems/alpha/hardware.nix", module)
    _write(flake / "systems/alpha/meta.nix", '{ system = "aarch64-linux"; users = [ "alice" "bob" "dave" ]; }\n')
    _write(flake / "systems/beta/default.nix", module)  # no meta.nix, no hardware.nix
    _write(flake / "systems/gamma/meta.nix", '{ system = "x86_64-linux"; }\n')  # no default.nix: not a system
    _write(flake / "systems/delta/default.nix", module)
    _write(flake / "systems/delta/meta.nix", '{ system = "x86_64-linux"; users = [ "alice" ]; }\n')
    _write(flake / "systems/epsilon/default.nix", module)
    _write(flake / "systems/epsilon/meta.nix", '{ users = [ "alice" ]; }\n')  # no system: its home cannot be built alone
    _write(flake / "systems/notes.txt", "not a directory\n")
    _write(flake / "homes/alice/default.nix", module)
    _write(flake / "homes/alice@alpha/default.nix", module)
    _write(flake / "homes/bob@alpha/default.nix", module)  # bob has no base config: only this
    _write(flake / "homes/alice@beta/default.nix", module)  # beta lists no users: unused

    outputs = _relative(_evaluate(flake))
    systems = outputs["systems"]

    assert sorted(systems) == ["alpha", "beta", "delta", "epsilon"]
    assert {name: value["system"] for name, value in systems.items()} == {
        "alpha": "aarch64-linux", "beta": None, "delta": "x86_64-linux", "epsilon": None,
    }
    assert systems["alpha"]["modules"] == [
        "systems/alpha", "flake.nix#mkSystem", "nixfab#nixosModules.default", "systems/alpha/hardware.nix",
        STUB_HM, "flake.nix#homeManagerWiring",
    ]
    assert systems["beta"]["modules"] == ["systems/beta", "flake.nix#mkSystem", "nixfab#nixosModules.default"]
    assert {name: value["homes"] for name, value in systems.items()} == {
        "alpha": {"alice": ["homes/alice", "homes/alice@alpha"], "bob": ["homes/bob@alpha"]},
        "beta": None,
        "delta": {"alice": ["homes/alice"]},
        "epsilon": {"alice": ["homes/alice"]},
    }
    assert systems["beta"]["specialArgs"]["hostMeta"] == {}

    homes = outputs["homes"]
    assert sorted(homes) == ["alice@alpha", "alice@delta", "alice@epsilon", "bob@alpha"]
    assert homes["alice@alpha"]["modules"] == ["homes/alice", "homes/alice@alpha", "flake.nix#mkHome"]
    assert homes["bob@alpha"] == {"system": "aarch64-linux", "nixpkgsIsStub": True, "hostName": "alpha",
                                  "modules": ["homes/bob@alpha", "flake.nix#mkHome"]}
    assert homes["alice@epsilon"]["system"] is False  # tryEval: meta.nix has no `system` to build it for

    # nixfab's own reading of systems/ (meta.nix evaluated by nix-instantiate, outside the flake) agrees with the flake's.
    discovered = discover_systems(flake, state_directory(str(flake)))
    assert sorted(discovered) == sorted(systems)
    for name, info in discovered.items():
        assert info.system == systems[name]["system"], name
        assert sorted(info.home_users) == sorted(systems[name]["homes"] or {}), name
        assert info.has_hardware == (f"systems/{name}/hardware.nix" in systems[name]["modules"]), name


def test_nix_run_passes_arguments_to_the_task_unchanged(tmp_path: Path) -> None:
    """The documented offline command: top-level --override-input, then `nix run .#TASK -- ARGS`."""
    flake = _copy_repository_flake(tmp_path / "homelab")
    marker = tmp_path / "must-not-exist"
    arguments = ["bigmachine", "--flake", "a b", f"$(touch {marker})", "--", "--show-trace"]
    result = _nix(
        "run", "--no-write-lock-file",
        "--override-input", "nixpkgs", f"path:{STUB_NIXPKGS}",
        "--override-input", "home-manager", f"path:{STUB_HOME_MANAGER}",
        f"path:{flake}#switch-push", "--", *arguments,
        cwd=flake,
    )
    assert result.returncode == 0, result.stderr
    # The stub nixfab prints each argument it got in brackets.
    assert result.stdout.splitlines() == ["stub nixfab", "[switch-push]", *(f"[{argument}]" for argument in arguments)]
    assert not marker.exists()


def test_nixfab_program_serves_the_tasks_of_tasks_py() -> None:
    version = subprocess.run([sys.executable, "-m", "deploy.cli.program", "--version"], capture_output=True, text=True, cwd="/")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "nixfab 0.1.0"
    listing = subprocess.run([sys.executable, "-m", "deploy.cli.program", "--list"], capture_output=True, text=True, cwd="/")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("Subcommands:")
    listed = {line.split()[0] for line in listing.stdout.splitlines()[1:] if line.startswith("  ") and line.split()}
    assert {"build", "switch-push", "ssh-wait"} <= listed


def test_every_app_runs_a_task_that_exists(tmp_path: Path) -> None:
    """flake.nix's app list and tasks.py must not drift apart."""
    flake = tmp_path / "homelab"
    flake.mkdir()
    for name in ("flake.nix", "pyproject.toml"):
        shutil.copy2(REPO / name, flake / name)
    app_tasks = _evaluate(flake, "flake: flake.lib.appTasks")
    script = (
        "import json, tasks; from invoke import Collection;"
        "print(json.dumps(sorted(Collection.from_module(tasks).task_names)))"
    )
    names = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert names.returncode == 0, names.stderr
    missing = sorted(set(app_tasks.values()) - set(json.loads(names.stdout)))
    assert missing == [], f"apps whose task tasks.py does not have: {missing}"
