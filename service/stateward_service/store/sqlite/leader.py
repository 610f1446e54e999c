"""How the processes sharing a SQLite file coordinate beyond transactions: the leader lock (an
exclusive `flock` on a file beside the database, which the system releases when its holder exits
or dies) and the change signal of log followers (SQLite's `data_version`)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from stateward_service.store.sql import SqlReads
from stateward_service.store.sqlite.wal_writes import WalWrites


class FileLeaderLock:
    """Held by at most one open file at a time (two in one process exclude each other too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this object holds it."""
        if self._handle is not None:
            return True
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while leading
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def held(self) -> bool:
        """Whether this object still holds the lock (a file lock is never taken away)."""
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None


class DataVersionSignal:
    """Polls `PRAGMA data_version` on a connection of its own: it changes whenever another
    connection commits. Then the log's newest sequence says whether the commit logged anything
    the caller has not seen: this process's own commits, published without a read, do not wake
    it.

    What it costs on this machine (2 cores, `bench/change_signal.py`: medians of 2,000, six
    runs at load 5-14): a `poll` that finds no change 7-10 us, one after another connection's
    commit 38-44 us (the newest sequence is read too, through a page cache the commit emptied).
    A `wait` sleeps first, and its wake costs the thread 52-73 us of CPU beside the poll (and
    comes 120-160 us after the timeout): a follower that asks every few milliseconds asks
    `poll` from its event loop's timer instead (see `stateward_service.follower`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._version = self._read()
        self._closed = threading.Event()
        self._writes: WalWrites | None = None
        self._writes_opened = False

    def _read(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout: float, seen: Callable[[], int]) -> bool:
        if self._closed.wait(timeout):
            return False
        return self.poll(seen)

    def poll(self, seen: Callable[[], int]) -> bool:
        """At once: whether another connection committed since the last ask and the log now
        holds a sequence after `seen()`. Asked from one thread at a time."""
        version = self._read()
        if version == self._version:
            return False
        self._version = version
        newest = int(self._conn.execute(SqlReads.LAST_SEQUENCE).fetchone()[0])
        return newest > seen()

    def writes(self) -> WalWrites | None:
        """The system's notices of writes to the write-ahead log (made on the first ask; None
        where there are none): every commit, of any process, writes it."""
        if not self._writes_opened:
            self._writes_opened = True
            self._writes = WalWrites.open(self._path)
        return self._writes

    def close(self) -> None:
        self._closed.set()
        self._conn.close()
        if self._writes is not None:
            self._writes.close()
