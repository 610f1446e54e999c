"""Checks before anything is written: a file that is not a SQLite database, a damaged one
(SQLite's quick check), another application's, or one a newer Stateward made is refused with a
message that says what to do, and is left as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stateward_service.store.interface import DatabaseRefused
from stateward_service.store.sqlite.schema import SCHEMA_VERSION

_WHAT_TO_DO = "restore it from a backup (stateward db backup), or give --db another file"


def open_checked(path: Path, quick_check: bool) -> sqlite3.Connection:
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


__all__ = ["open_checked"]
