"""Cold start: `import stateward`, and the first flow result from a cold process on a fresh home.

    .venv/bin/python bench/cold_start.py [--old /tmp/hot-old] [--rounds 3] [--samples 5]

Each figure is the wall time of a fresh interpreter, and the baseline, measured in the same
round, is a fresh interpreter that imports nothing (`python -c pass`): these machines are shared
and noisy, so the ratio, and the time above the baseline, are what compare. With `--old` (a
checkout of another commit, e.g. `git worktree add /tmp/hot-old <commit>`), that tree's sources
are measured in the same rounds, alternating with this one's, under the same interpreter.
Each round reports the median of its samples; the spread is the range over the rounds. Beside
the wall time, each program reports the CPU time its process used (all threads) up to its line:
on a loaded machine it moves far less than the wall time, which waits for the cores.
Each tree's sources are compiled to bytecode first, as an installed package's are (pip compiles
at install): otherwise, under PYTHONDONTWRITEBYTECODE, every sample would compile them again.

Figures (c2cfc7e against 143bf65, 3 rounds of 5 samples, load 3.0 on 2 cores): the first flow
182 ms wall (158-200), 147 ms above a bare interpreter against 200 ms (new/old 0.73, rounds
0.66-0.83; CPU 0.72); import stateward 42 ms, 7 ms above it (6 ms before). Instructions
(callgrind, to the first flow's printed result): 463.1M against 568.3M, a bare interpreter 78.1M;
most of the difference was dataclasses compiling source for each method (see stateward._records).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

FIRST_FLOW = """
from stateward import flow, task

@task
def one() -> int:
    return 1

@flow
def first() -> int:
    return one()

import time
print(first(), time.process_time(), flush=True)
"""

# Each program prints one line: its result, then the CPU seconds its process has used.
PROGRAMS = {
    "baseline": "import time\nprint(0, time.process_time(), flush=True)",
    "import": "import stateward\nimport time\nprint(0, time.process_time(), flush=True)",
    "first flow": FIRST_FLOW,
}


def env_for(tree: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STATEWARD_API_URL"}
    env["PYTHONPATH"] = f"{tree / 'client'}{os.pathsep}{tree / 'service'}"
    env["STATEWARD_HOME"] = str(home)
    return env


def until_first_line(code: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds from starting a fresh interpreter on `code` to its first line of output (the
    process may take longer to exit: an embedded server closes its database at exit), and the
    CPU seconds the process reports on that line."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    _, err = process.communicate(timeout=60)
    if process.returncode != 0 or not line:
        raise SystemExit(f"the program failed:\n{err}")
    return elapsed, float(line.split()[-1])


def measure(tree: Path, what: str, samples: int) -> tuple[float, float]:
    """Medians of the wall and the CPU time over `samples` fresh processes, each on a fresh
    home."""
    walls, cpus = [], []
    for _ in range(samples):
        with tempfile.TemporaryDirectory(prefix="stateward-cold-") as home:
            wall, cpu = until_first_line(PROGRAMS[what], env_for(tree, Path(home)))
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    trees = {"new": HERE}
    if args.old:
        trees["old"] = args.old.resolve()
    for tree in trees.values():
        sources = [str(tree / "client"), str(tree / "service")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *sources], check=True)
    what = ("baseline", "import", "first flow")
    results: dict[tuple[str, str, str], list[float]] = {}
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in order:
            for item in what:
                wall, cpu = measure(trees[name], item, args.samples)
                results.setdefault((name, item, "wall"), []).append(wall)
                results.setdefault((name, item, "cpu"), []).append(cpu)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    header = f"{'tree':<5} {'figure':<11} {'clock':<5} {'median ms':>10} {'spread ms':>11}"
    print(f"{header} {'above base':>11}")
    for name in trees:
        for clock in ("wall", "cpu"):
            base = statistics.median(results[(name, "baseline", clock)])
            for item in what:
                rounds = results[(name, item, clock)]
                middle = statistics.median(rounds)
                spread = f"{min(rounds) * 1e3:.0f}-{max(rounds) * 1e3:.0f}"
                print(
                    f"{name:<5} {item:<11} {clock:<5} {middle * 1e3:>10.0f} {spread:>11}"
                    f" {(middle - base) * 1e3:>9.0f}ms  ({middle / base:.2f}x baseline)"
                )
    if "old" in trees:
        for clock in ("wall", "cpu"):
            for item in ("import", "first flow"):
                new, old = (
                    [
                        r - b
                        for r, b in zip(
                            results[(tree, item, clock)],
                            results[(tree, "baseline", clock)],
                            strict=True,
                        )
                    ]
                    for tree in ("new", "old")
                )
                ratios = [n / o for n, o in zip(new, old, strict=True) if o > 0]
                print(
                    f"{item} ({clock}): new/old time above baseline"
                    f" {statistics.median(ratios):.2f}"
                    f" (rounds {min(ratios):.2f}-{max(ratios):.2f})"
                )


if __name__ == "__main__":
    main()
