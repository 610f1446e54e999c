"""`stateward db backup` writes the copy under a temporary name beside the destination and
renames it into place only once it is complete and checked: a backup killed midway leaves no
destination (never a file a server would open as an empty database)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from stateward.v1 import orchestration_pb2 as pb
from tests.support import ROOT, ServerProcess, new_flow_run, wait_until


def backup_command(source: Path, destination: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stateward",
        "db",
        "backup",
        str(destination),
        "--db",
        str(source),
    ]


def large_database(path: Path, megabytes: int) -> None:
    """A Stateward database with `megabytes` of results, so that a copy takes a while."""
    server = ServerProcess(path).start()
    run = new_flow_run(server.stub(), flow_name="large")
    server.stop()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")  # the filler goes to the file once, not via a WAL
    with conn:
        conn.execute(
            """INSERT INTO states (id, run_id, type, name, timestamp, message, details,
                                   result_pickle)
               WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
               SELECT 'filler-' || i, ?, 6, 'Completed', i, '', '{}', randomblob(1048576)
               FROM n""",
            (megabytes, run.id),
        )
    conn.close()


def test_a_killed_backup_leaves_no_destination_and_the_next_one_is_whole(tmp_path):
    source = tmp_path / "source.db"
    large_database(source, 150)
    folder = tmp_path / "backups"
    folder.mkdir()
    destination = folder / "copy.db"
    process = subprocess.Popen(
        backup_command(source, destination),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it as soon as it has begun writing anything in the destination's folder.
        wait_until(lambda: any(folder.iterdir()), timeout=60, what="the backup to begin writing")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not destination.exists()
    leftovers = [p.name for p in folder.iterdir()]
    assert all(name.startswith(".copy.db.") for name in leftovers), leftovers

    began = time.monotonic()
    done = subprocess.run(
        backup_command(source, destination), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "integrity: ok" in done.stdout and time.monotonic() - began < 300
    restored = ServerProcess(destination).start()
    try:
        found = restored.stub().ListFlowRuns(pb.ListFlowRunsRequest(flow_names=["large"]))
        assert len(found.flow_runs) == 1
    finally:
        restored.stop()
    # The finished backup left no temporary file of its own.
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == sorted(leftovers)


def test_a_backup_never_replaces_an_existing_file(tmp_path):
    source = tmp_path / "source.db"
    ServerProcess(source).start().stop()
    destination = tmp_path / "taken.db"
    destination.write_bytes(b"precious")
    done = subprocess.run(
        backup_command(source, destination), cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode != 0 and "exists" in done.stderr + done.stdout
    assert destination.read_bytes() == b"precious"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".taken.db.")]


def test_a_database_in_a_folder_named_with_uri_characters_is_backed_up_whole(tmp_path):
    """The backup reads its source read-only through a SQLite URI, in which `#` starts a
    fragment: from a folder such as `c#` it backed up another file, `c` beside it, which it
    made empty, and said the empty copy was sound."""
    from datetime import UTC, datetime

    from stateward.runs import RunKind
    from stateward.states import State, StateType
    from stateward_service.model import RunRecord
    from stateward_service.orchestrator import Orchestrator
    from stateward_service.store import open_database

    folder = tmp_path / "c# 1?x=%41"
    folder.mkdir()
    source = folder / "source.db"
    orchestrator = Orchestrator(open_database(source))
    run = RunRecord(
        kind=RunKind.FLOW_RUN, id="", name="kept", created=datetime.now(UTC), flow_name="f"
    )
    made = orchestrator.create_run(run, State(StateType.PENDING), new_id=False)
    orchestrator.close()
    destination = tmp_path / "backup.db"
    done = subprocess.run(
        backup_command(source, destination), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    copy = sqlite3.connect(destination)
    assert copy.execute("SELECT id, name FROM flow_runs").fetchall() == [(made.id, "kept")]
    copy.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, destination.name])
