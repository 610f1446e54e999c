"""Notice of writes to a SQLite database's write-ahead log, from the system (Linux's inotify), so
that a log follower asks `data_version` after a commit rather than every few milliseconds of an
idle process. Every commit, of any process, appends to the log file; a checkpoint writes the
database file, and reads write nothing there (their marks go to the -shm file, through memory).

Where there is no inotify (another system, no instance left for this user, a folder it may not
watch), there are no notices, and a follower asks on its timer.

Two system calls through ctypes rather than the inotify_simple package: its import and first
instance cost 29 ms here (14 ms to import, 15 ms in `ctypes.util.find_library`, which runs
`ldconfig` in a subprocess), paid by every first flow run, whose budget is 250 ms.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
from pathlib import Path

log = logging.getLogger("stateward.store")

# From <sys/inotify.h>.
_IN_MODIFY = 0x00000002  # a file in the folder was written (or truncated)
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_Q_OVERFLOW = 0x00004000  # events were dropped: any of them may have been the log's
_EVENT = struct.Struct("iIII")  # watch, mask, cookie, length of the name that follows
_READ_BYTES = 64 * 1024


class WalWrites:
    """A file descriptor that becomes readable when the write-ahead log of a database may have
    been written: `drain()` reads what happened and says whether it concerned the log. Make it
    with `open`."""

    def __init__(self, fd: int, wal_name: bytes) -> None:
        self._fd = fd
        self._wal_name = wal_name

    @classmethod
    def open(cls, database: Path) -> WalWrites | None:
        """Watch the folder of `database` for writes to its `-wal` file (the folder, not the
        file: the log is made anew when every connection closed). None where inotify is not to
        be had; the reason is logged at DEBUG."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError) as error:  # a libc without inotify
            log.debug("no inotify: %s", error)
            return None
        init.argtypes, init.restype = [ctypes.c_int], ctypes.c_int
        add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        add_watch.restype = ctypes.c_int
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:  # e.g. EMFILE: the user's instances (128 by default) are all taken
            log.debug("no inotify instance: %s", os.strerror(ctypes.get_errno()))
            return None
        # SQLite follows symbolic links to the database: its log is beside the file linked to,
        # named after it, not after the link.
        real = database.resolve()
        if add_watch(fd, os.fsencode(real.parent), _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO) < 0:
            log.debug("cannot watch %s: %s", real.parent, os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        return cls(fd, os.fsencode(real.name + "-wal"))

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        """Read every notice waiting (never blocks); True when one may concern the log."""
        written = False
        while True:
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return written
            if not data:
                return written
            at = 0
            while at + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0")
                at += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW or name == self._wal_name:
                    written = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = ["WalWrites"]
