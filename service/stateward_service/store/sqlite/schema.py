"""The SQLite schema: numbered migrations, applied at start one transaction each, the version
recorded in the `schema_version` table (an older database is upgraded, a newer one refused)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from stateward_service.store.interface import SchemaTooNew

# The statements are the text of the databases made so far (sqlite_utils wrote the first two
# migrations): a new database's schema, which SQLite keeps as text, is the same as an old one's
# (a test compares them).


def _run_table(name: str, own_columns: str) -> str:
    return f"""CREATE TABLE "{name}" (
   "id" TEXT PRIMARY KEY NOT NULL,
   "name" TEXT NOT NULL,
   "parameters" TEXT NOT NULL DEFAULT '{{}}',
   "tags" TEXT NOT NULL DEFAULT '[]',
   "retries" INTEGER DEFAULT 0,
   "retry_delays" TEXT DEFAULT '[]',
   "retry_jitter" REAL DEFAULT 0.0,
   "state_id" TEXT,
   "state_type" INTEGER,
   "state_name" TEXT,
   "run_count" INTEGER NOT NULL DEFAULT 0,
   "start_time" INTEGER,
   "end_time" INTEGER,
   "total_run_time" REAL NOT NULL DEFAULT 0.0,
   "expected_start_time" INTEGER,
   "next_scheduled_start_time" INTEGER,
   "created" INTEGER NOT NULL,
{own_columns}
)"""


def _index(table: str, *columns: str) -> str:
    name = "_".join(("idx", table, *columns))
    listed = ", ".join(f'"{column}"' for column in columns)
    return f'CREATE INDEX "{name}"\n    ON "{table}" ({listed})'


# The transitions log as migration 5 makes it: `sequence` is the rowid, handed out in commit
# order (a write transaction holds the whole database).
_TRANSITIONS_TABLE = """CREATE TABLE transitions (
            sequence INTEGER PRIMARY KEY,
            run_kind INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            flow_run_id TEXT NOT NULL,
            from_state_id TEXT,
            to_state_id TEXT NOT NULL,
            to_type INTEGER NOT NULL
        )"""

# The log's index by new state's type, as migration 8 makes it: without the types in
# `stateward_service.store.sql.TYPES_NOT_INDEXED`, its WHERE clause `sql.INDEXED_TYPES`.
TRANSITIONS_TO_TYPE = """CREATE INDEX transitions_to_type ON transitions (to_type)
    WHERE to_type <> 2 AND to_type <> 3 AND to_type <> 6"""

# The states as migration 9 makes them: `sequence` (the rowid) is the sequence of the
# transition that logged the state (see `stateward_service.store.sqlite.store.Store`);
# migration 10 makes them again without UNIQUE on `id` (`_STATES_TABLE_10`).
_STATES_TABLE = """CREATE TABLE "states" (
   "sequence" INTEGER PRIMARY KEY,
   "id" TEXT NOT NULL UNIQUE,
   "run_id" TEXT NOT NULL,
   "type" INTEGER NOT NULL,
   "name" TEXT NOT NULL,
   "timestamp" INTEGER NOT NULL,
   "message" TEXT NOT NULL,
   "details" TEXT NOT NULL,
   "result_json" TEXT,
   "result_pickle" BLOB
)"""

_STATES_TABLE_10 = _STATES_TABLE.replace('"id" TEXT NOT NULL UNIQUE', '"id" TEXT NOT NULL')
_STATE_COLUMNS = """sequence, id, run_id, type, name, timestamp, message, details, result_json,
    result_pickle"""

# A run's states in the order they were logged (the index ends with the rowid, `sequence`):
# its history, and its part of the log.
STATES_RUN = "CREATE INDEX states_run ON states (run_id)"

_SCHEMA_VERSION_TABLE = """CREATE TABLE "schema_version" (
   "version" INTEGER NOT NULL
)"""

# How long opening a database waits for another process's write lock: a process upgrading a
# large file holds it for a while (migration 5 copies the log: about ten seconds a million
# transitions on a slow machine).
_MIGRATION_WAIT_MS = 600_000

# Migration n (1-based) brings a database from version n - 1 to n.
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        # Runs, states, the transitions log and the cache.
        _run_table("flow_runs", '   "flow_name" TEXT NOT NULL,\n   "parent_task_run_id" TEXT'),
        _index("flow_runs", "flow_name"),
        _index("flow_runs", "parent_task_run_id"),
        _run_table(
            "task_runs",
            '   "task_key" TEXT NOT NULL,\n   "flow_run_id" TEXT,\n   "child_flow_run_id" TEXT',
        ),
        _index("task_runs", "flow_run_id"),
        """CREATE TABLE "states" (
   "id" TEXT PRIMARY KEY,
   "run_id" TEXT NOT NULL,
   "type" INTEGER NOT NULL,
   "name" TEXT NOT NULL,
   "timestamp" INTEGER NOT NULL,
   "message" TEXT NOT NULL,
   "details" TEXT NOT NULL,
   "result_json" TEXT,
   "result_pickle" BLOB
)""",
        _index("states", "run_id", "timestamp"),
        # AUTOINCREMENT: a sequence is never handed out twice, even after the log is pruned
        # (migration 5 keeps that promise another way, with one page less per commit).
        """CREATE TABLE transitions (
            sequence INTEGER PRIMARY KEY AUTOINCREMENT,
            run_kind INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            flow_run_id TEXT NOT NULL,
            from_state_id TEXT,
            to_state_id TEXT NOT NULL,
            to_type INTEGER NOT NULL
        )""",
        """CREATE TABLE "cache" (
   "key" TEXT PRIMARY KEY,
   "state_id" TEXT NOT NULL,
   "expiration" INTEGER,
   "created" INTEGER NOT NULL
)""",
    ),
    (
        # Tag concurrency limits and their slots, pause keys, heartbeat leases, and the indexes
        # the server's loops query by.
        """CREATE TABLE "concurrency_limits" (
   "tag" TEXT PRIMARY KEY,
   "lim" INTEGER NOT NULL,
   "created" INTEGER NOT NULL
)""",
        """CREATE TABLE "concurrency_slots" (
   "tag" TEXT,
   "run_id" TEXT,
   PRIMARY KEY ("tag", "run_id")
)""",
        _index("concurrency_slots", "run_id"),
        """ALTER TABLE "flow_runs" ADD COLUMN "pause_keys" TEXT NOT NULL DEFAULT '[]'""",
        'ALTER TABLE "flow_runs" ADD COLUMN "lease_expires" INTEGER',
        _index("flow_runs", "state_type"),
        'ALTER TABLE "task_runs" ADD COLUMN "lease_expires" INTEGER',
        _index("task_runs", "state_type"),
    ),
    (
        # Run logs: the lines runs logged, numbered in the order they were stored.
        """CREATE TABLE run_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            flow_run_id TEXT NOT NULL,
            task_run_id TEXT NOT NULL,
            timestamp INTEGER NOT NULL,
            level INTEGER NOT NULL,
            logger TEXT NOT NULL,
            message TEXT NOT NULL
        )""",
        "CREATE INDEX run_logs_flow_run ON run_logs (flow_run_id, id)",
        "CREATE INDEX run_logs_task_run ON run_logs (task_run_id, id)",
    ),
    (
        # The indexes that keep the hot reads' cost to the rows they return, however long the
        # log and however many the runs: the log by run, by flow run and by new state's type (a
        # filtered stream reads only its own transitions), task runs by task key (listings by
        # name). Each index ends with the rowid, so a listing by one value reads in its order
        # with no sort.
        "CREATE INDEX transitions_run ON transitions (run_id)",
        "CREATE INDEX transitions_flow_run ON transitions (flow_run_id)",
        "CREATE INDEX transitions_to_type ON transitions (to_type)",
        "CREATE INDEX task_runs_task_key ON task_runs (task_key)",
    ),
    (
        # The log without AUTOINCREMENT, which wrote its counter's page in sqlite_sequence on
        # every commit that logged (one page of about fifteen). A new transition's sequence is
        # one more than the newest in the table, and the newest is never pruned (see
        # `Store.prune_log`), so no sequence is handed out twice. A log an older Stateward
        # pruned to nothing keeps its counter as a placeholder row at that sequence: no state
        # has the empty id, so no read returns it.
        "ALTER TABLE transitions RENAME TO transitions_before_5",
        _TRANSITIONS_TABLE,
        """INSERT INTO transitions
           SELECT sequence, run_kind, run_id, flow_run_id, from_state_id, to_state_id, to_type
           FROM transitions_before_5""",
        """INSERT INTO transitions (sequence, run_kind, run_id, flow_run_id, to_state_id, to_type)
           SELECT seq, 0, '', '', '', 0 FROM sqlite_sequence
           WHERE name = 'transitions_before_5'
             AND seq > coalesce((SELECT max(sequence) FROM transitions), 0)""",
        "DROP TABLE transitions_before_5",
        "CREATE INDEX transitions_run ON transitions (run_id)",
        "CREATE INDEX transitions_flow_run ON transitions (flow_run_id)",
        "CREATE INDEX transitions_to_type ON transitions (to_type)",
    ),
    (
        # The log by new state's type without the types every run that runs goes through:
        # Pending, Running and Completed, three of a task run's three transitions. Their
        # entries went to three places in the index, two of them in its middle, where SQLite
        # makes room for a new entry in a full page by moving entries among three pages and
        # their parent, again and again as they fill: 3.4 of the 29 pages each task run wrote.
        # A stream filtered by one of these types reads the log in order and keeps what
        # matches, about one transition in three of a log of runs that ran (see `sql`);
        # the rarer types (Failed, Crashed, Cancelled, Paused, Scheduled, Cancelling) keep an
        # index of their own entries only.
        "DROP INDEX transitions_to_type",
        """CREATE INDEX transitions_to_type ON transitions (to_type)
    WHERE to_type NOT IN (2, 3, 6)""",
    ),
    (
        # Task runs by state type without Completed, the state nearly every task run ends in:
        # a task run's end took its Running entry out and put a Completed one in, two pages of
        # the dozen its commit wrote; now one. A listing of Completed task runs walks them
        # newest first (most are); the statements that read the index for another type repeat
        # its WHERE clause (`stateward_service.store.sql.indexed_task_run_types`). Runs
        # without a state stay in it (coalesce), for the sweeps that look for them.
        'DROP INDEX "idx_task_runs_state_type"',
        """CREATE INDEX "idx_task_runs_state_type"
    ON "task_runs" ("state_type") WHERE coalesce(state_type, 0) <> 6""",
    ),
    (
        # Migration 6's index again, its WHERE clause without NOT IN: SQLite evaluates a
        # NOT IN list through a temporary table it builds for each statement, and so each
        # transition's INSERT built one (about 8 us, as much as an index entry it saved).
        "DROP INDEX transitions_to_type",
        TRANSITIONS_TO_TYPE,
    ),
    (
        # Each state carries the sequence of the transition that logged it, as its integer
        # primary key: the states of a run, by the index of states by run (which ends with
        # it), are its log in order, and the log's own index by run goes. A commit touched
        # both indexes by run, at random places in each (about three pages a task run each).
        # A state whose transition was pruned (or an older Stateward never logged) gets a
        # negative number, in the order the states were written, below every logged one.
        'ALTER TABLE "states" RENAME TO states_before_9',
        _STATES_TABLE,
        """INSERT INTO "states" (sequence, id, run_id, type, name, timestamp, message, details,
                                 result_json, result_pickle)
           SELECT t.sequence, s.id, s.run_id, s.type, s.name, s.timestamp, s.message,
                  s.details, s.result_json, s.result_pickle
           FROM transitions t JOIN states_before_9 s ON s.id = t.to_state_id""",
        """INSERT INTO "states" (sequence, id, run_id, type, name, timestamp, message, details,
                                 result_json, result_pickle)
           SELECT s.rowid - (SELECT max(rowid) FROM states_before_9) - 1, s.id, s.run_id,
                  s.type, s.name, s.timestamp, s.message, s.details, s.result_json,
                  s.result_pickle
           FROM states_before_9 s
           WHERE NOT EXISTS (SELECT 1 FROM "states" n WHERE n.id = s.id)""",
        "DROP TABLE states_before_9",
        STATES_RUN,
        "DROP INDEX transitions_run",
    ),
    (
        # The states without their index by id, which every commit that wrote a state wrote
        # too (about 2.7 pages of the 21 a task run wrote): a state is found by its sequence.
        # A run's current state is its newest (the last of its entries in the index of states
        # by run: each state a run gets is written as its current one), the state a
        # transition left is the one before it there, and a cache entry holds its state's
        # sequence. State ids are made by the server, one per state written: nothing is lost
        # with the index's uniqueness.
        'ALTER TABLE "cache" ADD COLUMN "state_sequence" INTEGER',
        'UPDATE "cache" SET state_sequence = (SELECT sequence FROM states WHERE id = state_id)',
        'ALTER TABLE "states" RENAME TO states_before_10',
        _STATES_TABLE_10,
        f"""INSERT INTO "states" ({_STATE_COLUMNS})
           SELECT {_STATE_COLUMNS} FROM states_before_10 ORDER BY sequence""",
        "DROP TABLE states_before_10",
        STATES_RUN,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database's schema up to `target` in one write transaction, so that processes
    starting together on one file migrate it once. `conn` is in autocommit mode
    (`isolation_level=None`). Returns the version it found; raises SchemaTooNew for a database
    written by a newer Stateward. A database already at `target` or newer is only read: no
    write lock is taken. Otherwise another process's write lock is waited for up to
    `_MIGRATION_WAIT_MS`, far longer than a write waits: it may be upgrading the file."""
    current = _version(conn)
    if current is not None and current >= target:
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(current, SCHEMA_VERSION)
        return current
    waits = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute(f"PRAGMA busy_timeout={max(waits, _MIGRATION_WAIT_MS)}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout={waits}")
    try:
        found = _version(conn)
        if found is None:
            conn.execute(_SCHEMA_VERSION_TABLE)
            conn.execute('INSERT INTO "schema_version" ("version") VALUES (0)')
            found = 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for version in range(found + 1, target + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _version(conn: sqlite3.Connection) -> int | None:
    """The database's schema version; None before the first migration made the table. Read
    without a write lock, it still tells whether an upgrade is due: a version only goes up."""
    found_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found_table is None:
        return None
    return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STATES_RUN", "TRANSITIONS_TO_TYPE", "migrate"]
