"""The typed clients: `Client` (blocking) and `AsyncClient` (asyncio), one method per operation,
speaking the vocabulary (`stateward.states`, `stateward.runs`) in and out.

Both make the same calls: a `_Call` names the method, carries the request and reads the
response, built once by the functions below the clients; only the I/O differs. `watch()`
follows the transitions stream and, when the server goes away (a restart, a shutdown) or ends a
subscriber that fell behind, reconnects with the last sequence it delivered, so the caller sees
every transition once and in order.

The protocol (gRPC, protobuf, `stateward.wire`) is imported where a call first needs it: a
process on the embedded default, whose calls go to the orchestrator in its own process in the
vocabulary, never loads it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stateward._records import dataclass
from stateward.exceptions import CursorExpired, RpcError, StatewardError
from stateward.runs import (
    CacheEntry,
    ConcurrencyLimit,
    FlowRun,
    LogEntry,
    OrchestrationResult,
    RetryPolicy,
    RunKind,
    TaskRun,
    Transition,
)
from stateward.states import State, StateType

if TYPE_CHECKING:
    from stateward._transport import AsyncTransport, LocalCalls, Transport
    from stateward.v1 import orchestration_pb2 as pb

DEFAULT_TIMEOUT = 30.0

# Not a package: an empty search path only lets `import stateward.client.orchestration` (the
# reference's module path) reach the finder that says what to use instead (stateward._left_out).
__path__: list[str] = []
T = TypeVar("T")

# A run `create_and_start` was asked to create: as stored, or the error its create was refused with.
Created = FlowRun | TaskRun | StatewardError


@dataclass(frozen=True)
class Started:
    """The answer to `create_and_start`: for each run to create, in order, the run as stored or
    the error its create was refused with; then the answer to the proposed state, or the error
    the proposal was refused with. (Each operation is refused alone; the others still apply. A
    failure of the database itself is raised instead, and nothing of the call was written.)"""

    created: list[Created]
    answer: OrchestrationResult | StatewardError


class _Reconnection:
    """The watch loop's memory: the cursor to resume from, and the backoff between attempts."""

    def __init__(self, after_sequence: int | None, max_backoff: float) -> None:
        self.cursor = after_sequence
        self.max_backoff = max_backoff
        self.backoff = 0.05

    def started(self, start_sequence: int | None) -> None:
        if self.cursor is None:
            self.cursor = start_sequence

    def delivered(self, transition: Transition) -> None:
        self.cursor = transition.sequence
        self.backoff = 0.05

    def next_delay(self) -> float:
        delay, self.backoff = self.backoff, min(self.backoff * 2, self.max_backoff)
        return delay

    def skips_pruned(
        self, failure: StatewardError, pruned: Callable[[int, int], None] | None
    ) -> bool:
        """Whether the stream goes on from the oldest transition kept, `failure` saying the
        cursor is before it (`pruned` is told the cursor and the oldest kept)."""
        if pruned is None or self.cursor is None or not isinstance(failure, CursorExpired):
            return False
        pruned(self.cursor, failure.oldest_sequence)
        self.cursor = failure.oldest_sequence - 1
        return True


class WatchStopper:
    """Ends a `Client.watch` from another thread: `stop()` cancels the stream it follows (or
    the next one it opens, or its wait to reconnect), and its iteration ends."""

    def __init__(self) -> None:
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def opened(self, cancel: Callable[[], None]) -> bool:
        """The watch opened a stream, which `cancel` ends: False when it was stopped already."""
        with self._lock:
            self._cancel = cancel
            return not self._stopped.is_set()

    def wait(self, seconds: float) -> bool:
        """Wait `seconds` to reconnect; True when stopped meanwhile."""
        return self._stopped.wait(seconds)


