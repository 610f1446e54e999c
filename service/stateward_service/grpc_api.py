"""The gRPC API of OrchestrationService: the one layer between protobuf and the domain. It
validates each request, turns it into orchestrator calls and turns the results into responses
(with `stateward.wire`, the conversions the client uses too).

`OrchestrationService` has one synchronous method per unary RPC, named as the RPC: the SDK's
embedded transport calls them in-process, in the caller's thread. `add_to_server` registers them
from the service's descriptor, each wrapped in the async handler that runs it where the rule
below says, and the streaming `WatchTransitions`. A refusal raises `ServiceError`, which the
errors interceptor turns into a status.

What runs on the event loop. The loop does the network I/O, the stream fan-out (the
broadcaster's ring: an append and a wake-up per commit) and the timers; it must never wait on
the database for long, or every call and stream waits with it. So:

- Calls that can be long run off the loop, in the default thread pool (`asyncio.to_thread`):
  ListFlowRuns, ListTaskRuns, ListStates, ListLogs, the Get calls and ListConcurrencyLimits, and
  the writes whose size the caller chooses: WriteLogs (up to a thousand lines),
  WriteCacheEntries (up to a thousand entries) and ResumeFlowRun (an input checked against its
  pause's JSON Schema), and the limit writes, rare (`OFF_THE_LOOP` below). A write there that
  waits for another process's write lock (up to SQLite's busy timeout) waits in its thread.
  The orchestrator reads listings and histories on read-only snapshot connections, outside its
  write lock, so one slow read never stalls another call. The broadcaster's
  catch-up reads of the log and its cursor check run off the loop too, and the server's loops
  sweep in a thread of their own.
- The other writes commit in groups (`GROUPED` below): SetState, the create calls, ExecuteBatch
  and RenewLeases go to the group-commit writer (`group_commit`), which takes every write
  pending at once into one transaction, a savepoint each, one commit, and answers each call
  after that commit. On SQLite the groups run on the loop (a commit takes microseconds; a lone
  call pays no thread hop), on PostgreSQL in a writer thread (a commit waits for the network),
  while the loop takes the calls of the next group.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.struct_pb2 import Struct

from stateward import wire
from stateward.exceptions import StatusCode
from stateward.ids import new_id
from stateward.runs import RetryPolicy, RunKind
from stateward.states import now
from stateward.v1 import orchestration_pb2, runs_pb2
from stateward.v1 import orchestration_pb2 as pb
from stateward.wire import START_SEQUENCE_KEY
from stateward_service import validation as check
from stateward_service.broadcaster import (
    CursorAhead,
    CursorExpired,
    StreamClosed,
    TransitionBroadcaster,
    TransitionFilter,
)
from stateward_service.calls_stream import SHUTTING_DOWN, CallsStream
from stateward_service.errors import ServiceError, invalid
from stateward_service.group_commit import GroupCommitWriter, WriterFailed, WriterStopped
from stateward_service.model import RunRecord
from stateward_service.names import make_run_name
from stateward_service.orchestrator import Orchestrator
from stateward_service.refusals import refused_alone
from stateward_service.refusals import translating as _translating
from stateward_service.shutdown import ANSWER_SECONDS, Grace, WritingCalls
from stateward_service.store import DatabaseUnavailable, RunFilter, WriteConflict

T = TypeVar("T")
log = logging.getLogger("stateward.server")


Context = grpc.aio.ServicerContext[Any, Any]


# A batch message stays well below the 4 MiB that gRPC clients accept by default.
BATCH_MESSAGE_BYTES = 1024 * 1024
# The one-transition message's first byte: field 1 (`transition`), length-delimited. A batch
# message is the same bytes with field 2 (`transitions`), once per transition.
_ONE_TAG, _MANY_TAG = b"\x0a", b"\x12"


def batched_messages(
    items: Sequence[tuple[int, bytes]], max_bytes: int = BATCH_MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """(last sequence, message) for the encoded one-transition messages `items`, joined into
    WatchTransitionsResponse messages with `transitions` of at most about `max_bytes` each (a
    larger transition goes alone). No transition is decoded or encoded again."""
    messages: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    size = 0
    last = 0
    for sequence, payload in items:
        if parts and size + len(payload) > max_bytes:
            messages.append((last, b"".join(parts)))
            parts, size = [], 0
        assert payload[:1] == _ONE_TAG
        parts.append(_MANY_TAG + payload[1:])
        size += len(payload)
        last = sequence
    if parts:
        messages.append((last, b"".join(parts)))
    return messages


class OrchestrationService:
    """One synchronous method per unary RPC of OrchestrationService, named as the RPC (request
    in, response out, ServiceError for a refusal), and the streaming WatchTransitions."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        broadcaster: TransitionBroadcaster,
        *,
        slow_commits: bool = False,
    ) -> None:
        self.orchestrator = orchestrator
        self.broadcaster = broadcaster
        # The writing calls that come over gRPC commit in groups (see GROUPED): on the event
        # loop, or in a thread of their own where a commit waits for long (`slow_commits`:
        # PostgreSQL's wait for the network and its disk).
        self.writer = GroupCommitWriter(orchestrator, in_thread=slow_commits)
        # Told of each call on ExecuteStream (its method, status code name and seconds), as the
        # metrics interceptor is of each RPC; set by the server when it keeps metrics.
        self.observe_call: Callable[[str, str, float], None] | None = None
        # The ExecuteStream calls open, and whether the server is closing.
        self._streams: set[CallsStream] = set()
        self._closing = False
        # The RPCs that write (WRITING, and ExecuteStream) in flight: a shutdown waits for
        # their answers (see `finish_writes`).
        self.writing = WritingCalls()

    def close(self) -> None:
        """Stop the group-commit writer, once the writes given to it are done."""
        self.writer.stop()

    async def finish_writes(self, grace: Grace) -> None:
        """Shutdown, once the calls streams were told to close: take no new writing call
        (UNAVAILABLE, nothing written) and return once each one in flight has been answered
        with what became of its write. When the grace ends first, the calls the group-commit
        writer has not started are refused unwritten, the group it is running is waited for,
        and so are the writes handed to worker threads (WriteLogs, ResumeFlowRun, the limits',
        the web view's: one a thread only starts now is refused unwritten), and the answers
        get ANSWER_SECONDS more to go out (a client reading nothing for that long loses
        them)."""
        self.writing.closed = True
        if await grace.wait(self.writing.idle):
            return
        refused = self.writer.refuse_waiting()
        in_threads = self.writing.refuse_not_started()
        log.warning(
            "shutdown: the grace period is over with %d writing call(s) in flight: %d not "
            "started were refused (UNAVAILABLE, nothing written); a write under way is "
            "answered once it is done, and so are the %d handed to threads (refused if not "
            "begun)",
            self.writing.count,
            refused,
            in_threads,
        )
        await self.writer.wait_running()
        await self.writing.threads_done()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.writing.idle.wait(), ANSWER_SECONDS)

    def _translating(self, call: Callable[[], T]) -> T:
        return _translating(call, self.orchestrator.in_batch)

    # --- flow runs ------------------------------------------------------------------------------

    def CreateFlowRun(
        self, request: pb.CreateFlowRunRequest, into: pb.CreateFlowRunResponse | None = None
    ) -> pb.CreateFlowRunResponse:
        """(`into`: an empty response to write the answer into and return, e.g. a field of a
        batch's or a stream's response: a message assigned to a field is copied whole.)"""
        msg = request.flow_run
        flow_name = check.text(msg.flow_name, "flow_run.flow_name", check.MAX_NAME, required=True)
        given_id = check.optional_run_id(msg.id, "flow_run.id")
        run = RunRecord(
            kind=RunKind.FLOW_RUN,
            id=given_id or new_id(),
            name=check.text(msg.name, "flow_run.name", check.MAX_NAME) or make_run_name(),
            created=now(),
            flow_name=flow_name,
            parent_task_run_id=check.optional_run_id(
                msg.parent_task_run_id, "flow_run.parent_task_run_id"
            ),
            parameters=_parameters_json(msg.parameters, "flow_run.parameters"),
            tags=check.tags(msg.tags, "flow_run.tags"),
            retry_policy=_retry_policy(msg.retry_policy, "flow_run.retry_policy"),
        )
        initial = _initial_state(msg, "flow_run.state")
        created = self._translating(
            lambda: self.orchestrator.create_run(run, initial, new_id=not given_id)
        )
        response = pb.CreateFlowRunResponse() if into is None else into
        wire.fill_flow_run(created, response.flow_run, msg.parameters)
        return response

    def GetFlowRun(self, request: pb.GetFlowRunRequest) -> pb.GetFlowRunResponse:
        run_id = check.run_id(request.id, "id")
        run = self._translating(lambda: self.orchestrator.get_run(run_id, RunKind.FLOW_RUN))
        return pb.GetFlowRunResponse(flow_run=wire.flow_run_to_proto(run))

    def ListFlowRuns(self, request: pb.ListFlowRunsRequest) -> pb.ListFlowRunsResponse:
        where = RunFilter(
            names=check.names(request.flow_names, "flow_names"),
            state_types=check.state_types(request.state_types, "state_types"),
            tags=check.names(request.tags, "tags"),
            ids=check.run_ids(request.ids, "ids"),
        )
        size = check.page_size(request.page_size)
        runs, token = self._list(
            RunKind.FLOW_RUN, where, size, check.page_token(request.page_token)
        )
        return pb.ListFlowRunsResponse(
            flow_runs=[wire.flow_run_to_proto(run) for run in runs], next_page_token=token
        )

    # --- task runs ------------------------------------------------------------------------------

    def CreateTaskRun(
        self, request: pb.CreateTaskRunRequest, into: pb.CreateTaskRunResponse | None = None
    ) -> pb.CreateTaskRunResponse:
        """(`into`: as for CreateFlowRun.)"""
        msg = request.task_run
        task_key = check.text(msg.task_key, "task_run.task_key", check.MAX_NAME, required=True)
        given_id = check.optional_run_id(msg.id, "task_run.id")
        run = RunRecord(
            kind=RunKind.TASK_RUN,
            id=given_id or new_id(),
            name=check.text(msg.name, "task_run.name", check.MAX_NAME) or make_run_name(),
            created=now(),
            task_key=task_key,
            flow_run_id=check.optional_run_id(msg.flow_run_id, "task_run.flow_run_id"),
            parameters=_parameters_json(msg.parameters, "task_run.parameters"),
            tags=check.tags(msg.tags, "task_run.tags"),
            retry_policy=_retry_policy(msg.retry_policy, "task_run.retry_policy"),
        )
        initial = _initial_state(msg, "task_run.state")
        created = self._translating(
            lambda: self.orchestrator.create_run(run, initial, new_id=not given_id)
        )
        response = pb.CreateTaskRunResponse() if into is None else into
        wire.fill_task_run(created, response.task_run, msg.parameters)
        return response

    def GetTaskRun(self, request: pb.GetTaskRunRequest) -> pb.GetTaskRunResponse:
        run_id = check.run_id(request.id, "id")
        run = self._translating(lambda: self.orchestrator.get_run(run_id, RunKind.TASK_RUN))
        return pb.GetTaskRunResponse(task_run=wire.task_run_to_proto(run))

    def ListTaskRuns(self, request: pb.ListTaskRunsRequest) -> pb.ListTaskRunsResponse:
        where = RunFilter(
            names=check.names(request.task_keys, "task_keys"),
            flow_run_ids=check.run_ids(request.flow_run_ids, "flow_run_ids"),
            state_types=check.state_types(request.state_types, "state_types"),
            tags=check.names(request.tags, "tags"),
        )
        size = check.page_size(request.page_size)
        runs, token = self._list(
            RunKind.TASK_RUN, where, size, check.page_token(request.page_token)
        )
        return pb.ListTaskRunsResponse(
            task_runs=[wire.task_run_to_proto(run) for run in runs], next_page_token=token
        )

    def _list(
        self, kind: RunKind, where: RunFilter, size: int, token: str
    ) -> tuple[list[RunRecord], str]:
        return self._translating(lambda: self.orchestrator.list_runs(kind, where, size, token))

    # --- states ---------------------------------------------------------------------------------

    def SetState(
        self, request: pb.SetStateRequest, into: pb.SetStateResponse | None = None
    ) -> pb.SetStateResponse:
        """(`into`: as for CreateFlowRun.)"""
        run_id = check.run_id(request.run_id, "run_id")
        if not request.HasField("state"):
            raise invalid("state", "is required: the state proposed for the run")
        check.state(request.state, "state")
        expected = None
        if request.HasField("expected_state_id"):
            expected = request.expected_state_id
            if expected:
                expected = check.uuid_value(expected, "expected_state_id")
        lease = check.duration(request.lease_duration, "lease_duration", check.MAX_LEASE_SECONDS)
        proposed = wire.state_from_proto(request.state)
        result = self._translating(
            lambda: self.orchestrator.set_state(
                run_id,
                proposed,
                force=request.force,
                expected_state_id=expected,
                lease_seconds=lease,
            )
        )
        response = pb.SetStateResponse() if into is None else into
        wire.fill_orchestration_result(result, response)
        return response

    def ResumeFlowRun(self, request: pb.ResumeFlowRunRequest) -> pb.ResumeFlowRunResponse:
        run_id = check.run_id(request.flow_run_id, "flow_run_id")
        run_input = request.run_input if request.HasField("run_input") else None
        if run_input is not None:
            check.run_input(run_input, "run_input")
        result = self._translating(lambda: self.orchestrator.resume_flow_run(run_id, run_input))
        return wire.resume_result_to_proto(result)

    def ListStates(self, request: pb.ListStatesRequest) -> pb.ListStatesResponse:
        run_id = check.run_id(request.run_id, "run_id")
        size = check.states_page_size(request.page_size)
        token = check.page_token(request.page_token)
        states, next_token = self._translating(
            lambda: self.orchestrator.list_states_page(run_id, size, token)
        )
        response = pb.ListStatesResponse(next_page_token=next_token)
        for state in states:
            wire.state_to_proto(state, response.states.add())
        return response

    def RenewLeases(
        self, request: pb.RenewLeasesRequest, into: pb.RenewLeasesResponse | None = None
    ) -> pb.RenewLeasesResponse:
        """(`into`: as for CreateFlowRun.)"""
        run_ids = check.run_ids(request.run_ids, "run_ids")
        seconds = check.duration(request.lease_duration, "lease_duration", check.MAX_LEASE_SECONDS)
        check.lease_duration(seconds, "lease_duration")
        renewed, until = self.orchestrator.renew_leases(run_ids, seconds)
        response = pb.RenewLeasesResponse() if into is None else into
        response.renewed_run_ids.extend(renewed)
        wire.set_timestamp(response.lease_expire_time, until)
        return response

    # --- run logs -------------------------------------------------------------------------------

    def WriteLogs(self, request: pb.WriteLogsRequest) -> pb.WriteLogsResponse:
        check.log_entries(request.entries, "entries")
        entries = [wire.log_entry_from_proto(entry) for entry in request.entries]
        written = self._translating(lambda: self.orchestrator.write_logs(entries))
        return pb.WriteLogsResponse(written=written)

    # --- held-back cache entries ---------------------------------------------------------------

    def WriteCacheEntries(
        self, request: pb.WriteCacheEntriesRequest
    ) -> pb.WriteCacheEntriesResponse:
        check.cache_entry_count(len(request.entries), "entries")
        entries = []
        for index, msg in enumerate(request.entries):
            field = f"entries[{index}]"
            run_id = check.run_id(msg.task_run_id, f"{field}.task_run_id")
            check.text(msg.cache_key, f"{field}.cache_key", check.MAX_CACHE_KEY, required=True)
            if msg.HasField("cache_expiration"):
                check.timestamp(msg.cache_expiration, f"{field}.cache_expiration")
            entry = wire.cache_entry_from_proto(msg)
            entries.append((run_id, entry.cache_key, entry.cache_expiration))
        written = self._translating(lambda: self.orchestrator.write_cache_entries(entries))
        return pb.WriteCacheEntriesResponse(written=written)

    def ListLogs(self, request: pb.ListLogsRequest) -> pb.ListLogsResponse:
        run_id = check.run_id(request.run_id, "run_id")
        size = check.log_page_size(request.page_size)
        entries = self._translating(
            lambda: self.orchestrator.list_logs(run_id, request.after_id, size)
        )
        return wire.list_logs_response(entries)

    # --- batches --------------------------------------------------------------------------------

    def ExecuteBatch(
        self, request: pb.ExecuteBatchRequest, into: pb.ExecuteBatchResponse | None = None
    ) -> pb.ExecuteBatchResponse:
        """(`into`: as for CreateFlowRun.) Each operation writes its answer into its result."""
        if len(request.operations) > check.MAX_BATCH:
            raise invalid(
                "operations", f"has {len(request.operations)}; at most {check.MAX_BATCH} per batch"
            )
        response = pb.ExecuteBatchResponse() if into is None else into
        with self.orchestrator.batch():
            for index, operation in enumerate(request.operations):
                result = response.results.add()
                kind = operation.WhichOneof("operation")
                if kind is None:
                    result.error.code = StatusCode.INVALID_ARGUMENT
                    result.error.message = f"operations[{index}]: is empty"
                    continue
                answer = getattr(result, kind)
                answer.SetInParent()
                try:
                    getattr(self, _BATCHABLE[kind])(getattr(operation, kind), answer)
                except ServiceError as error:
                    if not refused_alone(error):
                        raise  # the database's failure: the whole batch fails, unwritten
                    result.Clear()  # what the operation wrote of its answer, if anything
                    result.error.code = error.code
                    result.error.message = error.message
        return response

    # --- the calls stream -------------------------------------------------------------------------

    async def ExecuteStream(
        self, requests: AsyncIterator[pb.ExecuteStreamRequest], context: Context
    ) -> AsyncIterator[pb.ExecuteStreamResponse]:
        """Each call is run as its RPC (in the group-commit writer) as soon as it arrives, and
        answered once its group committed; calls in flight are answered as they commit (see
        `CallsStream`). The stream ends when the client ends it (once every call is answered),
        or with UNAVAILABLE when the server shuts down (also once every call in flight is
        answered)."""
        if self._closing:
            raise ServiceError(StatusCode.UNAVAILABLE, SHUTTING_DOWN, reason="SHUTTING_DOWN")
        self.writing.take(context)
        stream = CallsStream(requests, self.writer, self._stream_operation, self.observe_call)
        self._streams.add(stream)
        try:
            async for response in stream.answers():
                yield response
        finally:
            self._streams.discard(stream)

    def _stream_operation(self, request: pb.ExecuteStreamRequest) -> Callable[[], Any]:
        """What one call of the stream runs in its group: the call as its RPC, its answer
        written straight into the ExecuteStreamResponse it returns (made anew at each run: a
        group that lost a race to another process runs its calls again)."""
        kind = request.WhichOneof("call")
        if kind == "set_state":
            method: Callable[[Any, Any], Any] = self.SetState
        elif kind == "execute_batch":
            method = self.ExecuteBatch
        else:
            raise invalid("call", "is empty: set set_state or execute_batch")
        call_id = request.call_id
        call = getattr(request, kind)

        def run() -> pb.ExecuteStreamResponse:
            response = pb.ExecuteStreamResponse(call_id=call_id)
            answer = getattr(response, kind)
            answer.SetInParent()
            method(call, answer)
            return response

        return run

    async def close_streams(self) -> None:
        """End every ExecuteStream with UNAVAILABLE once its calls in flight are answered, and
        refuse new ones (the server is shutting down)."""
        self._closing = True
        for stream in self._streams:
            stream.close()

    # --- tag concurrency limits -----------------------------------------------------------------

    def CreateConcurrencyLimit(
        self, request: pb.CreateConcurrencyLimitRequest
    ) -> pb.CreateConcurrencyLimitResponse:
        msg = request.concurrency_limit
        tag = check.tag(msg.tag, "concurrency_limit.tag")
        if msg.limit < 0:
            raise invalid("concurrency_limit.limit", f"is {msg.limit}; it must not be negative")
        limit = self._translating(lambda: self.orchestrator.create_limit(tag, msg.limit))
        return pb.CreateConcurrencyLimitResponse(concurrency_limit=wire.limit_to_proto(limit))

    def GetConcurrencyLimit(
        self, request: pb.GetConcurrencyLimitRequest
    ) -> pb.GetConcurrencyLimitResponse:
        tag = check.text(request.tag, "tag", check.MAX_KEY, required=True)
        limit = self._translating(lambda: self.orchestrator.get_limit(tag))
        return pb.GetConcurrencyLimitResponse(concurrency_limit=wire.limit_to_proto(limit))

    def ListConcurrencyLimits(
        self, request: pb.ListConcurrencyLimitsRequest
    ) -> pb.ListConcurrencyLimitsResponse:
        limits = self._translating(self.orchestrator.list_limits)
        return pb.ListConcurrencyLimitsResponse(
            concurrency_limits=[wire.limit_to_proto(limit) for limit in limits]
        )

    def DeleteConcurrencyLimit(
        self, request: pb.DeleteConcurrencyLimitRequest
    ) -> pb.DeleteConcurrencyLimitResponse:
        tag = check.text(request.tag, "tag", check.MAX_KEY, required=True)
        self._translating(lambda: self.orchestrator.delete_limit(tag))
        return pb.DeleteConcurrencyLimitResponse()

    # --- the stream -----------------------------------------------------------------------------

    async def WatchTransitions(self, request: pb.WatchTransitionsRequest, context: Context) -> None:
        """Each message is an encoded WatchTransitionsResponse, made once for all subscribers
        (the method is registered without a response serializer); with max_batch above 1, what
        is ready at once goes out in as few messages as fit (see `batched_messages`). It writes
        them (`context.write`) rather than yield them: each message would otherwise pass
        through two more generators (this one, and the errors interceptor's around it), once
        going out and once coming back for the next."""
        max_batch = check.stream_batch(request.max_batch)
        where = TransitionFilter(
            run_ids=frozenset(check.run_ids(request.run_ids, "run_ids")),
            flow_run_ids=frozenset(check.run_ids(request.flow_run_ids, "flow_run_ids")),
            state_types=frozenset(check.state_types(request.state_types, "state_types")),
        )
        after = request.after_sequence if request.HasField("after_sequence") else None
        broadcaster = self.broadcaster
        delivered = after if after is not None else broadcaster.last_sequence
        try:
            if after is not None:
                await asyncio.to_thread(broadcaster.check_cursor, after)
            # The stream starts after this sequence: a client that loses the stream before its
            # first message resumes from here without a gap.
            start = broadcaster.last_sequence if after is None else after
            await context.send_initial_metadata(((START_SEQUENCE_KEY, str(start)),))
            # aclosing: the subscription ends the moment this stream does (a client cancel
            # included), not whenever the generator is collected.
            # A replay's messages are made beside its reads, off the event loop.
            batches = broadcaster.subscribe_batches(
                where, start, max_batch=max_batch, prepare=batched_messages
            )
            async with aclosing(batches) as subscription:
                write = context.write
                async for batch in subscription:
                    if len(batch) == 1:
                        delivered, payload = batch[0]
                        await write(payload)
                        continue
                    # The subscribers at the same cursor share the batch, and its messages.
                    for last, message in batch.derived(batched_messages):
                        delivered = last
                        await write(message)
        except CursorAhead as error:
            raise ServiceError(
                StatusCode.FAILED_PRECONDITION,
                str(error),
                reason="CURSOR_AHEAD",
                metadata={"newest_sequence": str(error.newest)},
            ) from None
        except CursorExpired as error:
            if after is not None and delivered == after:
                raise ServiceError(
                    StatusCode.FAILED_PRECONDITION,
                    str(error),
                    reason="CURSOR_EXPIRED",
                    metadata={"oldest_sequence": str(error.oldest)},
                ) from None
            raise ServiceError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"this subscriber fell behind what the log keeps (it reached sequence "
                f"{delivered}, the oldest kept is {error.oldest}); read faster or keep more",
                reason="SUBSCRIBER_TOO_SLOW",
                metadata={"last_sequence": str(delivered), "oldest_sequence": str(error.oldest)},
            ) from None
        except StreamClosed as error:
            raise ServiceError(
                StatusCode.UNAVAILABLE,
                f"the server is shutting down; reconnect with after_sequence={delivered}",
                reason="SHUTTING_DOWN",
                metadata={"last_sequence": str(delivered), "cursor": str(error.last_sequence)},
            ) from None


