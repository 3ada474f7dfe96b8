"""`inv status`: for each host, what runs there, and whether it is what the flake builds now.

Drift is found from the toplevels built before from the same locked flake
(built_systems), and from evaluated out-paths (one `nix eval` for the
rest), never by building. Each host answers in one round trip; hosts are asked in
parallel, and one that cannot be reached is a row, not an error. The same
round trip reads the rollback watchdogs: any still waiting to decide, the
host's newest verdict, and the verdicts of the deploys the journal left
unfinished or failed (`record_verdicts` writes those into the journal).
"""
from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from deploy.activate.activation import parse_generation
from deploy.build.build import evaluate_out_paths
from deploy.build.built_systems import BuiltSystems
from deploy.confirm.magic_rollback import STATE_DIR, VERDICTS_DIR, Verdict, parse_pending, parse_verdicts
from deploy.engine.session import Session
from deploy.errors import BuildError, NixfabError
from deploy.nix import commands
from deploy.record.history import Journal
from deploy.scripts import script
from deploy.transport.process import LocalRunner
from deploy.ui import Emitter, stdout_result


@dataclass(frozen=True)
class HostStatus:
    host: str
    reachable: bool
    generation: int | None = None
    current_system: str | None = None
    flake_system: str | None = None  # what the flake evaluates to now
    drift: bool | None = None  # None when either side is unknown
    reboot_pending: bool | None = None
    uptime_seconds: float | None = None
    error: str | None = None
    watchdogs_pending: dict[str, int] = field(default_factory=dict)  # token: seconds since it was armed
    last_verdict: Verdict | None = None  # the host's newest verdict
    # The verdicts of the deploys the journal asked about (unfinished or failed ones), for record_verdicts.
    verdicts: tuple[Verdict, ...] = ()

    @property
    def watchdog(self) -> str:
        """The watchdog column: one still deciding, else what the newest verdict said."""
        if self.watchdogs_pending:
            tokens = ", ".join(f"{token} armed {age}s ago" for token, age in self.watchdogs_pending.items())
            return f"pending ({tokens})"
        return self.last_verdict.summary() if self.last_verdict is not None else "-"


def probe(session: Session, machine: str, flake_system: str | None, tokens: Sequence[str] = ()) -> HostStatus:
    spec = session.inventory.host(machine)
    host = session.new_remote(spec.name, spec.ssh, use_sudo=False, echo=Emitter())  # commands as the output policy says: with -v only
    argv = [
        "sh", "-c", script("host_state"), "sh", commands.SYSTEM_PROFILE, STATE_DIR, script("watchdogs_pending"),
        VERDICTS_DIR, script("read_verdicts"), *tokens,
    ]
    try:
        result = host.run(argv)
    except NixfabError as error:
        return HostStatus(spec.name, False, flake_system=flake_system, error=str(error))
    finally:
        host.close()
    if not result.ok:
        return HostStatus(spec.name, True, flake_system=flake_system, error=result.tail(1))
    facts, pending, verdicts = parse_host_state(result.stdout)
    current = facts.get("current") or None
    return HostStatus(
        host=spec.name,
        reachable=True,
        generation=parse_generation(facts.get("profile", "")) if facts.get("profile") else None,
        current_system=current,
        flake_system=flake_system,
        drift=None if current is None or flake_system is None else current != flake_system,
        reboot_pending=pending_reboot(facts),
        uptime_seconds=host_uptime(facts),
        watchdogs_pending=pending,
        last_verdict=verdicts[0] if verdicts else None,
        verdicts=tuple(verdict for verdict in verdicts if verdict.token in tokens),
    )


def parse_host_state(stdout: str) -> tuple[dict[str, str], dict[str, int], list[Verdict]]:
    """host_state.sh's output: its facts, the watchdogs still pending, and the verdicts (the newest first)."""
    facts: dict[str, str] = {}
    pending: list[str] = []
    verdicts: list[str] = []
    for line in stdout.splitlines():
        key, _, value = line.partition("\t")
        if key == "pending":
            pending.append(value)
        elif key == "verdict":
            verdicts.append(value)
        elif key:
            facts[key] = value.strip()
    return facts, parse_pending("\n".join(pending)), parse_verdicts("\n".join(verdicts))


# /proc's clock ticks (USER_HZ): 100 on every architecture Linux runs NixOS on, whatever the kernel's own HZ.
CLOCK_TICKS_PER_SECOND = 100


