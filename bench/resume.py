"""Resuming a stream as the history grows: replay cost per transition and resume latency at each
log size, and how long a health check waits while 20 streams resume at once.

    .venv/bin/python bench/resume.py [--sizes 1000,1000000,10000000] [--rounds 3] [--old TREE]

Each size is a SQLite database under `--folder` (default /tmp/stateward-resume), built once with
direct SQL inserts (task runs of 3 transitions each, 10 task runs per flow run) and reused by
later runs. Before a server opens it, the whole file is read once, so that every size is measured
from the page cache (a cold file makes the first figures disk figures). For each size, in each
round, a server on that file answers:

- replay: WatchTransitions(after_sequence=0, max_batch=1000), read back to back until `--replay`
  transitions arrived (one replay of the first `--replay` transitions of a bigger log; as many
  whole replays as that takes of a smaller one, so every size pays its calls' set-up in the
  same proportion), after one untimed replay of the same length: the wall time and the server
  process's CPU time per transition over all of it (a loaded machine moves the wall time far
  more than the CPU time). The same statistic at every size;
- resume: WatchTransitions(after_sequence=newest - 100) until its 100 transitions arrived, the
  median of 20 in a row, in milliseconds;
- on the size named by `--concurrent-size` (1M by default): `--concurrent` streams resume at
  once from spread cursors, each reading `--concurrent-reads` transitions, while another process
  sends a grpc.health.v1 Check every millisecond; the slowest Check and the 99th percentile,
  beside the same figures from the same process with no stream (the baseline, same round).

Per-transition figures are also printed as ratios to the smallest size in the same round. Sizes
are measured in alternating order from one round to the next. With `--old` (another checkout,
e.g. `git worktree add --detach /tmp/base <commit>`), its server is measured in the same rounds
on the same files, alternating with this one's.

Measured on 2 cores shared with other work (load average 15-19), 3 rounds, median (range):
the server's CPU per replayed transition is 16.5 us (15.1-20.1) at 1k and 14.6 us (14.4-19.0)
at 1M since log_messages (0.94 of the 1k figure), against 41.0 us (33.2-44.7) and 37.2 us
(32.0-48.9) at 8a78b47 in the same rounds; the same per-transition statistic at 10M, in an
earlier run at 8a78b47: 33.9 us, 0.99 of its 1k figure. 20 concurrent resumes of 20,000
transitions each at 1M took 11.3 s against 32.7 s; health Check p99 during them 22.8 ms (idle
18.7 ms) against 20.5 ms (idle 11.2 ms): at that load the machine, not the server, makes the
slowest Checks (the idle baseline's slowest were 177 and 303 ms).

At load 1.3-4 (3 rounds, e57ce5c alternating), the server that freezes its start-up objects
(gc.freeze; a full collection held the loop for 32-38 ms of CPU before): the slowest health Check
during the 20 resumes at 1M 17.8 ms (16.6-18.9) against 35.2 ms (34.0-40.9), p99 7.3 ms
(6.8-10.4) against 10.1 (7.4-10.2); idle, the slowest 10.1 ms (8.5-34.5) against 9.0 (7.5-11.1).

At load 6-9 (others' test suites on the 2 cores; this bench under nice -10, 3 rounds, 9f0da0f
alternating), the server whose loop no longer polls SQLite every 5 ms (it waits for the system's
notices of writes) and whose replays make their stream messages on the catch-up thread: health
Check p99 during the 20 resumes at 1M 13.0 ms (12.0-15.0) against 16.5 (13.6-20.8), idle 8.4
(5.2-19.0) against 12.9 (10.5-14.7); the slowest Checks, idle as well as resuming (12-277 ms,
the idle ones of 9f0da0f 241-277 ms), were the machine's. The server's CPU per replayed
transition at 1M 14.9 us (14.1-20.0) against 19.3 (13.8-19.6), 0.95 of its 1k figure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from stateward_service.store import Store
from tests.support import ServerProcess

TRANSITIONS_PER_TASK = 3
TASKS_PER_FLOW = 10


def _uuid(prefix: str, expression: str) -> str:
    """SQL for a UUID-shaped id that grows with `expression` (rows are inserted in key order)."""
    return f"printf('{prefix}%07x-0000-4000-8000-000000000000', {expression})"


def build(path: Path, size: int) -> None:
    """A database of `size` transitions: every task run PENDING, RUNNING, COMPLETED."""
    partial = path.with_suffix(".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    Store(partial, quick_check=False).close()  # the schema, by the server's own migrations
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    tasks = (size + TRANSITIONS_PER_TASK - 1) // TRANSITIONS_PER_TASK
    flows = (tasks + TASKS_PER_FLOW - 1) // TASKS_PER_FLOW
    began = time.perf_counter()
    numbers = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
    conn.execute("BEGIN")
    conn.execute(
        f"""{numbers} INSERT INTO flow_runs (id, name, flow_name, created, state_id, state_type,
              state_name)
            SELECT {_uuid("f", "i")}, 'bench', 'bench', 1700000000000000 + i, NULL, 6,
              'Completed' FROM n""",
        (flows,),
    )
    conn.execute(
        f"""{numbers} INSERT INTO task_runs (id, name, task_key, flow_run_id, created, state_id,
              state_type, state_name)
            SELECT {_uuid("e", "i")}, 'bench', 'step', {_uuid("f", f"i / {TASKS_PER_FLOW}")},
              1700000000000000 + i, {_uuid("5", "i * 3 + 2")}, 6, 'Completed' FROM n""",
        (tasks,),
    )
    names = "CASE i % 3 WHEN 0 THEN 'Pending' WHEN 1 THEN 'Running' ELSE 'Completed' END"
    types = "CASE i % 3 WHEN 0 THEN 2 WHEN 1 THEN 3 ELSE 6 END"  # PENDING, RUNNING, COMPLETED
    conn.execute(
        f"""{numbers} INSERT INTO states (id, run_id, type, name, timestamp, message, details)
            SELECT {_uuid("5", "i")}, {_uuid("e", "i / 3")}, {types},
              {names}, 1700000000000000 + i, '', '{{}}' FROM n""",
        (size,),
    )
    conn.execute(
        f"""{numbers} INSERT INTO transitions (sequence, run_kind, run_id, flow_run_id,
              from_state_id, to_state_id, to_type)
            SELECT i + 1, 2, {_uuid("e", "i / 3")}, {_uuid("f", f"i / 3 / {TASKS_PER_FLOW}")},
              CASE WHEN i % 3 = 0 THEN NULL ELSE {_uuid("5", "i - 1")} END, {_uuid("5", "i")},
              {types} FROM n""",
        (size,),
    )
    conn.execute("COMMIT")
    conn.close()
    partial.rename(path)
    print(f"built {path} ({size:,} transitions) in {time.perf_counter() - began:.0f} s", flush=True)


def database(folder: Path, size: int) -> Path:
    path = folder / f"resume-{size}.db"
    if not path.exists():
        build(path, size)
    return path


async def _read(stub: Any, after: int, count: int) -> float:
    """Seconds from the call until `count` transitions after `after` arrived."""
    began = time.perf_counter()
    call = stub.WatchTransitions(pb.WatchTransitionsRequest(after_sequence=after, max_batch=1000))
    seen = 0
    async for message in call:
        seen += len(message.transitions) or 1
        if seen >= count:
            call.cancel()
            break
    return time.perf_counter() - began


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm(path: Path) -> float:
    """Read the database file (and its write-ahead log) once, into the page cache; seconds."""
    began = time.perf_counter()
    buffer = bytearray(8 * 1024 * 1024)
    for part in (path, Path(f"{path}-wal")):
        if part.exists():
            with part.open("rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass
    return time.perf_counter() - began


def replay_and_resume(target: str, pid: int, size: int, replay: int) -> dict[str, float]:
    async def replays(stub: Any) -> int:
        """Replays from 0 back to back until `replay` transitions arrived; how many did."""
        done = 0
        while done < replay:
            count = min(size, replay - done)
            await _read(stub, 0, count)
            done += count
        return done

    async def main() -> dict[str, float]:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            await replays(stub)  # connected, and the pages it reads warm in the server
            cpu = cpu_seconds(pid)
            began = time.perf_counter()
            count = await replays(stub)
            seconds = time.perf_counter() - began
            cpu = cpu_seconds(pid) - cpu
            resumes = [await _read(stub, size - 100, 100) for _ in range(20)]
            return {
                "replay us/transition": seconds / count * 1e6,
                "replay server cpu us/tr.": cpu / count * 1e6,
                "resume ms": statistics.median(resumes) * 1e3,
            }

    return asyncio.run(main())


def health_checker(target: str, stop: Any, results: Any) -> None:
    """Check every millisecond until `stop` is set; put the latencies (ms)."""
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    health.Check(health_pb2.HealthCheckRequest())
    samples = []
    while not stop.is_set():
        began = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest())
        samples.append((time.perf_counter() - began) * 1e3)
        time.sleep(0.001)
    results.put(samples)
    channel.close()


def health_during(target: str, work: Any) -> list[float]:
    stop = multiprocessing.Event()
    results: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    checker = multiprocessing.Process(target=health_checker, args=(target, stop, results))
    checker.start()
    time.sleep(0.5)  # connected and checking
    work()
    stop.set()
    samples = results.get(timeout=60)
    checker.join()
    return samples


def concurrent_resumes(target: str, size: int, streams: int, reads: int) -> dict[str, float]:
    def resumes() -> None:
        async def main() -> None:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
                step = max(1, (size - reads) // streams)
                await asyncio.gather(*(_read(stub, i * step, reads) for i in range(streams)))

        asyncio.run(main())

    took: list[float] = []

    def timed() -> None:
        began = time.perf_counter()
        resumes()
        took.append(time.perf_counter() - began)

    busy = health_during(target, timed)
    idle = health_during(target, lambda: time.sleep(took[0]))
    return {
        "health max ms idle": max(idle),
        "health max ms resuming": max(busy),
        "health p99 ms idle": _percentile(idle, 0.99),
        "health p99 ms resuming": _percentile(busy, 0.99),
        "resumes s": took[0],
    }


def _percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def one_size(
    path: Path, size: int, tree: Path | None, args: argparse.Namespace
) -> dict[str, float]:
    env = {"STATEWARD_QUICK_CHECK": "false"}
    if tree is not None:
        env["PYTHONPATH"] = f"{tree / 'client'}{os.pathsep}{tree / 'service'}"
    warmed = warm(path)
    server = ServerProcess(path, env=env, log_path=path.with_suffix(".log")).start(timeout=600)
    try:
        assert server.process is not None
        figures = {"warm s": warmed}
        figures |= replay_and_resume(server.target, server.process.pid, size, args.replay)
        if size == args.concurrent_size:
            figures |= concurrent_resumes(
                server.target, size, args.concurrent, args.concurrent_reads
            )
        return figures
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000,10000000")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/stateward-resume"))
    parser.add_argument("--replay", type=int, default=300_000, help="transitions replayed")
    parser.add_argument("--concurrent-size", type=int, default=1_000_000)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--concurrent-reads", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, help="another checkout to measure alongside")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    args.folder.mkdir(parents=True, exist_ok=True)
    paths = {size: database(args.folder, size) for size in sizes}
    trees: dict[str, Path | None] = {"new": None}
    if args.old:
        trees["old"] = args.old.resolve()
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    rounds: dict[str, list[dict[int, dict[str, float]]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        runs = [(name, size) for size in sizes for name in trees]
        for name, size in runs if round_ % 2 == 0 else reversed(runs):
            if len(rounds[name]) <= round_:
                rounds[name].append({})
            figures = one_size(paths[size], size, trees[name], args)
            rounds[name][round_][size] = figures
            print(f"round {round_ + 1} {name} {size:,}: {figures}", flush=True)
        for name in trees:
            figures_by_size = rounds[name][round_]
            base = figures_by_size[sizes[0]]
            for size in sizes:
                for key in ("replay us/transition", "replay server cpu us/tr.", "resume ms"):
                    figures_by_size[size][f"{key} ratio"] = figures_by_size[size][key] / base[key]
            if args.concurrent_size in figures_by_size:
                f = figures_by_size[args.concurrent_size]
                f["health max ratio"] = f["health max ms resuming"] / f["health max ms idle"]
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for name in trees:
        for size in sizes:
            print(f"--- {name}, {size:,} transitions (median of {args.rounds} rounds, and range)")
            for key in rounds[name][0][size]:
                values = [r[size][key] for r in rounds[name]]
                print(
                    f"{key:>26}: {statistics.median(values):9.3f}"
                    f"   ({min(values):.3f} - {max(values):.3f})"
                )


if __name__ == "__main__":
    main()
