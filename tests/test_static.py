"""Static checks that are part of the suite, so a fresh root runs them too."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shell_scripts() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.sh", ".ci/run"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO / name for name in listed if (REPO / name).exists()]


def test_every_shell_script_passes_shellcheck() -> None:
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed: `bash scripts/bootstrap.sh test` installs it")
    scripts = shell_scripts()
    assert any(path.name == "fresh-root.sh" for path in scripts), scripts
    result = subprocess.run(["shellcheck", *map(str, scripts)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True)


def test_mypy_strict_passes() -> None:
    # The files and strictness are pyproject.toml's [tool.mypy].
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes() -> None:
    result = run_tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
