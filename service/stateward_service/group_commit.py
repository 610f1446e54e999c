"""Group commit: the writes that calls make at the same time share one transaction and one commit.

The gRPC API's writing calls (SetState, the creates, ExecuteBatch...) hand their work to one
writer thread instead of each committing on the event loop. The writer takes everything pending
at once, runs it through `Orchestrator.together` (one transaction, a savepoint per call, one
commit) and only then answers each call: an answer is never sent before its write is durable.
While the writer commits, the event loop goes on taking calls, which form the next group; a
lone call is a group of one and waits for nothing else.
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
    """One thread that runs the writing calls given to `run`, many to a transaction."""

    def __init__(self, orchestrator: Orchestrator, max_group: int = MAX_GROUP) -> None:
        self._orchestrator = orchestrator
        self._max_group = max_group
        self._pending: list[_Pending] = []
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        # How many groups were committed and how many calls they held (for tests and bench).
        self.groups = 0
        self.calls = 0

    async def run(self, operation: Callable[[], T]) -> T:
        """Run `operation` (a write through the orchestrator, in the writer thread) in the next
        group, and return what it returned once the group committed, or raise what it raised.
        Raises WriterStopped once the writer was stopped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
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
            outcomes = self._orchestrator.together([operation for operation, _, _ in group])
            self.groups += 1
            self.calls += len(group)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for (_, future, loop), outcome in zip(group, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
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
