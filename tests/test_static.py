"""Static checks that are part of the suite, so a fresh root runs them too."""
from __future__ import annotations

import ast
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


# --- the lab stays out of the product --------------------------------------------------------------

DEPLOY = REPO / "deploy"
LAB = DEPLOY / "lab"


def product_modules() -> list[Path]:
    return sorted(path for path in DEPLOY.rglob("*.py") if LAB not in path.parents)


def imported_modules(path: Path) -> set[str]:
    return imported_modules_in(path.read_text(), ".".join(path.relative_to(REPO).with_suffix("").parts[:-1]))


def imported_modules_in(source: str, package: str) -> set[str]:
    """Every module the source imports, anywhere (TYPE_CHECKING blocks and function bodies too), as absolute names.

    package is the one the source sits in, for relative imports.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - (node.level - 1)], *([node.module] if node.module else [])])
            names.add(base)
            # `from deploy import lab` imports the module deploy.lab.
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def is_lab(name: str) -> bool:
    return name == "deploy.lab" or name.startswith("deploy.lab.")


@pytest.mark.parametrize("source", [
    "import deploy.lab",
    "import deploy.lab.cli as c",
    "from deploy.lab import Lab",
    "from deploy.lab.lab import Lab",
    "from deploy import lab",
    "from deploy import errors, lab",
    "from . import lab",
    "from .lab import Lab",
    "from .lab.host import SimulatedHost",
    "def f():\n    from deploy.lab import cli",
    "import typing\nif typing.TYPE_CHECKING:\n    from deploy.lab import Lab",
    "import importlib\nimportlib.import_module('deploy.lab')",
])
def test_the_import_check_sees_each_way_of_naming_the_lab(source: str) -> None:
    # As if the source were deploy/some_module.py, where `.` is the deploy package.
    assert any(is_lab(name) for name in imported_modules_in(source, "deploy"))


@pytest.mark.parametrize("source", ["from deploy import errors", "from . import lifecycle", "import deploy.labels", "from .errors import LabError"])
def test_the_import_check_lets_other_modules_pass(source: str) -> None:
    assert not any(is_lab(name) for name in imported_modules_in(source, "deploy"))


def test_no_product_module_imports_the_lab() -> None:
    """deploy.lab is for the tests, the demo (tasks.py's lab tasks) and bench/ only."""
    modules = product_modules()
    assert DEPLOY / "pipeline.py" in modules and not any(LAB in path.parents for path in modules)
    offenders = {
        str(path.relative_to(REPO)): sorted(name for name in imported_modules(path) if is_lab(name))
        for path in modules
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_importing_the_product_and_tasks_loads_no_lab_module() -> None:
    """The same at run time, for imports the parser cannot see: tasks.py (every TAB imports it) loads the lab only when a lab task runs."""
    names = ["tasks", "fabfile", *(".".join(path.relative_to(REPO).with_suffix("").parts) for path in product_modules())]
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name.removesuffix('.__init__'))\n"
        "print(sorted(m for m in sys.modules if m == 'deploy.lab' or m.startswith('deploy.lab.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]"]


def test_the_lab_supervisor_runs_by_path_with_the_standard_library_only(tmp_path: Path) -> None:
    """deploy/lab/host.py is started as a script (`python .../host.py HOSTDIR`) before any virtualenv can be trusted."""
    host = LAB / "host.py"
    imported = {name.split(".")[0] for name in imported_modules(host)}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)
    # Run as a script, its own directory comes first on sys.path: nothing there may shadow the standard library.
    assert not {path.stem for path in LAB.iterdir()} & set(sys.stdlib_module_names)
    # A lone copy loads in an isolated interpreter (no site-packages, no PYTHONPATH, no deploy package).
    copy = tmp_path / "host.py"
    copy.write_text(host.read_text())
    probe = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='lab_host_probe'); print(sorted(m for m in sys.modules if m.split('.')[0] == 'deploy'))"
    result = subprocess.run([sys.executable, "-I", "-c", probe, str(copy)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]"]
