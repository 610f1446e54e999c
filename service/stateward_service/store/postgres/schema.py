"""The PostgreSQL schema: numbered migrations, applied at start in one transaction under an
advisory lock (replicas starting together migrate once), the version recorded in the
`schema_version` table (an older database is upgraded, a newer one refused)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from stateward_service.store.interface import SchemaTooNew

_RUN_COLUMNS = """
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    parameters TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    retries INTEGER DEFAULT 0,
    retry_delays TEXT DEFAULT '[]',
    retry_jitter DOUBLE PRECISION DEFAULT 0,
    state_id TEXT,
    state_type INTEGER,
    state_name TEXT,
    run_count INTEGER NOT NULL DEFAULT 0,
    start_time BIGINT,
    end_time BIGINT,
    total_run_time DOUBLE PRECISION NOT NULL DEFAULT 0,
    expected_start_time BIGINT,
    next_scheduled_start_time BIGINT,
    created BIGINT NOT NULL,
    lease_expires BIGINT,
    -- the order of run listings and their page tokens (a rowid): never a stream cursor
    position BIGSERIAL NOT NULL"""

# Each migration is a list of statements; migration N brings the schema to version N.
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        f"""CREATE TABLE flow_runs ({_RUN_COLUMNS},
            flow_name TEXT NOT NULL,
            parent_task_run_id TEXT,
            pause_keys TEXT NOT NULL DEFAULT '[]')""",
        "CREATE INDEX flow_runs_flow_name ON flow_runs (flow_name)",
        "CREATE INDEX flow_runs_parent_task_run_id ON flow_runs (parent_task_run_id)",
        "CREATE INDEX flow_runs_state_type ON flow_runs (state_type)",
        "CREATE UNIQUE INDEX flow_runs_position ON flow_runs (position)",
        f"""CREATE TABLE task_runs ({_RUN_COLUMNS},
            task_key TEXT NOT NULL,
            flow_run_id TEXT,
            child_flow_run_id TEXT)""",
        "CREATE INDEX task_runs_flow_run_id ON task_runs (flow_run_id)",
        "CREATE INDEX task_runs_state_type ON task_runs (state_type)",
        "CREATE UNIQUE INDEX task_runs_position ON task_runs (position)",
        """CREATE TABLE states (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            type INTEGER NOT NULL,
            name TEXT NOT NULL,
            timestamp BIGINT NOT NULL,
            message TEXT NOT NULL,
            details TEXT NOT NULL,
            result_json TEXT,
            result_pickle BYTEA)""",
        "CREATE INDEX states_run_id_timestamp ON states (run_id, timestamp)",
        # `sequence` comes from log_counter, taken by each writing transaction and held until
        # it commits: numbers are committed in the order they are handed out, so a reader that
        # saw #N never later finds a smaller one (a SEQUENCE would not promise that).
        """CREATE TABLE transitions (
            sequence BIGINT PRIMARY KEY,
            run_kind INTEGER NOT NULL,
            run_id TEXT NOT NULL,
            flow_run_id TEXT NOT NULL,
            from_state_id TEXT,
            to_state_id TEXT NOT NULL,
            to_type INTEGER NOT NULL)""",
        "CREATE TABLE log_counter (last BIGINT NOT NULL)",
        "INSERT INTO log_counter (last) VALUES (0)",
        """CREATE TABLE cache (
            key TEXT PRIMARY KEY,
            state_id TEXT NOT NULL,
            expiration BIGINT,
            created BIGINT NOT NULL)""",
        """CREATE TABLE concurrency_limits (
            tag TEXT PRIMARY KEY,
            lim INTEGER NOT NULL,
            created BIGINT NOT NULL)""",
        """CREATE TABLE concurrency_slots (
            tag TEXT NOT NULL,
            run_id TEXT NOT NULL,
            PRIMARY KEY (tag, run_id))""",
        "CREATE INDEX concurrency_slots_run_id ON concurrency_slots (run_id)",
    ),
    (
        # Run logs: the lines runs logged, numbered in the order they were stored.
        """CREATE TABLE run_logs (
            id BIGSERIAL PRIMARY KEY,
            flow_run_id TEXT NOT NULL,
            task_run_id TEXT NOT NULL,
            timestamp BIGINT NOT NULL,
            level INTEGER NOT NULL,
            logger TEXT NOT NULL,
            message TEXT NOT NULL)""",
        "CREATE INDEX run_logs_flow_run ON run_logs (flow_run_id, id)",
        "CREATE INDEX run_logs_task_run ON run_logs (task_run_id, id)",
    ),
    (
        # The indexes that keep the hot reads' cost to the rows they return, however long the
        # log and however many the runs: the log by run, by flow run and by new state's type (a
        # filtered stream reads only its own transitions), and each listing filter followed by
        # the listing's order (a page of one flow's runs reads that page, with no sort).
        "CREATE INDEX transitions_run ON transitions (run_id, sequence)",
        "CREATE INDEX transitions_flow_run ON transitions (flow_run_id, sequence)",
        "CREATE INDEX transitions_to_type ON transitions (to_type, sequence)",
        "DROP INDEX flow_runs_flow_name",
        "CREATE INDEX flow_runs_flow_name ON flow_runs (flow_name, position)",
        "DROP INDEX flow_runs_state_type",
        "CREATE INDEX flow_runs_state_type ON flow_runs (state_type, position)",
        "DROP INDEX task_runs_flow_run_id",
        "CREATE INDEX task_runs_flow_run_id ON task_runs (flow_run_id, position)",
        "DROP INDEX task_runs_state_type",
        "CREATE INDEX task_runs_state_type ON task_runs (state_type, position)",
        "CREATE INDEX task_runs_task_key ON task_runs (task_key, position)",
    ),
    (
        # The log by new state's type without Pending, Running and Completed, which every run
        # that runs goes through (as SQLite's migration 6): a write adds no entry for them,
        # and a stream filtered by one of them reads the log in order and keeps what matches
        # (see `stateward_service.store.sql.TYPES_NOT_INDEXED`).
        "DROP INDEX transitions_to_type",
        "CREATE INDEX transitions_to_type ON transitions (to_type, sequence)"
        " WHERE to_type NOT IN (2, 3, 6)",
    ),
    (
        # Task runs by state type without Completed (as SQLite's migration 7; see
        # `stateward_service.store.sql.TASK_RUN_TYPES_NOT_INDEXED`).
        "DROP INDEX task_runs_state_type",
        "CREATE INDEX task_runs_state_type ON task_runs (state_type, position)"
        " WHERE coalesce(state_type, 0) <> 6",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Any constant: the transaction-level advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x5374617465  # "State"


def migrate(conn: psycopg.Connection[tuple[object, ...]], target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to `target`; returns the version found. Raises SchemaTooNew for a
    database written by a newer Stateward."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            found = 0
        else:
            found = int(str(row[0]))
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for version in range(found + 1, target + 1):
            for statement in MIGRATIONS[version - 1]:
                conn.execute(statement.encode())
            conn.execute("UPDATE schema_version SET version = %s", (version,))
    return found


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]
