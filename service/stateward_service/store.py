"""The SQLite store: runs, their append-only state histories, the transitions log and the cache.

One connection, one writer (a lock file keeps a second server off the same database), WAL mode;
readers (`StoreReader`) read beside it on connections of their own. Callers group writes in
`transaction()`: a state, its run row and its log entry commit together or not at all. The
schema is created and upgraded through sqlite-utils, one numbered migration at a time, recorded
in the `schema_version` table. This module knows nothing of gRPC.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from stateward.runs import ConcurrencyLimit, LogEntry, RetryPolicy, RunKind, Transition
from stateward.states import TERMINAL_TYPES, ResultData, State, StateDetails, StateType
from stateward.wire import StatusCode
from stateward_service.errors import ServiceError
from stateward_service.model import RunRecord

# A page of a listing stops before this many bytes of runs or states (their text and results),
# below the 4 MiB a gRPC client receives by default; it holds one item at least.
PAGE_BYTES = 3 * 1024 * 1024
_STATES = 0  # the kind a page token of states carries (runs carry their RunKind)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(value: datetime | None) -> int | None:
    """A datetime as integer microseconds since the epoch (how the store keeps times)."""
    return None if value is None else (value - EPOCH) // _US


def from_us(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


class DatabaseInUse(Exception):
    """Another server holds the database."""


class DatabaseRefused(Exception):
    """The database file cannot be used as it is: it is not a SQLite database, it is damaged,
    it belongs to another application, or a newer Stateward made it. Nothing was written to it;
    the message says what is wrong and what to do."""


class StorageUnavailable(ServiceError):
    """The database cannot take writes for now, for a reason outside any request: its disk is
    full (RESOURCE_EXHAUSTED), or its file system is read-only, another program holds its lock
    or its disk fails (UNAVAILABLE). Nothing was written; the message names the cause."""

    def __init__(self, message: str, *, full: bool) -> None:
        code = StatusCode.RESOURCE_EXHAUSTED if full else StatusCode.UNAVAILABLE
        super().__init__(code, message, reason="STORAGE_FULL" if full else "STORAGE_UNAVAILABLE")
        self.full = full


# SQLite's primary result codes for a database that cannot take writes.
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 13, 14


def storage_unavailable(
    error: sqlite3.Error, path: Path, *, full: bool = False
) -> StorageUnavailable | None:
    """The StorageUnavailable a SQLite error stands for (or a full disk, when `full`), or None
    for any other error."""
    code = _SQLITE_FULL if full else getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        # An I/O error says no more; the file system does.
        try:
            stats = os.statvfs(path.parent)
        except OSError:
            stats = None
        if stats is not None and stats.f_flag & os.ST_RDONLY:
            primary = _SQLITE_READONLY
        elif stats is not None and stats.f_bavail == 0:
            primary = _SQLITE_FULL
    if primary == _SQLITE_FULL:
        return StorageUnavailable(
            f"the disk holding the database {path} is full: free space there (writes work "
            "again as soon as there is room)",
            full=True,
        )
    if primary in (_SQLITE_READONLY, _SQLITE_PERM):
        return StorageUnavailable(
            f"the database {path} is read-only (its file, folder or file system): make it "
            "writable again",
            full=False,
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StorageUnavailable(
            f"the database {path} is locked by another program: end that program's "
            "transaction (Stateward waits 5 s for a lock)",
            full=False,
        )
    if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
        return StorageUnavailable(
            f"the database {path} could not be written ({error}): check its disk", full=False
        )
    return None


class BadPageToken(ValueError):
    """A page token that this store did not make for these filters."""


# --- schema -------------------------------------------------------------------------------------

_RUN_COLUMNS: dict[str, Any] = {
    "id": str,
    "name": str,
    "parameters": str,
    "tags": str,
    "retries": int,
    "retry_delays": str,
    "retry_jitter": float,
    "state_id": str,
    "state_type": int,
    "state_name": str,
    "run_count": int,
    "start_time": int,
    "end_time": int,
    "total_run_time": float,
    "expected_start_time": int,
    "next_scheduled_start_time": int,
    "created": int,
}


def _migrate_to_1(db: sqlite_utils.Database) -> None:
    """Runs, states, the transitions log and the cache."""
    run_defaults = {
        "parameters": "{}",
        "tags": "[]",
        "retries": 0,
        "retry_delays": "[]",
        "retry_jitter": 0.0,
        "run_count": 0,
        "total_run_time": 0.0,
    }
    not_null = {"id", "name", "parameters", "tags", "run_count", "total_run_time", "created"}
    db.table("flow_runs").create(
        {**_RUN_COLUMNS, "flow_name": str, "parent_task_run_id": str},
        pk="id",
        not_null=not_null | {"flow_name"},
        defaults=run_defaults,
    )
    db.table("flow_runs").create_index(["flow_name"])
    db.table("flow_runs").create_index(["parent_task_run_id"])
    db.table("task_runs").create(
        {**_RUN_COLUMNS, "task_key": str, "flow_run_id": str, "child_flow_run_id": str},
        pk="id",
        not_null=not_null | {"task_key"},
        defaults=run_defaults,
    )
    db.table("task_runs").create_index(["flow_run_id"])
    db.table("states").create(
        {
            "id": str,
            "run_id": str,
            "type": int,
            "name": str,
            "timestamp": int,
            "message": str,
            "details": str,
            "result_json": str,
            "result_pickle": bytes,
        },
        pk="id",
        not_null={"run_id", "type", "name", "timestamp", "message", "details"},
    )
    db.table("states").create_index(["run_id", "timestamp"])
    # AUTOINCREMENT: a sequence is never handed out twice, even after the log is pruned.
    db.execute(
        """CREATE TABLE transitions (
            sequence INTEGER PRIMARY KEY AUTOINCREMENT,
            run_kind INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            flow_run_id TEXT NOT NULL,
            from_state_id TEXT,
            to_state_id TEXT NOT NULL,
            to_type INTEGER NOT NULL
        )"""
    )
    db.table("cache").create(
        {"key": str, "state_id": str, "expiration": int, "created": int},
        pk="key",
        not_null={"state_id", "created"},
    )


def _migrate_to_2(db: sqlite_utils.Database) -> None:
    """Tag concurrency limits and their slots, pause keys, heartbeat leases, and the indexes the
    server's loops query by."""
    db.table("concurrency_limits").create(
        {"tag": str, "lim": int, "created": int}, pk="tag", not_null={"lim", "created"}
    )
    db.table("concurrency_slots").create({"tag": str, "run_id": str}, pk=("tag", "run_id"))
    db.table("concurrency_slots").create_index(["run_id"])
    db.table("flow_runs").add_column("pause_keys", str, not_null_default="[]")
    for table in ("flow_runs", "task_runs"):
        db.table(table).add_column("lease_expires", int)
        db.table(table).create_index(["state_type"])


