"""Group commit: the writes that calls make at the same time share one transaction and one commit.

The gRPC API's writing calls (SetState, the creates, ExecuteBatch...) hand their work to the
writer instead of each committing alone. The writer takes everything pending at once, runs it
through `Orchestrator.together` (one transaction, a savepoint per call, one commit) and only then
answers each call: an answer is never sent before its write is durable. A lone call is a group
of one and waits for nothing else.

Where the groups run depends on what a commit costs. On SQLite (a commit is a write to the WAL,
microseconds) they run on the event loop, once the calls that became ready together have all
handed theirs in: no thread hop for a lone call, and the calls that arrive while a group runs
form the next one. On PostgreSQL (a commit waits for the network and the server's disk) they run
in a writer thread, so that the loop goes on taking calls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stateward_service.orchestrator import Orchestrator

T = TypeVar("T")

# At most this many calls in one transaction: a group holds the database's write lock while it
# runs, and other processes (and the answers of its own calls) wait for it.
MAX_GROUP = 256

_Pending = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class WriterStopped(RuntimeError):
    """The writer was stopped (the server is shutting down): the call was not run."""


class GroupCommitWriter:
    """Runs the writing calls given to `run`, many to a transaction: on the calls' event loop,
    or (`in_thread`) in a thread of its own."""

    def __init__(
        self, orchestrator: Orchestrator, *, in_thread: bool = False, max_group: int = MAX_GROUP
    ) -> None:
        self._orchestrator = orchestrator
        self.in_thread = in_thread
        self._max_group = max_group
        self._pending: list[_Pending] = []
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._flushing = False  # a group is due on the loop
        # How many groups were committed and how many calls they held (for tests and bench).
        self.groups = 0
        self.calls = 0

    async def run(self, operation: Callable[[], T]) -> T:
        """Run `operation` (a write through the orchestrator) in the next group, and return
        what it returned once the group committed, or raise what it raised. Raises
        WriterStopped once the writer was stopped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self.in_thread:
            if self._stopping:
                raise WriterStopped("the server is shutting down; try again on another")
            self._pending.append((operation, future, loop))
            if not self._flushing:
                # After the handlers already ready to run: they join this group.
                self._flushing = True
                loop.call_soon(self._flush)
            return await future
        with self._ready:
            if self._stopping:
                raise WriterStopped("the server is shutting down; try again on another")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write, name="stateward-group-commit", daemon=True
                )
                self._thread.start()
            self._pending.append((operation, future, loop))
            self._ready.notify()
        return await future

    def _flush(self) -> None:
        """On the loop: run what is pending, a group at a time, and answer it."""
        self._flushing = False
        while self._pending:
            group = self._pending[: self._max_group]
            del self._pending[: self._max_group]
            self._commit(group)

    def _commit(self, group: list[_Pending]) -> list[tuple[asyncio.Future[Any], Any]]:
        outcomes = self._orchestrator.together([operation for operation, _, _ in group])
        self.groups += 1
        self.calls += len(group)
        answers = [
            (future, outcome) for (_, future, _), outcome in zip(group, outcomes, strict=True)
        ]
        if not self.in_thread:
            _answer(answers)
        return answers

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
                while not self._pending and not self._stopping:
                    self._ready.wait()
                if not self._pending:
                    return
                group = self._pending[: self._max_group]
                del self._pending[: self._max_group]
            answers = self._commit(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for (_, _, loop), answer in zip(group, answers, strict=True):
                by_loop.setdefault(loop, []).append(answer)
            for loop, answers in by_loop.items():
                # A closed loop: nobody waits for these answers any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the calls' loop: resolve each future with its outcome (a call cancelled meanwhile,
    its client gone, is skipped: its write stands, as for any call that reached the database)."""
    for future, outcome in answers:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


__all__ = ["MAX_GROUP", "GroupCommitWriter", "WriterStopped"]