_BATCHABLE = {
    "create_flow_run": "CreateFlowRun",
    "create_task_run": "CreateTaskRun",
    "set_state": "SetState",
    "renew_leases": "RenewLeases",
}


# --- translations -------------------------------------------------------------------------------


# Made once: json.dumps with options of its own makes a new encoder at every call.
_encode_parameters = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _parameters_json(struct: Struct, field: str) -> str:
    """A run's parameters as the JSON text the store keeps. A number JSON cannot hold (NaN,
    an infinity) is refused, with the path of the first one found."""
    if not struct.fields:
        return "{}"
    try:
        return _encode_parameters(wire.struct_dict(struct))
    except ValueError:
        check.parameters(struct, field)  # says where
        raise


def _retry_policy(msg: runs_pb2.RetryPolicy, field: str) -> RetryPolicy:
    check.retry_policy(msg, field)
    return wire.retry_policy_from_proto(msg)


def _initial_state(msg: Any, field: str) -> Any:
    if not msg.HasField("state"):
        return None
    check.state(msg.state, field)
    return wire.state_from_proto(msg.state)


# The service as the contract describes it: its name, methods and message types.
SERVICE = orchestration_pb2.DESCRIPTOR.services_by_name["OrchestrationService"]


# The calls that can be long (reads, and the writes that may carry much: run logs, cache
# entries, a resume's input checked against its schema), and the limit writes, rare: they run
# in a worker thread, never on the event loop.
OFF_THE_LOOP = frozenset(
    {
        "WriteLogs",
        "WriteCacheEntries",
        "ResumeFlowRun",
        "GetFlowRun",
        "GetTaskRun",
        "ListFlowRuns",
        "ListTaskRuns",
        "ListStates",
        "ListLogs",
        "GetConcurrencyLimit",
        "ListConcurrencyLimits",
        "CreateConcurrencyLimit",
        "DeleteConcurrencyLimit",
    }
)

