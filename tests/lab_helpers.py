"""What the end-to-end tests share: running the real `inv`, and reading what the flake builds."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from deploy.lab import Lab

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(program: str, *args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program), "--search-root", str(REPO), *args],
        cwd=cwd or REPO, capture_output=True, text=True, input=input,
        stdin=None if input is not None else subprocess.DEVNULL, timeout=300,
    )


def inv(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return tool("inv", *args, **kwargs)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def write_inventory(lab: Lab, path: Path, hosts: str) -> Path:
    path.write_text(f"ssh_config: {lab.ssh_config}\nhosts:\n{hosts}")
    return path


def toplevel_of(flake: Path, attr: str) -> str:
    out = subprocess.run(
        ["nix", "eval", "--raw", f'{flake}#nixosConfigurations."{attr}".config.system.build.toplevel.outPath'],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
