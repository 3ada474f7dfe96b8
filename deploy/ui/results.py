"""A task's result: what it prints on stdout for scripts to read, and the fleet's closing summary on stderr.

stdout carries only results (a generations listing, build paths, the status
table, JSON); everything else a run says goes to stderr.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from deploy.model import Result
from deploy.ui.live import RESULT_STYLES


def stdout_result(text: str, *, end: str = "\n") -> None:
    """The task's result on stdout, as print(text, end=end) would write it."""
    sys.stdout.write(text + end)
    sys.stdout.flush()


def stderr_passthrough(text: str) -> None:
    """What a command of the user's wrote to its stderr (ssh-wait's COMMAND), passed on as it was written."""
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()


def exit_message(text: str) -> None:
    """The line the command line ends with (an Exit's message: `nixfab: error: …`), on stderr as Invoke prints it."""
    print(text, file=sys.stderr)


def summary_line(text: str) -> None:
    """The summary's last line (totals, time, logs) on stderr, at every verbosity."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


SUMMARY_COLUMNS = ("host", "result", "gen", "time")


def show_summary(rows: Sequence[tuple[str, str, str, str]], plain: str, *, rich: bool, stream: TextIO) -> None:
    """The fleet's summary table: `plain` (pipes and logs), or on a terminal a rich table of the same rows.

    Its totals line follows it (the CLI says it: on failure, as the run's one error line).
    """
    if not rich:
        stream.write(plain + "\n")
        stream.flush()
        return
    from rich.console import Console as RichConsole
    from rich.table import Table

    table = Table(title="nixfab", title_justify="left", show_lines=False)
    for column in SUMMARY_COLUMNS:
        table.add_column(column, overflow="fold")
    for host, result, generation, duration in rows:
        table.add_row(host, f"[{RESULT_STYLES.get(Result(result), '')}]{result}[/]", generation, duration)
    RichConsole(file=stream).print(table)
