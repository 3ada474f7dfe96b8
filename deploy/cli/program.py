"""The `nixfab` command: the tasks of tasks.py under their own name.

`nixfab switch-push bigmachine` is `inv switch-push bigmachine`, but it works
from any directory (Invoke's `inv` looks for tasks.py in the current directory
and its parents) and is what the flake's package and `nix run .#<task>` apps run.
"""
from __future__ import annotations

from collections.abc import Sequence

from invoke.collection import Collection
from invoke.program import Program

from deploy import __version__

PROGRAM_NAME = "nixfab"


def program() -> Program:
    # Imported here: tasks.py imports deploy.cli.cli, and a module-level import
    # would make `import deploy.cli.program` load every task for nothing.
    import tasks

    return Program(
        version=__version__,
        namespace=Collection.from_module(tasks),
        name=PROGRAM_NAME,
        binary=PROGRAM_NAME,
        binary_names=[PROGRAM_NAME],
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The console entry point; argv as in sys.argv (program name first), default sys.argv."""
    program().run(list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
