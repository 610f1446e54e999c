"""One orchestrating process on a shared database: the orchestrator on its own connection, the
log follower feeding the broadcaster, the gRPC API's methods, and the loops, run here only while
this process holds the leader lock. A server replica serves it over gRPC; an SDK process on the
embedded default calls it in-process. Any number of replicas share one database."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stateward.runs import Transition
from stateward_service.broadcaster import TransitionBroadcaster
from stateward_service.follower import LogFollower
from stateward_service.leadership import LoopsLeadership
from stateward_service.loops import ServerLoops
from stateward_service.orchestrator import Orchestrator
from stateward_service.rules.policies import Policies
from stateward_service.settings import READ_POOL_SIZE, ServerSettings
from stateward_service.store import is_postgres, open_database

if TYPE_CHECKING:
    from stateward_service.grpc_api import OrchestrationService

log = logging.getLogger("stateward.replica")


def encode_transition(transition: Transition) -> bytes:
    """The bytes of one WatchTransitions message. The broadcaster calls it only for a
    subscriber that needs them, so the protocol is loaded on the first (an SDK process that
    runs flows and watches nothing never loads it)."""
    from stateward.wire import watch_response

    return watch_response(transition).SerializeToString()


def encode_log_rows(rows: list[Sequence[Any]]) -> list[bytes]:
    """What `encode_transition` makes of the transition of each row of the log (see
    `store.LogRow`), made from the rows directly (a replay's stream messages)."""
    from stateward_service.log_messages import log_row_messages

    return log_row_messages(rows)


def check_database(settings: ServerSettings) -> None:
    """Open the settings' database and close it: what the first replica to open it does (the
    schema made or upgraded, a SQLite file checked as `quick_check` says), once. Raises
    DatabaseRefused and DatabaseUnavailable as `open_database` does."""
    open_database(
        settings.database,
        synchronous=settings.sqlite_synchronous,
        quick_check=settings.quick_check,
        read_pool_size=1,
    ).close()


class Replica:
    """Call `start()` inside a running event loop (the broadcaster's subscribers and the loops
    run on it), then `stop()` on the same loop. With `lead_loops` false (a short-lived process)
    it never competes for the leader lock, so never runs the loops. `lead_level` is the
    logging level of the line saying it took the lead (see LoopsLeadership)."""

    def __init__(
        self, settings: ServerSettings, *, lead_loops: bool = True, lead_level: int = logging.INFO
    ) -> None:
        self.settings = settings
        self.lead_loops = lead_loops
        store = open_database(
            settings.database,
            synchronous=settings.sqlite_synchronous,
            quick_check=settings.quick_check,
            read_pool_size=settings.read_pool_size,
        )
        if settings.read_pool_size != READ_POOL_SIZE and not is_postgres(settings.database):
            log.warning(
                "read_pool_size (STATEWARD_READ_POOL_SIZE, --read-pool-size) is for PostgreSQL: "
                "on a SQLite file each read at once opens a connection of its own"
            )
        self.orchestrator = Orchestrator(store, Policies.default(settings.slot_wait_seconds))
        last = self.orchestrator.last_sequence()
        self.broadcaster = TransitionBroadcaster(
            self.orchestrator,
            encode_transition,
            last,
            capacity=settings.stream_buffer,
            encode_rows=encode_log_rows,
        )
        # The gRPC API, made on first use (see `api`).
        self._api: OrchestrationService | None = None
        self._api_lock = threading.Lock()
        self.follower = LogFollower(
            self.orchestrator,
            self.orchestrator.change_signal(),
            last,
            looks=self.orchestrator.looks,
        )
        self.follower.subscribe(self.broadcaster.publish)
        self.orchestrator.subscribe(self.follower.offer)
        self.loops = ServerLoops(self.orchestrator, settings)
        # The follower sees every process's commits: a cancel written elsewhere cascades here.
        self.follower.subscribe(self.loops.notice)
        self.leadership = LoopsLeadership(
            self.orchestrator.leader_lock(), self.loops, lead_level=lead_level
        )

    @property
    def api(self) -> OrchestrationService:
        """The gRPC API's methods, on this replica: a server serves them; the SDK's embedded
        transport calls those of the calls it makes with messages. Made on first use, so that
        an SDK process whose calls all go in-process in the vocabulary loads no protobuf."""
        if self._api is not None:
            return self._api
        with self._api_lock:
            if self._api is None:
                from stateward_service.grpc_api import OrchestrationService

                self._api = OrchestrationService(
                    self.orchestrator,
                    self.broadcaster,
                    slow_commits=is_postgres(self.settings.database),
                )
            return self._api

    async def start(self) -> None:
        self.broadcaster.bind(asyncio.get_running_loop())
        freed = await asyncio.to_thread(self.orchestrator.release_stale_slots)
        if freed:
            log.warning("released %d concurrency slot(s) of runs no longer running", freed)
        self.follower.start(asyncio.get_running_loop())
        if self.lead_loops:
            self.leadership.start()

    async def close_streams(self) -> None:
        """End every subscription (they resume elsewhere from their cursor) and every calls
        stream (once its calls in flight are answered)."""
        if self._api is not None:
            await self._api.close_streams()
        await self.broadcaster.close()

    async def stop(self) -> None:
        """Stop the loops (handing the leader lock over), the follower, and close the store."""
        try:
            await self.broadcaster.close()
            await self.leadership.stop()
        finally:
            # The calls were answered (the gRPC server stopped first): the writer is idle.
            with self._api_lock:
                if self._api is not None:
                    self._api.close()
            self.follower.stop()
            self.orchestrator.close()


__all__ = ["Replica", "check_database", "encode_transition"]
