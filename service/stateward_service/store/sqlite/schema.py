"""The SQLite schema: numbered migrations, applied at start one transaction each, the version
recorded in the `schema_version` table (an older database is upgraded, a newer one refused)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

from stateward_service.store.interface import SchemaTooNew

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


def _migrate_to_4(db: sqlite_utils.Database) -> None:
    """The indexes that keep the hot reads' cost to the rows they return, however long the log
    and however many the runs: the log by run, by flow run and by new state's type (a filtered
    stream reads only its own transitions), task runs by task key (listings by name). Each index
    ends with the rowid, so a listing by one value reads in its order with no sort."""
    db.execute("CREATE INDEX transitions_run ON transitions (run_id)")
    db.execute("CREATE INDEX transitions_flow_run ON transitions (flow_run_id)")
    db.execute("CREATE INDEX transitions_to_type ON transitions (to_type)")
    db.execute("CREATE INDEX task_runs_task_key ON task_runs (task_key)")


MIGRATIONS: Sequence[Callable[[sqlite_utils.Database], None]] = (
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
    _migrate_to_4,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite_utils.Database, target: int = SCHEMA_VERSION) -> int:
    """Bring the database's schema up to `target` in one write transaction, so that processes
    starting together on one file migrate it once. Returns the version it found; raises
    SchemaTooNew for a database written by a newer Stateward."""
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "schema_version" not in db.table_names():
            db.table("schema_version").create({"version": int}, not_null={"version"})
            db.table("schema_version").insert({"version": 0})
        found = int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(found, SCHEMA_VERSION)
        for version in range(found + 1, target + 1):
            MIGRATIONS[version - 1](db)
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]
