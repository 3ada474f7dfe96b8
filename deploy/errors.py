"""The one error hierarchy. Only the CLI edge turns these into messages and exit codes."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploy.activate.activation import Activation


def out_of_descriptors(why: str) -> str:
    """What running out of file descriptors is called, with what to do about it, wherever it is met (nixfab or Nix)."""
    return f"out of file descriptors ({why}): raise the limit (`ulimit -n`) or lower --parallel"


class NixfabError(Exception):
    """Something the user can act on; str(error) is the whole one-line message.

    `details`, where the step that raised it has them, is the output that shows
    why (a failed switch's journal), shown once under the message.
    """

    exit_code = 1
    details: str | None = None


class UsageError(NixfabError):
    """Bad input: an option, a host name, the inventory."""

    exit_code = 2


class InventoryError(UsageError):
    """hosts.yaml (or meta.nix) is wrong: `problems` holds every problem found, each a whole message.

    str() is all of them on one line, since the CLI prints an error as one line: a single problem
    as it is, several joined by '; ' and followed by their count, `first; second (2 problems)`.
    """

    def __init__(self, *problems: str) -> None:
        if not problems:
            raise TypeError("InventoryError needs at least one problem")
        super().__init__(*problems)  # args are the problems, so a pickled error comes back whole
        self.problems = list(problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{'; '.join(self.problems)} ({len(self.problems)} problems)"


class SshOptionRefused(UsageError):
    """The ssh_config asks for something nixfab's SSH (paramiko) cannot do exactly as OpenSSH would,
    such as a ProxyCommand: connecting anyway could reach another machine than `ssh` and `nix copy` do."""


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


class DiskFull(NixfabError):
    """A store ran out of space (a copy or build said "No space left on device")."""

    exit_code = 13


class HostBusy(NixfabError):
    """Another deploy holds the host's lock."""

    exit_code = 14


class NotConfirmed(NixfabError):
    """Magic rollback: the deployer could not reach the host again after activation, so it rolled itself back."""

    exit_code = 15


class HealthCheckFailed(NixfabError):
    """The new generation activated but failed its health check, and was rolled back."""

    exit_code = 16


class CommandExited(NixfabError):
    """`inv exec`: the command ran on a host and exited non-zero; that is the host's exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class FleetFailed(NixfabError):
    """Several hosts failed for different reasons; each one's reason is in the summary."""

    exit_code = 1


class JournalError(NixfabError):
    """The deploy journal could not be opened or written (a corrupt file, a full disk, a read-only state directory).

    A deploy goes on without it (it is not the host's failure, and does not stop --fail-fast), warns, and exits 17
    unless a host's own failure gives the run another code.
    """

    exit_code = 17


class ActivationUnknown(NixfabError):
    """The connection dropped during switch-to-configuration and nixfab cannot tell how it ended; nothing was undone over a guess.

    `activation` is what was under way (for asking the host how it ended), `why` how the connection was lost.
    """

    exit_code = 18

    def __init__(self, message: str, activation: Activation, why: str) -> None:
        super().__init__(message)
        self.activation = activation
        self.why = why

    def __reduce__(self) -> tuple[type[ActivationUnknown], tuple[str, Activation, str]]:
        # args holds only the message (str() is the message); a pickled error still comes back whole.
        return (type(self), (str(self), self.activation, self.why))


class KeysFailed(NixfabError):
    """A key (hosts.yaml `keys`) could not be read here (a missing or unreadable source, a failing command) or written on the host."""

    exit_code = 19


class StoppedByInterrupt(NixfabError):
    """A host stopped before it changed, because the run was interrupted while it waited (for its build, for the flake check)."""

    exit_code = 130


class HangUp(KeyboardInterrupt):
    """SIGHUP (the terminal or the SSH session nixfab runs in went away), raised where Ctrl-C would be: exit 129."""
