"""Writing a host's keys: one upload_key.sh per key over the host's connection, the key on its stdin.

The key never appears in an argv (the script gets the path, owner, group,
mode and size), in a log or on the terminal: the command line shown says
`< (key NAME, N bytes)` where the content goes. The script makes the key
visible only whole and already with its owner and mode.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from deploy.errors import KeysFailed
from deploy.keys.sources import LoadedKey, origin
from deploy.model import KeyUpload
from deploy.scripts import script
from deploy.transport.hosts import Host
from deploy.transport.process import Result

# The line upload_key.sh prints when it is ready for the key on stdin.
READY = "nixfab-key-ready"


def upload_argv(key: LoadedKey) -> list[str]:
    """The script and its arguments; a dry run, which read nothing, says SIZE for the size it does not know (pure)."""
    spec = key.spec
    size = "SIZE" if key.size is None else str(key.size)
    return ["sh", "-c", script("upload_key"), "sh", spec.dest, spec.user, spec.group, spec.mode_text, size]


def stand_in(key: LoadedKey) -> str:
    """What the command line shows where the key goes (pure)."""
    if key.size is None:
        return f"(key {key.spec.name}, from {origin(key.spec)})"
    return f"(key {key.spec.name}, {key.size} bytes)"


def upload_problem(key: LoadedKey, result: Result) -> str | None:
    """Why the script did not write the key, from what it printed; None when it did (pure)."""
    spec = key.spec
    lines = result.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    if result.ok and last == f"uploaded {key.size}":
        return None
    if last == "no-user":
        hint = " (if the new system creates it, upload the key post-activation)" if spec.upload == KeyUpload.PRE_ACTIVATION else ""
        return f"user {spec.user!r} does not exist on the host{hint}"
    if last == "no-group":
        hint = " (if the new system creates it, upload the key post-activation)" if spec.upload == KeyUpload.PRE_ACTIVATION else ""
        return f"group {spec.group!r} does not exist on the host{hint}"
    if last == "is-directory":
        return f"{spec.dest} is a directory"
    if last.startswith("short "):
        return f"only {last.removeprefix('short ')} of its {key.size} bytes arrived; the key was left as it was"
    said = (result.stderr or "").strip().splitlines()
    return said[-1] if said else f"upload_key.sh exited {result.returncode}"


def upload_keys(target: Host, keys: Sequence[LoadedKey], *, note: Callable[[str], None]) -> None:
    """Write each key on the host, in order; KeysFailed at the first that cannot be written (those before it are)."""
    for key in keys:
        spec = key.spec
        result = target.run_with_secret(upload_argv(key), key.content or b"", sudo=True, describe=stand_in(key), ready=READY)
        how = f"{spec.user}:{spec.group} {spec.mode_text}, {spec.upload}"
        if target.dry_run:
            note(f"{target.label}: would upload key {spec.name} from {origin(spec)} to {spec.dest} ({how})")
            continue
        problem = upload_problem(key, result)
        if problem is not None:
            raise KeysFailed(f"{target.label}: key {spec.name!r} was not uploaded to {spec.dest}: {problem}")
        note(f"{target.label}: key {spec.name} uploaded to {spec.dest} ({key.size} bytes, {how})")
