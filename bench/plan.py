"""`inv plan` against `inv status` on a fleet of lab hosts (see README: Benchmark).

    .venv/bin/python bench/plan.py [--runs N] [--hosts 8]

The goal (issue 15): plan on 8 hosts answers in under twice the time of
status. Both are timed as whole commands (`inv … --all --json`), alternately,
--runs times each, in two situations:

- in sync: every host runs what the flake builds (plan: one round trip per
  host, nothing staged);
- changed: the flake has a new revision and a new unit for every host (plan:
  the missing paths are staged on each host, switch-to-configuration
  dry-activate runs there, and everything staged is removed again).

The first plan of each situation builds what is new; it is run once before
the timed rounds, as a deploy would have built it too. Prints a Markdown
table of medians; exits 0. Only 127.0.0.1 is contacted: every host is a lab host.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deploy.lab import Lab, set_fixture_revision, set_fixture_units, write_fixture_flake  # noqa: E402

INV = [str(Path(sys.executable).parent / "inv"), "--search-root", str(REPO)]


def run(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv[3:6])}… failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=8)
    arguments = parser.parse_args()
    names = [f"h{index}" for index in range(1, arguments.hosts + 1)]

    with tempfile.TemporaryDirectory(prefix="nixfab-bench-") as scratch:
        root = Path(scratch)
        os.environ["NIXFAB_STATE_DIR"] = str(root / "state")
        lab = Lab(root / "lab")
        try:
            lab.up(names, reboot_delay=0.3)
            flake = write_fixture_flake(root / "flake", names)
            inventory = root / "hosts.yaml"
            inventory.write_text(f"ssh_config: {lab.ssh_config}\nhosts:\n" + "".join(f"  {name}: {{}}\n" for name in names))
            common = ["--all", "--flake", str(flake), "--inventory", str(inventory)]
            run([*INV, "switch-push", *common, "--skip-checks"])

            rows = []
            for situation in ("in sync", "changed"):
                if situation == "changed":
                    set_fixture_revision(flake, "2")
                    set_fixture_units(flake, {"sshd.service": "[Service]\nExecStart=/usr/sbin/sshd -D\n", "web.service": "[Service]\n"})
                run([*INV, "plan", *common, "--json"])  # builds what is new
                status, plan = [], []
                for _ in range(arguments.runs):
                    status.append(run([*INV, "status", *common, "--json"]))
                    plan.append(run([*INV, "plan", *common, "--json"]))
                rows.append((situation, statistics.median(status), statistics.median(plan), min(status), min(plan)))
        finally:
            lab.down()

    print(f"| {len(names)} hosts, median of {arguments.runs} | status | plan | plan / status | goal |")
    print("|---|---|---|---|---|")
    for situation, status_time, plan_time, status_best, plan_best in rows:
        ratio = plan_time / status_time
        verdict = "met" if ratio < 2 else "**missed**"
        print(f"| {situation} | {status_time:.2f} s (best {status_best:.2f}) | {plan_time:.2f} s (best {plan_best:.2f}) | {ratio:.2f} x | < 2 x: {verdict} |")


if __name__ == "__main__":
    main()
