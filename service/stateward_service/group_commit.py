"""Group commit: the writes that calls make at the same time share one transaction and one commit.

The gRPC API's writing calls (SetState, the creates, ExecuteBatch...) hand their work to the
writer instead of each committing alone. The writer takes everything pending at once, runs it
through `Orchestrator.together` (one transaction, a savepoint per call, one commit) and only then
answers each call: an answer is never sent before its write is durable. A lone call is a group
of one and waits for nothing else.

Where the groups run depends on what a commit costs. On SQLite (a commit is a write to the WAL,
microseconds) they run on the event loop, once the calls that became ready together have all
handed theirs in: no thread hop for a lone call, and the calls that arrive while a group runs
form the next one. But the loop never waits for another process: a group that finds SQLite's
write lock taken (another server's group, a backup, this process's own thread writing) goes to
a writer thread, which waits for the lock there, and the calls after it follow it until that
thread has caught up; meanwhile the loop goes on answering (health checks, streams, reads) and
gathering the next group. On PostgreSQL (a commit waits for the network and the server's disk)
every group runs in the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from stateward_service.orchestrator import Orchestrator
from stateward_service.store import WouldWait

T = TypeVar("T")
log = logging.getLogger("stateward.server")

# At most this many calls in one transaction: a group holds the database's write lock while it
# runs, and other processes (and the answers of its own calls) wait for it.
MAX_GROUP = 256

# What a group tells a call: its outcome (what the operation returned, or the exception it
# raised), on the call's loop once the group committed.
Answer = Callable[[Any], None]
_Pending = tuple[Callable[[], Any], Answer, asyncio.AbstractEventLoop]


class WriterStopped(RuntimeError):
    """The writer was stopped (the server is shutting down): the call was not run."""


class WriterFailed(RuntimeError):
    """The writer failed around a call rather than in it (a bug of ours): the message says
    what is known of its write and what to do."""


# Why a call given to a stopped writer, or refused by `refuse_waiting`, was not run.
STOPPED = (
    "the server is shutting down: this call was not run (nothing was written); send it again "
    "to another server, or to this one once it is back"
)


class GroupCommitWriter:
    """Runs the writing calls given to `run`, many to a transaction: on the calls' event loop,
    or (`in_thread`) in a thread of its own."""

    def __init__(
        self, orchestrator: Orchestrator, *, in_thread: bool = False, max_group: int = MAX_GROUP
    ) -> None:
        self._orchestrator = orchestrator
        self.in_thread = in_thread
        self._max_group = max_group
        self._pending: list[_Pending] = []  # on the loop: the calls of the next group
        self._queued: list[_Pending] = []  # under `_ready`: the writer thread's calls
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._flushing = False  # a group is due on the loop
        # On the loop: the writer thread has groups that waited for the write lock, and every
        # later call goes there after them (in order) until it has caught up.
        self._handed_over = False
        self._thread_busy = False  # the thread is running a group (under `_ready`)
        # How many groups were committed and how many calls they held (for tests and bench).
        self.groups = 0
        self.calls = 0

    async def run(self, operation: Callable[[], T]) -> T:
        """Run `operation` (a write through the orchestrator) in the next group, and return
        what it returned once the group committed, or raise what it raised. Raises
        WriterStopped once the writer was stopped."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.submit(operation, partial(_settle, future))
        return await future

    def submit(self, operation: Callable[[], Any], answer: Answer) -> None:
        """On the event loop: run `operation` in the next group and, once the group committed,
        call `answer` on this loop with its outcome (what it returned, or the exception it
        raised). No task or future per call: the stream of calls answers each from here.
        Raises WriterStopped once the writer was stopped."""
        loop = asyncio.get_running_loop()
        if not self.in_thread:
            if self._stopping:
                raise WriterStopped(STOPPED)
            self._pending.append((operation, answer, loop))
            if not self._flushing:
                # After the handlers already ready to run: they join this group.
                self._flushing = True
                loop.call_soon(self._flush)
            return
        with self._ready:
            if self._stopping:
                raise WriterStopped(STOPPED)
            self._start_thread()
            self._queued.append((operation, answer, loop))
            self._ready.notify()

    def _start_thread(self) -> None:
        """Under `_ready`: start the writer thread unless it runs."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._write, name="stateward-group-commit", daemon=True
            )
            self._thread.start()

    def _flush(self) -> None:
        """On the loop: run what is pending, a group at a time, and answer it; a group that
        would wait for the write lock goes to the writer thread, with all that follows it."""
        self._flushing = False
        while self._pending:
            if self._handed_over:
                with self._ready:
                    self._queued.extend(self._pending)
                    self._start_thread()
                    self._ready.notify()
                self._pending.clear()
                return
            group = self._pending[: self._max_group]
            del self._pending[: self._max_group]
            try:
                self._commit(group, wait=False)
            except WouldWait:
                self._handed_over = True
                self._pending[:0] = group
            except BaseException as error:
                _answer(_failed(group, error))
                if not isinstance(error, Exception):  # the process is stopping: let it
                    if self._pending and not self._flushing:
                        self._flushing = True
                        asyncio.get_running_loop().call_soon(self._flush)
                    raise

    def _caught_up(self) -> None:
        """On the loop, told by the writer thread when it ran out of groups: the loop runs the
        groups again (unless more were handed over meanwhile)."""
        with self._ready:
            if self._queued or self._thread_busy:
                return
            self._handed_over = False
        if self._pending and not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _commit(self, group: list[_Pending], wait: bool = True) -> list[tuple[Answer, Any]]:
        outcomes = self._orchestrator.together([operation for operation, _, _ in group], wait=wait)
        self.groups += 1
        self.calls += len(group)
        answers = [
            (answer, outcome) for (_, answer, _), outcome in zip(group, outcomes, strict=True)
        ]
        if not wait:  # on the loop
            _answer(answers)
        return answers

    def refuse_waiting(self) -> int:
        """At the end of a shutdown's grace, on the calls' loop: take no more calls and answer
        those not started with WriterStopped (nothing of them was written); a group the thread
        is running goes on (see `wait_running`). Returns how many calls were refused."""
        with self._ready:
            self._stopping = True
            refused = self._pending + self._queued
            self._pending, self._queued = [], []
            self._ready.notify()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Answer, Any]]] = {}
        for _, answer, loop in refused:
            by_loop.setdefault(loop, []).append((answer, WriterStopped(STOPPED)))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_answer, answers)
        return len(refused)

    async def wait_running(self) -> None:
        """After `refuse_waiting`: return once the group the thread runs, if any, committed or
        failed and its answers were handed to their loops (this loop's are told before this
        returns)."""
        with self._ready:
            thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join)

    def stop(self) -> None:
        """Run what is pending, then end the thread; later calls raise WriterStopped."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._queued and not self._stopping:
                    self._ready.wait()
                if not self._queued:
                    return
                group = self._queued[: self._max_group]
                del self._queued[: self._max_group]
                self._thread_busy = True
            try:
                answers = self._commit(group)
            except BaseException as error:  # told to every call of the group; the thread goes on
                answers = _failed(group, error)
            finally:
                with self._ready:
                    self._thread_busy = False
                    idle = not self._queued
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Answer, Any]]] = {}
            for (_, _, loop), answer in zip(group, answers, strict=True):
                by_loop.setdefault(loop, []).append(answer)
            for loop, answers in by_loop.items():
                # A closed loop: nobody waits for these answers any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_answer, answers)
                    if idle and not self.in_thread:
                        loop.call_soon_threadsafe(self._caught_up)


