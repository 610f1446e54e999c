"""The log follower: feeds this process's broadcaster with every transition of the shared log, in
sequence order, whichever process wrote it.

This process's own commits are offered directly (no database read) when they follow the last
published sequence. Anything else (another process's commits, or a local batch that overtook one)
is read from the log by `sequence > cursor` on a thread of its own, woken by the backend's change
signal (SQLite's `data_version`, PostgreSQL's LISTEN/NOTIFY) and by a backstop timer: the signal
is only a wake-up, the log is the truth, so a lost signal delays a transition, never loses it.

A signal that is a poll (SQLite's: a few microseconds, never blocking) is asked by the event loop
the follower is started on, and the thread sleeps until the loop or a backstop wakes it. On this
machine a thread that wakes to ask costs 50-100 us of CPU a wake (timed sleeps are dear on these
virtual machines), about 2% of a core at 200 asks a second, paid by a busy server as GIL hand-offs
with its loop. Where the system tells of writes to the database (`PolledChangeSignal.writes`), the
loop asks every few milliseconds only for a while after a write, and otherwise sleeps: an idle
process asked 200 times a second, each ask a wake of the loop (~150 us of CPU here) and a SQLite
call that hands the interpreter's lock to any busy thread (a replay's) and waits to get it back.
Elsewhere a timer of the loop asks every few milliseconds. PostgreSQL's signal blocks on its
connection: the thread waits on it.

A process that writes looks for other connections' commits anyway, on its writing connection as
each transaction begins (`Orchestrator.looks`): while it writes, an ask of the loop that comes
after such a look reads what the look found instead of polling (the poll, after this process's
own commit, is two statements: the version moved, so the newest sequence is read too). The last
ask of a series always polls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from stateward.runs import Transition
from stateward_service.store import ChangeSignal, PolledChangeSignal, WriteNotices

log = logging.getLogger("stateward.follower")

Listener = Callable[[Sequence[Transition]], None]

# After the system told of a write, the loop asks the signal this many times, `signal_timeout`
# apart, before it waits for the next notice: a commit is told of when its pages are written to
# the log, and seen by `data_version` only once its header is (after a sync, in FULL mode).
ASKS_AFTER_A_WRITE = 20


class LogSource(Protocol):
    """Where the log is read (the orchestrator)."""

    def read_log(self, after: int, limit: int) -> tuple[list[Transition], int, int]: ...


# (looks, found): how many times this process's writes looked for other connections' commits,
# and how many of those looks found one (see `Orchestrator.looks`).
Looks = Callable[[], tuple[int, int]]


class LogFollower:
    """Publishes the log's transitions to its listeners exactly once each, in sequence order."""

    def __init__(
        self,
        source: LogSource,
        signal: ChangeSignal,
        cursor: int,
        *,
        batch: int = 500,
        backstop_seconds: float = 1.0,
        signal_timeout: float = 0.005,
        looks: Looks | None = None,
    ) -> None:
        """`looks`: this process's writes' looks for other connections' commits, which a
        polled signal's asks then need not repeat (see the module's docstring)."""
        self.source = source
        self.signal = signal
        self.batch = batch
        self.backstop_seconds = backstop_seconds
        self.signal_timeout = signal_timeout
        self._cursor = cursor  # the last sequence published
        self._lock = threading.Lock()  # orders publications from the writers and the thread
        self._listeners: list[Listener] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The loop timer that asks a polled signal (None: the thread waits on the signal, or the
        # loop waits for a notice of writes).
        self._timer: asyncio.TimerHandle | None = None
        self._polled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes: WriteNotices | None = None  # the loop waits on these between writes
        self._asks_left = 0  # asks before the loop waits for a notice again
        self._reading = False  # the loop waits for a notice (a reader of `_writes`)
        self._signal_failing = False  # the last ask of the signal failed
        self._looks = looks
        self._looks_seen = looks() if looks is not None else (0, 0)  # at the last ask
        self.failing = False  # the last read failed (the database is unreachable)
        self.woken_by_writes = 0  # times the loop found the notices of writes readable

    @property
    def cursor(self) -> int:
        return self._cursor

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` with each batch of transitions, in sequence order; it must be quick."""
        self._listeners.append(listener)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start following. With `loop` (the running loop, when called from it) a signal that
        is a poll is asked by that loop (after the system's notices of writes, or on a timer);
        else, or for a blocking signal, by the thread."""
        if loop is not None and isinstance(self.signal, PolledChangeSignal):
            self._polled = True
            self._loop = loop
            self._writes = self.signal.writes()
            # Asked at once for a while, as after a write: a commit made before the notices
            # were asked for is seen as soon.
            self._asks_left = ASKS_AFTER_A_WRITE
            self._timer = loop.call_later(self.signal_timeout, self._ask, loop, self.signal)
        self._thread = threading.Thread(target=self._run, name="stateward-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (on the loop given to `start`, if any) and close the signal."""
        self._stopping.set()
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading and self._writes is not None and self._loop is not None:
            self._loop.remove_reader(self._writes.fileno())
            self._reading = False
        self._writes = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.signal.close()

    def _ask(self, loop: asyncio.AbstractEventLoop, signal: PolledChangeSignal) -> None:
        """On the loop, every `signal_timeout` (with notices of writes, only for a while after
        one): wake the thread when the signal says the log may hold something new. A failing
        signal is said once; the backstop reads go on."""
        self._timer = None
        if self._stopping.is_set():
            return
        try:
            if self._looked_meanwhile() and self._asks_left > 1:
                pass  # this process's writes looked since the last ask: no poll
            elif signal.poll(lambda: self._cursor):
                self._wake.set()
            self._signal_failing = False
        except Exception as error:
            if not self._signal_failing:
                log.warning("the change signal failed (%s); reading the log on a timer", error)
            self._signal_failing = True
        self._asks_left = max(0, self._asks_left - 1)
        writes = self._writes
        if writes is not None and not self._asks_left:
            loop.add_reader(writes.fileno(), self._written, loop, signal, writes)
            self._reading = True
            return
        self._timer = loop.call_later(self.signal_timeout, self._ask, loop, signal)

    def _looked_meanwhile(self) -> bool:
        """On the loop, at each ask: whether this process's writes looked for other
        connections' commits since the last ask; wakes the thread to read the log when one of
        those looks found one."""
        if self._looks is None:
            return False
        looks, found = self._looks()
        seen_looks, seen_found = self._looks_seen
        self._looks_seen = (looks, found)
        if found != seen_found:
            self._wake.set()
        return looks != seen_looks

    def _written(
        self, loop: asyncio.AbstractEventLoop, signal: PolledChangeSignal, writes: WriteNotices
    ) -> None:
        """On the loop, when the system told of writes: ask the signal now, and for a while.
        While it asks, the notices wait unread: however many writes there are, the loop reads
        them once per `ASKS_AFTER_A_WRITE` asks."""
        self.woken_by_writes += 1
        if self._stopping.is_set():
            return
        if not writes.drain():
            return  # a file made in the folder that is not the log: the reader stays
        loop.remove_reader(writes.fileno())
        self._reading = False
        self._asks_left = ASKS_AFTER_A_WRITE
        self._ask(loop, signal)

    def offer(self, transitions: Sequence[Transition]) -> None:
        """This process committed these: publish them now if they follow the cursor, else let
        the thread read the log up to them."""
        if not transitions:
            return
        with self._lock:
            if transitions[0].sequence == self._cursor + 1:
                self._publish(transitions)
                return
        self._wake.set()

    def catch_up(self) -> None:
        """Read and publish everything committed after the cursor."""
        while True:
            after = self._cursor
            rows, _, _ = self.source.read_log(after, self.batch)
            with self._lock:
                fresh = [row for row in rows if row.sequence > self._cursor]
                if fresh:
                    self._publish(fresh)
            if len(rows) < self.batch:
                return

    def _publish(self, transitions: Sequence[Transition]) -> None:
        self._cursor = transitions[-1].sequence
        for listener in self._listeners:
            try:
                listener(transitions)
            except Exception:
                log.exception("a listener of the transitions log failed")

    def _run(self) -> None:
        last_read = time.monotonic()
        while not self._stopping.is_set():
            if self._polled:  # the loop's timer asks the signal, and sets `_wake`
                woken = self._wake.wait(self.backstop_seconds)
            else:
                try:
                    woken = self.signal.wait(self.signal_timeout, lambda: self._cursor)
                except Exception as error:
                    log.warning("the change signal failed (%s); reading the log on a timer", error)
                    woken = False
                    self._stopping.wait(self.backstop_seconds)
            if self._wake.is_set():
                self._wake.clear()
                woken = True
            if not woken and time.monotonic() - last_read < self.backstop_seconds:
                continue
            try:
                self.catch_up()
            except Exception as error:
                if not self.failing:
                    log.warning("cannot read the transitions log: %s", error)
                self.failing = True
                self._stopping.wait(min(self.backstop_seconds, 0.5))
            else:
                self.failing = False
            last_read = time.monotonic()


__all__ = ["LogFollower"]