def _migrate_to_3(db: sqlite_utils.Database) -> None:
    """Run logs: the lines runs logged, numbered in the order they were stored."""
    db.execute(
        """CREATE TABLE run_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            flow_run_id TEXT NOT NULL,
            task_run_id TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            level INTEGER NOT NULL,
            logger TEXT NOT NULL,
            message TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX run_logs_flow_run ON run_logs (flow_run_id, id)")
    db.execute("CREATE INDEX run_logs_task_run ON run_logs (task_run_id, id)")


MIGRATIONS: Sequence[Callable[[sqlite_utils.Database], None]] = (
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database, target: int = SCHEMA_VERSION) -> int:
    """Bring the database's schema up to `target`, one migration per transaction. Returns the
    version it found."""
    if "schema_version" not in db.table_names():
        db.table("schema_version").create({"version": int}, not_null={"version"})
        db.table("schema_version").insert({"version": 0})
    row = db.execute("SELECT version FROM schema_version").fetchone()
    found = int(row[0])
    if found > SCHEMA_VERSION:
        raise DatabaseRefused(
            f"the database has schema version {found}, newer than this Stateward "
            f"({SCHEMA_VERSION}); upgrade Stateward to open it"
        )
    for version in range(found + 1, target + 1):
        with db.conn:
            db.conn.execute("BEGIN IMMEDIATE")
            MIGRATIONS[version - 1](db)
            db.conn.execute("UPDATE schema_version SET version = ?", (version,))
    return found


# --- the store ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Filters of a run listing; empty fields match everything."""

    names: tuple[str, ...] = ()  # flow names or task keys
    flow_run_ids: tuple[str, ...] = ()
    state_types: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    # Runs created at or after `created_after` and before `created_before`.
    created_after: datetime | None = None
    created_before: datetime | None = None

    def fingerprint(self) -> str:
        """A short digest of the filters, carried by page tokens (whatever the filters' size)."""
        text = json.dumps(
            [
                self.names,
                self.flow_run_ids,
                self.state_types,
                self.tags,
                self.ids,
                to_us(self.created_after),
                to_us(self.created_before),
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


_STATE_COLUMNS = "id, type, name, timestamp, message, details, result_json, result_pickle"


log = logging.getLogger("stateward.store")

_WRITER_CHECKPOINT_PAGES = 10_000  # about 40 MiB of WAL
_CHECKPOINT_INTERVAL_SECONDS = 0.05


class _Checkpointer:
    """A thread that checkpoints the WAL every few milliseconds on its own connection, so that
    commits never wait for the copy and its fsyncs. A PASSIVE checkpoint takes no lock a writer
    or reader needs; once it has copied everything, the next commit starts the WAL over."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous  # a checkpoint syncs as its connection says
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stateward-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            while not self._stopping.wait(_CHECKPOINT_INTERVAL_SECONDS):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as error:  # the commits checkpoint themselves meanwhile
                    log.warning("could not checkpoint the database: %s", error)
        finally:
            conn.close()


class _Reads:
    """The queries that only read: the writer runs them on its connection, inside or outside a
    transaction; a `StoreReader` runs them on a read-only connection, in a snapshot."""

    conn: sqlite3.Connection

    # --- runs and states ------------------------------------------------------------------------

    def get_run(self, run_id: str, kind: RunKind | None = None) -> RunRecord | None:
        """The run with its current state, or None."""
        kinds = (kind,) if kind is not None else (RunKind.FLOW_RUN, RunKind.TASK_RUN)
        for candidate in kinds:
            cursor = self.conn.execute(
                f"""SELECT r.*, {_prefixed_state_columns("s")} FROM {_table(candidate)} r
                    LEFT JOIN states s ON s.id = r.state_id WHERE r.id = ?""",
                (run_id,),
            )
            row = cursor.fetchone()
            if row is not None:
                return _run_from_row(candidate, cursor.description, row)
        return None

    def list_runs(
        self,
        kind: RunKind,
        where: RunFilter,
        page_size: int,
        page_token: str,
        budget: int = PAGE_BYTES,
    ) -> tuple[list[RunRecord], str]:
        """A page of runs, newest first, and the token of the next page ("" at the end). The
        page ends after `page_size` runs, or before the run that would take it past `budget`
        bytes (it holds one run at least)."""
        fingerprint = where.fingerprint()
        clauses: list[str] = []
        params: list[Any] = []
        if page_token:
            clauses.append("r.rowid < ?")
            params.append(_decode_page_token(page_token, int(kind), fingerprint))
        name_column = "flow_name" if kind is RunKind.FLOW_RUN else "task_key"
        for column, values in (
            (name_column, where.names),
            ("id", where.ids),
            ("state_type", where.state_types),
        ):
            if values:
                clauses.append(f"r.{column} IN ({', '.join('?' for _ in values)})")
                params.extend(values)
        if where.flow_run_ids and kind is RunKind.TASK_RUN:
            clauses.append(f"r.flow_run_id IN ({', '.join('?' for _ in where.flow_run_ids)})")
            params.extend(where.flow_run_ids)
        if where.tags:
            # One clause for every tag (a clause per tag nests too deep for SQLite's parser at
            # a thousand): the run holds as many of the wanted tags as there are.
            wanted = tuple(dict.fromkeys(where.tags))
            clauses.append(
                "(SELECT count(DISTINCT value) FROM json_each(r.tags) "
                f"WHERE value IN ({', '.join('?' for _ in wanted)})) = ?"
            )
            params.extend((*wanted, len(wanted)))
        if where.created_after is not None:
            clauses.append("r.created >= ?")
            params.append(to_us(where.created_after))
        if where.created_before is not None:
            clauses.append("r.created < ?")
            params.append(to_us(where.created_before))
        sql = f"""SELECT r.rowid AS _rowid, r.*, {_prefixed_state_columns("s")}
                  FROM {_table(kind)} r LEFT JOIN states s ON s.id = r.state_id"""
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY r.rowid DESC LIMIT ?"
        params.append(page_size + 1)
        cursor = self.conn.execute(sql, params)
        description = cursor.description[1:]
        rows, more = _page(cursor, page_size, budget)
        runs = [_run_from_row(kind, description, row[1:]) for row in rows]
        next_token = _encode_page_token(rows[-1][0], int(kind), fingerprint) if more else ""
        return runs, next_token

    def page_of_states(
        self, run_id: str, page_size: int, page_token: str, budget: int = PAGE_BYTES
    ) -> tuple[list[State], str]:
        """A page of a run's states, oldest first, and the token of the next page ("" at the
        end): at most `page_size` states, stopping before the state that would take the page
        past `budget` bytes (one state at least)."""
        fingerprint = _digest(run_id)
        after = _decode_page_token(page_token, _STATES, fingerprint) if page_token else -(2**63)
        cursor = self.conn.execute(
            f"""SELECT timestamp, {_STATE_COLUMNS} FROM states
                WHERE run_id = ? AND timestamp > ? ORDER BY timestamp LIMIT ?""",
            (run_id, after, page_size + 1),
        )
        rows, more = _page(cursor, page_size, budget)
        states = [_state_from_row(row[1:]) for row in rows]
        next_token = _encode_page_token(rows[-1][0], _STATES, fingerprint) if more else ""
        return states, next_token

    def list_states(self, run_id: str) -> list[State]:
        rows = self.conn.execute(
            f"SELECT {_STATE_COLUMNS} FROM states WHERE run_id = ? ORDER BY timestamp",
            (run_id,),
        ).fetchall()
        return [_state_from_row(row) for row in rows]

    def last_sequence(self) -> int:
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transitions'")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """Matching transitions above `after` (at most `limit`), with the log's oldest and newest
        sequences (0 and 0 when the log is empty). When fewer than `limit` come back, everything
        up to the newest was read (in a snapshot: see `StoreReader`)."""
        oldest, newest = self.conn.execute(
            "SELECT coalesce(min(sequence), 0), coalesce(max(sequence), 0) FROM transitions"
        ).fetchone()
        rows = _read_transitions(self.conn, after, limit, run_ids, flow_run_ids, state_types)
        return rows, oldest, newest

    # --- what the server's loops look for -------------------------------------------------------

    def runs_in_state(
        self, kind: RunKind, state_type: StateType, name: str | None = None
    ) -> list[tuple[str, State]]:
        """(run id, current state) of the runs whose current state has this type (and name)."""
        sql = f"""SELECT r.id, {_prefixed_state_columns("s")} FROM {_table(kind)} r
                  JOIN states s ON s.id = r.state_id WHERE r.state_type = ?"""
        params: list[Any] = [int(state_type)]
        if name is not None:
            sql += " AND r.state_name = ?"
            params.append(name)
        return [(row[0], _state_from_row(row[1:])) for row in self.conn.execute(sql, params)]

    def unfinished_children(self, flow_run_id: str) -> list[tuple[RunKind, str]]:
        """The task runs and subflows of a flow run that are not in a terminal state."""
        terminal = tuple(int(t) for t in TERMINAL_TYPES)
        marks = ", ".join("?" for _ in terminal)
        rows = self.conn.execute(
            f"""SELECT 2, id FROM task_runs WHERE flow_run_id = ?
                  AND (state_type IS NULL OR state_type NOT IN ({marks}))
                UNION ALL
                SELECT 1, f.id FROM flow_runs f JOIN task_runs t ON t.id = f.parent_task_run_id
                WHERE t.flow_run_id = ?
                  AND (f.state_type IS NULL OR f.state_type NOT IN ({marks}))""",
            (flow_run_id, *terminal, flow_run_id, *terminal),
        ).fetchall()
        return [(RunKind(kind), run_id) for kind, run_id in rows]

    def flow_runs_cancelled_with_unfinished_children(self) -> list[str]:
        terminal = tuple(int(t) for t in TERMINAL_TYPES)
        marks = ", ".join("?" for _ in terminal)
        rows = self.conn.execute(
            f"""SELECT DISTINCT f.id FROM flow_runs f WHERE f.state_type = ? AND (
                  EXISTS (SELECT 1 FROM task_runs t WHERE t.flow_run_id = f.id
                          AND (t.state_type IS NULL OR t.state_type NOT IN ({marks})))
                  OR EXISTS (SELECT 1 FROM task_runs t
                          JOIN flow_runs c ON c.parent_task_run_id = t.id
                          WHERE t.flow_run_id = f.id
                          AND (c.state_type IS NULL OR c.state_type NOT IN ({marks}))))""",
            (int(StateType.CANCELLED), *terminal, *terminal),
        ).fetchall()
        return [row[0] for row in rows]

    def list_logs(self, kind: RunKind, run_id: str, after_id: int, limit: int) -> list[LogEntry]:
        """A flow run's log lines (its task runs' too) or a task run's, after `after_id`."""
        column = "flow_run_id" if kind is RunKind.FLOW_RUN else "task_run_id"
        rows = self.conn.execute(
            f"""SELECT id, flow_run_id, task_run_id, timestamp, level, logger, message
                FROM run_logs WHERE {column} = ? AND id > ? ORDER BY id LIMIT ?""",
            (run_id, after_id, limit),
        ).fetchall()
        return [
            LogEntry(
                flow_run_id=flow_run_id,
                task_run_id=task_run_id,
                timestamp=EPOCH + timestamp * _US,
                level=level,
                logger=logger,
                message=message,
                id=entry_id,
            )
            for entry_id, flow_run_id, task_run_id, timestamp, level, logger, message in rows
        ]

    def runs_with_lapsed_lease(self, before: datetime) -> list[tuple[RunKind, str]]:
        """Runs RUNNING or CANCELLING whose heartbeat lease ended before `before`."""
        found: list[tuple[RunKind, str]] = []
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            rows = self.conn.execute(
                f"""SELECT id FROM {_table(kind)} WHERE state_type IN (?, ?)
                    AND lease_expires IS NOT NULL AND lease_expires < ?""",
                (int(StateType.RUNNING), int(StateType.CANCELLING), to_us(before)),
            ).fetchall()
            found.extend((kind, row[0]) for row in rows)
        return found


class Store(_Reads):
    """The one writer of a Stateward database."""

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
        raises DatabaseRefused; another server holding it raises DatabaseInUse."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_database(self.path)
        try:
            self.conn = _open_checked(self.path, quick_check)
        except BaseException:
            self._lock_file.close()
            raise
        self.unavailable: StorageUnavailable | None = None
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        # The checkpointer thread copies the WAL into the database, off the write path; a
        # commit checkpoints itself only if the WAL grew this large all the same.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={_WRITER_CHECKPOINT_PAGES}")
        self.db = sqlite_utils.Database(self.conn)
        self.found_schema_version = migrate(self.db)
        self._checkpointer = _Checkpointer(self.path, synchronous)

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close."""
        try:
            self._checkpointer.stop()
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.conn.close()
            self._lock_file.close()

    def size_on_disk(self) -> int:
        """The database's bytes on disk, its write-ahead log included."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(OSError):  # no write-ahead log right now
                total += os.path.getsize(path)
        return total

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together, or none does (a failed COMMIT included). A write
        the database cannot take for a reason outside the request (a full disk, a read-only
        file system, another program's lock, a failing disk) raises StorageUnavailable, and
        `unavailable` holds it until a transaction commits again."""
        began = False
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            began = True
            yield
            self.conn.execute("COMMIT")
        except BaseException as error:
            if began and self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                failure = storage_unavailable(error, self.path)
                if failure is not None:
                    self.unavailable = failure
                    raise failure from error
            raise
        self.unavailable = None

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

    # --- runs -----------------------------------------------------------------------------------

    def run_exists(self, run_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM flow_runs WHERE id = ? UNION ALL SELECT 1 FROM task_runs WHERE id = ?",
            (run_id, run_id),
        ).fetchone()
        return row is not None

    def insert_run(self, run: RunRecord) -> None:
        row = _run_row(run)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.conn.execute(
            f"INSERT INTO {_table(run.kind)} ({columns}) VALUES ({marks})", tuple(row.values())
        )

    def update_run(self, run: RunRecord) -> None:
        """Write the run's mutable fields (state, bookkeeping, pause keys, lease)."""
        state = run.state
        values: tuple[object, ...] = (
            state.id if state else None,
            int(state.type) if state else None,
            state.name if state else None,
            run.run_count,
            to_us(run.start_time),
            to_us(run.end_time),
            run.total_run_time,
            to_us(run.expected_start_time),
            to_us(run.next_scheduled_start_time),
            to_us(run.lease_expires),
        )
        columns = """state_id = ?, state_type = ?, state_name = ?, run_count = ?, start_time = ?,
            end_time = ?, total_run_time = ?, expected_start_time = ?,
            next_scheduled_start_time = ?, lease_expires = ?"""
        if run.kind is RunKind.FLOW_RUN:
            columns += ", pause_keys = ?"
            values += (json.dumps(sorted(run.pause_keys)),)
        self.conn.execute(
            f"UPDATE {_table(run.kind)} SET {columns} WHERE id = ?", (*values, run.id)
        )

    def link_subflow(self, task_run_id: str, flow_run_id: str) -> None:
        """Record on a task run that it stands for the subflow `flow_run_id`."""
        self.conn.execute(
            "UPDATE task_runs SET child_flow_run_id = ? WHERE id = ?", (flow_run_id, task_run_id)
        )

    # --- states and transitions -----------------------------------------------------------------

    def insert_state(self, run_id: str, state: State) -> None:
        data = state.data
        self.conn.execute(
            f"INSERT INTO states ({_STATE_COLUMNS}, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                state.id,
                int(state.type),
                state.name,
                to_us(state.timestamp),
                state.message,
                _details_json(state.details),
                data.json if data else None,
                data.pickle if data else None,
                run_id,
            ),
        )

    def append_transition(self, run: RunRecord, from_state: State | None, to: State) -> int:
        """Log a written state; returns its sequence."""
        cursor = self.conn.execute(
            """INSERT INTO transitions
               (run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (
                int(run.kind),
                run.id,
                run.owning_flow_run_id,
                from_state.id if from_state else None,
                to.id,
                int(to.type),
            ),
        )
        sequence = cursor.lastrowid
        assert sequence is not None
        return sequence

    def prune_log(self, keep: int) -> int:
        """Delete all but the newest `keep` transitions from the log; returns how many went."""
        cursor = self.conn.execute(
            "DELETE FROM transitions WHERE sequence <= (SELECT max(sequence) FROM transitions) - ?",
            (keep,),
        )
        return cursor.rowcount

    # --- cache ----------------------------------------------------------------------------------

    def insert_logs(self, entries: Sequence[LogEntry]) -> None:
        self.conn.executemany(
            """INSERT INTO run_logs (flow_run_id, task_run_id, timestamp, level, logger, message)
                VALUES (?, ?, ?, ?, ?, ?)""",
            [
                (e.flow_run_id, e.task_run_id, to_us(e.timestamp), e.level, e.logger, e.message)
                for e in entries
            ],
        )

    def prune_run_logs(self, keep: int) -> int:
        """Delete all but the newest `keep` log lines; returns how many went."""
        cursor = self.conn.execute(
            "DELETE FROM run_logs WHERE id <= (SELECT max(id) FROM run_logs) - ?", (keep,)
        )
        return cursor.rowcount

    def cached_state(self, key: str, now: datetime) -> State | None:
        row = self.conn.execute(
            f"""SELECT {_prefixed_state_columns("s")}, c.expiration FROM cache c
                JOIN states s ON s.id = c.state_id
                WHERE c.key = ? AND (c.expiration IS NULL OR c.expiration > ?)""",
            (key, to_us(now)),
        ).fetchone()
        if row is None:
            return None
        state = _state_from_row(row[:-1])
        return state.with_details(cache_expiration=from_us(row[-1]))

    def cache_state(
        self, key: str, state_id: str, expiration: datetime | None, now: datetime
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO cache (key, state_id, expiration, created) VALUES (?, ?, ?, ?)",
            (key, state_id, to_us(expiration), to_us(now)),
        )

    # --- tag concurrency limits -----------------------------------------------------------------

    def limit_usage(self, run_id: str, tags: Sequence[str]) -> list[tuple[str, int, int, bool]]:
        """For each limit on one of `tags`: (tag, limit, slots taken, whether the run holds one)."""
        marks = ", ".join("?" for _ in tags)
        rows = self.conn.execute(
            f"""SELECT l.tag, l.lim,
                  (SELECT count(*) FROM concurrency_slots s WHERE s.tag = l.tag),
                  EXISTS (SELECT 1 FROM concurrency_slots s WHERE s.tag = l.tag AND s.run_id = ?)
                FROM concurrency_limits l WHERE l.tag IN ({marks}) ORDER BY l.tag""",
            (run_id, *tags),
        ).fetchall()
        return [(tag, limit, active, bool(held)) for tag, limit, active, held in rows]

    def take_slots(self, run_id: str, tags: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO concurrency_slots (tag, run_id) VALUES (?, ?)",
            [(tag, run_id) for tag in tags],
        )

    def release_slots(self, run_id: str) -> None:
        self.conn.execute("DELETE FROM concurrency_slots WHERE run_id = ?", (run_id,))

    def release_stale_slots(self) -> int:
        """Free the slots of runs that are not RUNNING (none should exist; a safety net)."""
        cursor = self.conn.execute(
            """DELETE FROM concurrency_slots WHERE run_id NOT IN
               (SELECT id FROM task_runs WHERE state_type = ?)""",
            (int(StateType.RUNNING),),
        )
        return cursor.rowcount

    def insert_limit(self, tag: str, limit: int, created: datetime) -> None:
        self.conn.execute(
            "INSERT INTO concurrency_limits (tag, lim, created) VALUES (?, ?, ?)",
            (tag, limit, to_us(created)),
        )

    def delete_limit(self, tag: str) -> bool:
        self.conn.execute("DELETE FROM concurrency_slots WHERE tag = ?", (tag,))
        return (
            self.conn.execute("DELETE FROM concurrency_limits WHERE tag = ?", (tag,)).rowcount > 0
        )

    def get_limits(self, tags: Sequence[str] = ()) -> list[ConcurrencyLimit]:
        """The limits on `tags` (all limits when empty), by tag, with their holders."""
        sql = "SELECT tag, lim, created FROM concurrency_limits"
        if tags:
            sql += f" WHERE tag IN ({', '.join('?' for _ in tags)})"
        rows = self.conn.execute(sql + " ORDER BY tag", tuple(tags)).fetchall()
        limits = []
        for tag, limit, created in rows:
            holders = self.conn.execute(
                "SELECT run_id FROM concurrency_slots WHERE tag = ? ORDER BY run_id", (tag,)
            ).fetchall()
            limits.append(
                ConcurrencyLimit(
                    tag=tag,
                    limit=limit,
                    active_slots=tuple(row[0] for row in holders),
                    created=from_us(created) or EPOCH,
                )
            )
        return limits

    def renew_leases(self, run_ids: Sequence[str], until: datetime) -> list[str]:
        """Move the lease end of those runs that are RUNNING or CANCELLING; returns their ids."""
        renewed: list[str] = []
        marks = ", ".join("?" for _ in run_ids)
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            rows = self.conn.execute(
                f"""UPDATE {_table(kind)} SET lease_expires = ?
                    WHERE id IN ({marks}) AND state_type IN (?, ?) RETURNING id""",
                (to_us(until), *run_ids, int(StateType.RUNNING), int(StateType.CANCELLING)),
            ).fetchall()
            renewed.extend(row[0] for row in rows)
        return renewed


class StoreReader:
    """Reads beside the writer, on read-only connections of its own (WAL readers never wait for
    the writer, nor it for them): each `snapshot()` borrows an idle connection (or opens one)
    and sees one consistent state of the database. Any thread may read; as many connections
    are open as reads ran at once."""

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
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            if self._closed:
                conn.close()
                raise sqlite3.ProgrammingError("the store reader is closed")
            self._connections.append(conn)
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[_Reads]:
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

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """`_Reads.read_log` in a snapshot of its own."""
        with self.snapshot() as db:
            return db.read_log(after, limit, run_ids, flow_run_ids, state_types)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()


class _Snapshot(_Reads):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


# --- helpers ------------------------------------------------------------------------------------


def _read_transitions(
    conn: sqlite3.Connection,
    after: int,
    limit: int,
    run_ids: Sequence[str],
    flow_run_ids: Sequence[str],
    state_types: Sequence[int],
) -> list[Transition]:
    clauses = ["t.sequence > ?"]
    params: list[Any] = [after]
    for column, values in (
        ("run_id", run_ids),
        ("flow_run_id", flow_run_ids),
        ("to_type", state_types),
    ):
        if values:
            clauses.append(f"t.{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    params.append(limit)
    rows = conn.execute(
        f"""SELECT t.sequence, t.run_kind, t.run_id, t.flow_run_id,
                   coalesce(f.name, tr.name), coalesce(f.flow_name, ''),
                   coalesce(tr.task_key, ''),
                   {_prefixed_state_columns("a")}, {_prefixed_state_columns("b")}
            FROM transitions t
            LEFT JOIN flow_runs f ON t.run_kind = 1 AND f.id = t.run_id
            LEFT JOIN task_runs tr ON t.run_kind = 2 AND tr.id = t.run_id
            LEFT JOIN states a ON a.id = t.from_state_id
            JOIN states b ON b.id = t.to_state_id
            WHERE {" AND ".join(clauses)} ORDER BY t.sequence LIMIT ?""",
        params,
    ).fetchall()
    width = len(_STATE_COLUMNS.split(","))
    transitions = []
    for row in rows:
        from_row = row[7 : 7 + width]
        transitions.append(
            Transition(
                sequence=row[0],
                run_kind=RunKind(row[1]),
                run_id=row[2],
                flow_run_id=row[3],
                run_name=row[4] or "",
                flow_name=row[5],
                task_key=row[6],
                from_state=_state_from_row(from_row) if from_row[0] is not None else None,
                to_state=_state_from_row(row[7 + width :]),
            )
        )
    return transitions


_WHAT_TO_DO = "restore it from a backup (stateward db backup), or give --db another file"


def _open_checked(path: Path, quick_check: bool) -> sqlite3.Connection:
    """A connection to `path`, once the file was found to be a sound Stateward database (or
    an empty one). Only reads happen before the verdict, so a refused file is left as it was."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise DatabaseRefused(f"cannot open the database {path} ({error})") from None
    try:
        _check_database(conn, path, quick_check)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_database(conn: sqlite3.Connection, path: Path, quick_check: bool) -> None:
    try:
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        }
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")] if quick_check else []
    except sqlite3.DatabaseError as error:
        what = "is not a SQLite database" if "not a database" in str(error) else "is damaged"
        raise DatabaseRefused(f"the database {path} {what} ({error}); {_WHAT_TO_DO}") from None
    if problems and problems != ["ok"]:
        found = " ".join(" ".join(problems).split())  # one line
        found = found if len(found) <= 200 else found[:197] + "..."
        raise DatabaseRefused(
            f"the database {path} is damaged (SQLite's quick check: {found}); {_WHAT_TO_DO}"
        )
    # Ours: the schema version table, with our runs table (or alone: a first start that ended
    # before its first migration).
    ours = "schema_version" in tables and ("flow_runs" in tables or tables == {"schema_version"})
    if ours:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        if row is not None and row[0] is not None and int(row[0]) > SCHEMA_VERSION:
            raise DatabaseRefused(
                f"the database {path} has schema version {row[0]}, newer than this Stateward "
                f"({SCHEMA_VERSION}); upgrade Stateward to open it"
            )
    if tables and not ours:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseRefused(
            f"the database {path} belongs to another application (its tables: {shown}); "
            "Stateward keeps its runs in a file of its own: give --db a new path"
        )


def _lock_database(path: Path) -> Any:
    """Hold an exclusive lock beside the database for as long as the store is open."""
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise DatabaseInUse(
            f"the database {path} is in use by another Stateward server ({owner}); "
            "stop it, or point this one at another database with --db"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _table(kind: RunKind) -> str:
    return "flow_runs" if kind is RunKind.FLOW_RUN else "task_runs"


def _prefix_state_columns(alias: str) -> str:
    return ", ".join(f"{alias}.{column.strip()}" for column in _STATE_COLUMNS.split(","))


_PREFIXED = {alias: _prefix_state_columns(alias) for alias in ("s", "a", "b")}


def _prefixed_state_columns(alias: str) -> str:
    return _PREFIXED[alias]


def _run_row(run: RunRecord) -> dict[str, Any]:
    """Every column of a run's row."""
    state = run.state
    row: dict[str, Any] = {
        "id": run.id,
        "name": run.name,
        "parameters": run.parameters,
        "tags": json.dumps(list(run.tags)),
        "retries": run.retry_policy.retries,
        "retry_delays": json.dumps(list(run.retry_policy.retry_delay_seconds)),
        "retry_jitter": run.retry_policy.retry_jitter_factor,
        "state_id": state.id if state else None,
        "state_type": int(state.type) if state else None,
        "state_name": state.name if state else None,
        "run_count": run.run_count,
        "start_time": to_us(run.start_time),
        "end_time": to_us(run.end_time),
        "total_run_time": run.total_run_time,
        "expected_start_time": to_us(run.expected_start_time),
        "next_scheduled_start_time": to_us(run.next_scheduled_start_time),
        "lease_expires": to_us(run.lease_expires),
        "created": to_us(run.created),
    }
    if run.kind is RunKind.FLOW_RUN:
        row["flow_name"] = run.flow_name
        row["parent_task_run_id"] = run.parent_task_run_id or None
        row["pause_keys"] = json.dumps(sorted(run.pause_keys))
    else:
        row["task_key"] = run.task_key
        row["flow_run_id"] = run.flow_run_id or None
        row["child_flow_run_id"] = run.child_flow_run_id or None
    return row


def _run_from_row(kind: RunKind, description: Any, row: Sequence[Any]) -> RunRecord:
    names = [column[0] for column in description]
    width = len(_STATE_COLUMNS.split(","))
    fields = dict(zip(names[:-width], row[:-width], strict=True))
    state_row = row[-width:]
    return RunRecord(
        kind=kind,
        id=fields["id"],
        name=fields["name"],
        created=from_us(fields["created"]) or EPOCH,
        flow_name=fields.get("flow_name") or "",
        task_key=fields.get("task_key") or "",
        flow_run_id=fields.get("flow_run_id") or "",
        parent_task_run_id=fields.get("parent_task_run_id") or "",
        child_flow_run_id=fields.get("child_flow_run_id") or "",
        parameters=fields["parameters"],
        tags=tuple(json.loads(fields["tags"])),
        retry_policy=RetryPolicy(
            retries=fields["retries"] or 0,
            retry_delay_seconds=tuple(json.loads(fields["retry_delays"] or "[]")),
            retry_jitter_factor=fields["retry_jitter"] or 0.0,
        ),
        state=_state_from_row(state_row) if state_row[0] is not None else None,
        run_count=fields["run_count"],
        start_time=from_us(fields["start_time"]),
        end_time=from_us(fields["end_time"]),
        total_run_time=fields["total_run_time"],
        expected_start_time=from_us(fields["expected_start_time"]),
        next_scheduled_start_time=from_us(fields["next_scheduled_start_time"]),
        pause_keys=frozenset(json.loads(fields.get("pause_keys") or "[]")),
        lease_expires=from_us(fields["lease_expires"]),
    )


_DETAIL_TIMES = ("scheduled_time", "cache_expiration", "pause_timeout")
_DEFAULT_DETAILS = StateDetails()
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


def _details_json(details: StateDetails) -> str:
    """The details that differ from their defaults, as JSON (times in microseconds)."""
    out: dict[str, Any] = {}
    for name in StateDetails.__slots__:
        value = getattr(details, name)
        if value:  # every default is falsy ("", None, False)
            out[name] = to_us(value) if name in _DETAIL_TIMES else value
    return _encode_json(out) if out else "{}"


def _details_from_json(text: str) -> StateDetails:
    if text == "{}":
        return _DEFAULT_DETAILS
    values = json.loads(text)
    for name in _DETAIL_TIMES:
        if name in values:
            values[name] = from_us(values[name])
    return StateDetails(**values)


def _state_from_row(row: Sequence[Any]) -> State:
    state_id, type_, name, timestamp, message, details, result_json, result_pickle = row
    data = None
    if result_json is not None:
        data = ResultData(json=result_json)
    elif result_pickle is not None:
        data = ResultData(pickle=result_pickle)
    return State(
        type=StateType(type_),
        name=name,
        message=message,
        timestamp=from_us(timestamp),
        id=state_id,
        details=_details_from_json(details),
        data=data,
    )


def _page(cursor: sqlite3.Cursor, count: int, budget: int) -> tuple[list[Any], bool]:
    """The cursor's rows, up to `count` of them and while their text and blobs stay within
    `budget` bytes (the first row whatever its size), and whether more rows follow. Rows are
    read one at a time: a page never holds more in memory than it answers with."""
    rows: list[Any] = []
    used = 0
    try:
        while (row := cursor.fetchone()) is not None:
            size = 64 + sum(len(value) for value in row if isinstance(value, str | bytes))
            if len(rows) == count or (rows and used + size > budget):
                return rows, True
            rows.append(row)
            used += size
        return rows, False
    finally:
        cursor.close()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _encode_page_token(rowid: int, kind: int, fingerprint: str) -> str:
    payload = json.dumps({"k": int(kind), "r": rowid, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _decode_page_token(token: str, kind: int, fingerprint: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        rowid, token_kind, token_filter = payload["r"], payload["k"], payload["f"]
    except (ValueError, TypeError, KeyError, UnicodeError, RecursionError) as error:
        raise BadPageToken("the page token is not one this server made") from error
    if token_kind != int(kind) or not isinstance(rowid, int) or not 0 <= rowid < 2**63:
        raise BadPageToken("the page token belongs to another listing")
    if token_filter != fingerprint:
        raise BadPageToken(
            "the page token was made for other filters; repeat the first request's filters "
            "or start again without a token"
        )
    return rowid


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BadPageToken",
    "DatabaseInUse",
    "DatabaseRefused",
    "RunFilter",
    "StorageUnavailable",
    "Store",
    "StoreReader",
    "from_us",
    "migrate",
    "to_us",
]