def host_uptime(facts: dict[str, str]) -> float | None:
    """Seconds since the host's init started (the kernel's uptime when the answer lacks it); None when unknown.

    In a container, and in a lab host, the kernel booted long before the
    system in it: its PID 1 is the system's own.
    """
    kernel, started = _number(facts.get("uptime", "")), _number(facts.get("init-started", ""))
    if kernel is None:
        return None
    if started is None or started / CLOCK_TICKS_PER_SECOND > kernel:
        return kernel
    return kernel - started / CLOCK_TICKS_PER_SECOND


def _number(text: str) -> float | None:
    return float(text) if text.replace(".", "", 1).isdigit() else None


KERNEL_PARTS = ("kernel", "initrd", "kernel-modules")


def pending_reboot(facts: dict[str, str]) -> bool | None:
    """A reboot would change the kernel, initrd or kernel modules: those booted differ from the boot default's.

    NixOS users check it so (system.autoUpgrade's allowReboot does): a switch that keeps the kernel
    needs no reboot, however different its system is from the booted one. None when unknown
    (nothing runs, or the host was not booted into a NixOS system).
    """
    if not facts.get("current") or not facts.get("booted"):
        return None
    booted = tuple(facts.get(f"booted-{part}", "") for part in KERNEL_PARTS)
    boot = tuple(facts.get(f"boot-{part}", "") for part in KERNEL_PARTS)
    if not facts.get("boot"):
        return None  # no boot default to compare with
    return booted != boot


def host_status(
    session: Session, flake: str, machines: Sequence[str], extra: Sequence[str] = (), asking: Mapping[str, Sequence[str]] | None = None,
    built: BuiltSystems | None = None,
) -> list[HostStatus]:
    """asking: by host, the tokens of deploys whose verdicts are wanted (Journal.awaiting_verdicts).
    built: the systems built before from this locked flake, whose toplevels need no evaluation."""
    specs = [session.inventory.host(machine) for machine in machines]
    asking = asking or {}
    quiet = LocalRunner(Emitter())
    attrs = list(dict.fromkeys(spec.attr for spec in specs))
    wanted: dict[str, str | None] = dict(built.toplevels(quiet, attrs)) if built is not None else {}
    if unknown := [attr for attr in attrs if attr not in wanted]:
        try:
            wanted.update(evaluate_out_paths(quiet, flake, unknown, extra))
        except BuildError as error:
            quiet.echo.warning(f"drift unknown: {error}")
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [
            pool.submit(probe, session, machine, wanted.get(spec.attr), asking.get(spec.name, ())) for machine, spec in zip(machines, specs)
        ]
        return [future.result() for future in futures]


def record_verdicts(journal: Journal, rows: Sequence[HostStatus]) -> None:
    """What the hosts' rollback watchdogs decided about deploys the journal left unfinished or failed goes into their rows."""
    for row in rows:
        for verdict in row.verdicts:
            if verdict.by == "watchdog":
                journal.record_verdict(row.host, verdict.token, f"{verdict.text} (at {verdict.when})", undid=verdict.undid)


def human_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


def yes_no(value: bool | None, yes: str, no: str) -> str:
    return "?" if value is None else yes if value else no


def status_rows(rows: Sequence[HostStatus]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for row in rows:
        if not row.reachable:
            table.append((row.host, "unreachable", "", "", "", "", "", row.error or ""))
            continue
        table.append((
            row.host, "up", "" if row.generation is None else str(row.generation), row.current_system or "none",
            yes_no(row.drift, "DRIFT", "in sync") if row.flake_system else "not in flake",
            yes_no(row.reboot_pending, "reboot pending", "no"), human_uptime(row.uptime_seconds), row.watchdog,
        ))
    return table


HEADER = ("host", "reachable", "gen", "current system", "flake", "reboot", "uptime", "watchdog")


def status_json(row: HostStatus) -> dict[str, object]:
    document = asdict(row)
    del document["verdicts"]  # the journal's business; last_verdict and watchdogs_pending say what the host says
    document["watchdog"] = row.watchdog
    return document


def print_status(rows: Sequence[HostStatus], *, as_json: bool) -> None:
    if as_json:
        stdout_result(json.dumps([status_json(row) for row in rows], indent=2))
        return
    table = [HEADER, *status_rows(rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(HEADER))]
    stdout_result("\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table))
