"""Reads beside a replica's writing connection, from a connection pool: each snapshot is one
REPEATABLE READ, READ ONLY transaction, which holds a prefix of the log's sequences (they
commit in order)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from stateward_service.store.interface import DatabaseUnavailable
from stateward_service.store.postgres.coordination import allow_nul_in_text, connection_options
from stateward_service.store.sql import SnapshotReader, SqlReads

_PLACEHOLDER = re.compile(r"\?")


class PostgresReads(SqlReads):
    """PostgreSQL's spelling of the shared reads."""

    LISTING_ORDER = "position"
    TAG_VALUES = "jsonb_array_elements_text(r.tags::jsonb) AS t(value)"
    LAST_SEQUENCE = "SELECT last FROM log_counter"
    # A state is written before its transition is numbered (by the transaction's last
    # statement): the log keeps its own index by run, and a run's states are ordered by time.
    STATE_ORDER = "timestamp"
    STATES_CARRY_SEQUENCE = False
    CURRENT_STATE = "s.id = r.state_id"
    CACHED_STATE = "s.id = c.state_id"


class _Qmark:
    """A pooled connection that takes `?` placeholders."""

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        return self.conn.execute(_PLACEHOLDER.sub("%s", sql), tuple(params))


class _Snapshot(PostgresReads):
    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = _Qmark(conn)


class PostgresReader(SnapshotReader):
    """Safe to call from any thread; the pool opens connections as they are needed."""

    def __init__(self, url: str, max_connections: int = 8) -> None:
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs=connection_options(),
            configure=allow_nul_in_text,
            open=True,
            name="stateward-reads",
        )

    @contextmanager
    def snapshot(self) -> Iterator[SqlReads]:
        """The read queries, all seeing the database as it was when the first one ran. Raises
        DatabaseUnavailable when the database cannot be reached."""
        try:
            with self.pool.connection(timeout=10) as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield _Snapshot(conn)
        except (psycopg.OperationalError, TimeoutError) as error:
            raise DatabaseUnavailable(f"the PostgreSQL database is unreachable: {error}") from error

    def ping(self) -> bool:
        """Whether the database answers now."""
        try:
            with self.pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError):
            return False
        return True

    def size_on_disk(self) -> int:
        """`pg_database_size` of the database, on a pooled connection: never the writing one,
        whose transaction another thread may be in the middle of."""
        with self.pool.connection(timeout=2) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.pool.close()


__all__ = ["PostgresReader", "PostgresReads"]