class Client:
    """A blocking client of a Stateward server.

    With no address, it reads STATEWARD_API_URL (and STATEWARD_API_KEY, STATEWARD_TLS_*).
    With `wait_for_ready`, a call waits for an unreachable server (a restart, say) until its
    deadline instead of failing at once. Every method raises a `stateward.exceptions` error
    when the server refuses the call (NotFound, InvalidArgument...) or cannot be reached
    (ServerUnavailable). `with Client(...) as client:` closes it at the block's end;
    `async with Client(...) as client:` gives an AsyncClient to the same place for the block
    (see `__aenter__`). `lives_with_process` marks the process's client (`get_client()`'s),
    which `close()` and the end of a `with` block leave open. A method of the reference's
    client (`read_flow_run`...) raises AttributeError naming the one to call here.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        transport: Transport | None = None,
        lives_with_process: bool = False,
    ) -> None:
        if transport is None:
            from stateward._transport import Connection, GrpcTransport

            transport = GrpcTransport(Connection.from_environment(address, api_key, wait_for_ready))
        self.transport: Transport = transport
        self.timeout = timeout
        self.lives_with_process = lives_with_process
        # The hot calls straight to an orchestrator in this process, when the transport has one.
        self._local: LocalCalls | None = getattr(self.transport, "local", None)

    def close(self) -> None:
        if not self.lives_with_process:
            self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> AsyncClient:
        """`async with get_client() as client:`, the reference's idiom: an AsyncClient to the
        same server (a new connection) or, on the embedded default, to this process's
        orchestrator (its calls made in worker threads), closed at the block's end. Blocks
        may nest, and run in several tasks at once: each closes its own."""
        client = AsyncClient(transport=self.transport.asynchronous(), timeout=self.timeout)
        _opened.set((*_opened.get(), client))
        return client

    async def __aexit__(self, *exc: object) -> None:
        *outer, client = _opened.get()
        _opened.set(tuple(outer))
        await client.close()

    if not TYPE_CHECKING:  # (for type checkers, a misspelt method stays an error)

        def __getattr__(self, name: str) -> Any:
            raise _missing_method(self, name)

    def _do(self, call: _Call[T]) -> T:
        return call.read(self.transport.call(call.method, call.request, self.timeout))

    def _pages(self, listing: _Listing[T], limit: int | None) -> Iterator[T]:
        """The items of a listing, page after page, until `limit` or the last page."""
        count = 0
        while True:
            page = self.transport.call(listing.method, listing.request, self.timeout)
            for item in listing.items(page):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield item
            if not listing.next_page(page):
                return

    # --- runs -----------------------------------------------------------------------------------

    def create_flow_run(
        self,
        flow_name: str,
        *,
        id: str = "",
        name: str = "",
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        retry_policy: RetryPolicy | None = None,
        parent_task_run_id: str = "",
        state: State | None = None,
    ) -> FlowRun:
        """Create a flow run of the flow named `flow_name` (the server makes its id and name
        unless given); an initial `state` is orchestrated like any proposal. Returns the run as
        stored. Raises TypeError for a flow_name that is not a str (the reference's client
        takes the Flow: give its `.name`)."""
        run = _new_flow_run(
            flow_name, id, name, parameters, tags, retry_policy, parent_task_run_id, state
        )
        if self._local is not None:
            created = self._local.create_run(run)
            assert isinstance(created, FlowRun)
            return created
        return self._do(_create_flow_run(run))

    def get_flow_run(self, id: str) -> FlowRun:
        if self._local is not None:
            run = self._local.get_run(id, RunKind.FLOW_RUN)
            assert isinstance(run, FlowRun)
            return run
        return self._do(_get_flow_run(id))

    def list_flow_runs(
        self,
        *,
        flow_names: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        tags: Iterable[str] = (),
        ids: Iterable[str] = (),
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[FlowRun]:
        """Flow runs, newest first, following pages until `limit` runs or the last page."""
        return self._pages(_list_flow_runs(flow_names, state_types, tags, ids, page_size), limit)

    def create_task_run(
        self,
        task_key: str,
        *,
        id: str = "",
        name: str = "",
        flow_run_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        retry_policy: RetryPolicy | None = None,
        state: State | None = None,
    ) -> TaskRun:
        """Create a task run (of `flow_run_id`, or standalone); an initial `state` is
        orchestrated like any proposal. Returns the run as stored. Raises TypeError for a
        task_key that is not a str (the reference's client takes the Task: give its
        `.task_key`)."""
        run = _new_task_run(task_key, id, name, flow_run_id, parameters, tags, retry_policy, state)
        if self._local is not None:
            created = self._local.create_run(run)
            assert isinstance(created, TaskRun)
            return created
        return self._do(_create_task_run(run))

    def get_task_run(self, id: str) -> TaskRun:
        if self._local is not None:
            run = self._local.get_run(id, RunKind.TASK_RUN)
            assert isinstance(run, TaskRun)
            return run
        return self._do(_get_task_run(id))

    def list_task_runs(
        self,
        *,
        flow_run_ids: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        tags: Iterable[str] = (),
        task_keys: Iterable[str] = (),
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[TaskRun]:
        """Task runs, newest first, following pages until `limit` runs or the last page."""
        listing = _list_task_runs(flow_run_ids, state_types, tags, task_keys, page_size)
        return self._pages(listing, limit)

    def create_and_start(
        self,
        runs: Sequence[FlowRun | TaskRun],
        state: State,
        *,
        lease_seconds: float = 0.0,
        new_ids: bool = False,
    ) -> Started:
        """Create `runs` in order, then propose `state` for the last of them: one call, one
        transaction. A run to create is given as the record a create takes (id, name, its flow
        name or task key, flow_run_id, parameters, tags, retry_policy, parent_task_run_id, and
        its initial state). The answer holds each operation's outcome or refusal (see
        `Started`); with `lease_seconds`, as in `set_state`. `new_ids` tells an orchestrator
        in this process (the embedded default) that every run's id was just made by
        `stateward.ids.new_id` here and never sent before, so it need not look for a run
        that has it; a server, which cannot know that of a client, looks anyway."""
        if self._local is not None:
            if not runs:
                raise ValueError("create_and_start needs at least one run to create")
            created, answer = self._local.create_and_start(
                runs, state, lease_seconds, new_ids=new_ids
            )
            return Started(created, answer)
        return self._do(_create_and_start(runs, state, lease_seconds))

    # --- states ---------------------------------------------------------------------------------

    def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool = False,
        expected_state_id: str | None = None,
        lease_seconds: float = 0.0,
    ) -> OrchestrationResult:
        """Propose a state for a run; the answer says whether it was accepted. With
        `lease_seconds`, a RUNNING or CANCELLING state written starts a heartbeat lease that
        `renew_leases` must keep extending, or the server crashes the run."""
        if self._local is not None:
            return self._local.set_state(
                run_id,
                state,
                force=force,
                expected_state_id=expected_state_id,
                lease_seconds=lease_seconds,
            )
        return self._do(_set_state(run_id, state, force, expected_state_id, lease_seconds))

    def resume_flow_run(self, flow_run_id: str, run_input: Any = None) -> OrchestrationResult:
        """Resume a PAUSED flow run, with `run_input` when its pause waits for input: JSON
        text (a str), or a pydantic model or a value JSON can hold (a dict, as the reference's
        client takes), encoded here. The answer: ACCEPT, REJECT (the pause expired: the run is
        FAILED) or ABORT (the run changed first). Raises NotFound, FailedPrecondition (not
        paused) or InvalidArgument (the input is missing, unexpected or does not match the
        schema); TypeError for an input JSON cannot hold."""
        return self._do(_resume_flow_run(flow_run_id, run_input))

    def write_cache_entries(self, entries: Sequence[CacheEntry]) -> int:
        """Store completed task runs' states under cache keys, all or none (at most 1,000 a
        call); returns how many. Raises NotFound for an unknown task run, FailedPrecondition
        for one that is not Completed, InvalidArgument for a malformed entry."""
        if self._local is not None:
            return self._local.write_cache_entries(entries)
        return self._do(_write_cache_entries(entries))

    def write_logs(self, entries: Sequence[LogEntry]) -> int:
        """Store lines runs logged (at most 1,000 a call); returns how many were stored. Raises
        NotFound for a line of an unknown run, InvalidArgument for a malformed one."""
        if self._local is not None:
            return self._local.write_logs(entries)
        return self._do(_write_logs(entries))

    def list_logs(self, run_id: str, after_id: int = 0, page_size: int = 1000) -> list[LogEntry]:
        """A flow run's lines (its task runs' too) or a task run's, oldest first, after the
        line `after_id`, at most `page_size`. Raises NotFound for an unknown run."""
        return self._do(_list_logs(run_id, after_id, page_size))

    def renew_leases(self, run_ids: Iterable[str], lease_seconds: float) -> list[str]:
        """Extend the heartbeat leases of runs; returns those that still hold one."""
        if self._local is not None:
            return self._local.renew_leases(list(run_ids), lease_seconds)
        return self._do(_renew_leases(run_ids, lease_seconds))

    def list_states(self, run_id: str) -> list[State]:
        """A run's state history, oldest first (read page by page)."""
        return list(self._pages(_list_states(run_id), None))

    def watch(
        self,
        *,
        run_ids: Iterable[str] = (),
        flow_run_ids: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        after_sequence: int | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        started: Callable[[int | None], None] | None = None,
        retrying: Callable[[StatewardError], None] | None = None,
        pruned: Callable[[int, int], None] | None = None,
        stopper: WatchStopper | None = None,
    ) -> Iterator[Transition]:
        """Transitions as they happen (after `after_sequence` first, when given), reconnecting
        with the last sequence when the server goes away, until the caller stops iterating
        (or, from another thread, calls `stopper.stop()`: the iteration then ends, also while
        it waits for the next transition). `started` is called with the start sequence each
        time the stream is established; `retrying` with the error each time a connection
        fails or breaks and is tried again. A cursor before the oldest transition the log
        keeps (its retention pruned those after it) raises CursorExpired, or with `pruned`,
        that is called with the cursor and the oldest sequence kept and the stream goes on
        from there."""
        run_ids, flow_run_ids, state_types = list(run_ids), list(flow_run_ids), list(state_types)
        if self._local is not None:  # the broadcaster of this process: nothing to reconnect
            cursor = after_sequence
            while True:
                try:
                    local = self._local.watch(run_ids, flow_run_ids, state_types, cursor)
                    break
                except CursorExpired as expired:
                    if pruned is None or cursor is None:
                        raise
                    pruned(cursor, expired.oldest_sequence)
                    cursor = expired.oldest_sequence - 1
            try:
                if stopper is not None and not stopper.opened(local.cancel):
                    return
                if started is not None:
                    started(local.start_sequence())
                yield from local
            finally:
                local.cancel()
            return
        import grpc

        from stateward import wire
        from stateward._transport import can_reconnect, translate

        resume = _Reconnection(after_sequence, max_backoff)
        while True:
            request = wire.watch_request(run_ids, flow_run_ids, state_types, resume.cursor)
            stream = self.transport.open_stream("WatchTransitions", request)
            try:
                if stopper is not None and not stopper.opened(stream.cancel):
                    return
                start = stream.start_sequence()
                resume.started(start)
                if started is not None:
                    started(start)
                for message in stream:
                    for transition in wire.transitions_of(message):
                        resume.delivered(transition)
                        yield transition
                return  # the server ended the stream normally
            except grpc.RpcError as error:
                if stopper is not None and stopper.stopped:
                    return  # cancelled by `stopper.stop()`
                failure = translate(error, getattr(self.transport, "connection", None))
                if resume.skips_pruned(failure, pruned):
                    continue  # at once, from the oldest kept
                if not (reconnect and can_reconnect(error)):
                    raise failure from None
                if retrying is not None:
                    retrying(failure)
            finally:
                stream.cancel()
            delay = resume.next_delay()
            if stopper is None:
                time.sleep(delay)
            elif stopper.wait(delay):
                return

    # --- tag concurrency limits -----------------------------------------------------------------

    def create_concurrency_limit(self, tag: str, limit: int) -> ConcurrencyLimit:
        return self._do(_create_concurrency_limit(tag, limit))

    def get_concurrency_limit(self, tag: str) -> ConcurrencyLimit:
        return self._do(_get_concurrency_limit(tag))

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        return self._do(_list_concurrency_limits())

    def delete_concurrency_limit(self, tag: str) -> None:
        self._do(_delete_concurrency_limit(tag))


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaitable (listings and `watch` are
    async iterators)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        transport: AsyncTransport | None = None,
    ) -> None:
        if transport is None:
            from stateward._transport import AsyncGrpcTransport, Connection

            transport = AsyncGrpcTransport(
                Connection.from_environment(address, api_key, wait_for_ready)
            )
        self.transport = transport
        self.timeout = timeout

    if not TYPE_CHECKING:  # (for type checkers, a misspelt method stays an error)

        def __getattr__(self, name: str) -> Any:
            raise _missing_method(self, name)

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _do(self, call: _Call[T]) -> T:
        return call.read(await self.transport.call(call.method, call.request, self.timeout))

    async def _pages(self, listing: _Listing[T], limit: int | None) -> AsyncIterator[T]:
        count = 0
        while True:
            page = await self.transport.call(listing.method, listing.request, self.timeout)
            for item in listing.items(page):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield item
            if not listing.next_page(page):
                return

    # --- runs -----------------------------------------------------------------------------------

    async def create_flow_run(
        self,
        flow_name: str,
        *,
        id: str = "",
        name: str = "",
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        retry_policy: RetryPolicy | None = None,
        parent_task_run_id: str = "",
        state: State | None = None,
    ) -> FlowRun:
        """See `Client.create_flow_run`."""
        run = _new_flow_run(
            flow_name, id, name, parameters, tags, retry_policy, parent_task_run_id, state
        )
        return await self._do(_create_flow_run(run))

    async def get_flow_run(self, id: str) -> FlowRun:
        return await self._do(_get_flow_run(id))

    def list_flow_runs(
        self,
        *,
        flow_names: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        tags: Iterable[str] = (),
        ids: Iterable[str] = (),
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[FlowRun]:
        return self._pages(_list_flow_runs(flow_names, state_types, tags, ids, page_size), limit)

    async def create_task_run(
        self,
        task_key: str,
        *,
        id: str = "",
        name: str = "",
        flow_run_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        retry_policy: RetryPolicy | None = None,
        state: State | None = None,
    ) -> TaskRun:
        """See `Client.create_task_run`."""
        run = _new_task_run(task_key, id, name, flow_run_id, parameters, tags, retry_policy, state)
        return await self._do(_create_task_run(run))

    async def get_task_run(self, id: str) -> TaskRun:
        return await self._do(_get_task_run(id))

    def list_task_runs(
        self,
        *,
        flow_run_ids: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        tags: Iterable[str] = (),
        task_keys: Iterable[str] = (),
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[TaskRun]:
        listing = _list_task_runs(flow_run_ids, state_types, tags, task_keys, page_size)
        return self._pages(listing, limit)

    async def create_and_start(
        self, runs: Sequence[FlowRun | TaskRun], state: State, *, lease_seconds: float = 0.0
    ) -> Started:
        return await self._do(_create_and_start(runs, state, lease_seconds))

    # --- states ---------------------------------------------------------------------------------

    async def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool = False,
        expected_state_id: str | None = None,
        lease_seconds: float = 0.0,
    ) -> OrchestrationResult:
        return await self._do(_set_state(run_id, state, force, expected_state_id, lease_seconds))

    async def resume_flow_run(self, flow_run_id: str, run_input: Any = None) -> OrchestrationResult:
        """See `Client.resume_flow_run`."""
        return await self._do(_resume_flow_run(flow_run_id, run_input))

    async def write_cache_entries(self, entries: Sequence[CacheEntry]) -> int:
        return await self._do(_write_cache_entries(entries))

    async def write_logs(self, entries: Sequence[LogEntry]) -> int:
        """See `Client.write_logs`."""
        return await self._do(_write_logs(entries))

    async def list_logs(
        self, run_id: str, after_id: int = 0, page_size: int = 1000
    ) -> list[LogEntry]:
        """See `Client.list_logs`."""
        return await self._do(_list_logs(run_id, after_id, page_size))

    async def renew_leases(self, run_ids: Iterable[str], lease_seconds: float) -> list[str]:
        return await self._do(_renew_leases(run_ids, lease_seconds))

    async def list_states(self, run_id: str) -> list[State]:
        return [state async for state in self._pages(_list_states(run_id), None)]

    async def watch(
        self,
        *,
        run_ids: Iterable[str] = (),
        flow_run_ids: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        after_sequence: int | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
        started: Callable[[int | None], None] | None = None,
        retrying: Callable[[StatewardError], None] | None = None,
        pruned: Callable[[int, int], None] | None = None,
    ) -> AsyncIterator[Transition]:
        """As `Client.watch`, as an async iterator; `started`, `retrying` and `pruned` are
        plain functions (called, not awaited), as there."""
        import grpc

        from stateward import wire
        from stateward._transport import can_reconnect, translate

        run_ids, flow_run_ids, state_types = list(run_ids), list(flow_run_ids), list(state_types)
        resume = _Reconnection(after_sequence, max_backoff)
        while True:
            request = wire.watch_request(run_ids, flow_run_ids, state_types, resume.cursor)
            stream = self.transport.open_stream("WatchTransitions", request)
            try:
                start = await stream.start_sequence()
                resume.started(start)
                if started is not None:
                    started(start)
                async for message in stream:
                    for transition in wire.transitions_of(message):
                        resume.delivered(transition)
                        yield transition
                return
            except grpc.RpcError as error:
                failure = translate(error, getattr(self.transport, "connection", None))
                if resume.skips_pruned(failure, pruned):
                    continue  # at once, from the oldest kept
                if not (reconnect and can_reconnect(error)):
                    raise failure from None
                if retrying is not None:
                    retrying(failure)
            finally:
                stream.cancel()
            await asyncio.sleep(resume.next_delay())

    # --- tag concurrency limits -----------------------------------------------------------------

    async def create_concurrency_limit(self, tag: str, limit: int) -> ConcurrencyLimit:
        return await self._do(_create_concurrency_limit(tag, limit))

    async def get_concurrency_limit(self, tag: str) -> ConcurrencyLimit:
        return await self._do(_get_concurrency_limit(tag))

    async def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        return await self._do(_list_concurrency_limits())

    async def delete_concurrency_limit(self, tag: str) -> None:
        await self._do(_delete_concurrency_limit(tag))


# The AsyncClients `async with Client` opened in this context (an asyncio task has its own),
# innermost last: each block's end closes its own.
_opened: ContextVar[tuple[AsyncClient, ...]] = ContextVar("stateward_opened", default=())

# The reference's client methods (prefect.client.orchestration) -> the one to call here.
_REFERENCE_METHODS = {
    "read_flow_run": "get_flow_run(id)",
    "read_flow_runs": "list_flow_runs(flow_names=, state_types=, tags=, ids=, limit=)",
    "read_task_run": "get_task_run(id)",
    "read_task_runs": "list_task_runs(flow_run_ids=, state_types=, tags=, task_keys=, limit=)",
    "set_flow_run_state": "set_state(run_id, state, force=)",
    "set_task_run_state": "set_state(run_id, state, force=)",
    "read_flow_run_states": "list_states(run_id)",
    "read_task_run_states": "list_states(run_id)",
    "read_logs": "list_logs(run_id)",
    "create_logs": "write_logs(entries)",
    "read_concurrency_limit_by_tag": "get_concurrency_limit(tag)",
    "read_concurrency_limits": "list_concurrency_limits()",
    "delete_concurrency_limit_by_tag": "delete_concurrency_limit(tag)",
}
# Those whose method here is an iterator (an async one in AsyncClient), not a list.
_REFERENCE_LISTINGS = frozenset(("read_flow_runs", "read_task_runs"))


def _missing_method(client: Client | AsyncClient, name: str) -> AttributeError:
    """The error for `client.<name>` that does not exist: the method to call instead, when
    the name is the reference's (without Python's "Did you mean", which would name a method
    merely spelt alike), or where the client's methods are listed."""
    from stateward._left_out import told

    kind = type(client).__name__
    if name.startswith("_"):
        return AttributeError(f"{kind!r} object has no attribute {name!r}", name=name, obj=client)
    instead = _REFERENCE_METHODS.get(name)
    if instead is not None:
        if name in _REFERENCE_LISTINGS:
            how = (
                f"iterate client.{instead}, which reads page by page (list() it for a list)"
                if kind == "Client"
                else f"iterate `async for run in client.{instead}`"
            )
        else:
            how = f"call client.{instead}" if kind == "Client" else f"await client.{instead}"
        return told(
            f"Stateward's {kind} has no {name}(): {how} (its methods are named for the RPCs; "
            "README: 'Differences from the reference')",
            client,
        )
    return AttributeError(
        f"Stateward's {kind} has no {name}(): its methods are named for the RPCs "
        "(get_flow_run, list_flow_runs, set_state, list_states, watch...) and cover runs, "
        "states, logs and tag concurrency limits only (README: 'Differences from the reference')",
        name=name,
        obj=client,
    )


def _new_flow_run(
    flow_name: str,
    id: str,
    name: str,
    parameters: Mapping[str, Any] | None,
    tags: Iterable[str],
    retry_policy: RetryPolicy | None,
    parent_task_run_id: str,
    state: State | None,
) -> FlowRun:
    """The record `create_flow_run` sends."""
    _check_name(flow_name, "flow_name", "the flow's name: my_flow.name")
    return FlowRun(
        id=id,
        name=name,
        flow_name=flow_name,
        parameters=dict(parameters or {}),
        tags=tuple(tags),
        retry_policy=retry_policy or RetryPolicy(),
        parent_task_run_id=parent_task_run_id,
        state=state,
    )


def _new_task_run(
    task_key: str,
    id: str,
    name: str,
    flow_run_id: str,
    parameters: Mapping[str, Any] | None,
    tags: Iterable[str],
    retry_policy: RetryPolicy | None,
    state: State | None,
) -> TaskRun:
    """The record `create_task_run` sends."""
    _check_name(task_key, "task_key", "the task's key: my_task.task_key")
    return TaskRun(
        id=id,
        name=name,
        task_key=task_key,
        flow_run_id=flow_run_id,
        parameters=dict(parameters or {}),
        tags=tuple(tags),
        retry_policy=retry_policy or RetryPolicy(),
        state=state,
    )


def _check_name(value: object, argument: str, expected: str) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{argument} must be a str ({expected}), not {type(value).__name__}: Stateward's "
            "client takes names where the reference's takes Flow and Task objects"
        )


