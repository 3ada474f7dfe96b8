"""What a deploy would change on a host, and asking whether to go ahead.

The diff runs on the target, after the new closure was copied there: the
new closure has to reach the target anyway, while pulling the target's whole
running closure here would move far more. It compares the target's own
/run/current-system (not this machine's) with the new system, with `nvd
diff` where the target has nvd and `nix store diff-closures` elsewhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from deploy import ui
from deploy.errors import RemoteCommandFailed
from deploy.nix import commands
from deploy.transport.hosts import Host

NVD = "nvd"
DIFF_CLOSURES = "nix store diff-closures"
NO_RUNNING_SYSTEM = "no running system; all new"
NO_CHANGES = "no changes"


@dataclass(frozen=True)
class ClosureDiff:
    old_path: str | None  # the target's /run/current-system; None when it runs none
    new_path: str
    tool: str | None  # NVD, DIFF_CLOSURES, or None when there was nothing to compare with
    text: str


@dataclass(frozen=True)
class DiffProbe:
    running: str | None
    nvd: str | None  # where nvd is on the target's PATH


def parse_diff_probe(stdout: str) -> DiffProbe:
    """Parse commands.running_system_and_nvd's output (pure)."""
    found: dict[str, str | None] = {"running": None, "nvd": None}
    for line in stdout.splitlines():
        key, _, value = line.partition("\t")
        if key in found:
            found[key] = value.strip() or None
    return DiffProbe(found["running"], found["nvd"])


def closure_diff(host: Host, new_path: str) -> ClosureDiff:
    """Diff the target's running system against new_path, which must already be in the target's store."""
    probe_result = host.run(commands.running_system_and_nvd(), dry_stdout="running\t<running system>\nnvd\t\n")
    if not probe_result.ok:
        raise RemoteCommandFailed(f"{host.label}: cannot read /run/current-system: {probe_result.tail(1)}")
    probe = parse_diff_probe(probe_result.stdout)
    if probe.running is None:
        return ClosureDiff(None, new_path, None, NO_RUNNING_SYSTEM)
    if probe.nvd:
        tool, argv = NVD, commands.nvd_diff(probe.running, new_path)
    else:
        tool, argv = DIFF_CLOSURES, commands.nix_store_diff_closures(probe.running, new_path)
    result = host.run(argv)
    if not result.ok:
        raise RemoteCommandFailed(f"{host.label}: {tool} {probe.running} {new_path} failed: {result.tail(3)}")
    return ClosureDiff(probe.running, new_path, tool, result.stdout.rstrip() or NO_CHANGES)


# CSI sequences (colours, bold) that nvd and Nix write when they think a terminal reads them.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def without_colour(text: str) -> str:
    """The text without terminal escape sequences, for a pipe or a file (pure)."""
    return ANSI_ESCAPE.sub("", text)


def format_diff(label: str, diff: ClosureDiff) -> str:
    if diff.old_path is None:
        return f"{label}: {diff.text}: {diff.new_path}"
    return f"{label}: {diff.old_path} -> {diff.new_path} ({diff.tool})\n{diff.text}"


def confirm(question: str, *, assume_yes: bool = False) -> bool:
    """Ask a yes/no question; only "y" or "yes" is a yes.

    From a terminal the answer is typed; otherwise one line is read from
    stdin, as the sudo password is (deploy.transport.remote.SudoPassword), so a script
    can pipe its answers in the order they are asked. End of input is a no.
    """
    if assume_yes:
        return True
    line = ui.ask(f"{question} [y/N] ")
    return line is not None and line.strip().lower() in ("y", "yes")
