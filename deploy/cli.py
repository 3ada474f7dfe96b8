"""The CLI edge: the only place where errors become messages and exit codes.

tasks.py parses arguments and calls these functions. Everything heavy
(Fabric, paramiko, rich) is imported inside them, so that Invoke's tab
completion, which imports tasks.py on every TAB, stays fast.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from deploy.errors import NixfabError, UsageError

T = TypeVar("T")
ACTIVATING_ACTIONS = ("switch", "boot", "test", "dry-activate")


@contextmanager
def errors_as_exit_codes() -> Iterator[None]:
    from invoke.exceptions import Exit

    try:
        yield
    except NixfabError as error:
        raise Exit(f"nixfab: error: {error}", code=error.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("nixfab: interrupted", code=130) from None


def extra_nix_options(argv: Sequence[str] | None = None) -> tuple[str, ...]:
    """What follows `--` on the command line, argv-exact (Invoke keeps only a joined string)."""
    argv = list(sys.argv if argv is None else argv)
    return tuple(argv[argv.index("--") + 1 :]) if "--" in argv else ()


def machine_of(context: Any, machine: str | None) -> str:
    """The machine from the argument, or from the Connection that `fab -H` passes."""
    if machine:
        return machine
    original = getattr(context, "original_host", None)
    if original:
        user = getattr(context, "user", None)
        explicit_user = user and user != context.config.get("user")
        return f"{user}@{original}" if explicit_user else str(original)
    raise UsageError("name the machine: `inv TASK MACHINE` or `--host MACHINE`")


def fab_ssh_config(context: Any) -> Path | None:
    path = getattr(getattr(context, "config", None), "_runtime_ssh_path", None) if hasattr(context, "original_host") else None
    return Path(path).absolute() if path else None


def flake_reference(flake: str) -> str:
    """A local directory becomes an absolute reference, so ssh and cwd changes cannot confuse it."""
    if ":" not in flake.split("#", 1)[0] and Path(flake).is_dir():
        return str(Path(flake).absolute())
    return flake


def seconds(option: str, value: str | float) -> float:
    """Invoke would turn a bad number into a traceback; this says which option was wrong."""
    try:
        parsed = float(value)
    except ValueError:
        raise UsageError(f"{option} takes a number of seconds, not {value!r}") from None
    if parsed <= 0:
        raise UsageError(f"{option} must be more than 0 seconds, not {value!r}")
    return parsed


def check_action(action: str) -> str:
    if action not in ACTIVATING_ACTIONS:
        raise UsageError(f"--action must be one of {', '.join(ACTIVATING_ACTIONS)}, not {action!r}")
    return action


def open_session(inventory: str, *, dry_run: bool, ssh_config: Path | None = None):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from deploy.inventory import load_inventory
    from deploy.pipeline import Session

    loaded = load_inventory(Path(inventory), required=inventory != "hosts.yaml")
    if ssh_config and loaded.ssh_config is None:
        if any(character.isspace() for character in str(ssh_config)):
            raise UsageError(f"ssh_config path {str(ssh_config)!r} contains whitespace, which Nix's NIX_SSHOPTS cannot carry")
        loaded = replace(loaded, ssh_config=ssh_config)
    return Session(loaded, dry_run=dry_run)


def run_deploy(context: Any, machine: str | None, *, inventory: str, dry_run: bool, **request: Any) -> None:
    with errors_as_exit_codes():
        from deploy.pipeline import DeployRequest, deploy

        session = open_session(inventory, dry_run=dry_run, ssh_config=fab_ssh_config(context))
        try:
            if request.get("action"):
                check_action(request["action"])
            if "reboot_timeout" in request:
                request["reboot_timeout"] = seconds("--reboot-timeout", request["reboot_timeout"])
            request["flake"] = flake_reference(request["flake"])
            outcome = deploy(session, DeployRequest(machine=machine_of(context, machine), **request))
        finally:
            session.close()
        if request.get("action") is None:
            print(outcome.path)


def run_on_target(context: Any, machine: str | None, *, inventory: str, dry_run: bool, step: Callable[[Any], T]) -> T:
    """Run one step (reset, ssh-wait, …) against a host's connection."""
    with errors_as_exit_codes():
        session = open_session(inventory, dry_run=dry_run, ssh_config=fab_ssh_config(context))
        try:
            spec = session.inventory.host(machine_of(context, machine))
            return step(session.target(spec))
        finally:
            session.close()
