"""nixfab against the hand steps, in one lab, in one run: interleaved rounds, medians and min-max.

    .venv/bin/python bench/deploy.py            # the full run (7 rounds; 1, 4 and 8 hosts)
    .venv/bin/python bench/deploy.py --quick    # 3 rounds; 1 and 8 hosts
    .venv/bin/python bench/deploy.py --before /tmp/nixfab-old   # also time another checkout's nixfab

What is timed (each a fresh generation, whole commands, wall time):
- nixfab `switch-push` with its defaults, with each safety net off
  (`--no-magic-rollback`), and with the opt-in one on (`--check`, fixture as
  it is only: the check evaluates every system of the flake);
- the hand steps, per host: `nix build`; `nix copy --to ssh://host`; one
  `ssh host 'nix-env -p … --set P && P/bin/switch-to-configuration switch'`,
  the hosts' runs side by side (as `xargs -P N`);
for 1, 4 and 8 lab hosts; on loopback and at a 20 ms round trip (bench/relay.py
delays each direction 10 ms; this kernel has no netem); with the fixture flake
as it is and with a variant whose systems take about 1.3 s each to evaluate (a
pure Nix computation forced into the toplevel, calibrated at start). Also: a
no-op redeploy right after a fresh nixfab deploy; remote commands and SSH
connections per host (the hosts' sshd logs, LogLevel VERBOSE: "Starting
session", "Accepted publickey"); the deployer's CPU (user+system of every
process the command ran, nix and ssh included); and, for one host, where the
time goes (from the moments nixfab's progress lines, or the hand steps'
markers, appear on stderr).

Rounds are interleaved: every round runs every cell, its tools in an order
that rotates from round to round, so load from the rest of the machine falls
on all of them alike. Before each cell (untimed) each of its hosts keeps its
newest 10 system generations: a switch lists every generation in the boot
menu, and the hundreds a run makes would slow each activation a little more
than the one before it. Prints Markdown tables; exits 0. Only 127.0.0.1 is
contacted: every host is a lab host (root is needed, as for the lab).
"""
from __future__ import annotations

import argparse
import compileall
import functools
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy.lab import Lab, set_fixture_revision, write_fixture_flake  # noqa: E402
from deploy.nix import commands  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")
SLOW_EVALUATION_SECONDS = 1.3
# Each host's system generations at the start of each cell: a switch writes a boot entry for every generation, so
# hosts that kept the hundreds a run makes would slow every later activation, and the rounds would drift.
KEPT_GENERATIONS = 10
revisions = count(1000)

HAND_STEPS = r"""
set -eu
host=$1 flake=$2 ssh_config=$3 scratch=$4
nix --extra-experimental-features 'nix-command flakes' build --out-link "$scratch/result-$host" \
  "$flake#nixosConfigurations.\"$host\".config.system.build.toplevel"
path=$(readlink "$scratch/result-$host")
echo "bench: copy" >&2
NIX_SSHOPTS="-F $ssh_config" nix --extra-experimental-features 'nix-command flakes' copy --to "ssh://$host" "$path"
echo "bench: activate" >&2
ssh -F "$ssh_config" "$host" "nix-env -p /nix/var/nix/profiles/system --set $path && $path/bin/switch-to-configuration switch"
"""

# nixfab's progress lines, in the order they come for one host: (phase that ends there, pattern).
NIXFAB_MARKS = (
    ("start-up", re.compile(r"^(\S+ \| )?(==> |\+ )")),
    ("before the build", re.compile(r"==> building ")),  # the memory asked (said once it has answered); an older nixfab's flake check
    # Each phase ends when its line appears: today's step lines, or an older nixfab's (--before).
    ("build, lock, copy", re.compile(r"\| copied |\| nothing to copy|up to date|copying the closure")),
    ("activate", re.compile(r"\| activated |\| made |activating \(")),
    ("confirm", re.compile(r"confirmed over a new SSH connection|: done: ")),
)
HAND_MARKS = (("build", re.compile(r"^bench: copy")), ("copy", re.compile(r"^bench: activate")))
PHASES = ("start-up", "before the build", "build, lock, copy", "build", "copy", "activate", "confirm", "exit")


@dataclass
class Sample:
    seconds: float
    cpu: float
    commands: float  # remote commands per host
    connections: float  # SSH connections per host
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    name: str
    ssh_config: Path
    inventory: Path


@dataclass(frozen=True)
class Fixture:
    name: str
    flake: Path
    slow: bool = False  # its systems take SLOW_EVALUATION_SECONDS to evaluate


