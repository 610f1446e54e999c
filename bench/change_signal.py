"""What SQLite's change signal (`DataVersionSignal`) costs its caller: a poll that finds no
change, a poll after another connection's commit, and the wake of a `wait` that timed out.

    .venv/bin/python bench/change_signal.py [--asks 2000] [--runs 3]

Each figure is the median over `--asks` calls, timed one by one, as wall time and as the
calling thread's CPU time; the commits (by another connection, to a table of their own) are
outside the timings. A wait sleeps 1 ms and nothing changes meanwhile: its wall figure is how
late it came back, its CPU figure what the sleep and the wake cost the thread beside the poll.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "service")]

from stateward_service.store import open_database  # noqa: E402
from stateward_service.store.sqlite.leader import DataVersionSignal  # noqa: E402


def timed(
    call: Callable[[], object], before: Callable[[], object], asks: int
) -> tuple[float, float]:
    """Medians in microseconds of `call`'s wall and CPU time, `before` run untimed each time."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(asks):
        before()
        wall, cpu = time.perf_counter(), time.thread_time()
        call()
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1e6, statistics.median(cpus) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "stateward.db"
    open_database(path).close()
    signal = DataVersionSignal(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE bench_commits (x INTEGER)")

    def commit() -> None:
        other.execute("INSERT INTO bench_commits VALUES (1)")

    def nothing() -> None:
        pass

    def seen() -> int:
        return 0

    try:
        for run in range(1, args.runs + 1):
            unchanged = timed(lambda: signal.poll(seen), nothing, args.asks)
            changed = timed(lambda: signal.poll(seen), commit, args.asks)
            wait = timed(lambda: signal.wait(0.001, seen), nothing, max(args.asks // 4, 1))
            print(
                f"run {run}: poll, no change {unchanged[0]:.1f} us ({unchanged[1]:.1f} CPU); "
                f"poll after a commit {changed[0]:.1f} us ({changed[1]:.1f} CPU); "
                f"wait(1 ms) back after {wait[0] - 1000:.0f} us late ({wait[1]:.1f} us CPU)"
            )
    finally:
        signal.close()
        other.close()


if __name__ == "__main__":
    main()
