"""Task runners compared: one flow maps N trivial tasks (default 1,000) and collects their
results, on each runner, against a local Stateward server; tasks per second and the cost per
task relative to the thread pool measured in the same run.

    .venv/bin/python bench/task_runners.py [--tasks 1000] [--workers 2] [--reference]

Runners: ThreadPoolTaskRunner, ProcessPoolTaskRunner, DaskTaskRunner on a LocalCluster of worker
processes, DaskTaskRunner on an in-process LocalCluster (threads). With `--reference`, the
reference orchestrator and its Dask integration, installed in their own virtualenv
(bench/.reference-venv), run the same flow on their thread pool and on Dask, against their
ephemeral server. Each figure is the flow's wall time from its call to its return, after a
warm-up flow of 20 tasks on the same runner (the pool or cluster of the timed flow is new, as
each flow run gets its own: its start is part of the cost).
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
{imports}

def trivial(i):
    return i

step = task(trivial)

def make(runner):
    @flow(name="mapped")
    def mapped(n):
        return step.map(range(n)).result()
    return mapped.with_options(task_runner=runner)

if __name__ == "__main__":
    n = int(sys.argv[1])
    {setup}
    make({runner})(20)  # warm up: imports, connections, the first runs
    began = time.perf_counter()
    results = make({runner})(n)
    elapsed = time.perf_counter() - began
    assert list(results) == list(range(n)), "wrong results"
    {teardown}
    print(json.dumps(elapsed))
"""

STATEWARD = "from stateward import flow, task"
REFERENCE = "from prefect import flow, task"


def case(
    label: str,
    package: str,
    runner: str,
    imports: str = "",
    setup: str = "pass",
    teardown: str = "pass",
) -> dict[str, str]:
    return {
        "label": label,
        "package": package,
        "runner": runner,
        "imports": imports,
        "setup": setup,
        "teardown": teardown,
    }


def stateward_cases(workers: int) -> list[dict[str, str]]:
    runners = "from stateward.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner"
    dask = "from stateward.dask import DaskTaskRunner"
    cluster = (
        "import distributed; cluster = distributed.LocalCluster("
        f"n_workers={workers}, threads_per_worker=1, host='127.0.0.1', dashboard_address=':0')"
    )
    return [
        case("threads", STATEWARD, "ThreadPoolTaskRunner()", runners),
        case("processes", STATEWARD, f"ProcessPoolTaskRunner(max_workers={workers})", runners),
        case(
            "dask, worker processes",
            STATEWARD,
            "DaskTaskRunner(address=cluster.scheduler_address)",
            dask,
            cluster,
            "cluster.close()",
        ),
        case(
            "dask, in-process",
            STATEWARD,
            "DaskTaskRunner(cluster_kwargs={'processes': False, 'dashboard_address': ':0'})",
            dask,
        ),
    ]


def reference_cases(workers: int) -> list[dict[str, str]]:
    runners = "from prefect.task_runners import ThreadPoolTaskRunner"
    dask = "from prefect_dask import DaskTaskRunner"
    cluster = (
        "import distributed; cluster = distributed.LocalCluster("
        f"n_workers={workers}, threads_per_worker=1, host='127.0.0.1', dashboard_address=':0')"
    )
    return [
        case("reference, threads", REFERENCE, "ThreadPoolTaskRunner()", runners),
        case(
            "reference, dask, worker processes",
            REFERENCE,
            "DaskTaskRunner(address=cluster.scheduler_address)",
            dask,
            cluster,
            "cluster.close()",
        ),
    ]


def run_case(python: str, spec: dict[str, str], n: int, env: dict[str, str], folder: Path) -> float:
    program = textwrap.dedent(PROGRAM).format(
        imports=spec["package"] + "\n" + spec["imports"],
        setup=spec["setup"],
        teardown=spec["teardown"],
        runner=spec["runner"],
    )
    script = folder / f"case_{abs(hash(spec['label']))}.py"  # spawned workers import it
    script.write_text(program)
    result = subprocess.run(
        [python, str(script), str(n)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=1800,
        cwd=folder,
    )
    if result.returncode != 0:
        raise SystemExit(f"{spec['label']} failed:\n{result.stderr[-3000:]}")
    elapsed: float = json.loads(result.stdout.strip().splitlines()[-1])
    return elapsed


def reference_python() -> str:
    venv = ROOT / "bench" / ".reference-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        print("installing the reference orchestrator into bench/.reference-venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import prefect_dask"], capture_output=True)
    if probe.returncode != 0:
        # Pinned: the newest FastAPI no longer accepts what this reference's server passes it.
        packages = ["prefect==3.8.8", "fastapi==0.145.0", "prefect-dask"]
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="processes of the pool/cluster")
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    quiet = {"STATEWARD_LOGGING_LEVEL": "WARNING", "PREFECT_LOGGING_LEVEL": "WARNING"}
    print(f"one flow mapping {args.tasks} trivial tasks, {args.workers} worker processes")
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        from tests.support import ServerProcess

        server = ServerProcess(folder / "server.db").start()
        try:
            env = {**quiet, "STATEWARD_API_URL": server.target}
            for spec in stateward_cases(args.workers):
                rows.append(
                    (spec["label"], run_case(sys.executable, spec, args.tasks, env, folder))
                )
                show(rows[-1], rows[0][1], args.tasks)
        finally:
            server.stop()
        if args.reference:
            python = reference_python()
            env = {**quiet, "PREFECT_HOME": str(folder / "prefect")}
            reference_rows: list[tuple[str, float]] = []
            for spec in reference_cases(args.workers):
                reference_rows.append(
                    (spec["label"], run_case(python, spec, args.tasks, env, folder))
                )
                show(reference_rows[-1], rows[0][1], args.tasks)
            by_label = dict(rows)
            ours_dask = by_label["dask, worker processes"]
            theirs_dask = dict(reference_rows)["reference, dask, worker processes"]
            ratio = theirs_dask / ours_dask
            print(f"reference dask / stateward dask (worker processes): {ratio:.1f}x")


def show(row: tuple[str, float], threads: float, n: int) -> None:
    label, elapsed = row
    print(
        f"{label:<36} {n / elapsed:8.0f} tasks/s  {elapsed / n * 1e3:7.2f} ms per task  "
        f"{elapsed / threads:5.1f}x the thread pool"
    )


if __name__ == "__main__":
    main()
