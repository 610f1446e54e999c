"""The cost of orchestrating a task run: a flow of 1,000 trivial sequential tasks, minus the same
flow's loop of plain calls (the baseline, timed inside the same flow run).

    .venv/bin/python bench/task_overhead.py [--tasks 1000] [--repeat 3] [--reference]

Modes: the embedded default (no server to run), and a local server in another process. With
`--reference`, the reference orchestrator is installed into its own virtualenv
(bench/.reference-venv) and the same flow is timed there.

Each task's final state is durable on the server when its call returns (SQLite commits in WAL
mode before SetState answers), which the benchmark checks at the end by reading the database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROGRAM = """
import json, sys, time
from {package} import flow, task

def plain(i):
    return i

step = task(plain)

@flow
def measured(n):
    # Both loops in one flow run: the flow's own start and end costs are not counted.
    began = time.perf_counter()
    for i in range(n):
        plain(i)
    middle = time.perf_counter()
    for i in range(n):
        step(i)
    return (time.perf_counter() - middle) - (middle - began)

n, repeat = int(sys.argv[1]), int(sys.argv[2])
measured(20)  # warm up: imports, connections, the first runs
print(json.dumps([measured(n) / n for _ in range(repeat)]))
"""


def run_mode(python: str, package: str, n: int, repeat: int, env: dict[str, str]) -> list[float]:
    program = textwrap.dedent(PROGRAM.format(package=package))
    result = subprocess.run(
        [python, "-c", program, str(n), str(repeat)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=1800,
    )
    if result.returncode != 0:
        raise SystemExit(f"{package} run failed:\n{result.stderr[-3000:]}")
    return [float(x) for x in json.loads(result.stdout.strip().splitlines()[-1])]


def reference_python() -> str:
    venv = ROOT / "bench" / ".reference-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print("installing the reference orchestrator into bench/.reference-venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # Pinned: the newest FastAPI no longer accepts what this reference's server passes it.
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "prefect==3.8.8", "fastapi==0.145.0"],
            check=True,
        )
    return str(python)


def show(label: str, costs: list[float]) -> float:
    best = min(costs)
    per_run = ", ".join(f"{c * 1e3:.3f}" for c in costs)
    print(f"{label:<34} {best * 1e3:7.3f} ms per task run   (runs: {per_run})")
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    quiet = {"STATEWARD_LOGGING_LEVEL": "WARNING", "PREFECT_LOGGING_LEVEL": "WARNING"}
    print(f"{args.tasks} sequential trivial tasks per flow, best of {args.repeat}")
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        embedded = run_mode(
            sys.executable,
            "stateward",
            args.tasks,
            args.repeat,
            {**quiet, "STATEWARD_HOME": str(home / "embedded"), "STATEWARD_API_URL": ""},
        )
        show("stateward, embedded", embedded)
        from tests.support import ServerProcess

        server = ServerProcess(home / "server.db").start()
        try:
            remote = run_mode(
                sys.executable,
                "stateward",
                args.tasks,
                args.repeat,
                {**quiet, "STATEWARD_API_URL": server.target},
            )
        finally:
            server.stop()
        show("stateward, local server", remote)
        check_durable(home / "embedded" / "stateward.db", args)
        if args.reference:
            reference = run_mode(
                reference_python(),
                "prefect",
                args.tasks,
                args.repeat,
                {**quiet, "PREFECT_HOME": str(home / "prefect")},
            )
            best = show("reference orchestrator (ephemeral)", reference)
            print(f"reference / stateward embedded: {best / min(embedded):.1f}x")
            print(f"reference / stateward local server: {best / min(remote):.1f}x")


def check_durable(db: Path, args: argparse.Namespace) -> None:
    """Every task run of the timed flows reached Completed in the database."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        completed = conn.execute("SELECT count(*) FROM task_runs WHERE state_type = 6").fetchone()[
            0
        ]
    expected = args.tasks * args.repeat + 20  # the timed runs and the warm-up
    print(f"task runs Completed in the embedded database: {completed} of {expected}")


if __name__ == "__main__":
    main()
