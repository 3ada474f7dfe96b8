"""The shell scripts nixfab runs on its targets, one file each, so that shellcheck reads them.

A script travels as the single argument of `sh -c`, followed by "sh" and its
values as positional parameters, and the remote layer quotes that argv with
shlex.join: no value ever becomes part of a script's text. For the same
reason a script cannot source a shared helper on the target, so the few probe
lines that several scripts need (readlink of the system profile,
/run/current-system, /run/booted-system) are repeated in each of them.

A file begins with a header of `#` lines: the shellcheck directive, the
Python functions that put the script in an argv ("Used by") and that read
what it prints ("Parsed by"), which a test keeps honest, and its arguments.
The header stays on this machine; the rest is sent exactly as written, so the
blank line after the header is the script's first byte, and a script of one
line goes without its final newline, as the string it replaced did.
"""
from __future__ import annotations

import functools
from importlib import resources


def _sent_text(file_text: str) -> str:
    """What of a script file goes to `sh -c`: everything after the header (pure)."""
    body = file_text
    while body.startswith("#"):
        body = body.partition("\n")[2]
    if body.count("\n") == 1 and body.endswith("\n"):
        return body[:-1]
    return body


@functools.cache
def script(name: str) -> str:
    """The text of deploy/scripts/<name>.sh to run with `sh -c`, read once per process."""
    return _sent_text(resources.files(__name__).joinpath(f"{name}.sh").read_text(encoding="utf-8"))