# --- the calls both clients make: method, request, and how to read the response -------------
# Each imports the protocol itself, when it is first made (see the module's docstring).


@dataclass(frozen=True, slots=True, quick=True)
class _Call(Generic[T]):
    """One call of the service: its method, its request and how to read its answer."""

    method: str
    request: Any
    read: Callable[[Any], T]


@dataclass(frozen=True, slots=True, quick=True)
class _Listing(Generic[T]):
    """A paged listing: the request (its page token moved on by `next_page`) and its items."""

    method: str
    request: Any
    field: str
    read: Callable[[Any], T]

    def items(self, page: Any) -> list[T]:
        return [self.read(item) for item in getattr(page, self.field)]

    def next_page(self, page: Any) -> bool:
        """Point the request at the page after `page`; False after the last page."""
        if not page.next_page_token:
            return False
        self.request.page_token = page.next_page_token
        return True


def _create_flow_run(run: FlowRun) -> _Call[FlowRun]:
    from stateward import wire

    return _Call(
        "CreateFlowRun",
        wire.create_flow_run_request(run),
        lambda response: wire.flow_run_from_proto(response.flow_run),
    )


def _create_task_run(run: TaskRun) -> _Call[TaskRun]:
    from stateward import wire

    return _Call(
        "CreateTaskRun",
        wire.create_task_run_request(run),
        lambda response: wire.task_run_from_proto(response.task_run),
    )