@dataclass(frozen=True)
class Tool:
    name: str
    run: Callable[[Fixture, Network, Sequence[str]], Sample]
    fixtures: tuple[str, ...] = ()  # only these fixtures (empty: all)
    sizes: tuple[int, ...] = ()  # only these numbers of hosts (empty: all)

    def applies(self, fixture: Fixture, size: int) -> bool:
        return (not self.fixtures or fixture.name in self.fixtures) and (not self.sizes or size in self.sizes)


class SshdLogs:
    """Remote commands and connections per host since the last look, from each host's sshd log."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.seen: dict[str, tuple[int, int]] = {}

    def take(self, hosts: Sequence[str]) -> tuple[float, float]:
        commands_run = connections = 0
        for name in hosts:
            now = (self.lab.remote_commands(name), self.lab.accepted_ssh_logins(name))
            before = self.seen.get(name, (0, 0))
            self.seen[name] = now
            commands_run += now[0] - before[0]
            connections += now[1] - before[1]
        return commands_run / len(hosts), connections / len(hosts)

    def skip(self, hosts: Sequence[str]) -> None:
        self.take(hosts)


def timed(argv: Sequence[str], env: dict[str, str], marks: Sequence[tuple[str, re.Pattern[str]]]) -> tuple[float, float, dict[str, float]]:
    """Run argv; (wall seconds, CPU seconds of it and everything it ran, seconds each phase took by the marks on its stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **env})
    assert process.stderr is not None
    seen: dict[str, float] = {}
    tail: list[str] = []
    for line in process.stderr:
        now = time.perf_counter() - started
        tail = [*tail[-40:], line]
        for phase, pattern in marks:
            if phase not in seen and pattern.search(line):
                seen[phase] = now
                break
    code = process.wait()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"bench: {' '.join(argv[:8])}… failed ({code}):\n{''.join(tail)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    phases: dict[str, float] = {}
    previous = 0.0
    for phase, _ in marks:
        if phase in seen:
            phases[phase] = seen[phase] - previous
            previous = seen[phase]
    phases["exit"] = seconds - previous
    return seconds, cpu, phases


def run_quietly(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:6])}… failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


class Bench:
    def __init__(self, lab: Lab, logs: SshdLogs, scratch: Path, state: Path) -> None:
        self.lab = lab
        self.logs = logs
        self.scratch = scratch
        self.state = state

    def nixfab(self, root: Path, *extra: str) -> Callable[[Fixture, Network, Sequence[str]], Sample]:
        def run(fixture: Fixture, network: Network, hosts: Sequence[str]) -> Sample:
            argv = [INV, "--search-root", str(root), "switch-push", "--host", ",".join(hosts),
                    "--flake", str(fixture.flake), "--inventory", str(network.inventory), *extra]
            env = {"PYTHONPATH": str(root), "NIXFAB_STATE_DIR": str(self.state)}
            self.logs.skip(hosts)
            seconds, cpu, phases = timed(argv, env, NIXFAB_MARKS)
            remote, connections = self.logs.take(hosts)
            return Sample(seconds, cpu, remote, connections, phases)

        return run

    def hand(self, fixture: Fixture, network: Network, hosts: Sequence[str]) -> Sample:
        """The hand steps for every host side by side, as `xargs -P N` would run them."""
        script = self.scratch / "hand-steps.sh"
        script.write_text(HAND_STEPS)
        runs = self.scratch / "hand"
        runs.mkdir(exist_ok=True)
        env = {"FLAKE": str(fixture.flake), "SSH_CONFIG": str(network.ssh_config), "SCRATCH": str(runs)}
        if len(hosts) > 1:
            # xargs fails (123) if any host's run fails.
            argv = ["sh", "-c", 'printf "%s\\n" "$@" | xargs -P "$#" -I{} sh "$0" {} "$FLAKE" "$SSH_CONFIG" "$SCRATCH"', str(script), *hosts]
        else:
            argv = ["sh", str(script), hosts[0], str(fixture.flake), str(network.ssh_config), str(runs)]
        self.logs.skip(hosts)
        seconds, cpu, phases = timed(argv, env, HAND_MARKS)
        remote, connections = self.logs.take(hosts)
        if "activate" not in phases and "exit" in phases and len(hosts) == 1:
            phases["activate"] = phases.pop("exit")
        return Sample(seconds, cpu, remote, connections, phases)


