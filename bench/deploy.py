"""Deploy figures from the lab, all measured in one run (see README: Benchmark).

    .venv/bin/python bench/deploy.py [--runs N] [--hosts 8]

1. Wall time of a fresh-generation `switch-push` to 1, 4 and 8 hosts
   (goal: 8 hosts in at most 1.5 x one host).
2. SSH connections each target accepted per deploy, from its sshd log (goal: at most 2).
3. A no-op redeploy of the same generation (goal: nothing copied or
   activated, in at most 25% of a full deploy).
4. nixfab against the same steps run by hand (`nix build`, `nix copy`,
   `ssh … nix-env --set`, `ssh … switch-to-configuration switch`) for one host
   (goal: at most 1.2 x). nixfab runs with --skip-checks and
   --no-magic-rollback there, since the hand-run steps check nothing and
   confirm nothing; the full default deploy is reported beside it.

Each figure is the median of --runs runs. Prints a Markdown table; exits 0.
Only 127.0.0.1 is contacted: every host is a lab host.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy.lab import Lab, set_fixture_revision, write_fixture_flake  # noqa: E402
from deploy.nix import commands  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "--search-root", str(REPO)]
revisions = count(100)


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[:6])}… failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=8)
    arguments = parser.parse_args()
    names = [f"h{index}" for index in range(1, arguments.hosts + 1)]
    sizes = [size for size in (1, 4, 8) if size <= len(names)]

    with tempfile.TemporaryDirectory(prefix="nixfab-bench-") as scratch:
        root = Path(scratch)
        os.environ["NIXFAB_STATE_DIR"] = str(root / "state")
        lab = Lab(root / "lab")
        try:
            lab.up(names, reboot_delay=0.3)
            flake = write_fixture_flake(root / "flake", names)
            inventory = root / "hosts.yaml"
            inventory.write_text(f"ssh_config: {lab.ssh_config}\nhosts:\n" + "".join(f"  {name}: {{}}\n" for name in names))
            common = ["--flake", str(flake), "--inventory", str(inventory)]

            def deploy(hosts: Sequence[str], *extra: str) -> None:
                run([*INV, "switch-push", "--host", ",".join(hosts), *common, *extra])

            def fresh(hosts: Sequence[str], *extra: str) -> float:
                set_fixture_revision(flake, str(next(revisions)))
                return timed(lambda: deploy(hosts, *extra))

            deploy(names)  # warm-up: first generation everywhere, Nix's eval cache primed

            rows: list[tuple[str, str, str]] = []
            per_size: dict[int, float] = {}
            logins: list[float] = []
            for size in sizes:
                samples = []
                for _ in range(arguments.runs):
                    before = [lab.accepted_ssh_logins(name) for name in names[:size]]
                    samples.append(fresh(names[:size]))
                    after = [lab.accepted_ssh_logins(name) for name in names[:size]]
                    logins += [b - a for a, b in zip(before, after)]
                per_size[size] = statistics.median(samples)
                rows.append((f"fresh switch-push, {size} host(s)", f"{per_size[size]:.2f} s", ""))
            if 8 in per_size:
                ratio = per_size[8] / per_size[1]
                rows.append(("8 hosts / 1 host", f"{ratio:.2f} x", verdict(ratio <= 1.5, "<= 1.5 x")))
            rows.append(("SSH connections per target per deploy", f"{max(logins):.0f} (max), {statistics.median(logins):.0f} (median)",
                         verdict(max(logins) <= 2, "<= 2")))

            full = statistics.median([fresh(names[:1]) for _ in range(arguments.runs)])
            activations = len(lab.activations(names[0]))
            noop = statistics.median([timed(lambda: deploy(names[:1])) for _ in range(arguments.runs)])
            untouched = len(lab.activations(names[0])) == activations
            rows.append(("no-op redeploy, 1 host", f"{noop:.2f} s = {noop / full:.0%} of a full deploy ({full:.2f} s)",
                         verdict(untouched and noop <= 0.25 * full, "<= 25%, nothing activated")))

            host = names[0]
            by_hand = statistics.median([timed(lambda: hand_deploy(lab, flake, host)) for _ in range(arguments.runs)])
            ours = statistics.median([fresh([host], "--skip-checks", "--no-magic-rollback") for _ in range(arguments.runs)])
            rows.append(("same steps by hand, 1 host", f"{by_hand:.2f} s", ""))
            rows.append(("nixfab --skip-checks --no-magic-rollback / by hand", f"{ours:.2f} s = {ours / by_hand:.2f} x",
                         verdict(ours <= 1.2 * by_hand, "<= 1.2 x")))
            rows.append(("nixfab default (flake check + magic rollback) / by hand", f"{full:.2f} s = {full / by_hand:.2f} x", "(reported)"))
        finally:
            lab.down()

    print(f"nixfab deploy benchmark: {len(names)} lab hosts, median of {arguments.runs} run(s), {os.cpu_count()} CPUs\n")
    print("| measurement | figure | goal |\n|---|---|---|")
    for measurement, figure, goal in rows:
        print(f"| {measurement} | {figure} | {goal} |")


def verdict(met: bool, goal: str) -> str:
    return f"{goal}: {'met' if met else 'MISSED'}"


def hand_deploy(lab: Lab, flake: Path, host: str) -> None:
    """What a careful person would type: build, copy, set the profile, switch."""
    set_fixture_revision(flake, str(next(revisions)))
    with tempfile.TemporaryDirectory() as directory:
        link = Path(directory) / "result"
        run([*commands.NIX, "build", "--out-link", str(link), f"{flake}#nixosConfigurations.{host}.config.system.build.toplevel"])
        path = os.readlink(link)
        run([*commands.NIX, "copy", "--to", f"ssh://{host}", path], env={"NIX_SSHOPTS": f"-F {lab.ssh_config}"})
        ssh = ["ssh", "-F", str(lab.ssh_config), host]
        run([*ssh, "nix-env", "-p", commands.SYSTEM_PROFILE, "--set", path])
        run([*ssh, f"{path}/bin/switch-to-configuration", "switch"])


if __name__ == "__main__":
    main()