def _get_flow_run(id: str) -> _Call[FlowRun]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    return _Call(
        "GetFlowRun",
        pb.GetFlowRunRequest(id=id),
        lambda response: wire.flow_run_from_proto(response.flow_run),
    )


def _get_task_run(id: str) -> _Call[TaskRun]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    return _Call(
        "GetTaskRun",
        pb.GetTaskRunRequest(id=id),
        lambda response: wire.task_run_from_proto(response.task_run),
    )


def _list_flow_runs(
    flow_names: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    ids: Iterable[str],
    page_size: int,
) -> _Listing[FlowRun]:
    from stateward import wire

    request = wire.list_flow_runs_request(flow_names, state_types, tags, ids, page_size)
    return _Listing("ListFlowRuns", request, "flow_runs", wire.flow_run_from_proto)


def _list_task_runs(
    flow_run_ids: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    task_keys: Iterable[str],
    page_size: int,
) -> _Listing[TaskRun]:
    from stateward import wire

    request = wire.list_task_runs_request(flow_run_ids, state_types, tags, task_keys, page_size)
    return _Listing("ListTaskRuns", request, "task_runs", wire.task_run_from_proto)


def _set_state(
    run_id: str,
    state: State,
    force: bool,
    expected_state_id: str | None,
    lease_seconds: float,
) -> _Call[OrchestrationResult]:
    from stateward import wire

    request = wire.set_state_request(run_id, state, force, expected_state_id, lease_seconds)
    return _Call("SetState", request, wire.orchestration_result_from_proto)


