"""A database file the server must not use: not SQLite at all, truncated, damaged inside a page,
another application's, or made by a newer Stateward. `server start` prints one line saying what
is wrong and what to do, exits non-zero and leaves the file as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stateward.v1 import orchestration_pb2 as pb
from tests.support import ROOT, ServerProcess, new_flow_run


def start(db: Path, *args: str) -> tuple[int, list[str]]:
    """Run `stateward server start` on `db`, expecting it to exit at once. Its ports are free
    ones: the web view's default (8471) is checked before the database is opened, so a process
    holding it (another test run, a `stateward ui`) would be what the refusal names."""
    result = subprocess.run(
        [sys.executable, "-m", "stateward", "server", "start", "--port", "0", "--ui-port", "0",
         "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "STATEWARD_HOME": str(db.parent)},
    )  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).strip().splitlines()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sound_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stateward database with a few hundred runs, written by a real server and compacted
    (so that its last page holds data)."""
    db = tmp_path_factory.mktemp("sound") / "sound.db"
    server = ServerProcess(db).start()
    stub = server.stub()
    for index in range(300):
        new_flow_run(stub, flow_name=f"flow-{index}", tags=["a", "b"])
    server.stop()
    conn = sqlite3.connect(db)
    conn.execute("VACUUM")
    conn.close()  # the last connection checkpoints the WAL into the file and removes it
    assert not db.with_name(db.name + "-wal").exists()
    return db


def copy_of(sound: Path, tmp_path: Path) -> Path:
    db = tmp_path / "copy.db"
    shutil.copyfile(sound, db)
    return db


def assert_refused(db: Path, *words: str, args: tuple[str, ...] = ()) -> None:
    before = digest(db)
    code, lines = start(db, *args)
    assert code != 0
    assert len(lines) == 1, lines  # one line, no traceback
    assert str(db) in lines[0] and all(word in lines[0] for word in words), lines[0]
    assert digest(db) == before  # untouched
    assert not db.with_name(db.name + "-wal").exists()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    db = tmp_path / "garbage.db"
    db.write_bytes(os.urandom(64 * 1024))
    assert_refused(db, "is not a SQLite database", "backup")


def test_a_truncated_database_is_refused(sound_database, tmp_path):
    db = copy_of(sound_database, tmp_path)
    with open(db, "r+b") as handle:
        handle.truncate(db.stat().st_size // 2)
    assert_refused(db, "restore it from a backup")


def test_a_database_damaged_inside_its_last_page_is_refused_unless_the_check_is_skipped(
    sound_database, tmp_path
):
    db = copy_of(sound_database, tmp_path)
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    size = db.stat().st_size
    with open(db, "r+b") as handle:  # scribble over the last page, its header included
        handle.seek(size - page_size)
        handle.write(b"\xa5" * page_size)
    assert_refused(db, "is damaged")
    # The check can be skipped (a server then starts on the file as it is).
    server = ServerProcess(db, args=["--no-quick-check"]).start()
    server.stop()


def test_another_applications_database_is_refused(tmp_path):
    db = tmp_path / "notes.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        conn.execute("CREATE TABLE schema_version (version INTEGER)")  # a common name
        conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.close()
    assert_refused(db, "another application", "notes", "new path")


def test_a_database_of_a_newer_stateward_is_refused(sound_database, tmp_path):
    db = copy_of(sound_database, tmp_path)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()  # the change reaches the file itself, not only the WAL
    assert_refused(db, "schema version 99", "upgrade")


def test_an_empty_file_is_a_new_database(tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    server = ServerProcess(db).start()
    run = new_flow_run(server.stub())
    assert server.stub().GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.id == run.id
    server.stop()
