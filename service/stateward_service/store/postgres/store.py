"""The PostgreSQL store: one replica's writing connection to a database shared by replicas.

Writes happen in `transaction()`; a decision first locks its run's row (`SELECT ... FOR UPDATE`,
several runs in sorted id order), so that every replica decides against the run's true current
state. Round trips are what a transaction costs here, more than statements: inside one, a
statement whose result nobody reads is queued, and goes with the next statement whose result is
read, all in one message (bound on the client side). So a SetState takes two round trips: BEGIN,
the row locks and the run's row; then its writes, the log entry and COMMIT. The log's `sequence`
comes from a one-row counter bumped by the very last statement before COMMIT, in that same
message, and held until the commit: sequences commit in order, and the counter is held as
briefly as a writing transaction can hold it. That statement also NOTIFYs the log followers of
every replica with the newest sequence. Deadlocks and serialization failures surface as
WriteConflict, for the orchestrator to retry. A connection lost during a call is
DatabaseUnavailable, and the next call reconnects; one the server ended between calls (an outage
that ended meanwhile) is replaced before the next call sends anything on it.
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
    DatabaseRefused,
    DatabaseUnavailable,
    LeaderLock,
    WriteConflict,
)
from stateward_service.store.postgres.coordination import (
    CHANNEL,
    AdvisoryLeaderLock,
    ListenSignal,
    connect,
    ended_while_idle,
    unavailable,
)
from stateward_service.store.postgres.reader import PostgresReader, PostgresReads
from stateward_service.store.postgres.schema import migrate
from stateward_service.store.rows import run_from_row, to_us
from stateward_service.store.sql import SqlStore, run_by_id

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

# The last statement of a transaction that logged transitions: bump the counter by their number
# (taking its row until COMMIT, which follows in the same round trip), insert them numbered from
# it in the order they were appended, and wake the followers with the newest sequence.
_LOG_AND_NOTIFY = f"""
    WITH counter AS (
        UPDATE log_counter SET last = last + ? RETURNING last
    ), logged AS (
        INSERT INTO transitions
            (sequence, run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type)
        SELECT counter.last - ? + e.n, e.run_kind, e.run_id, e.flow_run_id,
               e.from_state_id, e.to_state_id, e.to_type
        FROM counter,
             unnest(?::integer[], ?::text[], ?::text[], ?::text[], ?::text[], ?::integer[])
             WITH ORDINALITY
             AS e(run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type, n)
    )
    SELECT last, pg_notify('{CHANNEL}', last::text) FROM counter"""


# What a statement of a flushed message returned: its columns (None for a command) and rows.
_Result = tuple[Any, list[tuple[Any, ...]]]


@contextmanager
def _translated() -> Iterator[None]:
    """psycopg's errors as the store's: a lost race is WriteConflict, a lost or refused
    connection DatabaseUnavailable."""
    try:
        yield
    except _CONFLICTS as error:
        raise WriteConflict(str(error)) from error
    except pg_errors.PipelineAborted:  # an earlier statement's error was raised already
        raise
    except psycopg.OperationalError as error:
        raise unavailable(error) from error


class _QmarkConnection:
    """A psycopg connection that takes the `?` placeholders the shared SQL is written with.
    Inside a transaction (`queued` is a list) what is `send`-ed waits, and goes to the server
    with the next `execute`, in one message."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.raw: psycopg.Connection[tuple[Any, ...]] | None = None
        self.queued: list[tuple[str, tuple[Any, ...]]] | None = None

    def connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection, opened again if it was lost, but never inside a transaction: a
        transaction lost with its connection is gone, and the rest of it must not run on a
        new connection (in autocommit: each statement alone) and commit without its start.
        Between transactions, a session the server ended (an outage, a restart) is replaced
        before anything is sent on it: the first write after an outage does not fail on it."""
        if (
            self.queued is None
            and self.raw is not None
            and not self.raw.closed
            and ended_while_idle(self.raw)
        ):
            self.raw.close()
        if self.raw is None or self.raw.closed or self.raw.broken:
            if self.queued is not None:
                raise DatabaseUnavailable(
                    "the PostgreSQL database is unreachable: the connection was lost during "
                    "a transaction, which wrote nothing"
                )
            with _translated():
                self.raw = connect(self.url)
        return self.raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[tuple[Any, ...]]:
        """Run a statement (after whatever was queued) and wait for its result."""
        if self.queued is None:
            with _translated():
                return self.connection().execute(_PLACEHOLDER.sub("%s", sql), tuple(params))
        return self.flush([(sql, tuple(params))])[0]

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result is not read: queued inside a transaction."""
        if self.queued is None:
            self.execute(sql, params)
        else:
            self.queued.append((sql, tuple(params)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Queued inside a transaction, like `send`."""
        if self.queued is not None:
            self.queued.extend((sql, tuple(row)) for row in rows)
            return
        with _translated(), self.connection().cursor() as cursor:
            cursor.executemany(_PLACEHOLDER.sub("%s", sql), rows)

    def flush(
        self, statements: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> tuple[psycopg.ClientCursor[tuple[Any, ...]], list[_Result]]:
        """Send what was queued and `statements` in one message and wait for the results.
        Returns a cursor on the result of the last statement, and the results of the others of
        `statements`, in order."""
        pending = [*(self.queued or ()), *statements]
        if self.queued is not None:
            self.queued = []
        text = "; ".join(_PLACEHOLDER.sub("%s", sql.replace("%", "%%")) for sql, _ in pending)
        params = [value for _, values in pending for value in values]
        first = len(pending) - len(statements)
        earlier: list[_Result] = []
        with _translated():
            cursor = psycopg.ClientCursor(self.connection())
            cursor.execute(text, params)
            for index in range(1, len(pending)):
                if index - 1 >= first:
                    rows = cursor.fetchall() if cursor.description is not None else []
                    earlier.append((cursor.description, rows))
                cursor.nextset()
        return cursor, earlier

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


class PostgresStore(SqlStore, PostgresReads):
    """One replica's connection; the orchestrator's lock keeps it to one thread at a time."""

    def __init__(self, url: str, read_pool_size: int = 8) -> None:
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as error:
            raise DatabaseRefused(
                f"{_redacted(url)} is not a PostgreSQL URL libpq can read "
                f"({_redacted(' '.join(str(error).split()))}): write it "
                "as postgresql://user:password@host:port/database, with only libpq's "
                "parameters after ? (sslmode=require, connect_timeout=10)"
            ) from None
        self.url = url
        self.read_pool_size = read_pool_size
        self.conn = _QmarkConnection(url)
        try:
            self.found_schema_version = migrate(self.conn.connection())
        except (psycopg.OperationalError, DatabaseUnavailable) as error:
            raise DatabaseUnavailable(
                f"cannot open the PostgreSQL database at {_redacted(url)}: "
                f"{_refused_connection(error) or error}"
            ) from error
        except psycopg.Error as error:  # reached, and refused: a privilege, a foreign schema
            refusal = _refusal(error, self.conn.connection(), url)
            self.conn.close()
            raise refusal from error
        # The open transaction's transitions, logged by its last statement; then the sequences
        # the last committed transaction gave them.
        self._pending_log: list[tuple[int, str, str, str | None, str, int]] = []
        self._logged: list[int] = []
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
        return PostgresReader(self.url, self.read_pool_size)

    def changed_elsewhere(self) -> bool:
        """Always: other replicas write at any time, so cached rows are re-read in each
        transaction (under their row locks)."""
        return True

    def lock_runs(self, run_ids: Sequence[str]) -> None:
        ids = sorted(set(run_ids))
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            self.conn.send(
                f"SELECT id FROM {_table(kind)} WHERE id = ANY(?) ORDER BY id FOR UPDATE", (ids,)
            )

    def lock_limits(self, tags: Sequence[str]) -> None:
        self.conn.send(
            "SELECT tag FROM concurrency_limits WHERE tag = ANY(?) ORDER BY tag FOR UPDATE",
            (sorted(set(tags)),),
        )

    def get_run(self, run_id: str, kind: RunKind | None = None) -> RunRecord | None:
        """The run with its current state, or None. Inside a transaction, a run of either kind
        takes one round trip: both tables are asked at once."""
        if kind is not None or self.conn.queued is None:
            return super().get_run(run_id, kind)
        asked = [
            (run_by_id(kind, self.CURRENT_STATE), (run_id,))
            for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN)
        ]
        cursor, [(flow_columns, flow_rows)] = self.conn.flush(asked)
        if flow_rows:
            return run_from_row(RunKind.FLOW_RUN, flow_columns, flow_rows[0])
        row = cursor.fetchone()
        return run_from_row(RunKind.TASK_RUN, cursor.description, row) if row else None

    def _send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.send(sql, params)

    def change_signal(self) -> ChangeSignal:
        return ListenSignal(self.url)

    def leader_lock(self) -> LeaderLock:
        return AdvisoryLeaderLock(self.url)

    @contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[None]:
        """BEGIN goes with the first statement whose result is read; the last writes, the log
        entries with their NOTIFY, and COMMIT go together at the end. PostgreSQL has no
        database-wide write lock: `wait` changes nothing (a run's row lock held by another
        transaction is waited for either way). A block that ends normally with the transaction
        in error (a statement's error caught inside it) raises InFailedSqlTransaction, having
        written nothing."""
        self._pending_log = []
        self._logged = []
        raw = self.conn.connection()
        self.conn.queued = [("BEGIN", ())]
        committed = False
        try:
            try:
                yield
                closing = [*self._log_and_notify(), ("COMMIT", ())]
                ended, earlier = self.conn.flush(closing)
            finally:
                self.conn.queued = None
            if ended.statusmessage != "COMMIT":
                # PostgreSQL answers the COMMIT of a transaction in error (a statement of it
                # failed, and the error was not raised through this block) with a ROLLBACK,
                # and no error: that is no commit.
                raise pg_errors.InFailedSqlTransaction(
                    f"the transaction was rolled back at its COMMIT ({ended.statusmessage}): "
                    "a statement of it had failed; nothing of it was written"
                )
            committed = True
            if self._pending_log:
                _, rows = earlier[0]  # the log statement's (last, pg_notify)
                last, count = int(rows[0][0]), len(self._pending_log)
                self._logged = list(range(last - count + 1, last + 1))
        except BaseException:
            if not committed and not raw.closed and not raw.broken:
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")
            raise

    def _log_and_notify(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The statement that numbers and logs the transaction's transitions (none if none)."""
        if not self._pending_log:
            return []
        columns = [list(column) for column in zip(*self._pending_log, strict=True)]
        return [(_LOG_AND_NOTIFY, (len(self._pending_log), len(self._pending_log), *columns))]

    # --- the dialect: the log's sequence, upserts ------------------------------------------------

    def append_transition(self, run: RunRecord, from_state: State | None, to: State) -> None:
        """Log a written state: it is numbered and inserted by the transaction's last statement,
        which takes the counter row just before COMMIT (that orders the commits of the log)."""
        self._pending_log.append(
            (
                int(run.kind),
                run.id,
                run.owning_flow_run_id,
                from_state.id if from_state else None,
                to.id,
                int(to.type),
            )
        )

    def logged_sequences(self) -> list[int]:
        return list(self._logged)

    def cache_state(
        self, key: str, run: RunRecord, expiration: datetime | None, now: datetime
    ) -> None:
        assert run.state is not None
        self.conn.send(
            """INSERT INTO cache (key, state_id, expiration, created) VALUES (?, ?, ?, ?)
               ON CONFLICT (key) DO UPDATE SET state_id = excluded.state_id,
                 expiration = excluded.expiration, created = excluded.created""",
            (key, run.state.id, to_us(expiration), to_us(now)),
        )

    def take_slots(self, run_id: str, tags: Sequence[str]) -> None:
        self.conn.executemany(
            "INSERT INTO concurrency_slots (tag, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(tag, run_id) for tag in tags],
        )


def _table(kind: RunKind) -> str:
    return "flow_runs" if kind is RunKind.FLOW_RUN else "task_runs"


def _refused_connection(error: BaseException) -> str | None:
    """What the PostgreSQL server said when it refused a connection (it answered FATAL: a
    wrong password, a missing database or user), with what to do; None when it did not answer
    (it is unreachable, which the error says)."""
    cause = error.__cause__ if isinstance(error, DatabaseUnavailable) else error
    said = re.search(r"FATAL: (.+)$", " ".join(str(cause).split()))
    if said is None:
        return None
    reason = said.group(1)
    missing = re.fullmatch(r'database "(.+)" does not exist', reason)
    if "password authentication failed" in reason:
        advice = ": check the user and password in the URL"
    elif missing is not None:
        advice = (
            f": create it (CREATE DATABASE {missing.group(1)}, as a user that may) or name a "
            "database that exists in the URL"
        )
    elif re.fullmatch(r'role "(.+)" does not exist', reason):
        advice = ": check the user in the URL"
    else:
        advice = ""
    return f"the server refused the connection ({reason}){advice}"


def _refusal(error: psycopg.Error, conn: psycopg.Connection[Any], url: str) -> DatabaseRefused:
    """What PostgreSQL's refusal to set up the schema tells a person, in one line: which
    database, which privilege the user lacks and what to do. PostgreSQL 15 and later give
    CREATE on schema `public` only to the database's owner, so a user that does not own the
    database cannot make the tables."""
    said = " ".join((error.diag.message_primary or str(error)).split())
    where = f"the PostgreSQL database {conn.info.dbname!r} at {_redacted(url)}"
    user = conn.info.user
    if isinstance(error, pg_errors.InsufficientPrivilege):
        schema = re.fullmatch(r"permission denied for schema (.+)", said)
        if schema is not None:
            name = schema.group(1)
            return DatabaseRefused(
                f"{where} refuses user {user!r} the CREATE privilege on schema {name!r}, "
                f"which Stateward needs to make its tables ({said}): as the database's owner "
                f"run GRANT CREATE ON SCHEMA {name} TO {user}, or use a database the user "
                f"owns (CREATE DATABASE stateward OWNER {user})"
            )
        return DatabaseRefused(
            f"{where} refuses user {user!r} a privilege Stateward needs ({said}): grant it, "
            f"or use a database the user owns (CREATE DATABASE stateward OWNER {user})"
        )
    return DatabaseRefused(f"{where} refused to set up Stateward's schema: {said}")


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


__all__ = ["PostgresStore"]
