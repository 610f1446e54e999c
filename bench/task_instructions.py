"""Instructions per task run on the SDK's main thread, embedded default: a flow of `--tasks`
trivial sequential tasks minus a flow of `--fewer`, each in a fresh process under valgrind's
callgrind (`--separate-threads=yes`), divided by the difference in tasks. Instruction counts do
not move with the machine's load, as wall and CPU times do on a shared machine: this tells two
versions of the SDK apart where `task_overhead.py` cannot.

    .venv/bin/python bench/task_instructions.py [--tasks 250] [--fewer 50]
        [--tree PATH ...]

With `--tree`, each checkout given (its `client` and `service` folders) is measured in turn,
this one first; the figures say each against the first. Needs valgrind. A run takes a few
minutes (valgrind runs Python about fifty times slower). The background threads (the embedded
event loop, the checkpointer, the signal forwarder) are shown apart: some of their work is per
second rather than per task, and a run under valgrind lasts long.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The measured flow: `measured(n)` runs n trivial tasks one after another (also the flow
# bench/server_instructions.py runs against a local server).
FLOW = """
import sys
from stateward import flow, task

def plain(i):
    return i

step = task(plain)

@flow
def measured(n):
    for i in range(n):
        step(i)
"""

PROGRAM = FLOW + "\nmeasured(int(sys.argv[1]))\n"


def instructions(tree: Path, tasks: int, folder: Path) -> dict[int, int]:
    """Instructions of each thread (1 is the main thread) of a process running one flow of
    `tasks` tasks on a fresh home, with `tree`'s SDK."""
    out = folder / f"callgrind.{tasks}"
    with tempfile.TemporaryDirectory() as home:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                f"--callgrind-out-file={out}.%p",
                sys.executable,
                "-c",
                PROGRAM,
                str(tasks),
            ],
            env={
                **os.environ,
                "STATEWARD_HOME": home,
                "STATEWARD_API_URL": "",
                "STATEWARD_LOGGING_LEVEL": "WARNING",
                "PYTHONPATH": f"{tree / 'client'}:{tree / 'service'}",
            },
            check=True,
            capture_output=True,
        )
    counts: dict[int, int] = {}
    for path in folder.glob(f"callgrind.{tasks}.*-*"):
        thread = int(path.name.rsplit("-", 1)[1])
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                counts[thread] = int(line.split()[1])
                break
        path.unlink()
    return counts


def per_task(tree: Path, tasks: int, fewer: int) -> tuple[float, float]:
    """(main thread, other threads) instructions per task run with `tree`'s SDK."""
    with tempfile.TemporaryDirectory() as folder:
        many = instructions(tree, tasks, Path(folder))
        few = instructions(tree, fewer, Path(folder))
    main = (many.get(1, 0) - few.get(1, 0)) / (tasks - fewer)
    others = (sum(many.values()) - many.get(1, 0) - sum(few.values()) + few.get(1, 0)) / (
        tasks - fewer
    )
    return main, others


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=250)
    parser.add_argument("--fewer", type=int, default=50)
    parser.add_argument("--tree", action="append", default=[], help="another checkout to measure")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    if args.tasks <= args.fewer:
        parser.error("--tasks must be more than --fewer")
    trees = [ROOT, *(Path(tree).resolve() for tree in args.tree)]
    print(f"instructions per task run: a flow of {args.tasks} tasks minus one of {args.fewer}")
    first: float | None = None
    for tree in trees:
        main_thread, others = per_task(tree, args.tasks, args.fewer)
        against = "" if first is None else f"   ({main_thread / first:.3f} of the first)"
        first = main_thread if first is None else first
        print(f"{tree!s:<40} main thread {main_thread / 1e6:.3f}M{against}")
        print(f"{'':<40} other threads {others / 1e6:.3f}M")


if __name__ == "__main__":
    main()