# The writes that commit in groups: each runs in the group-commit writer's thread, in one
# transaction with the writes that arrived with it, and is answered once that commits.
GROUPED = frozenset(
    {
        "SetState",
        "CreateFlowRun",
        "CreateTaskRun",
        "ExecuteBatch",
        "RenewLeases",
    }
)

# The unary RPCs that write: a shutdown refuses new ones and waits for the answers of those in
# flight (see `OrchestrationService.finish_writes`).
WRITING = GROUPED | {
    "WriteLogs",
    "ResumeFlowRun",
    "CreateConcurrencyLimit",
    "DeleteConcurrencyLimit",
    "WriteCacheEntries",
}

Unary = Callable[[Any], Any]


def _unary_handler(
    call: Unary, where: str, writer: GroupCommitWriter, writing: WritingCalls | None = None
) -> Callable[[Any, Context], Awaitable[Any]]:
    """The async handler of one unary RPC: `call` in a worker thread ("thread"), in the
    group-commit writer ("group"), or on the event loop; counted in `writing` (a call that
    writes) until its answer is sent."""
    if where == "thread":

        async def in_a_thread(request: Any, context: Context) -> Any:
            if writing is None:
                return await asyncio.to_thread(call, request)
            writing.take(context)
            return await writing.in_a_thread(call, request)

        return in_a_thread
    if where == "group":

        async def in_a_group(request: Any, context: Context) -> Any:
            if writing is not None:
                writing.take(context)
            return await grouped(writer, lambda: call(request))

        return in_a_group

    async def on_the_loop(request: Any, context: Context) -> Any:
        if writing is not None:
            writing.take(context)
        return call(request)

    return on_the_loop


