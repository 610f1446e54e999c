"""The SQLite store: runs, their append-only state histories, the transitions log and the cache.

One connection per process, WAL mode; any number of processes share one file. Callers group
writes in `transaction()` (BEGIN IMMEDIATE: one writer at a time across every process): a state,
its run row and its log entry commit together or not at all, and the log's sequence, an integer
primary key, is handed out in commit order. `changed_elsewhere()` tells whether another connection
committed since this one last looked (SQLite's `data_version`), so that a process keeps its
cached rows only while they are true. The schema lives in `schema`, the row encoding in
`..rows`. This module knows nothing of gRPC.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from stateward.states import State
from stateward_service.model import RunRecord
from stateward_service.store.faults import StorageUnavailable, storage_unavailable
from stateward_service.store.interface import (
    ChangeSignal,
    DatabaseUnavailable,
    LeaderLock,
    WouldWait,
)
from stateward_service.store.rows import STATE_COLUMNS, to_us
from stateward_service.store.sql import SqlStore
from stateward_service.store.sqlite.checks import open_checked
from stateward_service.store.sqlite.leader import DataVersionSignal, FileLeaderLock
from stateward_service.store.sqlite.reader import StoreReader
from stateward_service.store.sqlite.schema import migrate
from stateward_service.store.sqlite.wal_writes import WalWrites

log = logging.getLogger("stateward.store")

_WRITER_CHECKPOINT_PAGES = 10_000  # about 40 MiB of WAL
_CHECKPOINT_TICK_SECONDS = 0.05  # how often the checkpointer looks for new commits
# A checkpoint once the WAL may hold this many frames not copied yet (about 16 MiB, at the
# rate the last checkpoints saw), and at most this long after the last one when anything was
# committed since. Each checkpoint costs two fsyncs whatever it copies, and a page written
# again before it is copied is copied once: one every tick cost about twice the checkpointer's
# CPU per task run, and far more at a few tasks a second.
_CHECKPOINT_FRAMES = 4_000
_CHECKPOINT_LONGEST_SECONDS = 0.25
_CHECKPOINT_RETRY_SECONDS = 1.0  # after a checkpoint that failed (a full disk, a failing one)
# The longest sleep while nothing is committed, where the system tells of writes to the WAL (a
# commit whose notice came before its header was written is copied at the next tick).
_CHECKPOINT_IDLE_SECONDS = 1.0


class _Checkpointer:
    """A thread that checkpoints the WAL every few milliseconds on its own connection, so that
    commits never wait for the copy and its fsyncs. A PASSIVE checkpoint takes no lock a writer
    or reader needs; once it has copied everything, the next commit starts the WAL over.

    Of the processes sharing the file, one checkpoints: the one whose checkpointer holds an
    flock on a file beside the database (the others try again at each tick, so one of them
    takes over within a tick when it exits). With every process checkpointing, three processes
    copied and synced three times as often as one, for nothing, and wrote less.

    Once everything committed is copied, it sleeps until the system tells of a write to the
    WAL (`WalWrites`, where there is such notice; a tick every `_CHECKPOINT_IDLE_SECONDS`
    all the same): an idle server's checkpointer woke 20 times a second for nothing."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous  # a checkpoint syncs as its connection says
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        self._stop_reading, self._stop_writing = os.pipe()  # wakes a sleep on the notices
        self.active = False  # this process's checkpointer is the one that checkpoints
        self.sleeping = False  # it waits for a write to the WAL (nothing is left to copy)
        self._thread = threading.Thread(target=self._run, name="stateward-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; once (a store closed twice stops it once)."""
        with self._stop_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        os.write(self._stop_writing, b"x")
        self._thread.join()
        os.close(self._stop_reading)
        os.close(self._stop_writing)

    def _wait(self, idle: bool, writes: WalWrites | None) -> bool:
        """Wait for the next tick or, when `idle`, for a write to the WAL (or the longest
        idle wait); False once stopping."""
        if not idle or writes is None:
            return not self._stopping.wait(_CHECKPOINT_TICK_SECONDS)
        self.sleeping = True
        ready, _, _ = select.select(
            [writes.fileno(), self._stop_reading], [], [], _CHECKPOINT_IDLE_SECONDS
        )
        self.sleeping = False
        if writes.fileno() in ready:
            writes.drain()
        return not self._stopping.is_set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        turn = self._open_turn()
        self.active = turn is None  # no file for turns (a read-only folder): checkpoint here
        pace = _CheckpointPace()
        failing = False  # the last checkpoint failed (said once, not at every try)
        writes = WalWrites.open(self._path)
        idle = False  # everything committed was copied at the last look
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            while self._wait(idle, writes):
                idle = False
                if not self.active:
                    assert turn is not None
                    self.active = _try_lock(turn)
                    if not self.active:
                        continue
                try:
                    # Another connection committed since the last look: its data version moved.
                    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
                    if not pace.due(version, time.monotonic()):
                        idle = pace.idle(version)
                        continue
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    pace.checkpointed(
                        version, time.monotonic(), int(frames), busy == 0 and frames == copied
                    )
                except sqlite3.Error as error:  # the commits checkpoint themselves meanwhile
                    # A full disk refuses every try until room is made: said once, and tried
                    # again every `_CHECKPOINT_RETRY_SECONDS`, not at every tick.
                    if not failing:
                        log.warning(
                            "could not checkpoint the database: %s (trying again every %g s)",
                            error,
                            _CHECKPOINT_RETRY_SECONDS,
                        )
                    failing = True
                    self._stopping.wait(_CHECKPOINT_RETRY_SECONDS)
                    continue
                if failing:
                    log.warning("the database checkpoints again")
                    failing = False
        finally:
            self.active = False
            if turn is not None:
                turn.close()  # lets another process's checkpointer take over
            if writes is not None:
                writes.close()
            conn.close()

    def _open_turn(self) -> IO[bytes] | None:
        try:
            return open(self._path.with_name(self._path.name + ".checkpointer"), "ab")
        except OSError as error:
            log.debug("no checkpointer turns beside %s: %s", self._path, error)
            return None


class _CheckpointPace:
    """When the checkpointer checkpoints: once the WAL may hold `_CHECKPOINT_FRAMES` frames
    not copied yet, at the rate the last two checkpoints saw it grow (so that under a steady
    stream of commits each copies about as much), and at most `_CHECKPOINT_LONGEST_SECONDS`
    after the last one; never while nothing was committed since a checkpoint that copied
    everything."""

    def __init__(self) -> None:
        self._version: int | None = None  # the data version at the last checkpoint
        self._at = float("-inf")  # when it ran
        self._frames = 0  # the frames the WAL held then
        self._copied_all = True
        self._rate = float("inf")  # frames a second, between the last two checkpoints

    def due(self, version: int, now: float) -> bool:
        """Whether to checkpoint now, the data version being `version`."""
        if version == self._version and self._copied_all:
            return False
        if not self._copied_all:
            return True  # a reader kept some frames from the last one: try again
        since = now - self._at
        return since >= _CHECKPOINT_LONGEST_SECONDS or self._rate * since >= _CHECKPOINT_FRAMES

    def idle(self, version: int) -> bool:
        """Whether nothing was committed since a checkpoint that copied everything (the data
        version being `version`): none is due until the next commit."""
        return version == self._version and self._copied_all

    def checkpointed(self, version: int, now: float, frames: int, copied_all: bool) -> None:
        """A checkpoint ran at `now`, the data version `version` before it, with `frames`
        frames in the WAL (copied or not)."""
        # A WAL that holds fewer frames than at the last checkpoint started over since.
        grown = frames - self._frames if frames >= self._frames else frames
        since = now - self._at
        self._rate = grown / since if since > 0 else float("inf")
        self._version, self._at, self._frames = version, now, frames
        self._copied_all = copied_all


def _try_lock(file: IO[bytes]) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


_BUSY_TIMEOUT_MS = 5_000  # how long a write waits for other processes' transactions

# A state's INSERT gives it the sequence its transition gets next (see `Store.append_transition`):
# one more than the newest in the log, the transaction holding the whole database.
_NEXT_SEQUENCE = "(SELECT coalesce(max(sequence), 0) + 1 FROM transitions)"
_INSERT_STATE = f"""INSERT INTO states (sequence, {STATE_COLUMNS}, run_id)
    VALUES ({_NEXT_SEQUENCE}, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_STATE_WITHOUT_RESULT = f"""INSERT INTO states
    (sequence, id, type, name, timestamp, message, details, run_id)
    VALUES ({_NEXT_SEQUENCE}, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_STATE_WITH_JSON = f"""INSERT INTO states
    (sequence, id, type, name, timestamp, message, details, result_json, run_id)
    VALUES ({_NEXT_SEQUENCE}, ?, ?, ?, ?, ?, ?, ?, ?)"""


_LOG_STATE = """INSERT INTO transitions
    (sequence, run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
_LOG_FIRST_STATE = """INSERT INTO transitions
    (sequence, run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type)
    VALUES (?, ?, ?, ?, NULL, ?, ?)"""


class _WriteTransaction:
    """`Store.transaction()`: a class, not a generator, as every write enters one; one for
    each `wait`, made once (it keeps nothing between its entry and its exit)."""

    __slots__ = ("_store", "_wait")

    def __init__(self, store: Store, wait: bool) -> None:
        self._store = store
        self._wait = wait

    def __enter__(self) -> None:
        store = self._store
        store._pending_log = []
        try:
            if self._wait:
                store._busy_timeout(_BUSY_TIMEOUT_MS)
                store.writes.execute("BEGIN IMMEDIATE")  # waits for other processes' writes
            else:
                store._begin_now()
        except BaseException as error:
            failure = store._abandon(error, began=False)
            if failure is not None:
                raise failure from error
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        store = self._store
        if error is not None:
            failure = store._abandon(error, began=True)
            if failure is not None:
                raise failure from error
            return  # the error goes on
        try:
            store.writes.execute("COMMIT")
        except BaseException as commit_error:
            failure = store._abandon(commit_error, began=True)
            if failure is not None:
                raise failure from commit_error
            raise
        store.unavailable = None


class Store(SqlStore):
    """One process's connection to a Stateward database shared with other processes."""

    INSERT_STATE = _INSERT_STATE
    INSERT_STATE_WITHOUT_RESULT = _INSERT_STATE_WITHOUT_RESULT
    INSERT_STATE_WITH_JSON = _INSERT_STATE_WITH_JSON

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        quick_check: bool = True,
    ) -> None:
        """Open (or create) the database at `path`. Before anything is written to it, the file
        is checked: a file that is not a SQLite database, is damaged (SQLite's quick check,
        unless `quick_check` is false), holds another application's tables or a newer schema
        raises DatabaseRefused; a new file another program holds locked raises
        DatabaseUnavailable."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = open_checked(self.path, quick_check)
        self.unavailable: StorageUnavailable | None = None
        self.conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        self._busy_ms = _BUSY_TIMEOUT_MS  # the connection's busy timeout (see `_busy_timeout`)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:  # a new file another program holds locked
            self.conn.close()
            raise DatabaseUnavailable(
                f"cannot open the database {self.path} ({error}): another program holds its "
                "lock (an open transaction in the sqlite3 shell?); try again once it lets go"
            ) from None
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        # The checkpointer thread copies the WAL into the database, off the write path; a
        # commit checkpoints itself only if the WAL grew this large all the same.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
        self.found_schema_version = migrate(self.conn)
        # The writer's own statements (BEGIN, COMMIT, the change counter, the INSERTs and
        # UPDATEs of a write) go through one cursor: `conn.execute` makes a cursor for each,
        # fourteen a task run. Its only results are one row (the counter; read whole, which
        # ends the statement) and `lastrowid`, taken before its next statement.
        self.writes = self.conn.cursor()
        self._data_version = self._read_data_version()
        self._pending_log: list[int] = []  # the sequences the transaction logged
        # The id and sequence of the state inserted last, which its transition logs next.
        self._state_sequence: tuple[str, int] = ("", 0)
        # `transaction(wait=...)`, by `wait` (False, True).
        self._transactions = (_WriteTransaction(self, False), _WriteTransaction(self, True))
        self._checkpointer = _Checkpointer(self.path, synchronous)

    def close(self) -> None:
        """Checkpoint the WAL into the database file (unless other processes are busy with it:
        then the last to close does) and close."""
        try:
            self._checkpointer.stop()
            self._busy_timeout(100)
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            log.debug("no checkpoint at close: %s", error)
        finally:
            self.conn.close()

    @property
    def checkpointing(self) -> bool:
        """Whether this process is the one that checkpoints the shared file."""
        return self._checkpointer.active

    def reader(self) -> StoreReader:
        return StoreReader(self.path)

    def changed_elsewhere(self) -> bool:
        """Whether another connection committed since the last call (or since opening)."""
        version = self._read_data_version()
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def _read_data_version(self) -> int:
        return int(self.writes.execute("PRAGMA data_version").fetchone()[0])

    def lock_runs(self, run_ids: Sequence[str]) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the whole database for writing."""

    def change_signal(self) -> ChangeSignal:
        """A poll of `data_version` on a connection of its own: cheap enough to run every few
        milliseconds, and true after any other connection's commit (this process's included)."""
        return DataVersionSignal(self.path)

    def leader_lock(self) -> LeaderLock:
        """The lock that elects the one process running the loops: a lock file beside the
        database, which the system releases when its holder dies."""
        return FileLeaderLock(self.path.with_name(self.path.name + ".leader"))

    def transaction(self, *, wait: bool = True) -> _WriteTransaction:
        """All writes inside commit together, or none does (a failed COMMIT included). A write
        the database cannot take for a reason outside the request (a full disk, a read-only
        file system, a failing disk, a lock held past the busy timeout) raises
        StorageUnavailable, and `unavailable` holds it until a transaction commits again.
        With `wait` false, another connection's write transaction raises WouldWait at once
        (its lock is not waited for)."""
        return self._transactions[wait]

    def _abandon(self, error: BaseException, began: bool) -> StorageUnavailable | None:
        """After `error` in a transaction: roll it back (if it began); the StorageUnavailable
        to raise in the error's place when the database cannot take writes, else None."""
        if began and self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            failure = storage_unavailable(error, self.path)
            if failure is not None:
                self.unavailable = failure
                return failure
        return None

    def _begin_now(self) -> None:
        """BEGIN IMMEDIATE without waiting: WouldWait if another connection writes. The busy
        timeout stays at 0 afterwards: the groups on the event loop begin this way one after
        another, and each switch costs a statement (two a group, a fifth of a task run's
        statements against a server). The waiting transactions set it back as they begin; the
        statements between transactions are reads, which in WAL mode wait for no lock while
        this process has the file open (SQLite's exceptions: a connection recovering the WAL
        after a crash, or the last one closing the file)."""
        self._busy_timeout(0)
        try:
            self.writes.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise WouldWait("another connection holds the write lock") from error
            raise

    def _busy_timeout(self, ms: int) -> None:
        """Make the connection wait up to `ms` for another connection's lock (a statement only
        when that changes it)."""
        if self._busy_ms != ms:
            self.conn.execute(f"PRAGMA busy_timeout={ms}")
            self._busy_ms = ms

    def probe(self, room: int = 0) -> None:
        """A write that changes nothing, to learn whether the database takes writes again:
        raises StorageUnavailable while it does not, or while its file system has less than
        `room` bytes free (a small write fits where a large one does not)."""
        stats = os.statvfs(self.path.parent)
        if stats.f_bavail * stats.f_frsize < room:
            failure = storage_unavailable(sqlite3.OperationalError(), self.path, full=True)
            assert failure is not None
            self.unavailable = failure
            raise failure
        with self.transaction():
            self.conn.execute("UPDATE schema_version SET version = version")

    # --- the dialect: the log's sequence, upserts ------------------------------------------------

    def _send(self, sql: str, params: Sequence[object] = ()) -> None:
        self.writes.execute(sql, params)

    def _insert_state_row(self, sql: str, params: Sequence[object]) -> None:
        cursor = self.writes.execute(sql, params)
        sequence = cursor.lastrowid
        assert sequence is not None
        self._state_sequence = (str(params[0]), int(sequence))

    def append_transition(self, run: RunRecord, from_state: State | None, to: State) -> None:
        """Log a written state, inserted just before (`insert_state`), at the sequence its row
        took: the integer primary key, one more than the newest in the log. The transaction
        holds the whole database, so numbers are handed out in commit order."""
        state_id, sequence = self._state_sequence
        if state_id != to.id:
            raise AssertionError(f"state {to.id} is logged, but state {state_id!r} was inserted")
        if from_state is None:  # a run's first state: NULL in the text, not bound (`_send`)
            self.writes.execute(
                _LOG_FIRST_STATE,
                (sequence, int(run.kind), run.id, run.owning_flow_run_id, to.id, int(to.type)),
            )
        else:
            self.writes.execute(
                _LOG_STATE,
                (
                    sequence,
                    int(run.kind),
                    run.id,
                    run.owning_flow_run_id,
                    from_state.id,
                    to.id,
                    int(to.type),
                ),
            )
        self._pending_log.append(sequence)

    def logged_sequences(self) -> list[int]:
        return list(self._pending_log)

    def cache_state(
        self, key: str, run: RunRecord, expiration: datetime | None, now: datetime
    ) -> None:
        """Keep the run's current state under `key`, by its sequence (states have no index by
        id): the run's newest state's."""
        assert run.state is not None
        self.conn.execute(
            """INSERT OR REPLACE INTO cache (key, state_id, expiration, created, state_sequence)
               VALUES (?, ?, ?, ?, (SELECT max(sequence) FROM states WHERE run_id = ?))""",
            (key, run.state.id, to_us(expiration), to_us(now), run.id),
        )

    def take_slots(self, run_id: str, tags: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO concurrency_slots (tag, run_id) VALUES (?, ?)",
            [(tag, run_id) for tag in tags],
        )


__all__ = ["Store"]
