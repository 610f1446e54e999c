"""Start-up of the `stateward` command: `--version`, `--help`, a sub-app's help, `server start
--help` and a command on the embedded default (`flow-run ls` on a home with a few runs), each in
a fresh interpreter, against another checkout in the same rounds.

    .venv/bin/python bench/cli_startup.py --old /tmp/base [--rounds 15]

`--old` is a checkout of another commit (`git worktree add --detach /tmp/base <commit>`); both
trees run under this virtualenv's interpreter, their sources first on PYTHONPATH, compiled to
bytecode first (as pip compiles an installed package). Each round runs every command once per
tree, the order of the trees alternating between rounds. On a shared machine wall time waits for
the cores, so the figures are the ratio new/old of each round (paired), with the median and the
quartiles over the rounds, beside the medians of wall and CPU time (user + system, from the
process's rusage). `python -c pass` is measured in the same rounds: the floor of any command.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

COMMANDS = [
    ["--version"],
    ["--help"],
    ["flow-run", "--help"],
    ["server", "start", "--help"],
    ["flow-run", "ls"],
]

SOME_RUNS = """
from stateward import flow

@flow
def hello():
    return 1

for _ in range(3):
    hello()
"""


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run of `command`, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    problem = process.stderr.read()
    process.stderr.close()
    if process.returncode != 0:
        raise SystemExit(f"{command} failed ({process.returncode}): {problem.decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def quartiles(values: list[float]) -> str:
    if len(values) < 4:
        return f"{min(values):.2f}-{max(values):.2f}"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.2f}-{high:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    trees = {"new": HERE, "old": options.old.resolve()}
    for tree in trees.values():
        for folder in ("client", "service"):
            compileall.compile_dir(tree / folder, quiet=1)
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch) / "home"
        base = {**os.environ, "STATEWARD_HOME": str(home)}
        base.pop("STATEWARD_API_URL", None)
        envs = {
            name: {**base, "PYTHONPATH": f"{tree / 'client'}{os.pathsep}{tree / 'service'}"}
            for name, tree in trees.items()
        }
        subprocess.run([sys.executable, "-c", SOME_RUNS], env=envs["new"], check=True)
        cases = [["-c", "pass"]] + [["-m", "stateward", *args] for args in COMMANDS]
        walls: dict[tuple[int, str], list[float]] = {}
        cpus: dict[tuple[int, str], list[float]] = {}
        for round_ in range(options.rounds):
            order = ["new", "old"] if round_ % 2 == 0 else ["old", "new"]
            for index, case in enumerate(cases):
                for name in order:
                    wall, cpu = timed([sys.executable, *case], envs[name], Path(scratch))
                    walls.setdefault((index, name), []).append(wall)
                    cpus.setdefault((index, name), []).append(cpu)
    print(f"{options.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'command':<28} {'wall new/old':>22} {'CPU new/old':>22}   new ms (CPU)   old ms (CPU)")
    for index, case in enumerate(cases):
        label = " ".join(case[2:]) if case[0] == "-m" else "python -c pass"
        new_wall, old_wall = walls[(index, "new")], walls[(index, "old")]
        new_cpu, old_cpu = cpus[(index, "new")], cpus[(index, "old")]
        wall_ratios = [n / o for n, o in zip(new_wall, old_wall, strict=True)]
        cpu_ratios = [n / o for n, o in zip(new_cpu, old_cpu, strict=True)]
        ms = [statistics.median(times) * 1000 for times in (new_wall, new_cpu, old_wall, old_cpu)]
        print(
            f"{label:<28} {statistics.median(wall_ratios):>5.2f} ({quartiles(wall_ratios):>11})"
            f"     {statistics.median(cpu_ratios):>5.2f} ({quartiles(cpu_ratios):>11})"
            f"   {ms[0]:5.0f} ({ms[1]:4.0f})   {ms[2]:5.0f} ({ms[3]:4.0f})"
        )


if __name__ == "__main__":
    main()
