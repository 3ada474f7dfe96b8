"""Questions to the user: a yes/no before activating (--ask) and the sudo password.

From a terminal the answer is typed; otherwise one line is read from stdin,
so a script can pipe its answers in the order they are asked.
"""
from __future__ import annotations

import getpass
import sys


def ask(question: str) -> str | None:
    """Show `question` on stderr (no newline) and read one line of stdin; None when there is no stdin.

    End of input reads as "".
    """
    sys.stderr.write(question)
    sys.stderr.flush()
    if sys.stdin is None or sys.stdin.closed:
        sys.stderr.write("\n")
        sys.stderr.flush()
        return None
    line = sys.stdin.readline()
    if not sys.stdin.isatty():
        # The answer was not echoed by a terminal; end the prompt's line.
        sys.stderr.write((line.rstrip("\n") if line else "") + "\n")
        sys.stderr.flush()
    return line


def read_secret(prompt: str) -> str:
    """A password: asked without echo on a terminal; otherwise one line of stdin, which never shows it."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    # Scripts pipe it in; it never touches argv or the environment.
    return sys.stdin.readline().rstrip("\n")
