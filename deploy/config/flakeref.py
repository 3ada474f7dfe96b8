"""Where a flake reference lives on this machine, if it does; stdlib only, for tab completion's sake."""
from __future__ import annotations

import os

LOCAL_SCHEMES = ("path:", "git+file://", "git+file:")


def local_flake_directory(flake: str) -> str | None:
    """The directory of a local flake reference (., /x, path:x, git+file:///x), or None for github: and the like."""
    reference = flake.split("#", 1)[0]
    for scheme in LOCAL_SCHEMES:
        if reference.startswith(scheme):
            reference = reference[len(scheme) :].split("?", 1)[0]
            break
    else:
        if ":" in reference:
            return None
    return reference if reference and os.path.isdir(reference) else None


def copies_every_file(flake: str) -> bool:
    """A path: flake is every file in its directory, in git or not; another local reference in git is its tracked files."""
    return flake.split("#", 1)[0].startswith("path:")
