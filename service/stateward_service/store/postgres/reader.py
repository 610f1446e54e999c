"""Reads beside a replica's writing connection, from a connection pool: each snapshot is one
REPEATABLE READ, READ ONLY transaction, which holds a prefix of the log's sequences (they
commit in order).

An outage (a restart, backends terminated, connections refused) ends the pool's idle
connections, and the pool then reconnects on its own schedule, further and further apart.
So once a read finds a connection the server ended (idle or mid-read), or none in time while
a direct connection fails too, the pool is dropped, and direct connections are tried, one at
a time, each started by a read that finds none under way; once one succeeds a new pool serves
the reads. A read waits for the outage's first try to end, and for any later one at most
TRY_WAIT_SECONDS: one that has not ended by then (a host that drops packets makes a try wait
its whole connect timeout, 5 s) leaves the read failing with the last failed try's reason and
age. A database that refuses connections answers a try at once, so its reads fail with a
fresh reason, and the first read once it takes them again succeeds.

A pool whose connections are all busy with long reads while the database takes connections is
not an outage: it is kept (dropping it would open another `max_connections` beside the busy
ones, again and again), and the read that waited fails as busy."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from stateward_service.store.interface import DatabaseUnavailable
from stateward_service.store.postgres.coordination import (
    allow_nul_in_text,
    connection_options,
    ended_while_idle,
    unavailable,
)
from stateward_service.store.sql import SnapshotReader, SqlReads

_PLACEHOLDER = re.compile(r"\?")

# How long a read waits for a pooled connection while the database is reachable (all of the
# pool's connections are in use); a ping (the health check's) waits less, then connects
# directly to learn whether the database answers.
POOL_WAIT_SECONDS = 10.0
PING_POOL_WAIT_SECONDS = 1.0
# While the database is unreachable, how long a read waits for the direct connection being
# tried (but the outage's first) before it fails with the last failed one's reason.
TRY_WAIT_SECONDS = 0.5


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


def _unreachable(error: BaseException) -> DatabaseUnavailable:
    said = " ".join(str(error).split())  # one line: psycopg's messages run over several
    return DatabaseUnavailable(f"the PostgreSQL database is unreachable: {said}")


class ReadersBusy(DatabaseUnavailable):
    """Every pooled read connection stayed in use while a read waited, and the database took
    a direct connection: the reads are slow (a lock, a large listing), the database is up."""


class PostgresReader(SnapshotReader):
    """Safe to call from any thread; the pool opens connections as they are needed. While
    the database is unreachable, a read fails at once with the reason of the last direct
    connection tried (see the module's docstring for when one is tried)."""

    def __init__(self, url: str, max_connections: int = 8) -> None:
        self.url = url
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._closed = False
        # None once the pool was dropped after an outage, until the database answers again.
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] | None = self._new_pool()
        # While the pool is dropped: the direct connection being tried (set once it is done),
        # and why the last one failed ("" when none failed since the pool was dropped), when.
        self._trying: threading.Event | None = None
        self._failed = ""
        self._failed_at = 0.0

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]]:
        return ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.max_connections,
            kwargs=connection_options(),
            configure=allow_nul_in_text,
            open=True,
            name="stateward-reads",
        )

    def _current_pool(self) -> ConnectionPool[psycopg.Connection[tuple[Any, ...]]]:
        """The pool; after an outage dropped it, a new one once a direct connection succeeds.
        Raises DatabaseUnavailable while the database cannot be reached: with the reason of
        the try this read waited for, else (after TRY_WAIT_SECONDS) of the last failed one."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise DatabaseUnavailable("the PostgreSQL reader is closed")
            if self._trying is None:
                self._trying = threading.Event()
                threading.Thread(
                    target=self._try_direct,
                    args=(self._trying,),
                    name="stateward-reads-reconnect",
                    daemon=True,
                ).start()
            trying, failed, failed_at = self._trying, self._failed, self._failed_at
        if trying.wait(TRY_WAIT_SECONDS if failed else None):
            with self._lock:
                if self._pool is not None:
                    return self._pool
                raise DatabaseUnavailable(self._failed or "the PostgreSQL reader is closed")
        raise DatabaseUnavailable(
            f"{failed} (as a direct connection found {time.monotonic() - failed_at:.1f} s "
            f"ago; the one being tried has not answered in {TRY_WAIT_SECONDS:g} s)"
        )

    def _try_direct(self, done: threading.Event) -> None:
        """Try a direct connection: a new pool if it succeeds, else its reason kept."""
        failure = self._reach()
        with self._lock:
            self._trying = None
            if failure is None:
                self._failed = ""
                if not self._closed:
                    self._pool = self._new_pool()
            else:
                self._failed, self._failed_at = str(failure), time.monotonic()
        done.set()

    def _reach(self) -> DatabaseUnavailable | None:
        """None if a direct connection (closed at once) succeeds, else why it failed."""
        try:
            psycopg.connect(self.url, **connection_options()).close()
        except psycopg.Error as error:
            return _unreachable(error)
        return None

    def _drop(
        self,
        pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]],
        failure: DatabaseUnavailable | None = None,
    ) -> None:
        """The pool's connections were ended by an outage, or it gave none in time and the
        database refused a direct connection too (`failure`, kept as the last try's): the
        next read connects directly (see `_current_pool`). Connections of it still in use are
        closed as they come back."""
        with self._lock:
            if self._pool is not pool:
                return  # another read dropped it
            self._pool = None
            if failure is not None:
                self._failed, self._failed_at = str(failure), time.monotonic()
        pool.close()

    def _checkout(
        self, wait: float = POOL_WAIT_SECONDS
    ) -> tuple[ConnectionPool[psycopg.Connection[tuple[Any, ...]]], psycopg.Connection[Any]]:
        """A pool and a connection from it (waiting up to `wait` seconds for one), never one
        the server ended while it sat idle in the pool. Raises DatabaseUnavailable when the
        database cannot be reached, ReadersBusy when it can but no connection came in time."""
        for _ in range(3):
            pool = self._current_pool()
            try:
                conn = pool.getconn(timeout=wait)
            except PoolClosed:  # another read dropped it meanwhile
                continue
            except PoolTimeout as error:
                # None in time: an outage, or every connection busy with a long read.
                failure = self._reach()
                if failure is not None:
                    self._drop(pool, failure)
                    raise failure from error
                raise ReadersBusy(
                    f"all {self.max_connections} PostgreSQL read connections of this server "
                    f"stayed busy for {wait:g} s (long reads, or reads waiting "
                    "for a lock); the database answers"
                ) from error
            # One poll of its socket, nothing sent: a round trip per read would cost more.
            if not ended_while_idle(conn):
                return pool, conn
            # An outage (or a restart) ended it, and with it the pool's other idle ones.
            self._drop(pool)
            pool.putconn(conn)  # the closed pool closes it
        raise DatabaseUnavailable(
            "the PostgreSQL database is unreachable: it ended each connection this read took"
        )

    @contextmanager
    def _connection(
        self, wait: float = POOL_WAIT_SECONDS
    ) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """A pooled connection (see `_checkout`), given back after the block. Raises
        DatabaseUnavailable when the database cannot be reached or the connection is lost."""
        pool, conn = self._checkout(wait)
        try:
            yield conn
        except psycopg.OperationalError as error:
            if conn.broken:  # the session ended mid-read: so did the pool's idle ones
                self._drop(pool)
            raise unavailable(error) from error
        finally:
            pool.putconn(conn)

    @contextmanager
    def snapshot(self) -> Iterator[SqlReads]:
        """The read queries, all seeing the database as it was when the first one ran. Raises
        DatabaseUnavailable when the database cannot be reached."""
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield _Snapshot(conn)

    def ping(self) -> bool:
        """Whether the database answers now (it does when it took a direct connection while
        every pooled one was busy)."""
        try:
            with self._connection(PING_POOL_WAIT_SECONDS) as conn:
                conn.execute("SELECT 1")
        except ReadersBusy:
            return True
        except (DatabaseUnavailable, psycopg.Error):
            return False
        return True

    def size_on_disk(self) -> int:
        """`pg_database_size` of the database, on a pooled connection: never the writing one,
        whose transaction another thread may be in the middle of. Raises DatabaseUnavailable
        when the database cannot be reached."""
        with self._connection() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


__all__ = ["PostgresReader", "PostgresReads", "ReadersBusy"]
