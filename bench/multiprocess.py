"""Many processes on one database: SetState throughput with 1, 2 and 3 PostgreSQL replicas and
with 1 and 3 server processes on one SQLite file, against the single SQLite server of the commit
before (the baseline), all in the same run; then the SDK's cost per task on the embedded default,
before and after, interleaved.

    .venv/bin/python bench/multiprocess.py [--seconds 4] [--writers 8] [--tasks 500]
        [--postgres URL] [--baseline-commit 26f2aed]

The baseline runs from a temporary `git worktree` of the baseline commit, with this virtualenv
(PYTHONPATH puts its packages first). The PostgreSQL URL (default: $STATEWARD_TEST_POSTGRES_URL,
as `.ci/postgres` prints) must allow CREATE DATABASE: each configuration gets a fresh database.
Writers are processes, spread round-robin over the replicas, each proposing RUNNING to its own
run over and over (every proposal is a written state).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from set_state import writer  # noqa: E402
from task_overhead import run_mode  # noqa: E402

from stateward.v1 import states_pb2  # noqa: E402
from tests.support import PostgresDatabases, ServerProcess, new_flow_run  # noqa: E402


@contextmanager
def baseline_checkout(commit: str) -> Iterator[Path]:
    """A temporary worktree of `commit`, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="stateward-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), commit],
        check=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False
        )


def pythonpath(checkout: Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{checkout / 'client'}{os.pathsep}{checkout / 'service'}"}


class BaselineServer(ServerProcess):
    """The baseline's `stateward server start`, with only the flags it knew."""

    def start(self, timeout: float = 20.0) -> ServerProcess:
        env = {**os.environ, "STATEWARD_HOME": str(self.log_path.parent), **self.env}
        command = [sys.executable, "-m", "stateward", "server", "start", "--port", "0"]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*command, "--db", str(self.db)], stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.port = self._wait_listening(0, timeout)
        return self


@contextmanager
def replicas(
    db: Path | str,
    count: int,
    folder: Path,
    env: dict[str, str] | None = None,
    kind: type[ServerProcess] = ServerProcess,
) -> Iterator[list[ServerProcess]]:
    folder.mkdir(exist_ok=True)
    started: list[ServerProcess] = []
    try:
        for index in range(count):
            server = kind(db, env=env or {}, log_path=folder / f"server-{index}.log")
            started.append(server.start())
        yield started
    finally:
        for server in started:
            server.stop()


def cpu_seconds(servers: list[ServerProcess]) -> float:
    """The CPU time the servers' processes used so far (user and system)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for server in servers:
        assert server.process is not None
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def measure(servers: list[ServerProcess], writers: int, seconds: float) -> tuple[float, float]:
    """SetState/s with `writers` processes spread over the servers, each on a run of its own,
    and the servers' CPU time per SetState (ms): a figure the machine's other load moves less
    than the rate."""
    runs_by_target: dict[str, list[str]] = {}
    for index in range(writers):
        server = servers[index % len(servers)]
        run = new_flow_run(server.stub(), initial=states_pb2.STATE_TYPE_RUNNING)
        runs_by_target.setdefault(server.target, []).append(run.id)
    # Spawned, not forked: a forked child would inherit this process's gRPC channels.
    spawning = multiprocessing.get_context("spawn")
    counts: multiprocessing.Queue[int] = spawning.Queue()
    workers = [
        spawning.Process(target=writer, args=(target, run_id, seconds, counts))
        for target, run_ids in runs_by_target.items()
        for run_id in run_ids
    ]
    used = cpu_seconds(servers)
    for worker in workers:
        worker.start()
    total = sum(counts.get() for _ in workers)
    used = cpu_seconds(servers) - used
    for worker in workers:
        worker.join()
    return total / seconds, used * 1e3 / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("STATEWARD_TEST_POSTGRES_URL", ""))
    parser.add_argument("--baseline-commit", default="26f2aed")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with baseline_checkout(args.baseline_commit) as old, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"SetState throughput, {args.writers} writer processes, {args.seconds:g} s each")

        def show(label: str, measured: tuple[float, float]) -> None:
            value, cpu = measured
            results[label] = value
            base = results.get("baseline")
            ratio = f"  ({value / base:.2f}x the baseline)" if base else ""
            print(
                f"  {label:<34} {value:8.0f} SetState/s, servers' CPU {cpu:5.2f} ms each{ratio}",
                flush=True,
            )

        with replicas(
            folder / "old.db", 1, folder / "old", pythonpath(old), BaselineServer
        ) as servers:
            show("baseline", measure(servers, args.writers, args.seconds))
        for count in (1, 3):
            db = folder / f"shared{count}.db"
            with replicas(db, count, folder / f"sqlite{count}") as servers:
                show(f"SQLite, {count} process(es)", measure(servers, args.writers, args.seconds))
        if args.postgres:
            databases = PostgresDatabases(args.postgres)
            try:
                for count in (1, 2, 3):
                    url = databases.create()
                    with replicas(url, count, folder / f"pg{count}") as servers:
                        show(
                            f"PostgreSQL, {count} replica(s)",
                            measure(servers, args.writers, args.seconds),
                        )
            finally:
                databases.drop_all()
        else:
            print("  PostgreSQL: skipped (no --postgres URL, no STATEWARD_TEST_POSTGRES_URL)")

        print(f"SDK cost per task, embedded default, {args.tasks} tasks, interleaved")
        quiet = {"STATEWARD_LOGGING_LEVEL": "WARNING", "STATEWARD_API_URL": ""}
        before: list[float] = []
        after: list[float] = []
        for round_ in range(args.repeat):
            before += run_mode(
                sys.executable,
                "stateward",
                args.tasks,
                1,
                {**quiet, **pythonpath(old), "STATEWARD_HOME": str(folder / f"before{round_}")},
            )
            after += run_mode(
                sys.executable,
                "stateward",
                args.tasks,
                1,
                {**quiet, "STATEWARD_HOME": str(folder / f"after{round_}")},
            )
        for label, costs in (("before (baseline)", before), ("after", after)):
            runs = ", ".join(f"{c * 1e3:.3f}" for c in costs)
            print(f"  {label:<18} best {min(costs) * 1e3:.3f} ms per task (runs: {runs})")
        print(
            f"  after / before: best {min(after) / min(before):.2f}x, "
            f"median {statistics.median(after) / statistics.median(before):.2f}x"
        )


if __name__ == "__main__":
    main()