def _resume_flow_run(flow_run_id: str, run_input: Any) -> _Call[OrchestrationResult]:
    from stateward import wire

    text = run_input if run_input is None or isinstance(run_input, str) else input_json(run_input)
    request = wire.resume_flow_run_request(flow_run_id, text)
    return _Call("ResumeFlowRun", request, wire.resume_result_from_proto)


def input_json(run_input: Any) -> str:
    """The JSON text of the input a resume carries: a pydantic model's, or a value's that JSON
    can hold (raises TypeError, saying so, for any other)."""
    import json

    dump = getattr(run_input, "model_dump_json", None)  # a pydantic model (not imported here)
    if callable(dump):
        return str(dump())
    try:
        return json.dumps(run_input, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"run_input must be a pydantic model or a value JSON can hold ({error})"
        ) from None


def _write_cache_entries(entries: Sequence[CacheEntry]) -> _Call[int]:
    from stateward import wire

    request = wire.write_cache_entries_request(entries)
    return _Call("WriteCacheEntries", request, lambda response: response.written)


def _write_logs(entries: Sequence[LogEntry]) -> _Call[int]:
    from stateward import wire

    return _Call("WriteLogs", wire.write_logs_request(entries), lambda response: response.written)


def _list_logs(run_id: str, after_id: int, page_size: int) -> _Call[list[LogEntry]]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    request = pb.ListLogsRequest(run_id=run_id, after_id=after_id, page_size=page_size)
    return _Call(
        "ListLogs",
        request,
        lambda response: [wire.log_entry_from_proto(entry) for entry in response.entries],
    )


