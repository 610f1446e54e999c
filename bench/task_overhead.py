"""The cost of orchestrating a task run: a flow of 1,000 trivial sequential tasks, minus the same
flow's loop of plain calls (the baseline, timed inside the same flow run).

    .venv/bin/python bench/task_overhead.py [--tasks 1000] [--repeat 3] [--reference]
        [--modes embedded,server,reference]

Modes: the embedded default (no server to run), and a local server in another process. With
`--reference`, the reference orchestrator is installed into its own virtualenv
(bench/.reference-venv) and the same flow is timed there. Besides the wall time, each run says
the CPU time per task run of the SDK's process and (against a local server) of the server's:
on a shared machine they move less with the load than the wall time does. "waits" counts the
times a process's threads went to sleep per task run (voluntary context switches, from /proc):
each hand-off between threads or processes costs one, and on these virtual machines a switch
costs about as much CPU as the Python around it.

Each task's final state is durable on the server when its call returns (SQLite commits in WAL
mode before SetState answers), which the benchmark checks at the end by reading the database.

uvloop as the server's event loop (uvloop 0.23.0, grpcio 1.85.3: `uvloop.run(serve(...))` in
place of `asyncio.run`, 2026-12-02, load 9-24 on 2 cores), against asyncio's loop in the same
runs, each figure uvloop's over asyncio's: here (`--modes server`, 6 rounds alternating) wall
1.24, 1.21, 1.27, 0.89, 1.26, 1.38 and server CPU 1.04, 1.05, 1.34, 0.94, 1.10, 1.10 per task
run; yet `bench/server_instructions.py` (one round) counts 0.80 of the server's instructions
(2365.7K against 2960.8K per task run; its main thread 2006.9K against 2436.5K). Fewer
instructions in user space, no less CPU in 5 rounds of 6: not adopted until a quiet machine
tells them apart (the kernel's share, which instructions do not count, is the suspect).
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
import json, os, sys, time
from {package} import flow, task

def plain(i):
    return i

step = task(plain)
server = os.environ.get("BENCH_SERVER_PID")

def server_cpu():
    # The server process's user + system CPU (all its threads), in seconds.
    if not server:
        return 0.0
    with open(f"/proc/{{server}}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def waits(pid):
    # How many times the threads of process `pid` went to sleep waiting (voluntary context
    # switches): each hand-off between threads or processes costs one. (The first match is
    # the voluntary count: "nonvoluntary_ctxt_switches:" comes after it.)
    total = 0
    for thread in os.listdir(f"/proc/{{pid}}/task"):
        try:
            with open(f"/proc/{{pid}}/task/{{thread}}/status") as status:
                total += int(status.read().split("voluntary_ctxt_switches:")[1].split()[0])
        except (FileNotFoundError, IndexError):
            pass  # a thread that ended meanwhile
    return total

def clocks():
    return (
        time.perf_counter(),
        time.process_time(),
        server_cpu(),
        waits(os.getpid()),
        waits(server) if server else 0,
    )

@flow
def measured(n):
    # Both loops in one flow run: the flow's own start and end costs are not counted.
    began = clocks()
    for i in range(n):
        plain(i)
    middle = clocks()
    for i in range(n):
        step(i)
    end = clocks()
    # Per clock (wall, this process's CPU, the server's CPU, each process's waits): the tasks'
    # loop minus the plain one.
    return [((e - m) - (m - b)) / n for b, m, e in zip(began, middle, end)]

n, repeat = int(sys.argv[1]), int(sys.argv[2])
measured(20)  # warm up: imports, connections, the first runs
print(json.dumps([measured(n) for _ in range(repeat)]))
"""


def run_mode(
    python: str, package: str, n: int, repeat: int, env: dict[str, str]
) -> list[list[float]]:
    """Per run and per task run: [wall seconds, client CPU seconds, server CPU seconds, client
    waits, server waits] (the server's 0 without one)."""
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
    return [[float(x) for x in run] for run in json.loads(result.stdout.strip().splitlines()[-1])]


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


def show(label: str, runs: list[list[float]], server: bool = False) -> float:
    """Print the best wall time per task run of `runs` (and every run's), with the CPU each
    process spent and the times its threads waited (voluntary context switches) per task run
    in the best run; return the best wall time."""
    wall, client_cpu, server_cpu, client_waits, server_waits = min(runs)
    per_run = ", ".join(f"{run[0] * 1e3:.3f}" for run in runs)
    cpu = f"client CPU {client_cpu * 1e3:.3f} ms, {client_waits:.1f} waits"
    if server:
        cpu += f"; server CPU {server_cpu * 1e3:.3f} ms, {server_waits:.1f} waits"
    print(f"{label:<34} {wall * 1e3:7.3f} ms per task run   (runs: {per_run}; {cpu})")
    return wall


MODES = ("embedded", "server", "reference")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="embedded,server",
        help=f"which to time, comma-separated, of {', '.join(MODES)} (default: embedded,server)",
    )
    parser.add_argument("--reference", action="store_true", help="time the reference too")
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: unknown {', '.join(unknown)}; choose among {', '.join(MODES)}")
    if args.reference and "reference" not in modes:
        modes.append("reference")
    quiet = {"STATEWARD_LOGGING_LEVEL": "WARNING", "PREFECT_LOGGING_LEVEL": "WARNING"}
    print(f"{args.tasks} sequential trivial tasks per flow, best of {args.repeat}")
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        if "embedded" in modes:
            embedded = run_mode(
                sys.executable,
                "stateward",
                args.tasks,
                args.repeat,
                {**quiet, "STATEWARD_HOME": str(home / "embedded"), "STATEWARD_API_URL": ""},
            )
            best["embedded"] = show("stateward, embedded", embedded)
            check_durable(home / "embedded" / "stateward.db", args)
        if "server" in modes:
            from tests.support import ServerProcess

            server = ServerProcess(home / "server.db").start()
            assert server.process is not None
            try:
                remote = run_mode(
                    sys.executable,
                    "stateward",
                    args.tasks,
                    args.repeat,
                    {
                        **quiet,
                        "STATEWARD_API_URL": server.target,
                        "BENCH_SERVER_PID": str(server.process.pid),
                    },
                )
            finally:
                server.stop()
            best["server"] = show("stateward, local server", remote, server=True)
            check_durable(home / "server.db", args)
        if "reference" in modes:
            reference = run_mode(
                reference_python(),
                "prefect",
                args.tasks,
                args.repeat,
                # Its ephemeral server's first start (migrations) outlasts the default 20 s
                # on a loaded machine; the start is not timed.
                {
                    **quiet,
                    "PREFECT_HOME": str(home / "prefect"),
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                },
            )
            ref = show("reference orchestrator (ephemeral)", reference)
            if "embedded" in best:
                print(f"reference / stateward embedded: {ref / best['embedded']:.1f}x")
            if "server" in best:
                print(f"reference / stateward local server: {ref / best['server']:.1f}x")


def check_durable(db: Path, args: argparse.Namespace) -> None:
    """Every task run of the timed flows reached Completed in the database."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        completed = conn.execute("SELECT count(*) FROM task_runs WHERE state_type = 6").fetchone()[
            0
        ]
    expected = args.tasks * args.repeat + 20  # the timed runs and the warm-up
    print(f"task runs Completed in {db.name}: {completed} of {expected}")


if __name__ == "__main__":
    main()
