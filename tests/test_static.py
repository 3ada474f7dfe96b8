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
    assert DEPLOY / "engine" / "pipeline.py" in modules and not any(LAB in path.parents for path in modules)
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


# --- only deploy/ui/ prints --------------------------------------------------------------------------

UI = DEPLOY / "ui"
# Allowed to print, each for its reason:
PRINTING_ALLOWED = {
    UI: "the renderers: everything nixfab shows goes through deploy.ui",
    LAB: "the simulated hosts of the tests and the demo, not the product",
    DEPLOY / "cli" / "completion.py": "Invoke's tab-completion protocol is candidates on stdout and usage on stderr",
}
# Not a module: sudo's password prompt is answered by Invoke/Fabric's responder, which writes to the SSH channel, not to the user.


def quiet_modules() -> list[Path]:
    """Every module of deploy/ that must not print, and the task declarations."""
    def allowed(path: Path) -> bool:
        return any(path == place or place in path.parents for place in PRINTING_ALLOWED)

    return [*(path for path in sorted(DEPLOY.rglob("*.py")) if not allowed(path)), REPO / "tasks.py", REPO / "fabfile.py"]


def is_std_stream(node: ast.expr, aliases: set[str]) -> bool:
    """sys.stdout, sys.stderr (or their __dunder__ originals), or a name bound by `from sys import stderr`."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys":
        return node.attr in ("stdout", "stderr", "__stdout__", "__stderr__")
    return isinstance(node, ast.Name) and node.id in aliases


def printing_calls(source: str) -> list[str]:
    """Where the source prints: print(), a rich console's .print(), a write to sys.stdout / sys.stderr, or a prompt (input, getpass)."""
    tree = ast.parse(source)
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "sys"
        for alias in node.names
        if alias.name in ("stdout", "stderr", "__stdout__", "__stderr__")
    }
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if isinstance(function, ast.Name) and function.id in ("print", "input"):
            found.append(f"line {node.lineno}: {function.id}()")
        elif isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) and function.value.id == "getpass" and function.attr == "getpass":
            found.append(f"line {node.lineno}: getpass.getpass()")
        elif isinstance(function, ast.Attribute) and function.attr == "print":
            found.append(f"line {node.lineno}: .print()")
        elif isinstance(function, ast.Attribute) and function.attr in ("write", "writelines") and is_std_stream(function.value, aliases):
            found.append(f"line {node.lineno}: {ast.unparse(function)}()")
    return found


@pytest.mark.parametrize("source", [
    "print('x')",
    "print('x', file=sys.stderr, flush=True)",
    "def f():\n    print()",
    "import sys\nsys.stdout.write('x')",
    "import sys\nsys.stderr.write('x')",
    "import sys\nsys.stderr.writelines(['x'])",
    "import sys\nsys.__stderr__.write('x')",
    "from sys import stderr\nstderr.write('x')",
    "from sys import stdout as out\nout.write('x')",
    "RichConsole(file=stream).print(table)",
    "answer = input('continue? ')",
    "import getpass\ngetpass.getpass('password: ')",
])
def test_the_print_check_sees_each_way_of_printing(source: str) -> None:
    assert printing_calls(source), source


@pytest.mark.parametrize("source", [
    "known.write('host key')",
    "print_summary(results)",
    "ui.stdout_result(text)",
    "sys.stderr.isatty()",
    "log.write(sys.stderr.name)",
    "stderr = open('f', 'w')\nstderr.write('x')",
])
def test_the_print_check_lets_other_calls_pass(source: str) -> None:
    assert printing_calls(source) == [], source


def test_no_module_outside_deploy_ui_prints() -> None:
    """Output is events (deploy.ui.events) or a deploy.ui function, so one place decides what is shown and where."""
    modules = quiet_modules()
    assert DEPLOY / "engine" / "pipeline.py" in modules and DEPLOY / "engine" / "fleet.py" in modules and not any(UI in path.parents for path in modules)
    offenders = {str(path.relative_to(REPO)): printing_calls(path.read_text()) for path in modules}
    assert {path: calls for path, calls in offenders.items() if calls} == {}
