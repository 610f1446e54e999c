"""What a SQLite database that cannot take writes for a reason outside any request looks like:
a full disk, a read-only file system, another program's lock, a failing disk."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from stateward.exceptions import StatusCode
from stateward_service.errors import ServiceError


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


__all__ = ["StorageUnavailable", "storage_unavailable"]
