"""How PostgreSQL replicas coordinate beyond transactions: connections with the server-side
timeouts set (and text that may hold NUL), the LISTEN/NOTIFY wake-up of log followers, and the
advisory lock that elects the replica running the loops."""

from __future__ import annotations

import contextlib
import logging
import re
import select
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.string import StrDumperUnknown, TextLoader

from stateward_service.store.interface import DatabaseUnavailable

log = logging.getLogger("stateward.store")

CHANNEL = "stateward_transitions"
# Any constant: the session-level advisory lock held by the replica that runs the loops.
_LEADER_LOCK = 0x53746174654C  # "StateL"

# A statement never runs longer than this, and a session never sits in an open transaction
# longer than that (a replica that hangs mid-transaction releases its row locks).
STATEMENT_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
CONNECT_TIMEOUT_SECONDS = 5


def connection_options() -> dict[str, Any]:
    """The keyword arguments of every connection a replica opens."""
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "options": (
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        ),
    }


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A new autocommit connection with the replica's timeouts."""
    conn = psycopg.connect(url, **connection_options())
    allow_nul_in_text(conn)
    return conn


def unavailable(error: psycopg.OperationalError) -> DatabaseUnavailable:
    """What a statement's OperationalError tells a person: the database cancelled it (it ran
    past `statement_timeout`, often waiting for a lock, or an administrator cancelled it), or
    the database could not be reached. One line: psycopg's messages run over several."""
    said = " ".join(str(error).split())
    if isinstance(error, pg_errors.QueryCanceled):
        return DatabaseUnavailable(
            "the PostgreSQL database cancelled the statement (it ran longer than its "
            f"{STATEMENT_TIMEOUT_MS // 1000} s statement_timeout, maybe waiting for a lock, or "
            f"an administrator cancelled it): {said}"
        )
    return DatabaseUnavailable(f"the PostgreSQL database is unreachable: {said}")


def ended_while_idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has said anything to an idle connection, one with no statement in
    progress (and not LISTENing): unasked, it says only that it ended the session (a terminated
    backend, a restart, an idle timeout) and closes it. libpq learns of that only when a
    statement is sent, which then fails; one `poll` of the socket, without waiting, learns it
    before."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


# PostgreSQL's text cannot hold NUL, which names and messages may: text goes in with NUL (and
# the escape character itself) escaped, and comes out restored. Equal strings stay equal.
_ESCAPE, _NUL = "\x1b", "\x00"
_ESCAPED = re.compile("\x1b([0e])")


def _escape(text: str) -> str:
    if _NUL not in text and _ESCAPE not in text:
        return text
    return text.replace(_ESCAPE, _ESCAPE + "e").replace(_NUL, _ESCAPE + "0")


def _restore(text: str) -> str:
    if _ESCAPE not in text:
        return text
    return _ESCAPED.sub(lambda found: _NUL if found.group(1) == "0" else _ESCAPE, text)


class _NulSafeDumper(StrDumperUnknown):
    def dump(self, obj: str) -> Any:
        return super().dump(_escape(obj))


class _NulSafeLoader(TextLoader):
    def load(self, data: Any) -> str:
        return _restore(str(super().load(data)))


def allow_nul_in_text(conn: psycopg.Connection[Any]) -> None:
    """Escape NUL in the text this connection sends and restore it in the text it reads."""
    conn.adapters.register_dumper(str, _NulSafeDumper)
    conn.adapters.register_loader("text", _NulSafeLoader)


class ListenSignal:
    """LISTENs on a connection of its own; a lost connection is reopened at the next wait,
    which then says True (the follower re-reads what it may have missed). Each NOTIFY carries
    the newest sequence its transaction logged: one the caller has seen already (its own
    process's commit, published without a read) does not wake it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._closed = False

    def _listening(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url)
            self._conn.execute(f"LISTEN {CHANNEL}")
        return self._conn

    def wait(self, timeout: float, seen: Callable[[], int]) -> bool:
        if self._closed:
            return False
        fresh = self._conn is None or self._conn.closed or self._conn.broken
        conn = self._listening()
        if fresh:
            return True
        return any(_newer(notify.payload, seen()) for notify in conn.notifies(timeout=timeout))

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()


def _newer(payload: str, seen: int) -> bool:
    """Whether a NOTIFY tells of a sequence after `seen` (any other payload may)."""
    try:
        return int(payload) > seen
    except ValueError:
        return True


class AdvisoryLeaderLock:
    """A session-level advisory lock on a connection of its own: PostgreSQL releases it when
    that session ends, whether the replica exits, dies or loses its network."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def try_acquire(self) -> bool:
        if self.held():
            return True
        self._drop()
        conn = connect(self.url)
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK,)).fetchone()
        if row is not None and row[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def held(self) -> bool:
        """Whether the session holding the lock is still alive (asks the server)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._drop()
            return False
        return True

    def release(self) -> None:
        """Give the lock up: free for another session once this returns. Ending the session
        alone would release it too, but only when the server's backend has ended, after the
        close returned: another replica trying at once could still find it taken."""
        if self._conn is not None:
            # A lost session fails here: the server released the lock as the session ended.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (_LEADER_LOCK,))
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


__all__ = [
    "CHANNEL",
    "AdvisoryLeaderLock",
    "ListenSignal",
    "connect",
    "connection_options",
    "ended_while_idle",
]
