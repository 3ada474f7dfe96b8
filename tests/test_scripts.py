"""deploy/scripts: what reaches `sh -c`, and headers that keep pointing at the code around each script."""
from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.scripts import _sent_text, script

SCRIPTS = Path(__file__).resolve().parent.parent / "deploy" / "scripts"
NAMES = sorted(path.stem for path in SCRIPTS.glob("*.sh"))


def resolve(dotted: str) -> Callable[..., object]:
    """`deploy.engine.lock.HostLock.release` -> that function: the longest importable prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        assert callable(target), dotted
        return target
    raise ImportError(dotted)


def header_names(text: str, key: str) -> list[str]:
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(f"# {key}: "):
            return [name.strip() for name in line.partition(": ")[2].split(",")]
    return []


def test_the_header_stays_here_and_the_rest_is_sent_as_written() -> None:
    assert _sent_text('# shellcheck shell=sh\n# Used by: x\n\na=$1\necho "$a"\n') == '\na=$1\necho "$a"\n'
    assert _sent_text('# shellcheck shell=sh\nexec "$@"\n') == 'exec "$@"'
    assert _sent_text("# shellcheck shell=sh\n\n# sent: it is part of the script\n:\n") == "\n# sent: it is part of the script\n:\n"


def test_there_are_scripts_and_each_is_read_once() -> None:
    assert "preflight" in NAMES
    assert script("preflight") is script("preflight")


@pytest.mark.parametrize("name", NAMES)
def test_a_header_names_the_code_that_sends_and_parses_the_script(name: str) -> None:
    text = (SCRIPTS / f"{name}.sh").read_text()
    assert text.startswith("# shellcheck shell=sh\n")
    users = header_names(text, "Used by")
    assert users, f"{name}.sh names no `# Used by:` function"
    for dotted in users:
        assert f'script("{name}")' in inspect.getsource(resolve(dotted)), f"{dotted} does not send {name}.sh"
    for dotted in header_names(text, "Parsed by"):
        resolve(dotted)


def test_every_script_file_is_sent_by_some_module_and_every_name_sent_has_a_file() -> None:
    source = "\n".join(path.read_text() for path in SCRIPTS.parent.rglob("*.py"))
    assert set(re.findall(r'\bscript\("([a-z_]+)"\)', source)) == set(NAMES)
