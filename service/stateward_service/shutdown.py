"""How a shutdown ends the calls that write without lying to them about their writes.

A write cannot be taken back once its group committed. If its call were cancelled after that
(the server's grace period over), the client would hear UNAVAILABLE for a write that was made,
and one that sent it again without a transition id would write it twice. So a shutdown closes
the door to new writes first (UNAVAILABLE, nothing written), then waits for the writing calls
in flight to be answered: those the group-commit writer has not started when the grace ends
are refused unwritten, a group already running is waited for (its commit or failure is what
its calls are told), and only then does the gRPC server cancel what is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from stateward.exceptions import StatusCode
from stateward_service.errors import ServiceError

T = TypeVar("T")

# How long the answers of the writes decided at the end of a shutdown get to reach their clients
# (a client that reads nothing for this long loses them: its transition ids tell it what was
# written when it sends the calls again).
ANSWER_SECONDS = 2.0

NOT_STARTED = (
    "the server is shutting down: this call was not run (nothing was written); send it again "
    "to another server, or to this one once it is back"
)

NO_NEW_WRITES = (
    "the server is shutting down and takes no new writes: this call was not run (nothing was "
    "written); send it again to another server, or to this one once it is back"
)


class Grace:
    """The time a shutdown gives the calls in flight, from now: `seconds`, which `shorten`
    (a second signal) may bring forward."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.deadline = self._loop.time() + seconds
        self._shortened = asyncio.Event()

    def remaining(self) -> float:
        """Seconds left (0 once it is over)."""
        return max(0.0, self.deadline - self._loop.time())

    def shorten(self, seconds: float) -> None:
        """End the grace in `seconds` from now, if that is sooner."""
        deadline = self._loop.time() + seconds
        if deadline < self.deadline:
            self.deadline = deadline
            self._shortened.set()

    async def wait(self, event: asyncio.Event) -> bool:
        """Wait until `event` is set or the grace is over; whether `event` was set."""
        while not event.is_set():
            remaining = self.remaining()
            if remaining <= 0:
                return False
            self._shortened.clear()
            waiters = {
                asyncio.ensure_future(event.wait()),
                asyncio.ensure_future(self._shortened.wait()),
            }
            _, pending = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
        return True


class WritingCalls:
    """The RPCs that write, each counted from the moment it is taken until gRPC is done with
    it (its answer sent, or the call cancelled). `idle` is set while none is. Those that write
    in a worker thread rather than through the group-commit writer run through `in_a_thread`,
    so that the end of the grace can refuse those not started and wait for the others."""

    def __init__(self) -> None:
        self.closed = False
        self._count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._refusing = False  # the grace is over: a thread write not started is refused
        self._in_threads: set[asyncio.Future[Any]] = set()

    async def in_a_thread(self, call: Callable[[Any], T], request: Any) -> T:
        """`call(request)` in a worker thread; its result. Raises ServiceError (UNAVAILABLE,
        nothing written) when the thread only starts it after the grace is over, and what
        `call` raises. The write goes on when the call is cancelled (a thread cannot be
        stopped), and a shutdown waits for it (`threads_done`)."""
        future = asyncio.ensure_future(asyncio.to_thread(self._unless_refused, call, request))
        self._in_threads.add(future)
        future.add_done_callback(self._in_threads.discard)
        return await asyncio.shield(future)

    async def write(self, call: Callable[[], T]) -> T:
        """A write that is not an RPC (the web view's): refused as a new writing call is once
        the server is shutting down (ServiceError UNAVAILABLE, nothing written), else `call()`
        run as `in_a_thread` runs it, counted until it returns; its result, or what it
        raises."""
        if self.closed:
            raise ServiceError(StatusCode.UNAVAILABLE, NO_NEW_WRITES, reason="SHUTTING_DOWN")
        self._count += 1
        self.idle.clear()
        try:
            return await self.in_a_thread(lambda _: call(), None)
        finally:
            self._done(None)

    def _unless_refused(self, call: Callable[[Any], T], request: Any) -> T:
        if self._refusing:
            raise ServiceError(StatusCode.UNAVAILABLE, NOT_STARTED, reason="SHUTTING_DOWN")
        return call(request)

    def refuse_not_started(self) -> int:
        """At the end of the grace: the writes handed to threads that have not begun are
        refused when their thread takes them. Returns how many are in threads now (begun or
        about to be refused)."""
        self._refusing = True
        return len(self._in_threads)

    async def threads_done(self) -> None:
        """After `refuse_not_started`: return once every write handed to a thread has ended
        (committed, failed or refused), each call then answered with its outcome."""
        while self._in_threads:
            await asyncio.wait(list(self._in_threads))

    @property
    def count(self) -> int:
        return self._count

    def take(self, context: Any) -> None:
        """On the loop, as a writing call begins (`context`: its grpc.aio ServicerContext).
        Raises ServiceError (UNAVAILABLE, nothing written) once the server is shutting down."""
        if self.closed:
            raise ServiceError(StatusCode.UNAVAILABLE, NO_NEW_WRITES, reason="SHUTTING_DOWN")
        self._count += 1
        self.idle.clear()
        context.add_done_callback(self._done)

    def _done(self, context: Any) -> None:
        self._count -= 1
        if not self._count:
            self.idle.set()


__all__ = ["ANSWER_SECONDS", "NOT_STARTED", "NO_NEW_WRITES", "Grace", "WritingCalls"]
