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


def write_input_flake(directory: Path, value: str) -> None:
    """A flake an input can point at: `value` is all it has."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "flake.nix").write_text(f'{{ outputs = {{ self }}: {{ value = "{value}"; }}; }}\n')


def write_two_input_flake(directory: Path) -> Path:
    """directory/main: a flake with two path: inputs (directory/one and directory/two), locked."""
    write_input_flake(directory / "one", "1")
    write_input_flake(directory / "two", "1")
    main = directory / "main"
    main.mkdir()
    (main / "flake.nix").write_text(
        f'{{\n  inputs.one.url = "path:{directory / "one"}";\n  inputs.two.url = "path:{directory / "two"}";\n'
        "  outputs = { self, one, two }: { values = [ one.value two.value ]; };\n}\n"
    )
    subprocess.run(["nix", "flake", "lock", f"path:{main}"], check=True, capture_output=True)
    return main


def locked_input(flake: Path, name: str) -> dict[str, object]:
    """What flake.lock says of the input `name`."""
    import json

    entry: dict[str, object] = json.loads((flake / "flake.lock").read_text())["nodes"][name]["locked"]
    return entry
