"""The `nixfab` command: the tasks of tasks.py under their own name, in nixfab's own Invoke Program.

`nixfab switch-push bigmachine` is `inv switch-push bigmachine`, but it works
from any directory (Invoke's `inv` looks for tasks.py in the current directory
and its parents) and is what the flake's package and `nix run .#<task>` apps run.

Being its own Program, it decides what `inv` lets a task file decide only
through deploy/cli/invoke_compat.py: a parse error is one line with "did you
mean" and exit 2, `TASK --help` shows nixfab's help, and a closed pipe
(`nixfab --list | head`) ends quietly.
"""
from __future__ import annotations

from collections.abc import Sequence

from invoke.collection import Collection
from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from deploy import __version__

PROGRAM_NAME = "nixfab"


class NixfabProgram(Program):
    """Invoke's Program, with nixfab's parse errors and task help (Program's documented way to be changed: subclass it)."""

    def parse_tasks(self) -> None:
        from deploy.cli.invoke_compat import CommandLineError, parse_message

        try:
            super().parse_tasks()
        except CommandLineError:
            raise
        except ParseError as failed:  # an Invoke invoke_compat does not patch: still one line and exit 2
            names = list(self.collection.task_names) if self.collection else []
            raise CommandLineError(parse_message(str(failed), context=failed.context, initial=None, tasks=names), failed.context) from None

    def parse_cleanup(self) -> None:
        from deploy.cli.invoke_compat import CommandLineError, parse_message

        try:
            super().parse_cleanup()
        except CommandLineError:
            raise
        except ParseError as failed:  # `nixfab --help NOSUCHTASK`
            names = list(self.collection.task_names) if self.collection else []
            raise CommandLineError(parse_message(str(failed), context=None, initial=None, tasks=names)) from None

    def print_task_help(self, name: str) -> None:
        from deploy.cli.help import task_help
        from deploy.ui import stdout_result

        stdout_result(task_help(PROGRAM_NAME, name, self.collection[name], self.parser.contexts[name]), end="")


def program() -> Program:
    # Imported here: tasks.py imports deploy.cli.cli, and a module-level import
    # would make `import deploy.cli.program` load every task for nothing.
    import tasks

    return NixfabProgram(
        version=__version__,
        namespace=Collection.from_module(tasks),
        name=PROGRAM_NAME,
        binary=PROGRAM_NAME,
        binary_names=[PROGRAM_NAME],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The console entry point; argv as in sys.argv (program name first), default sys.argv."""
    try:
        program().run(list(argv) if argv is not None else None)
    except BrokenPipeError:
        from deploy.cli.cli import quiet_broken_pipe, stdout_reader_gone

        if not stdout_reader_gone():
            raise
        raise SystemExit(quiet_broken_pipe()) from None
    except Exit as stop:  # a Program that exits through Exit outside run()'s own handling
        raise SystemExit(stop.code) from None


if __name__ == "__main__":
    main()