def _failed(group: Sequence[_Pending], error: BaseException) -> list[tuple[Answer, Any]]:
    """The answers of a group whose run failed outside its calls (`together` raised: a bug of
    ours). Its transaction was rolled back, unless the failure came after the commit."""
    log.error("group commit: a group of %d call(s) failed", len(group), exc_info=error)
    failed = WriterFailed(
        f"internal error while writing this call's group ({type(error).__name__}: {error}); "
        "it was most likely not written. Read the run before sending it again, or send it "
        "again with the same state_details.transition_id, which applies once"
    )
    return [(answer, failed) for _, answer, _ in group]


def _answer(answers: Sequence[tuple[Answer, Any]]) -> None:
    """On the calls' loop: tell each call its outcome. An answer that raises (a bug of ours)
    is logged, and the call told WriterFailed instead, so that none is left waiting; the
    others are told theirs."""
    for answer, outcome in answers:
        try:
            answer(outcome)
        except Exception as error:
            log.error("group commit: answering a call failed", exc_info=error)
            written = (
                "it was not written" if isinstance(outcome, BaseException) else "it was written"
            )
            with contextlib.suppress(Exception):
                answer(
                    WriterFailed(
                        f"internal error while answering this call ({type(error).__name__}: "
                        f"{error}); {written}"
                    )
                )


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    """Resolve a call's future with its outcome (a call cancelled meanwhile, its client gone,
    is skipped: its write stands, as for any call that reached the database)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


__all__ = [
    "MAX_GROUP",
    "STOPPED",
    "Answer",
    "GroupCommitWriter",
    "WriterFailed",
    "WriterStopped",
]
