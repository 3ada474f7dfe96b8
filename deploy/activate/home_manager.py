"""Home Manager generations: build a user's home, and activate it as that user.

A flake's `homeConfigurations."user@host".activationPackage` (or plain
`"user"`) is a store path with an `activate` script. Home Manager expects
that script to run as the user it was built for, with that user's HOME: it
makes a new generation of the user's home-manager profile and links the
user's files. So activation runs directly when we are logged in as that user,
and otherwise through root's `runuser -u USER --` (via sudo for a non-root
login), which sets HOME, USER and LOGNAME for the user and cannot prompt.

The flows mirror the system deploy: `push` builds here and copies the
closure, `pull` builds on the target, `switch` builds and activates on this
machine. Every user-supplied value is one argv element.
"""
from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.build.build import Evaluation, build_remotely, nix_error, trace_hint
from deploy.copy.closure import copy_closure
from deploy.errors import ActivationFailed, BuildError, NotInStore, RemoteCommandFailed, UsageError
from deploy.nix import commands
from deploy.transport.hosts import Host, LocalHost
from deploy.transport.process import LocalRunner

# Home Manager 22.11+ keeps its profile here (under $XDG_STATE_HOME when set);
# older versions used the per-user profile directory.
PROFILE_UNDER_HOME = ".local/state/nix/profiles/home-manager"
LEGACY_PROFILE_DIR = "/nix/var/nix/profiles/per-user"
# POSIX portable user names; this also keeps `"` out of the flake attribute.
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
OUTPUT_TAIL_LINES = 3


@dataclass(frozen=True)
class HomeActivation:
    user: str
    path: str
    generation: int | None  # the home-manager profile's generation afterwards; None if unreadable
    previous_generation: int | None
    login_user: str  # who ran it: the user themselves, or root on their behalf


# --- names and argv ----------------------------------------------------------


def check_user(user: str) -> str:
    if not USER_NAME.match(user):
        raise UsageError(f"{user!r} is not a user name (letters, digits, '_', '.', '-'; not starting with a digit)")
    return user


def home_attr(user: str, host: str | None) -> str:
    """The activation package's attribute: Home Manager's "user@host" convention, or plain "user"."""
    check_user(user)
    if host is not None and not HOST_NAME.match(host):
        raise UsageError(f"{host!r} is not a host name for homeConfigurations")
    name = f"{user}@{host}" if host else user
    return f'homeConfigurations."{name}".activationPackage'


def home_installable(flake: str, user: str, host: str | None) -> str:
    return f"{flake}#{home_attr(user, host)}"


def activate_argv(path: str) -> list[str]:
    return [f"{path}/activate"]


def run_as_user_argv(user: str, argv: Sequence[str]) -> list[str]:
    """For root: run argv as user with the user's HOME; never prompts."""
    return ["runuser", "-u", user, "--", *argv]


def login_user_argv() -> list[str]:
    return ["id", "-un"]


def passwd_entry_argv(user: str) -> list[str]:
    return ["getent", "passwd", user]


def is_executable_argv(path: str) -> list[str]:
    return ["test", "-x", path]


def profile_links(user: str, home: str) -> list[str]:
    """Where Home Manager's profile may be, newest convention first."""
    return [f"{home}/{PROFILE_UNDER_HOME}", f"{LEGACY_PROFILE_DIR}/{user}/home-manager"]


def parse_home_generation(link_target: str) -> int | None:
    # The profile points at "home-manager-42-link".
    name = link_target.strip().rsplit("/", 1)[-1]
    number = name.removeprefix("home-manager-").removesuffix("-link")
    return int(number) if name != number and number.isdigit() else None


