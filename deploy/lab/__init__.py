"""The lab: simulated NixOS-shaped hosts on 127.0.0.1 and the fixture flake they run.

Used by the tests, the demo (`inv demo`, `inv lab.*`) and bench/ only: no
module of the product imports deploy.lab (tests/test_static.py checks it).

- lab.py: `Lab`, `LabHost`, `HostState`, `write_fixture_flake`, ... (this
  package re-exports the names the tests and bench/ use)
- host.py: the supervisor behind one host, started by path as a script
  (standard library only)
- cli.py: what `inv lab.*` and `inv demo` show a person
- files/: the fake systemd commands and the fixture flake
"""
from __future__ import annotations

from deploy.lab.lab import (
    Generation,
    HostState,
    Lab,
    LabHost,
    default_lab_dir,
    lab_prerequisites,
    nix_system,
    set_fixture_kernel,
    set_fixture_revision,
    set_fixture_units,
    write_fixture_flake,
)

__all__ = [
    "Generation",
    "HostState",
    "Lab",
    "LabHost",
    "default_lab_dir",
    "lab_prerequisites",
    "nix_system",
    "set_fixture_kernel",
    "set_fixture_revision",
    "set_fixture_units",
    "write_fixture_flake",
]