def calibrate_slow_fixture(directory: Path, hosts: Sequence[str]) -> tuple[int, float]:
    """evalWork that makes one system take about SLOW_EVALUATION_SECONDS to evaluate here, and what it took."""

    def evaluation_seconds(work: int) -> float:
        samples = []
        for _ in range(3):
            flake = write_fixture_flake(directory / "calibration", hosts, eval_work=work, revision=str(next(revisions)))
            installable = f"{flake}#nixosConfigurations.{hosts[0]}.config.system.build.toplevel.drvPath"
            started = time.perf_counter()
            run_quietly([*commands.NIX, "eval", "--raw", installable])
            samples.append(time.perf_counter() - started)
        return min(samples)  # the least disturbed by the rest of the machine

    base = evaluation_seconds(0)
    trial = 400
    per_unit = max(1e-6, (evaluation_seconds(trial) - base) / trial)
    work = max(1, round((SLOW_EVALUATION_SECONDS - base) / per_unit))
    seconds = evaluation_seconds(work)
    # The cost of evalWork is not linear (Nix's garbage collector joins in): aim again from where the last one landed.
    for _ in range(3):
        if abs(seconds - SLOW_EVALUATION_SECONDS) <= 0.1 * SLOW_EVALUATION_SECONDS or seconds <= base:
            break
        work = max(1, round(work * (SLOW_EVALUATION_SECONDS - base) / (seconds - base)))
        seconds = evaluation_seconds(work)
    return work, seconds


