"""The loops run in one process at a time: the one holding the database's leader lock. The
others try to take it every second or so, so that one of them takes over within a few seconds
when the leader exits or dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from stateward_service.loops import ServerLoops
from stateward_service.store import LeaderLock

log = logging.getLogger("stateward.leadership")
T = TypeVar("T")


class _Exiting(Exception):
    """No worker thread can be had for the lock's calls: the interpreter is exiting."""


class LoopsLeadership:
    """Runs `loops` in this process while it holds `lock`. Taking the lead is said at
    `lead_level`: INFO for a server, whose operator may run several; a script on the embedded
    default gives DEBUG, as its user has no use for it."""

    def __init__(
        self,
        lock: LeaderLock,
        loops: ServerLoops,
        retry_seconds: float = 1.0,
        lead_level: int = logging.INFO,
    ) -> None:
        self.lock = lock
        self.loops = loops
        self.retry_seconds = retry_seconds
        self.lead_level = lead_level
        self.leading = False
        # False once this process is shutting down: it keeps the lead it holds until `stop()`,
        # but takes none (the workers of one server stop together: each took the lead the
        # one before it gave up, to start the loops and stop them again at once).
        self.competing = True
        self._task: asyncio.Task[None] | None = None
        # The lock is used from worker threads; a call under way when the task is cancelled
        # still ends before `stop()` releases the lock.
        self._guard = threading.Lock()

    def start(self) -> None:
        """Start competing for the lock (inside a running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._lead())

    async def stop(self) -> None:
        """Stop the loops, if they run here, and give the lock up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leading:
            await self.loops.stop()
            self.leading = False
        try:
            await asyncio.to_thread(self._locked, self.lock.release)
        except RuntimeError:  # the interpreter is exiting (an embedded process): release here
            self._locked(self.lock.release)

    def _locked(self, call: Callable[[], T]) -> T:
        with self._guard:
            return call()

    async def _off_loop(self, call: Callable[[], T]) -> T:
        """`call()` under the guard in a worker thread. Raises _Exiting when no worker thread
        can be had: the loop's executor is shut down, which happens only as the interpreter
        exits (its threading atexit hook stops every executor's threads before the atexit
        hook that calls `stop()`), or the loop ends."""
        try:
            pending = asyncio.get_running_loop().run_in_executor(None, self._locked, call)
        except RuntimeError:  # "cannot schedule new futures after (interpreter) shutdown"
            raise _Exiting from None
        return await pending

    async def _lead(self) -> None:
        while True:
            try:
                # Off the event loop: on PostgreSQL each is a round trip, and a connection
                # attempt to a database that does not answer takes seconds.
                if (
                    not self.leading
                    and self.competing
                    and await self._off_loop(self.lock.try_acquire)
                ):
                    self.leading = True
                    log.log(
                        self.lead_level,
                        "this process leads the background checks (late runs, lapsed "
                        "leases, cancellations) for the database",
                    )
                    self.loops.start()
                elif self.leading and not await self._off_loop(self.lock.held):
                    log.warning("this process lost the leader lock: its loops stop")
                    self.leading = False
                    await self.loops.stop()
            except _Exiting:
                # The process is exiting (an embedded process: its worker threads are
                # stopped before its atexit hooks run); `stop()`, at exit, stops the loops and
                # gives the lock up.
                log.debug("the process is exiting: it no longer competes for the leader lock")
                return
            except Exception as error:  # an unreachable database: try again later
                log.warning("cannot take the leader lock: %s", error)
            await asyncio.sleep(self.retry_seconds)


__all__ = ["LoopsLeadership"]
