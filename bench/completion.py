"""How long a TAB takes: `inv --complete` in this repository against Invoke's own with an empty task file.

    .venv/bin/python bench/completion.py [--runs N]

Prints the median wall time of each command over N runs (after one warm-up
run), the ratio of ours to the empty baseline, and PASS or MISS against the
goal of at most 1.2 times. Also times nixfab's own completers (host names,
and the task-aware `words` mode the shell scripts use for non-flag words).
Always exits 0: this is a measurement, not a test.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.2


def median_seconds(argv: Sequence[str], *, cwd: Path, runs: int) -> float:
    def once() -> float:
        started = time.perf_counter()
        subprocess.run(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - started

    once()  # warm the page cache and __pycache__
    return statistics.median(once() for _ in range(runs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs per command (default 21)")
    options = parser.parse_args(argv)
    bin_directory = Path(sys.executable).parent
    inv = str(bin_directory / "inv") if (bin_directory / "inv").exists() else "inv"
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="nixfab-bench-") as empty:
        (Path(empty) / "tasks.py").write_text("")
        pairs = [
            ("inv --complete -- inv switch-push --",
             [inv, "--complete", "--", "inv", "switch-push", "--"],
             [inv, "--search-root", empty, "--complete", "--", "inv", "switch-push", "--"]),
            ("inv --complete -- inv",
             [inv, "--complete", "--", "inv"],
             [inv, "--search-root", empty, "--complete", "--", "inv"]),
        ]
        rows: list[tuple[str, float, float | None]] = []
        verdicts: list[bool] = []
        for label, ours, baseline in pairs:
            mine = median_seconds(ours, cwd=REPO, runs=options.runs)
            empty_time = median_seconds(baseline, cwd=REPO, runs=options.runs)
            rows.append((label, mine, empty_time))
            verdicts.append(mine / empty_time <= GOAL_RATIO)
        own = [
            ("python -m deploy.cli.completion hosts", [python, "-m", "deploy.cli.completion", "hosts"]),
            ("python -m deploy.cli.completion tags", [python, "-m", "deploy.cli.completion", "tags"]),
            ("python -m deploy.cli.completion words -- switch-push", [python, "-m", "deploy.cli.completion", "words", "--", "switch-push"]),
            ("python -c pass (interpreter start)", [python, "-c", "pass"]),
        ]
        for label, command in own:
            rows.append((label, median_seconds(command, cwd=REPO, runs=options.runs), None))

    width = max(len(label) for label, _, _ in rows)
    print(f"median of {options.runs} runs, in {REPO}")
    print(f"{'command'.ljust(width)}  {'ours':>8}  {'empty':>8}  {'ratio':>6}  goal <= {GOAL_RATIO}")
    verdict_of = iter(verdicts)
    for label, mine, baseline_time in rows:
        if baseline_time is None:
            print(f"{label.ljust(width)}  {mine * 1000:7.1f}ms")
            continue
        ratio = mine / baseline_time
        print(f"{label.ljust(width)}  {mine * 1000:7.1f}ms  {baseline_time * 1000:7.1f}ms  {ratio:6.2f}  {'PASS' if next(verdict_of) else 'MISS'}")
    print("overall:", "PASS" if all(verdicts) else "MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