def output_tail(stdout: str, stderr: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last lines a failed activation printed, as one line for the error message."""
    text = [line.strip() for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    return " | ".join(text[-lines:]) if text else "no output"


# --- build -------------------------------------------------------------------


def build_home(
    runner: LocalRunner, flake: str, user: str, host: str | None, *, out_link: Path | None, extra: Sequence[str] = ()
) -> str:
    """Build the activation package here; out_link (if given) roots it. Returns the store path."""
    installable = home_installable(flake, user, host)
    placeholder = f"<home of {user}>"
    result = runner.run(
        commands.nix_build([installable], out_link=out_link, extra=extra),
        dry_stdout=json.dumps([{"outputs": {"out": placeholder}}]),
    )
    if not result.ok:
        raise BuildError(f"building the home of {user} ({installable}) failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")
    return str(json.loads(result.stdout)[0]["outputs"]["out"])


def evaluate_home(runner: LocalRunner, flake: str, user: str, host: str | None, extra: Sequence[str] = ()) -> Evaluation:
    installable = home_installable(flake, user, host)
    dry = json.dumps({"drv": f"<derivation of the home of {user}>", "out": f"<home of {user}>"})
    result = runner.run(commands.nix_eval_derivation(installable, extra), dry_stdout=dry)
    if not result.ok:
        raise BuildError(f"evaluating the home of {user} ({installable}) failed: {nix_error(result.stderr)}{trace_hint(result.stderr)}")
    data = json.loads(result.stdout)
    return Evaluation(data["drv"], data["out"])


@contextmanager
def gc_root(out_link: Path | None) -> Iterator[Path]:
    """The given out-link, or a temporary one that roots the build while we need it."""
    if out_link is not None:
        yield out_link
        return
    with tempfile.TemporaryDirectory(prefix="nixfab-home-") as directory:
        yield Path(directory) / "result"


# --- on the target -----------------------------------------------------------


def login_user(target: Host, assume: str) -> str:
    """Who we are on target; a dry run assumes `assume`."""
    result = target.run(login_user_argv(), dry_stdout=assume)
    if not result.ok:
        raise RemoteCommandFailed(f"{target.label}: cannot tell which user we are logged in as: {result.tail(1)}")
    return result.stdout.strip()


def home_directory(target: Host, user: str) -> str:
    entry = target.run(passwd_entry_argv(user), dry_stdout=f"{user}:x:1000:1000::/home/{user}:/bin/sh")
    if not entry.ok or not entry.stdout.strip():
        raise UsageError(f"{target.label}: there is no user {user!r} on this host")
    fields = entry.stdout.strip().splitlines()[0].split(":")
    if len(fields) < 7 or not fields[5].startswith("/"):
        raise RemoteCommandFailed(f"{target.label}: cannot read the home directory of {user} from its passwd entry")
    return fields[5]


def home_generation(target: Host, user: str, home: str) -> int | None:
    """The user's current Home Manager generation, when we may read it."""
    for link in profile_links(user, home):
        result = target.run(commands.read_link(link), dry_returncode=1)
        if result.ok and result.stdout.strip():
            return parse_home_generation(result.stdout)
    return None


def activate_home(target: Host, path: str, user: str) -> HomeActivation:
    """Run path/activate on target as user; ActivationFailed (with its last output) if it fails."""
    check_user(user)
    home = home_directory(target, user)
    if not target.run(is_executable_argv(activate_argv(path)[0])).ok:
        raise NotInStore(f"{target.label}: {path} is not a Home Manager generation on this host (no executable activate)")
    me = login_user(target, assume=user)
    previous = home_generation(target, user, home)
    if me == user:  # noqa: SIM108 - two long calls read better apart than as one 150-column ternary
        result = target.run(activate_argv(path), stream=True)
    else:
        result = target.run(run_as_user_argv(user, activate_argv(path)), sudo=True, stream=True)
    if not result.ok:
        raise ActivationFailed(
            f"{target.label}: Home Manager activation of {path} as {user} failed (exit {result.returncode}): "
            + output_tail(result.stdout, result.stderr)
        )
    return HomeActivation(user, path, home_generation(target, user, home), previous, me)


# --- flows -------------------------------------------------------------------


def push_home(
    runner: LocalRunner,
    target: Host,
    *,
    target_store: str,
    flake: str,
    user: str,
    host: str | None,
    nix_env: Mapping[str, str],
    substitute_on_destination: bool = False,
    out_link: Path | None = None,
    extra: Sequence[str] = (),
) -> HomeActivation:
    """Build here, copy the closure to target, activate it there as user."""
    with gc_root(out_link) as link:
        path = build_home(runner, flake, user, host, out_link=link, extra=extra)
        copy_closure(
            runner,
            path,
            target=target,
            target_store=target_store,
            substitute_on_destination=substitute_on_destination,
            nix_env=nix_env,
            extra=extra,
        )
        return activate_home(target, path, user)


def pull_home(
    runner: LocalRunner,
    target: Host,
    *,
    target_store: str,
    flake: str,
    user: str,
    host: str | None,
    nix_env: Mapping[str, str],
    extra: Sequence[str] = (),
) -> HomeActivation:
    """Evaluate here, build on target (only the derivations travel), activate there as user."""
    evaluation = evaluate_home(runner, flake, user, host, extra)
    built = build_remotely(runner, target, target_store, evaluation, nix_env=nix_env, extra=extra)
    try:
        return activate_home(target, built.out_path, user)
    finally:
        target.run(commands.remove_tree(built.gc_root_dir))


def switch_home(
    runner: LocalRunner,
    flake: str,
    user: str,
    host: str | None,
    *,
    out_link: Path | None = None,
    extra: Sequence[str] = (),
) -> HomeActivation:
    """Build and activate on this machine (`home-manager switch --flake`)."""
    with gc_root(out_link) as link:
        path = build_home(runner, flake, user, host, out_link=link, extra=extra)
        return activate_home(LocalHost(runner), path, user)
