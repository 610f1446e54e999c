"""The store: the interface the orchestrator writes through, and one package per backend.

`interface` says what a store does; `sqlite` is the embedded default, `postgres` the database of
server replicas (imported only when a PostgreSQL URL is given); the shared SQL, the row encoding
and the page tokens live beside them. `open_database` picks the backend from the target.
"""

from __future__ import annotations

from pathlib import Path

from stateward_service.store.faults import StorageUnavailable, storage_unavailable
from stateward_service.store.interface import (
    ChangeSignal,
    DatabaseRefused,
    DatabaseUnavailable,
    LeaderLock,
    LogRow,
    PolledChangeSignal,
    RunFilter,
    RunReads,
    RunStore,
    Savepoint,
    SchemaTooNew,
    StoreReader,
    WouldWait,
    WriteConflict,
    WriteNotices,
)
from stateward_service.store.pages import BadPageToken
from stateward_service.store.rows import from_us, to_us
from stateward_service.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    migrate,
)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    """Whether `target` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return str(target).startswith(POSTGRES_SCHEMES)


def open_database(
    target: str | Path,
    *,
    synchronous: str = "NORMAL",
    quick_check: bool = True,
    read_pool_size: int = 8,
) -> RunStore:
    """The store (the writing connection) of one process on `target`: a PostgreSQL URL (whose
    reads use a pool of at most `read_pool_size` connections) or a SQLite file path (checked
    first unless `quick_check` is false). Raises DatabaseRefused for a file that cannot be used
    (SchemaTooNew for a database written by a newer Stateward), and DatabaseUnavailable when a
    PostgreSQL server cannot be reached."""
    if is_postgres(target):
        try:
            from stateward_service.store.postgres import PostgresStore
        except ImportError as error:
            raise DatabaseUnavailable(
                "PostgreSQL needs the postgres extra: pip install 'stateward[postgres]'"
            ) from error
        return PostgresStore(str(target), read_pool_size=read_pool_size)
    return Store(target, synchronous=synchronous, quick_check=quick_check)


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BadPageToken",
    "ChangeSignal",
    "DatabaseRefused",
    "DatabaseUnavailable",
    "LeaderLock",
    "LogRow",
    "PolledChangeSignal",
    "RunFilter",
    "RunReads",
    "RunStore",
    "Savepoint",
    "SchemaTooNew",
    "StorageUnavailable",
    "Store",
    "StoreReader",
    "WouldWait",
    "WriteConflict",
    "WriteNotices",
    "from_us",
    "is_postgres",
    "migrate",
    "open_database",
    "storage_unavailable",
    "to_us",
]
