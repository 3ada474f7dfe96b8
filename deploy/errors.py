"""The one error hierarchy. Only the CLI edge turns these into messages and exit codes."""
from __future__ import annotations


class NixfabError(Exception):
    """Something the user can act on; str(error) is the whole one-line message."""

    exit_code = 1


class UsageError(NixfabError):
    """Bad input: an option, a host name, the inventory."""

    exit_code = 2


class InventoryError(UsageError):
    pass


class BuildError(NixfabError):
    exit_code = 3


class HostUnreachable(NixfabError):
    exit_code = 4


class HostKeyRejected(NixfabError):
    exit_code = 5


class LoginRefused(NixfabError):
    exit_code = 11


class ActivationFailed(NixfabError):
    exit_code = 6


class RebootTimeout(NixfabError):
    exit_code = 7


class SudoFailed(NixfabError):
    exit_code = 8


class RemoteCommandFailed(NixfabError):
    exit_code = 9


class NotInStore(NixfabError):
    """A deploy asked for a path the target does not have or is not a NixOS system."""

    exit_code = 12


class LabError(NixfabError):
    exit_code = 10
