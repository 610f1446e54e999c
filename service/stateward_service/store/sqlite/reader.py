"""Reads beside the writer, on read-only connections of their own: each snapshot sees one
consistent state of the SQLite file (WAL readers never wait for a writer, nor it for them)."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from stateward_service.store.sql import SnapshotReader, SqlReads


class StoreReader(SnapshotReader):
    """Any thread may read; each `snapshot()` borrows an idle connection (or opens one), so as
    many connections are open as reads ran at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _borrow(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        # The path quoted: in a URI, `#`, `?` and `%` in a folder's name would end or change it.
        conn = sqlite3.connect(
            f"file:{urllib.parse.quote(os.fspath(self.path))}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("the store reader is closed")
            self._connections.append(conn)
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[SqlReads]:
        """The read queries, all seeing the database as it was when the first one ran."""
        conn = self._borrow()
        try:
            conn.execute("BEGIN")
            try:
                yield _Snapshot(conn)
            finally:
                conn.execute("COMMIT")
        finally:
            self._idle.put(conn)

    def ping(self) -> bool:
        """Whether the database file answers a read now."""
        try:
            with self.snapshot() as db:
                db.last_sequence()
        except sqlite3.Error:
            return False
        return True

    def size_on_disk(self) -> int:
        """The database's bytes on disk, its write-ahead log included."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with suppress(OSError):  # no write-ahead log right now
                total += os.path.getsize(path)
        return total

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()


class _Snapshot(SqlReads):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


__all__ = ["StoreReader"]
