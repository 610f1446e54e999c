"""The PostgreSQL store: one replica's writing connection to a database shared by replicas.

Writes happen in `transaction()`; a decision first locks its run's row (`SELECT ... FOR UPDATE`,
several runs in sorted id order), so that every replica decides against the run's true current
state. The log's `sequence` comes from a one-row counter updated in the writing transaction and
held until it commits, so sequences commit in order; the transaction ends with a NOTIFY that wakes
every replica's log follower. Deadlocks and serialization failures surface as WriteConflict, for
the orchestrator to retry. A lost connection is DatabaseUnavailable, and the next call reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from stateward.runs import RunKind
from stateward.states import State
from stateward_service.model import RunRecord
from stateward_service.store.faults import StorageUnavailable
from stateward_service.store.interface import (
    ChangeSignal,
    DatabaseUnavailable,
    LeaderLock,
    WriteConflict,
)
from stateward_service.store.postgres.coordination import (
    CHANNEL,
    AdvisoryLeaderLock,
    ListenSignal,
    connect,
)
from stateward_service.store.postgres.reader import PostgresReader, PostgresReads
from stateward_service.store.postgres.schema import migrate
from stateward_service.store.rows import to_us
from stateward_service.store.sql import SqlStore

log = logging.getLogger("stateward.store")

_PLACEHOLDER = re.compile(r"\?")
# Worth retrying the whole decision: a deadlock, a serialization failure, a lock timeout, or a
# unique key another replica took meanwhile (the retry then finds it taken).
_CONFLICTS = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.LockNotAvailable,
    pg_errors.UniqueViolation,
)


class _QmarkConnection:
    """A psycopg connection that takes the `?` placeholders the shared SQL is written with."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw: psycopg.Connection[tuple[Any, ...]] | None = None

    def connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self.raw is None or self.raw.closed or self.raw.broken:
            self.raw = connect(self.url)
        return self.raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        try:
            return self.connection().execute(_PLACEHOLDER.sub("%s", sql), tuple(params))
        except _CONFLICTS as error:
            raise WriteConflict(str(error)) from error
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(f"the PostgreSQL database is unreachable: {error}") from error

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self.connection().cursor() as cursor:
                cursor.executemany(_PLACEHOLDER.sub("%s", sql), rows)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(f"the PostgreSQL database is unreachable: {error}") from error

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


class PostgresStore(SqlStore, PostgresReads):
    """One replica's connection; the orchestrator's lock keeps it to one thread at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = _QmarkConnection(url)
        try:
            self.found_schema_version = migrate(self.conn.connection())
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(
                f"cannot open the PostgreSQL database at {_redacted(url)}: {error}"
            ) from error
        self._logged = False  # the open transaction appended to the log
        # PostgreSQL reports its own storage troubles as unreachable (DatabaseUnavailable).
        self.unavailable: StorageUnavailable | None = None

    def close(self) -> None:
        self.conn.close()

    def probe(self, room: int = 0) -> None:
        """A transaction that changes nothing (the database's free room is the server's
        business): raises DatabaseUnavailable while it cannot be reached."""
        with self.transaction():
            self.conn.execute("SELECT 1 FROM schema_version")

    def reader(self) -> PostgresReader:
        return PostgresReader(self.url)

    def size_on_disk(self) -> int:
        row = self.conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def changed_elsewhere(self) -> bool:
        """Always: other replicas write at any time, so cached rows are re-read in each
        transaction (under their row locks)."""
        return True

    def lock_runs(self, run_ids: Sequence[str]) -> None:
        ids = sorted(set(run_ids))
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            self.conn.execute(
                f"SELECT id FROM {_table(kind)} WHERE id = ANY(?) ORDER BY id FOR UPDATE", (ids,)
            ).fetchall()

    def lock_limits(self, tags: Sequence[str]) -> None:
        self.conn.execute(
            "SELECT tag FROM concurrency_limits WHERE tag = ANY(?) ORDER BY tag FOR UPDATE",
            (sorted(set(tags)),),
        ).fetchall()

    def change_signal(self) -> ChangeSignal:
        return ListenSignal(self.url)

    def leader_lock(self) -> LeaderLock:
        return AdvisoryLeaderLock(self.url)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        began = False
        self._logged = False
        try:
            self.conn.execute("BEGIN")
            began = True
            yield
            if self._logged:
                self.conn.execute(f"NOTIFY {CHANNEL}")
            self.conn.execute("COMMIT")
        except BaseException:
            raw = self.conn.raw
            if began and raw is not None and not raw.closed and not raw.broken:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise

    # --- the dialect: the log's sequence, upserts ------------------------------------------------

    def append_transition(self, run: RunRecord, from_state: State | None, to: State) -> int:
        """Log a written state; returns its sequence. The counter row stays locked until the
        transaction ends: that orders the commits of the log."""
        row = self.conn.execute("UPDATE log_counter SET last = last + 1 RETURNING last").fetchone()
        assert row is not None
        sequence = int(row[0])
        self.conn.execute(
            """INSERT INTO transitions
               (sequence, run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (
                sequence,
                int(run.kind),
                run.id,
                run.owning_flow_run_id,
                from_state.id if from_state else None,
                to.id,
                int(to.type),
            ),
        )
        self._logged = True
        return sequence

    def cache_state(
        self, key: str, state_id: str, expiration: datetime | None, now: datetime
    ) -> None:
        self.conn.execute(
            """INSERT INTO cache (key, state_id, expiration, created) VALUES (?, ?, ?, ?)
               ON CONFLICT (key) DO UPDATE SET state_id = excluded.state_id,
                 expiration = excluded.expiration, created = excluded.created""",
            (key, state_id, to_us(expiration), to_us(now)),
        )

    def take_slots(self, run_id: str, tags: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT INTO concurrency_slots (tag, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(tag, run_id) for tag in tags],
        )


def _table(kind: RunKind) -> str:
    return "flow_runs" if kind is RunKind.FLOW_RUN else "task_runs"


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


__all__ = ["PostgresStore"]
