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
from typing import Any

from stateward.exceptions import StatusCode
from stateward_service.errors import ServiceError

# How long the answers of the writes decided at the end of a shutdown get to reach their clients
# (a client that reads nothing for this long loses them: its transition ids tell it what was
# written when it sends the calls again).
ANSWER_SECONDS = 2.0

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
    it (its answer sent, or the call cancelled). `idle` is set while none is."""

    def __init__(self) -> None:
        self.closed = False
        self._count = 0
        self.idle = asyncio.Event()
        self.idle.set()

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


__all__ = ["ANSWER_SECONDS", "NO_NEW_WRITES", "Grace", "WritingCalls"]
