"""`inv TASK --help`: a task's usage line, what it does, examples and options, as text (pure).

Invoke's own help hides the positional MACHINE and the `-- NIX_OPTIONS` tail
and names every value after its default's type (`--parallel=STRING`). The
usage line here shows what a task takes, and each value is named for what it
is (`--parallel=N`, `--flake=FLAKE`), from the `metavars` tasks.py gives.
deploy/cli/invoke_compat.py prints this in place of Invoke's help.
"""
from __future__ import annotations

import inspect
import re
import shutil
import textwrap
from collections.abc import Mapping
from typing import Any

INDENT = "  "
EXAMPLE = re.compile(r"^(\s+(?:sudo )?)inv ")


def usage_line(binary: str, name: str, task: Any, context: Any) -> str:
    positionals = getattr(task, "usage", None)
    if positionals is None:
        positionals = " ".join(argument.name.upper() for argument in context.positional_args)
    core = "" if binary == "nixfab" else " [--core-opts]"
    parts = [f"Usage: {binary}{core} {name}", "[--options]" if context.flags else "", positionals]
    if getattr(task, "nix_options", False):
        parts.append("[-- NIX_OPTIONS]")
    return " ".join(part for part in parts if part)


def option_names(argument: Any, inverse: bool, metavar: str | None) -> str:
    """`-j N, --parallel=N`, `--[no-]health-checks`, `-a, --all` (pure)."""
    shorts = [name for name in argument.names if len(name) == 1]
    longs = [name for name in argument.names if len(name) > 1]
    value = metavar or ("VALUE" if argument.takes_value else None)
    rendered = [f"-{short}" + (f" {value}" if value else "") for short in shorts]
    for index, long in enumerate(longs):
        flag = f"--[no-]{long}" if inverse and index == 0 else f"--{long}"
        rendered.append(flag + (f"={value}" if value else ""))
    return ", ".join(rendered)


def options_table(task: Any, context: Any) -> list[tuple[str, str]]:
    metavars: Mapping[str, str] = getattr(task, "metavars", {}) or {}
    inverted = {flag.lstrip("-").removeprefix("no-") for flag in context.inverse_flags}
    rows = []
    for argument in sorted(context.args.values(), key=lambda a: (a.positional is False, a.name.lstrip("_"))):
        flag_name = argument.name.replace("_", "-")
        names = option_names(argument, flag_name in inverted, metavars.get(flag_name) if argument.takes_value else None)
        rows.append((names, argument.help or ""))
    return rows


def columns(rows: list[tuple[str, str]], width: int) -> list[str]:
    left = min(max((len(names) for names, _ in rows), default=0), 34)
    text_width = max(width - left - 2 * len(INDENT), 30)
    lines: list[str] = []
    for names, text in rows:
        wrapped = textwrap.wrap(text, text_width) or [""]
        if len(names) > left:
            lines.append(f"{INDENT}{names}")
            lines += [f"{INDENT}{'':{left}}{INDENT}{piece}" for piece in wrapped]
            continue
        lines.append(f"{INDENT}{names:{left}}{INDENT}{wrapped[0]}".rstrip())
        lines += [f"{INDENT}{'':{left}}{INDENT}{piece}" for piece in wrapped[1:]]
    return lines


def task_help(binary: str, name: str, task: Any, context: Any, *, width: int | None = None) -> str:
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    program = "nixfab" if binary == "nixfab" else "inv"
    lines = [usage_line(binary, name, task, context), ""]
    docstring = inspect.getdoc(task) or ""
    for line in docstring.splitlines():
        # The examples say `inv TASK` (or `sudo inv TASK`); under `nixfab` they say `nixfab TASK`.
        example = EXAMPLE.sub(lambda match: f"{match.group(1)}{program} ", line)
        lines.append(f"{INDENT}{example}".rstrip())
    lines += ["", "Options:"]
    rows = options_table(task, context)
    lines += columns(rows, width) if rows else [f"{INDENT}none"]
    return "\n".join(lines) + "\n"
