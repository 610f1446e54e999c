"""The typed clients: `Client` (blocking) and `AsyncClient` (asyncio), one method per operation.

Both build their requests and read their responses with the same functions; only the I/O
differs. `watch()` follows the transitions stream and, when the server goes away (a restart,
a shutdown) or ends a subscriber that fell behind, reconnects with the last sequence it
delivered, so the caller sees every transition once and in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from stateward import wire
from stateward._transport import (
    AsyncGrpcTransport,
    Connection,
    GrpcTransport,
    Transport,
    can_reconnect,
    translate,
)
from stateward.runs import (
    ConcurrencyLimit,
    FlowRun,
    OrchestrationResult,
    RetryPolicy,
    TaskRun,
    Transition,
)
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb

DEFAULT_TIMEOUT = 30.0


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


class Client:
    """A blocking client of a Stateward server.

    With no address, it reads STATEWARD_API_URL (and STATEWARD_API_KEY, STATEWARD_TLS_*).
    With `wait_for_ready`, a call waits for an unreachable server (a restart, say) until its
    deadline instead of failing at once.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        transport: Transport | None = None,
    ) -> None:
        self.transport: Transport = transport or GrpcTransport(
            Connection.from_environment(address, api_key, wait_for_ready)
        )
        self.timeout = timeout

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        return self.transport.call(method, request, self.timeout)

    def _pages(self, method: str, request: Any, field: str, limit: int | None) -> Iterator[Any]:
        """The items of a listing, page after page, until `limit` or the last page."""
        count = 0
        while True:
            page = self._call(method, request)
            for item in getattr(page, field):
                if limit is not None and count >= limit:
                    return
                count += 1
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

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
        request = wire.create_flow_run_request(
            flow_name,
            id=id,
            name=name,
            parameters=parameters,
            tags=tags,
            retry_policy=retry_policy,
            parent_task_run_id=parent_task_run_id,
            state=state,
        )
        return wire.flow_run_from_proto(self._call("CreateFlowRun", request).flow_run)

    def get_flow_run(self, id: str) -> FlowRun:
        return wire.flow_run_from_proto(
            self._call("GetFlowRun", pb.GetFlowRunRequest(id=id)).flow_run
        )

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
        request = wire.list_flow_runs_request(flow_names, state_types, tags, ids, page_size)
        for run in self._pages("ListFlowRuns", request, "flow_runs", limit):
            yield wire.flow_run_from_proto(run)

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
        request = wire.create_task_run_request(
            task_key,
            id=id,
            name=name,
            flow_run_id=flow_run_id,
            parameters=parameters,
            tags=tags,
            retry_policy=retry_policy,
            state=state,
        )
        return wire.task_run_from_proto(self._call("CreateTaskRun", request).task_run)

    def get_task_run(self, id: str) -> TaskRun:
        return wire.task_run_from_proto(
            self._call("GetTaskRun", pb.GetTaskRunRequest(id=id)).task_run
        )

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
        request = wire.list_task_runs_request(flow_run_ids, state_types, tags, task_keys, page_size)
        for run in self._pages("ListTaskRuns", request, "task_runs", limit):
            yield wire.task_run_from_proto(run)

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
        request = wire.set_state_request(run_id, state, force, expected_state_id, lease_seconds)
        return wire.orchestration_result_from_proto(self._call("SetState", request))

    def renew_leases(self, run_ids: Iterable[str], lease_seconds: float) -> list[str]:
        """Extend the heartbeat leases of runs; returns those that still hold one."""
        response = self._call("RenewLeases", wire.renew_leases_request(run_ids, lease_seconds))
        return list(response.renewed_run_ids)

    def list_states(self, run_id: str) -> list[State]:
        """A run's state history, oldest first."""
        response = self._call("ListStates", pb.ListStatesRequest(run_id=run_id))
        return [wire.state_from_proto(state) for state in response.states]

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
    ) -> Iterator[Transition]:
        """Transitions as they happen (after `after_sequence` first, when given), reconnecting
        with the last sequence when the server goes away, until the caller stops iterating.
        `started` is called with the start sequence each time the stream is established."""
        run_ids, flow_run_ids, state_types = list(run_ids), list(flow_run_ids), list(state_types)
        resume = _Reconnection(after_sequence, max_backoff)
        while True:
            request = wire.watch_request(run_ids, flow_run_ids, state_types, resume.cursor)
            stream = self.transport.open_stream("WatchTransitions", request)
            try:
                start = stream.start_sequence()
                resume.started(start)
                if started is not None:
                    started(start)
                for message in stream:
                    transition = wire.transition_from_proto(message.transition)
                    resume.delivered(transition)
                    yield transition
                return  # the server ended the stream normally
            except grpc.RpcError as error:
                if not (reconnect and can_reconnect(error)):
                    raise translate(error) from None
            finally:
                stream.cancel()
            time.sleep(resume.next_delay())

    def execute_batch(self, operations: Sequence[tuple[str, Any]]) -> list[Any]:
        """Run operations in one call and one transaction, in order. Each is (kind, request
        message) with kind one of "create_flow_run", "create_task_run", "set_state",
        "renew_leases"; each result is the response message, or the StatewardError the
        operation was refused with (the others are unaffected)."""
        response = self._call("ExecuteBatch", wire.batch_request(operations))
        return [wire.batch_operation_result(result) for result in response.results]

    # --- tag concurrency limits -----------------------------------------------------------------

    def create_concurrency_limit(self, tag: str, limit: int) -> ConcurrencyLimit:
        response = self._call("CreateConcurrencyLimit", wire.create_limit_request(tag, limit))
        return wire.limit_from_proto(response.concurrency_limit)

    def get_concurrency_limit(self, tag: str) -> ConcurrencyLimit:
        response = self._call("GetConcurrencyLimit", pb.GetConcurrencyLimitRequest(tag=tag))
        return wire.limit_from_proto(response.concurrency_limit)

    def list_concurrency_limits(self) -> list[ConcurrencyLimit]:
        response = self._call("ListConcurrencyLimits", pb.ListConcurrencyLimitsRequest())
        return [wire.limit_from_proto(limit) for limit in response.concurrency_limits]

    def delete_concurrency_limit(self, tag: str) -> None:
        self._call("DeleteConcurrencyLimit", pb.DeleteConcurrencyLimitRequest(tag=tag))


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaitable."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        wait_for_ready: bool = False,
        transport: AsyncGrpcTransport | None = None,
    ) -> None:
        self.transport = transport or AsyncGrpcTransport(
            Connection.from_environment(address, api_key, wait_for_ready)
        )
        self.timeout = timeout

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, request: Any) -> Any:
        return await self.transport.call(method, request, self.timeout)

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
        request = wire.create_flow_run_request(
            flow_name,
            id=id,
            name=name,
            parameters=parameters,
            tags=tags,
            retry_policy=retry_policy,
            parent_task_run_id=parent_task_run_id,
            state=state,
        )
        return wire.flow_run_from_proto((await self._call("CreateFlowRun", request)).flow_run)

    async def get_flow_run(self, id: str) -> FlowRun:
        response = await self._call("GetFlowRun", pb.GetFlowRunRequest(id=id))
        return wire.flow_run_from_proto(response.flow_run)

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
        request = wire.create_task_run_request(
            task_key,
            id=id,
            name=name,
            flow_run_id=flow_run_id,
            parameters=parameters,
            tags=tags,
            retry_policy=retry_policy,
            state=state,
        )
        return wire.task_run_from_proto((await self._call("CreateTaskRun", request)).task_run)

    async def get_task_run(self, id: str) -> TaskRun:
        response = await self._call("GetTaskRun", pb.GetTaskRunRequest(id=id))
        return wire.task_run_from_proto(response.task_run)

    async def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool = False,
        expected_state_id: str | None = None,
        lease_seconds: float = 0.0,
    ) -> OrchestrationResult:
        request = wire.set_state_request(run_id, state, force, expected_state_id, lease_seconds)
        return wire.orchestration_result_from_proto(await self._call("SetState", request))

    async def renew_leases(self, run_ids: Iterable[str], lease_seconds: float) -> list[str]:
        response = await self._call(
            "RenewLeases", wire.renew_leases_request(run_ids, lease_seconds)
        )
        return list(response.renewed_run_ids)

    async def list_states(self, run_id: str) -> list[State]:
        response = await self._call("ListStates", pb.ListStatesRequest(run_id=run_id))
        return [wire.state_from_proto(state) for state in response.states]

    async def watch(
        self,
        *,
        run_ids: Iterable[str] = (),
        flow_run_ids: Iterable[str] = (),
        state_types: Iterable[StateType] = (),
        after_sequence: int | None = None,
        reconnect: bool = True,
        max_backoff: float = 5.0,
    ) -> AsyncIterator[Transition]:
        """As `Client.watch`, as an async iterator."""
        run_ids, flow_run_ids, state_types = list(run_ids), list(flow_run_ids), list(state_types)
        resume = _Reconnection(after_sequence, max_backoff)
        while True:
            request = wire.watch_request(run_ids, flow_run_ids, state_types, resume.cursor)
            stream = self.transport.open_stream("WatchTransitions", request)
            try:
                resume.started(await stream.start_sequence())
                async for message in stream:
                    transition = wire.transition_from_proto(message.transition)
                    resume.delivered(transition)
                    yield transition
                return
            except grpc.RpcError as error:
                if not (reconnect and can_reconnect(error)):
                    raise translate(error) from None
            finally:
                stream.cancel()
            await asyncio.sleep(resume.next_delay())
