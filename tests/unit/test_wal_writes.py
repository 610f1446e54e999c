"""The system's notices of writes to a SQLite write-ahead log, on real files (Linux)."""

from __future__ import annotations

import os
import select
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


def readable(writes: WalWrites) -> bool:
    """Whether a wait on the notices would end now (the system queues a notice as the write is
    made: no wait is needed to see it)."""
    return bool(select.select([writes.fileno()], [], [], 0)[0])


def inotify_instances() -> int:
    """This process's inotify instances."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    return found


def test_the_readers_of_one_database_share_one_instance_and_each_is_told(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "a.db")
    before = inotify_instances()
    first = WalWrites.open(tmp_path / "a.db")
    second = WalWrites.open(tmp_path / "a.db")
    assert first is not None and second is not None
    try:
        assert inotify_instances() == before + 1
        conn.execute("INSERT INTO t VALUES (1)")
        assert readable(first) and readable(second)
        assert first.drain()  # it reads the instance's notices, for the second too
        assert readable(second) and second.drain()
        assert not readable(first) and not readable(second)
        first.close()
        assert inotify_instances() == before + 1
        conn.execute("INSERT INTO t VALUES (2)")
        assert second.drain()
    finally:
        first.close()
        second.close()
        conn.close()
    assert inotify_instances() == before


def test_writes_to_other_files_of_the_folder_wake_no_reader(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "a.db")
    other = wal_database(tmp_path / "b.db")
    server_log = (tmp_path / "server.log").open("a")
    writes = WalWrites.open(tmp_path / "a.db")
    assert writes is not None
    try:
        for number in range(10):  # a server's own log file beside its database
            server_log.write(f"line {number}\n")
            server_log.flush()
        other.execute("INSERT INTO t VALUES (1)")  # another database's log
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[2] >= 0  # the file
        assert not readable(writes)
        conn.execute("INSERT INTO t VALUES (1)")
        assert readable(writes) and writes.drain()
    finally:
        writes.close()
        server_log.close()
        conn.close()
        other.close()


def test_a_log_made_anew_is_told_of_and_its_writes_too(tmp_path: Path) -> None:
    conn = wal_database(tmp_path / "a.db")
    writes = WalWrites.open(tmp_path / "a.db")
    assert writes is not None
    try:
        conn.close()  # the last connection: SQLite checkpoints and deletes the log
        assert not (tmp_path / "a.db-wal").exists()
        writes.drain()
        conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
        conn.execute("INSERT INTO t VALUES (1)")  # a new log, made and written
        assert writes.drain()
        conn.execute("INSERT INTO t VALUES (2)")  # written through the new file's own watch
        assert readable(writes) and writes.drain()
    finally:
        writes.close()
        conn.close()