def relay_config(lab: Lab, relay_ports: dict[str, int], directory: Path) -> Path:
    """An ssh_config like the lab's, but every host reached through the relay (same host keys)."""
    text = lab.ssh_config.read_text()
    known = []
    for host in lab.hosts():
        relayed = relay_ports[str(host.port)]
        text = text.replace(f"  Port {host.port}\n", f"  Port {relayed}\n")
        key = " ".join((host.directory / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        known.append(f"[127.0.0.1]:{relayed} {key}")
    directory.mkdir(parents=True, exist_ok=True)
    known_hosts = directory / "known_hosts"
    known_hosts.write_text("\n".join(known) + "\n")
    text = text.replace(f'UserKnownHostsFile "{lab.known_hosts}"', f'UserKnownHostsFile "{known_hosts}"')
    config = directory / "ssh_config"
    config.write_text(text)
    return config


def spread(values: Sequence[float], unit: str = " s", digits: int = 2) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return f"{median:.{digits}f}{unit}"
    return f"{median:.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1 and 8 hosts")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    parser.add_argument("--sizes", help="numbers of hosts, e.g. 1,4,8 (default; --quick 1,8)")
    parser.add_argument("--networks", default="loopback,20ms", help="loopback, 20ms or both (default)")
    parser.add_argument("--fixtures", default="as-is,slow", help="as-is, slow (1.3 s evaluations) or both (default)")
    parser.add_argument("--eval-work", type=int, help="the slow fixture's evalWork, instead of calibrating it")
    parser.add_argument("--before", type=Path, help="another nixfab checkout to time too (its defaults, and --skip-checks --no-magic-rollback)")
    options = parser.parse_args()
    rounds = options.rounds or (3 if options.quick else 7)
    sizes = [int(size) for size in (options.sizes or ("1,8" if options.quick else "1,4,8")).split(",")]
    names = [f"h{index}" for index in range(1, max(sizes) + 1)]
    started = time.monotonic()
    # As a user's install has them (pip and Nix compile at install), bytecode caches: `inv` itself never writes
    # them (Invoke sets sys.dont_write_bytecode), so each run would otherwise compile whatever changed since the last.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for tree in (REPO / "deploy", REPO / "tasks.py", *((options.before / "deploy", options.before / "tasks.py") if options.before else ())):
        compiled = compileall.compile_dir(tree, quiet=1) if tree.is_dir() else compileall.compile_file(tree, quiet=1)
        if not compiled:
            raise SystemExit(f"bench: cannot compile {tree}")

    with tempfile.TemporaryDirectory(prefix="nixfab-bench-") as directory:
        scratch = Path(directory)
        lab = Lab(scratch / "lab")
        relay: subprocess.Popen[str] | None = None
        try:
            lab.up(names, reboot_delay=0.3)
            networks: list[Network] = []
            wanted_networks = options.networks.split(",")
            if "20ms" in wanted_networks:
                relay = subprocess.Popen(
                    [sys.executable, str(REPO / "bench" / "relay.py"), "--delay-ms", "10", *(str(host.port) for host in lab.hosts())],
                    stdout=subprocess.PIPE, text=True, start_new_session=True,
                )
                assert relay.stdout is not None
                relay_ports = json.loads(relay.stdout.readline())
            for name in wanted_networks:
                ssh_config = lab.ssh_config if name == "loopback" else relay_config(lab, relay_ports, scratch / name)
                inventory = scratch / f"hosts-{name}.yaml"
                inventory.write_text(f"ssh_config: {ssh_config}\nhosts:\n" + "".join(f"  {host}: {{}}\n" for host in names))
                networks.append(Network("loopback" if name == "loopback" else "20 ms round trip", ssh_config, inventory))

            fixtures: list[Fixture] = []
            calibration = ""
            for name in options.fixtures.split(","):
                if name == "slow":
                    work, seconds = (options.eval_work, 0.0) if options.eval_work else calibrate_slow_fixture(scratch, names)
                    calibration = f"evalWork {work}" + (f": one system evaluates in {seconds:.2f} s here" if seconds else "")
                    fixtures.append(Fixture("1.3 s evaluations", write_fixture_flake(scratch / "slow", names, eval_work=work), slow=True))
                else:
                    fixtures.append(Fixture("fixture as is", write_fixture_flake(scratch / "flake", names)))

            logs = SshdLogs(lab)
            bench = Bench(lab, logs, scratch, scratch / "state")
            tools = [
                Tool("nixfab, defaults", bench.nixfab(REPO)),
                Tool("nixfab --no-magic-rollback", bench.nixfab(REPO, "--no-magic-rollback")),
                Tool("nixfab --check", bench.nixfab(REPO, "--check"), fixtures=("fixture as is",)),
                Tool("hand steps", bench.hand),
            ]
            if options.before:
                before = options.before.absolute()
                tools += [
                    Tool(f"{before.name}: defaults", bench.nixfab(before)),
                    Tool(f"{before.name}: --skip-checks --no-magic-rollback", bench.nixfab(before, "--skip-checks", "--no-magic-rollback")),
                ]
            noop = Tool("nixfab, defaults: no-op redeploy", bench.nixfab(REPO))

            # Warm-up: every host gets a first generation, Nix and the page cache warm up.
            for fixture in fixtures:
                for network in networks:
                    set_fixture_revision(fixture.flake, str(next(revisions)))
                    tools[0].run(fixture, network, names)
                    bench.hand(fixture, network, names)

            samples: dict[tuple[str, str, int, str], list[Sample]] = {}
            cells = [(fixture, network, size) for fixture in fixtures for network in networks for size in sizes]
            for round_number in range(rounds):
                for fixture, network, size in cells:
                    hosts = names[:size]
                    for name in hosts:
                        # Untimed: every cell's hosts start with as many generations to list in their boot menus.
                        lab.forget_generations(name, KEPT_GENERATIONS)
                    applicable = [tool for tool in tools if tool.applies(fixture, size)]
                    shift = round_number % len(applicable)
                    for tool in applicable[shift:] + applicable[:shift]:
                        set_fixture_revision(fixture.flake, str(next(revisions)))
                        samples.setdefault((fixture.name, network.name, size, tool.name), []).append(tool.run(fixture, network, hosts))
                        if tool is tools[0] and size == 1:
                            # Right after a fresh deploy, nothing changed: the same deploy again.
                            samples.setdefault((fixture.name, network.name, size, noop.name), []).append(noop.run(fixture, network, hosts))
                print(f"bench: round {round_number + 1} of {rounds} done ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        finally:
            if relay is not None and relay.poll() is None:
                os.kill(relay.pid, signal.SIGTERM)
                relay.wait(timeout=10)
            lab.down()

    report(samples, fixtures, networks, sizes, [*(tool.name for tool in tools), noop.name], rounds, calibration, time.monotonic() - started)


def median_seconds(
    samples: dict[tuple[str, str, int, str], list[Sample]], fixture: Fixture, network: Network, size: int, tool: str
) -> float | None:
    runs = samples.get((fixture.name, network.name, size, tool), [])
    return statistics.median(s.seconds for s in runs) if runs else None


def report(
    samples: dict[tuple[str, str, int, str], list[Sample]], fixtures: Sequence[Fixture], networks: Sequence[Network],
    sizes: Sequence[int], tools: Sequence[str], rounds: int, calibration: str, elapsed: float,
) -> None:
    load = os.getloadavg()
    print(f"nixfab deploy benchmark: {rounds} interleaved rounds, {os.cpu_count()} CPUs, "
          f"{run_quietly(['nix', '--version']).strip()}, load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, "
          f"{elapsed / 60:.0f} min" + (f"; slow fixture: {calibration}" if calibration else "") + "\n")
    print("Wall time of a fresh-generation deploy, median (min-max):\n")
    for fixture in fixtures:
        for network in networks:
            print(f"**{fixture.name}, {network.name}**\n")
            print("| | " + " | ".join(f"{size} host{'s' if size > 1 else ''}" for size in sizes) + " |")
            print("|---" * (len(sizes) + 1) + "|")
            for tool in tools:
                cells = [samples.get((fixture.name, network.name, size, tool), []) for size in sizes]
                if any(cells):
                    print(f"| {tool} | " + " | ".join(spread([s.seconds for s in cell]) for cell in cells) + " |")
            print()

    print("Per deploy, medians: remote commands and SSH connections per host; the deployer's CPU (user+system of all its processes):\n")
    cpu_columns = [(fixture, size) for fixture in fixtures for size in sorted({min(sizes), max(sizes)})]
    headings = [f"CPU, {size} host{'s' if size > 1 else ''}, {fixture.name}" for fixture, size in cpu_columns]
    print("| | commands/host | connections/host | " + " | ".join(headings) + " |")
    print("|---|---|---|" + "---|" * len(cpu_columns))
    for tool in tools:
        everything = [s for (_, _, _, name), runs in samples.items() if name == tool for s in runs]
        if not everything:
            continue
        cpu = [
            spread([s.cpu for (fixture_name, _, size, name), runs in samples.items()
                    if name == tool and size == wanted and fixture_name == fixture.name for s in runs])
            for fixture, wanted in cpu_columns
        ]
        print(f"| {tool} | {statistics.median(s.commands for s in everything):.0f} | {statistics.median(s.connections for s in everything):.0f} | "
              + " | ".join(cpu) + " |")
    print()

    print("Where the time goes, one host, medians in seconds (from when each progress line appears):\n")
    print("| | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 1) + "|")
    for fixture in fixtures:
        for network in networks:
            for tool in tools:
                runs = samples.get((fixture.name, network.name, 1, tool), [])
                if not runs:
                    continue
                phases = []
                for phase in PHASES:
                    values = [s.phases[phase] for s in runs if phase in s.phases]
                    phases.append(f"{statistics.median(values):.2f}" if values else "")
                print(f"| {tool}, {fixture.name}, {network.name} | " + " | ".join(phases) + " |")
    print()

    goals = []
    for fixture in fixtures:
        for network in networks:
            median_of = functools.partial(median_seconds, samples, fixture, network)
            ours, hand = median_of(1, "nixfab, defaults"), median_of(1, "hand steps")
            if ours and hand:
                goals.append((f"1 host, defaults / hand steps, {fixture.name}, {network.name}", f"{ours / hand:.2f} x", "≤ 1.1 x", ours <= 1.1 * hand))
            ours, hand = median_of(max(sizes), "nixfab, defaults"), median_of(max(sizes), "hand steps")
            if ours and hand and max(sizes) > 1:
                goals.append((f"{max(sizes)} hosts, defaults / hand steps in parallel, {fixture.name}, {network.name}",
                              f"{ours / hand:.2f} x", "< 1 x", ours < hand))
            fresh, again = median_of(1, "nixfab, defaults"), median_of(1, "nixfab, defaults: no-op redeploy")
            # The goal is the slow flake's: with the fixture as is, a no-op is mostly start-up, as a fresh deploy is.
            if fresh and again and fixture.slow:
                goals.append((f"no-op redeploy / fresh deploy, {fixture.name}, {network.name}", f"{again / fresh:.2f} x", "≤ 0.4 x", again <= 0.4 * fresh))
    ours_runs = [s for (_, _, _, name), runs in samples.items() if name == "nixfab, defaults" for s in runs]
    noop_runs = [s for (_, _, _, name), runs in samples.items() if name == "nixfab, defaults: no-op redeploy" for s in runs]
    if ours_runs:
        # The confirming connection makes one command of its own; the goal counts the deploy's connection.
        worst = max(s.commands - (s.connections - 1) for s in ours_runs)
        goals.append(("remote commands per host on the deploy's connection, fresh deploy (most seen)", f"{worst:.0f}", "≤ 4", worst <= 4))
        worst = max(s.connections for s in ours_runs)
        goals.append(("SSH connections per host, fresh deploy (most seen)", f"{worst:.0f}", "≤ 2", worst <= 2))
    if noop_runs:
        worst = max(s.commands for s in noop_runs)
        goals.append(("remote commands, no-op redeploy (most seen)", f"{worst:.0f}", "1", worst <= 1))
    print("Goals (issue 14):\n")
    print("| measurement | figure | goal | |\n|---|---|---|---|")
    for measurement, figure, goal, met in goals:
        print(f"| {measurement} | {figure} | {goal} | {verdict(met)} |")


if __name__ == "__main__":
    main()