async def grouped(writer: GroupCommitWriter, call: Callable[[], T]) -> T:
    """`call` run in the writer's next group, answered once it committed. A race lost to
    another process every time it was decided, a database that cannot be reached (the group's
    transaction failed: nothing was written), or a writer stopped, is UNAVAILABLE; the writer
    failing around the call (a bug of ours, logged) is INTERNAL, saying what became of it."""
    try:
        return await writer.run(call)
    except DatabaseUnavailable as error:
        raise ServiceError(StatusCode.UNAVAILABLE, str(error)) from None
    except WriteConflict as error:
        raise ServiceError(
            StatusCode.UNAVAILABLE, f"the database stayed too busy to decide; try again ({error})"
        ) from None
    except WriterStopped as error:
        raise ServiceError(StatusCode.UNAVAILABLE, str(error)) from None
    except WriterFailed as error:
        raise ServiceError(StatusCode.INTERNAL, str(error)) from None


def add_to_server(service: OrchestrationService, server: grpc.aio.Server) -> None:
    """Register the service's methods, from the service's descriptor (so every RPC of the
    contract has its method, or this raises AttributeError). Unary methods use their messages'
    (de)serializers; the streaming method sends bytes already encoded."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        behaviour = getattr(service, method.name)
        if method.client_streaming:
            response_type = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=request_type.FromString, response_serializer=None
            )
        else:
            response_type = message_factory.GetMessageClass(method.output_type)
            where = (
                "thread"
                if method.name in OFF_THE_LOOP
                else "group"
                if method.name in GROUPED
                else "loop"
            )
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_handler(
                    behaviour,
                    where,
                    service.writer,
                    service.writing if method.name in WRITING else None,
                ),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


__all__ = ["OFF_THE_LOOP", "SERVICE", "OrchestrationService", "add_to_server"]