def _renew_leases(run_ids: Iterable[str], lease_seconds: float) -> _Call[list[str]]:
    from stateward import wire

    return _Call(
        "RenewLeases",
        wire.renew_leases_request(run_ids, lease_seconds),
        lambda response: list(response.renewed_run_ids),
    )


def _list_states(run_id: str) -> _Listing[State]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    return _Listing(
        "ListStates", pb.ListStatesRequest(run_id=run_id), "states", wire.state_from_proto
    )


def _create_and_start(
    runs: Sequence[FlowRun | TaskRun], state: State, lease_seconds: float
) -> _Call[Started]:
    from stateward import wire

    if not runs:
        raise ValueError("create_and_start needs at least one run to create")
    operations: list[tuple[str, Any]] = [
        ("create_flow_run", wire.create_flow_run_request(run))
        if isinstance(run, FlowRun)
        else ("create_task_run", wire.create_task_run_request(run))
        for run in runs
    ]
    proposal = wire.set_state_request(runs[-1].id, state, lease_seconds=lease_seconds)
    operations.append(("set_state", proposal))
    return _Call("ExecuteBatch", wire.batch_request(operations), _started)


def _started(response: pb.ExecuteBatchResponse) -> Started:
    """The answer to a create-and-start batch, in the vocabulary."""
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    *creates, proposal = [wire.batch_operation_result(result) for result in response.results]
    created: list[Created] = []
    for result in creates:
        if isinstance(result, StatewardError):
            created.append(result)
        elif isinstance(result, pb.CreateFlowRunResponse):
            created.append(wire.flow_run_from_proto(result.flow_run))
        elif isinstance(result, pb.CreateTaskRunResponse):
            created.append(wire.task_run_from_proto(result.task_run))
        else:
            created.append(RpcError(f"the server answered a create with {type(result).__name__}"))
    answer: OrchestrationResult | StatewardError
    if isinstance(proposal, StatewardError):
        answer = proposal
    else:
        answer = wire.orchestration_result_from_proto(proposal)
    return Started(created, answer)


def _create_concurrency_limit(tag: str, limit: int) -> _Call[ConcurrencyLimit]:
    from stateward import wire

    return _Call(
        "CreateConcurrencyLimit",
        wire.create_limit_request(tag, limit),
        lambda response: wire.limit_from_proto(response.concurrency_limit),
    )


def _get_concurrency_limit(tag: str) -> _Call[ConcurrencyLimit]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    return _Call(
        "GetConcurrencyLimit",
        pb.GetConcurrencyLimitRequest(tag=tag),
        lambda response: wire.limit_from_proto(response.concurrency_limit),
    )


def _list_concurrency_limits() -> _Call[list[ConcurrencyLimit]]:
    from stateward import wire
    from stateward.v1 import orchestration_pb2 as pb

    return _Call(
        "ListConcurrencyLimits",
        pb.ListConcurrencyLimitsRequest(),
        lambda response: [wire.limit_from_proto(limit) for limit in response.concurrency_limits],
    )


def _delete_concurrency_limit(tag: str) -> _Call[None]:
    from stateward.v1 import orchestration_pb2 as pb

    return _Call(
        "DeleteConcurrencyLimit", pb.DeleteConcurrencyLimitRequest(tag=tag), lambda _: None
    )
