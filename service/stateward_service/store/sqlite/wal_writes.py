"""Notice of writes to a SQLite database's write-ahead log, from the system (Linux's inotify), so
that a log follower asks `data_version` after a commit rather than every few milliseconds of an
idle process. Every commit, of any process, appends to the log file; a checkpoint writes the
database file, and reads write nothing there (their marks go to the -shm file, through memory).

One inotify instance per process and database, whoever asks (the log follower and the
checkpointer both do): a user has 128 instances on a default Linux, and every process on the
database would otherwise take two. It watches the log file itself for writes, and the folder
only for a log made anew (it is deleted when the last connection closes), so that the writes of
other files there (the server's own log file, another database) wake nobody. Each of the
instance's readers (`WalWrites`) waits on a descriptor of its own (an epoll set of the instance
and an eventfd of the reader's), readable while the instance has notices unread or once another
reader read one for it: whichever reader reads the instance tells every reader of the log's.

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
import select
import struct
import sys
import threading
from pathlib import Path

log = logging.getLogger("stateward.store")

# From <sys/inotify.h>.
_IN_MODIFY = 0x00000002  # the file was written (or truncated)
_IN_MOVED_TO = 0x00000080  # a file was moved into the folder
_IN_CREATE = 0x00000100  # a file was made in the folder
_IN_Q_OVERFLOW = 0x00004000  # events were dropped: any of them may have been the log's
_IN_IGNORED = 0x00008000  # a watch is gone (its file was deleted)
_EVENT = struct.Struct("iIII")  # watch, mask, cookie, length of the name that follows
_READ_BYTES = 64 * 1024


class _Inotify:
    """inotify's two calls, bound once."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.init, self.add_watch = libc.inotify_init1, libc.inotify_add_watch
        self.init.argtypes, self.init.restype = [ctypes.c_int], ctypes.c_int
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


class _LogWatch:
    """This process's inotify instance on one database's write-ahead log, and its readers."""

    def __init__(self, calls: _Inotify, fd: int, wal: Path) -> None:
        self._calls = calls
        self.fd = fd
        self._wal = wal
        self._wal_name = os.fsencode(wal.name)
        self._wal_watch = -1  # the watch on the log file, while there is one
        self.lock = threading.Lock()  # held while the notices are read, or a reader comes or goes
        self.readers: set[WalWrites] = set()
        self._watch_wal()

    def _watch_wal(self) -> None:
        """Watch the log file if it is there (when it is not, the folder tells of its making)."""
        self._wal_watch = self._calls.add_watch(self.fd, os.fsencode(self._wal), _IN_MODIFY)

    def read(self) -> None:
        """Read the instance's notices (never blocks) and tell every reader of the log's."""
        with self.lock:
            written = False
            while True:
                try:
                    data = os.read(self.fd, _READ_BYTES)
                except BlockingIOError:
                    break
                if not data:
                    break
                at = 0
                while at + _EVENT.size <= len(data):
                    watch, mask, _, length = _EVENT.unpack_from(data, at)
                    name = data[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0")
                    at += _EVENT.size + length
                    if watch == self._wal_watch and mask & _IN_IGNORED:
                        self._wal_watch = -1  # the log was deleted
                    elif mask & _IN_Q_OVERFLOW or (
                        watch != self._wal_watch and name == self._wal_name
                    ):
                        written = True  # the log made anew (or perhaps): watch the new file
                        self._watch_wal()
                    elif watch == self._wal_watch and mask & _IN_MODIFY:
                        written = True
            if written:
                for reader in self.readers:
                    reader.told()


_watches: dict[tuple[int, Path], _LogWatch] = {}  # by process (a forked child makes its own)
_watches_lock = threading.Lock()
_calls: _Inotify | None = None


class WalWrites:
    """A file descriptor that becomes readable when the write-ahead log of a database may have
    been written: `drain()` reads what happened and says whether it concerned the log. Make it
    with `open`; `close` it."""

    def __init__(self, watch: _LogWatch, key: tuple[int, Path]) -> None:
        self._watch = watch
        self._key = key
        # Raised by whichever reader read the instance's notices of the log (this one too).
        self._told = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Readable when this reader was told, or when the instance has notices unread.
        self._ready = select.epoll()
        self._ready.register(self._told, select.EPOLLIN)
        self._ready.register(watch.fd, select.EPOLLIN)

    @classmethod
    def open(cls, database: Path) -> WalWrites | None:
        """Notices of writes to the `-wal` file of `database`, from this process's instance on
        it (made by the first ask). None where inotify is not to be had; the reason is logged
        at DEBUG."""
        global _calls
        if not sys.platform.startswith("linux"):
            return None
        # SQLite follows symbolic links to the database: its log is beside the file linked to,
        # named after it, not after the link.
        real = database.resolve()
        key = (os.getpid(), real)
        with _watches_lock:
            watch = _watches.get(key)
            if watch is None:
                try:
                    _calls = _calls or _Inotify()
                except (OSError, AttributeError) as error:  # a libc without inotify
                    log.debug("no inotify: %s", error)
                    return None
                watch = _open_watch(_calls, real)
                if watch is None:
                    return None
                _watches[key] = watch
            reader = cls(watch, key)
            with watch.lock:
                watch.readers.add(reader)
        return reader

    def fileno(self) -> int:
        return self._ready.fileno()

    def told(self) -> None:
        """The log was written (said by the instance's reader)."""
        os.eventfd_write(self._told, 1)

    def drain(self) -> bool:
        """Read every notice waiting (never blocks); True when one may concern the log."""
        self._watch.read()
        try:
            return os.eventfd_read(self._told) > 0
        except BlockingIOError:
            return False

    def close(self) -> None:
        """Stop reading (the last reader of the instance closes it). Once; again does nothing."""
        with _watches_lock, self._watch.lock:  # not while another reader tells it
            if self._told < 0:
                return
            self._watch.readers.discard(self)
            if not self._watch.readers:
                del _watches[self._key]
                os.close(self._watch.fd)
            self._ready.close()
            os.close(self._told)
            self._told = -1


def _open_watch(calls: _Inotify, real: Path) -> _LogWatch | None:
    fd = calls.init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:  # e.g. EMFILE: the user's instances (128 by default) are all taken
        log.debug("no inotify instance: %s", os.strerror(ctypes.get_errno()))
        return None
    if calls.add_watch(fd, os.fsencode(real.parent), _IN_CREATE | _IN_MOVED_TO) < 0:
        log.debug("cannot watch %s: %s", real.parent, os.strerror(ctypes.get_errno()))
        os.close(fd)
        return None
    return _LogWatch(calls, fd, real.with_name(real.name + "-wal"))


__all__ = ["WalWrites"]
