"""ExecuteStream: one client's SetState and ExecuteBatch calls on one long-lived stream.

Each call read from the stream goes straight to the group-commit writer (no task or future of
its own) and is answered from the writer's callback once its group committed; one coroutine
sends the answers as they come. Per call that is a read, a group and a send, the fewest turns
of the event loop we found (see bench/set_state.py --stream).

Backpressure: at most `MAX_IN_FLIGHT` calls of a stream are taken and not yet sent back
(deciding, or answered and waiting to be sent). Past that the stream is not read until answers
go out, so a client that sends without reading is held back by gRPC's flow control instead of
growing the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from stateward.exceptions import StatusCode
from stateward.v1 import orchestration_pb2 as pb
from stateward_service.errors import ServiceError
from stateward_service.group_commit import GroupCommitWriter, WriterFailed, WriterStopped
from stateward_service.store import DatabaseUnavailable, WriteConflict

log = logging.getLogger("stateward.server")

# Calls of one stream taken and not yet sent back, at most (see the module's docstring).
MAX_IN_FLIGHT = 512

# The RPC each call of ExecuteStream stands for (its metrics are counted under that name).
STREAMED_METHODS = {"set_state": "SetState", "execute_batch": "ExecuteBatch"}

SHUTTING_DOWN = (
    "the server is shutting down; send the calls not answered again on a new stream "
    "(to another server, or to this one once it is back)"
)

# A call's work, run inside a group: the answer message it returns.
Operation = Callable[[], Any]


class CallsStream:
    """One ExecuteStream call: `answers()` reads the calls from `requests`, runs each with
    `operation_for` (the call as its RPC: a function run in the writer's group that returns
    the call's ExecuteStreamResponse, or raises ServiceError), and yields each response once
    its group committed. It ends once the client stopped sending and every call is answered, or
    with the ServiceError that ended it: UNAVAILABLE when the server shuts down (`close()`),
    INVALID_ARGUMENT when the client reuses the id of a call in flight (both after the calls in
    flight are answered)."""

    def __init__(
        self,
        requests: AsyncIterator[pb.ExecuteStreamRequest],
        writer: GroupCommitWriter,
        operation_for: Callable[[pb.ExecuteStreamRequest], Operation],
        observe_call: Callable[[str, str, float], None] | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._requests = requests
        self._writer = writer
        self._operation_for = operation_for
        self._observe_call = observe_call
        self._max_in_flight = max_in_flight
        self._in_flight: set[int] = set()  # the ids of the calls being decided
        self._answers: deque[pb.ExecuteStreamResponse] = deque()  # decided, not yet sent
        self._wake: asyncio.Future[None] | None = None  # the sender waits for answers on it
        self._room: asyncio.Future[None] | None = None  # the reader waits for room on it
        self._ended: ServiceError | None = None  # why the stream ends (None: the client did)
        self._closing = False
        self._reader: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """The calls taken and not yet sent back."""
        return len(self._in_flight) + len(self._answers)

    @property
    def waiting_for_room(self) -> bool:
        """Whether the stream is not read because `max_in_flight` calls are held."""
        return self._room is not None and not self._room.done()

    def close(self) -> None:
        """The server is shutting down: read no more calls, answer those in flight, then end
        with UNAVAILABLE."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        self._wake_sender()

    async def answers(self) -> AsyncIterator[pb.ExecuteStreamResponse]:
        self._reader = reader = asyncio.create_task(self._read())
        try:
            while True:
                while self._answers:
                    yield self._answers.popleft()
                    room = self._room
                    if room is not None and not room.done() and self.held < self._max_in_flight:
                        room.set_result(None)
                if self._in_flight:
                    pass  # answers still to come
                elif self._closing:
                    if self._ended is None and not (reader.done() and not reader.cancelled()):
                        self._ended = ServiceError(
                            StatusCode.UNAVAILABLE, SHUTTING_DOWN, reason="SHUTTING_DOWN"
                        )
                    break
                elif reader.done():
                    break
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
                self._wake = None
            if self._ended is not None:
                raise self._ended
            if not reader.cancelled():
                await reader  # raises what ended the reading (an undecodable request...)
        finally:
            reader.cancel()

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                if self.held >= self._max_in_flight:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
                    self._room = None
                call_id = request.call_id
                if call_id in self._in_flight:
                    # An answer with this id would not say which of the two calls it answers:
                    # the stream ends, once the call in flight with this id is answered.
                    self._ended = ServiceError(
                        StatusCode.INVALID_ARGUMENT,
                        f"call_id: {call_id} is the id of a call still in flight on this "
                        "stream; the stream ends here (the calls sent after it were not run). "
                        "Give each call in flight an id of its own",
                    )
                    return
                self._take(request)
        finally:
            self._wake_sender()

    def _take(self, request: pb.ExecuteStreamRequest) -> None:
        """Hand one call to the writer, or answer it at once when it cannot be run."""
        began = time.perf_counter()
        try:
            operation = self._operation_for(request)
            self._writer.submit(operation, partial(self._decided, request, began))
        except ServiceError as error:
            self._answer(request, began, _refused(request.call_id, error))
        except WriterStopped as error:
            self._answer(request, began, _refused(request.call_id, _unavailable(error)))
        else:
            self._in_flight.add(request.call_id)

    def _decided(self, request: pb.ExecuteStreamRequest, began: float, outcome: Any) -> None:
        """On the loop, once the call's group committed (or failed): queue its answer."""
        self._in_flight.discard(request.call_id)
        if isinstance(outcome, BaseException):
            response = _refused(request.call_id, _service_error(outcome))
        else:
            response = outcome
        self._answer(request, began, response)

    def _answer(
        self, request: pb.ExecuteStreamRequest, began: float, response: pb.ExecuteStreamResponse
    ) -> None:
        self._answers.append(response)
        self._wake_sender()
        if self._observe_call is not None:
            method = STREAMED_METHODS.get(request.WhichOneof("call") or "", "ExecuteStream")
            code = StatusCode(response.error.code).name if response.HasField("error") else "OK"
            self._observe_call(method, code, time.perf_counter() - began)

    def _wake_sender(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)


def _refused(call_id: int, error: ServiceError) -> pb.ExecuteStreamResponse:
    response = pb.ExecuteStreamResponse(call_id=call_id)
    response.error.code = error.code
    response.error.message = error.message
    return response


def _unavailable(error: Exception) -> ServiceError:
    return ServiceError(StatusCode.UNAVAILABLE, str(error))


def _service_error(error: BaseException) -> ServiceError:
    """The status a call's failure is answered with, as the RPC would answer it: a refusal
    as it is; the database unreachable, a race lost every time, or a writer stopped:
    UNAVAILABLE; anything else (a bug of ours): INTERNAL, logged."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, DatabaseUnavailable | WriterStopped):
        return _unavailable(error)
    if isinstance(error, WriterFailed):
        return ServiceError(StatusCode.INTERNAL, str(error))
    if isinstance(error, WriteConflict):
        return ServiceError(
            StatusCode.UNAVAILABLE, f"the database stayed too busy to decide; try again ({error})"
        )
    log.error("unexpected error in a call on ExecuteStream", exc_info=error)
    return ServiceError(StatusCode.INTERNAL, "internal error in ExecuteStream")


__all__ = ["MAX_IN_FLIGHT", "SHUTTING_DOWN", "STREAMED_METHODS", "CallsStream"]
