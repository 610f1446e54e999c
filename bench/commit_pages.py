"""Where an embedded task run's commits go: the pages each commit writes to the WAL, by table
and index, per task run.

    .venv/bin/python bench/commit_pages.py [--before 3000] [--tasks 400]

A commit in WAL mode appends one frame per page it changed (a 24-byte header and the page, two
writes, and a checksum of the page); the checkpointer copies them into the database later. So
what a commit costs follows the pages it touches: each table or index a statement changes
costs at least one page, and a page split several. A flow of `--before` trivial tasks first
gives the database a history (indexes past their first pages, as they are in use); then a flow
of `--tasks` is measured (its flow run's own few commits count too). Meanwhile a reader holds a
snapshot from before it, so the WAL keeps every frame the measured flow wrote (the
checkpointer copies none the snapshot does not hold, and the WAL does not start over); each
frame's page is then named by SQLite's `dbstat`. Deterministic for a given SQLite, schema and
history (page splits follow the data), unlike the timings.

On e57ce5c (schema 5, 3000 task runs before, 400 measured): 29.5 pages per task run in its two
commits, three tables and nine indexes touched; the most written were the index of the log by
new state type (3.4: the ends of the Pending, Running and Completed ranges, and their splits),
the log by flow run (3.3), states by run (3.2), task runs by state type (3.1: a Running entry
added, removed and a Completed one added) and the log by run (3.0). Schema 6 leaves those three
types out of the log's index by type: 24.9-25.9 pages per task run against 29.1-29.4 for
9f0da0f (three runs each, alternating); the log by flow run (2.7-3.3), states by run (3.0-3.1),
task runs by state type (3.1) and the log by run (2.9-3.0) are the most written. Schema 7
leaves Completed out of the task runs' index by state type (3.1 -> 2.0: a task run's end takes
its Running entry out and puts none in): 23.7-24.8 pages per task run (four runs), and the
embedded SDK's main thread makes 48.5 pwrite calls per task run where 9f0da0f made 56.1 (strace,
a flow of 1,000 tasks). The entries of an index (not of a table) that land at the end of a full
page, in the middle of the index or at its end, make SQLite move entries among three pages and
write their parent, again and again as those fill: most of what each index costs past one page
a commit.

Schema 9 gives each state its transition's sequence (its rowid) and drops the log's index by run
(a run's log is read through the states by run): 21.0-21.6 pages per task run against 23.8-25.0
on 578f77e (three runs each, alternating). Schema 10 drops the states' index by id (a run's
current state is its newest, a cache entry holds its state's sequence): 18.1-19.1. Left, per task
run: states by run (3.0), the log by flow run (2.7), the states and the log themselves (2.2 and
2.1: a page a commit each, at their ends), task runs (2.0), task runs by state type (2.0), task
runs by id (1.3), by flow run (1.2) and by task key (1.1), and page 1 (0.4: the file grew).
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import sys
from stateward import flow, task

@task
def plain(i):
    return i

@flow
def tasks(n):
    for i in range(n):
        plain(i)

tasks(int(sys.argv[1]))
print("done", flush=True)
sys.stdin.readline()  # measured: the parent read the WAL meanwhile
tasks(int(sys.argv[2]))
"""

_WAL_HEADER = 32
_FRAME_HEADER = 24


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=int, default=3000, help="task runs before (history)")
    parser.add_argument("--tasks", type=int, default=400, help="task runs measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        db = home / "stateward.db"
        flows = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PROGRAM), str(args.before), str(args.tasks)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "STATEWARD_HOME": str(home),
                "STATEWARD_API_URL": "",
                "STATEWARD_LOGGING_LEVEL": "WARNING",
            },
        )
        assert flows.stdin is not None and flows.stdout is not None
        if flows.stdout.readline().strip() != "done":
            raise SystemExit("the flow of the history failed")
        snapshot = sqlite3.connect(db, isolation_level=None)
        snapshot.execute("BEGIN")
        snapshot.execute("SELECT count(*) FROM schema_version").fetchone()  # holds the snapshot
        start = len(_commits((db.parent / (db.name + "-wal")).read_bytes(), 0, frames=True))
        flows.stdin.write("\n")
        flows.stdin.flush()
        if flows.wait(timeout=1800) != 0:
            raise SystemExit("the measured flow failed")
        wal = (db.parent / (db.name + "-wal")).read_bytes()
        snapshot.execute("COMMIT")
        owners = dict(
            (page, name) for name, page in snapshot.execute("SELECT name, pageno FROM dbstat")
        )
        snapshot.close()
    commits = _commits(wal, start)
    per_task = collections.Counter[str]()
    for pages in commits:
        per_task.update(owners.get(page, f"page {page} (freed since)") for page in pages)
    frames = sum(per_task.values())
    print(
        f"{args.tasks} task runs after {args.before}: {len(commits)} commits, "
        f"{frames / args.tasks:.1f} pages written per task run "
        f"({frames / max(len(commits), 1):.1f} per commit)"
    )
    for name, count in per_task.most_common():
        print(f"  {name:<34} {count / args.tasks:6.2f}")


def _commits(wal: bytes, start: int, frames: bool = False) -> list[list[int]]:
    """The pages of each commit in the WAL from its frame number `start` on (a frame whose
    header gives the database size after it ends a commit), up to the first frame of an
    older generation of the file (its salts differ from the header's: the WAL started over
    since it was written). With `frames`, each valid frame as a commit of its own."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = wal[16:24]
    frame = _FRAME_HEADER + page_size
    offset = _WAL_HEADER + start * frame
    commits: list[list[int]] = []
    pages: list[int] = []
    while offset + frame <= len(wal) and wal[offset + 8 : offset + 16] == salts:
        page, size_after = struct.unpack(">II", wal[offset : offset + 8])
        pages.append(page)
        if size_after or frames:
            commits.append(pages)
            pages = []
        offset += frame
    return commits


if __name__ == "__main__":
    main()
