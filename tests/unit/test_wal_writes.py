"""The system's notices of writes to a SQLite write-ahead log, on real files (Linux)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from stateward_service.store.sqlite.wal_writes import WalWrites

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


def wal_database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    return conn


def test_a_commit_is_told_of_and_nothing_more_once_drained(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "a.db")
    writes = WalWrites.open(tmp_path / "a.db")
    assert writes is not None
    try:
        assert not writes.drain()  # nothing written since the watch began: no wait either
        conn.execute("INSERT INTO t VALUES (1)")
        assert writes.drain()
        assert not writes.drain()
        conn.execute("SELECT count(*) FROM t").fetchone()  # a read writes no log
        assert not writes.drain()
    finally:
        writes.close()
        conn.close()


def test_writes_to_other_files_of_the_folder_are_not_the_logs(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "a.db")
    other = wal_database(tmp_path / "b.db")
    writes = WalWrites.open(tmp_path / "a.db")
    assert writes is not None
    try:
        conn.execute("INSERT INTO t VALUES (1)")
        assert writes.drain()
        other.execute("INSERT INTO t VALUES (1)")  # another database's log
        assert not writes.drain()
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2] > 0
        assert not writes.drain()  # the checkpoint wrote the database file, read the log
        (tmp_path / "notes.txt").write_text("x")
        assert not writes.drain()
    finally:
        writes.close()
        conn.close()
        other.close()


def test_a_folder_that_cannot_be_watched_gives_no_notices(tmp_path: Path) -> None:
    assert WalWrites.open(tmp_path / "missing" / "a.db") is None


def test_a_database_reached_through_a_symlink_is_told_of(tmp_path: Path) -> None:
    # SQLite follows the link: the log is beside the file linked to, under its name.
    (tmp_path / "real").mkdir()
    (tmp_path / "link.db").symlink_to(tmp_path / "real" / "a.db")
    conn = wal_database(tmp_path / "link.db")
    writes = WalWrites.open(tmp_path / "link.db")
    assert writes is not None
    try:
        conn.execute("INSERT INTO t VALUES (1)")
        assert (tmp_path / "real" / "a.db-wal").exists()
        assert writes.drain()
    finally:
        writes.close()
        conn.close()
