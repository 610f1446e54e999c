"""CallsStream, the server's side of ExecuteStream, in-process on a real SQLite orchestrator and
group-commit writer: a client that sends without reading is not read past a bound (its calls
wait in gRPC's flow control, not in the server's memory), and a call_id reused while its call
is in flight ends the stream with INVALID_ARGUMENT once that call is answered (an answer
could not say which of the two it answers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from stateward.exceptions import StatusCode
from stateward.v1 import orchestration_pb2 as pb
from stateward_service.calls_stream import CallsStream
from stateward_service.errors import ServiceError
from stateward_service.group_commit import GroupCommitWriter
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import Store


def call(call_id: int) -> pb.ExecuteStreamRequest:
    return pb.ExecuteStreamRequest(
        call_id=call_id, set_state=pb.SetStateRequest(run_id=f"run-{call_id}")
    )


def answered_by(
    answer: Callable[[pb.ExecuteStreamRequest], None] = lambda request: None,
) -> Callable[[pb.ExecuteStreamRequest], Callable[[], Any]]:
    """Each call, run in its group, answers SetStateResponse(reason=<its run_id>)."""

    def operation_for(request: pb.ExecuteStreamRequest) -> Callable[[], Any]:
        def operation() -> pb.ExecuteStreamResponse:
            answer(request)
            return pb.ExecuteStreamResponse(
                call_id=request.call_id,
                set_state=pb.SetStateResponse(reason=request.set_state.run_id),
            )

        return operation

    return operation_for


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (yielding to the loop) until `condition()` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@pytest.fixture
def writer(tmp_path: Path) -> Any:
    orchestrator = Orchestrator(Store(tmp_path / "stream.db"))
    writer = GroupCommitWriter(orchestrator)
    yield writer
    writer.stop()
    orchestrator.close()


def test_a_client_that_does_not_read_is_not_read_past_the_bound(writer: GroupCommitWriter) -> None:
    pulled = 0

    async def endless() -> AsyncIterator[pb.ExecuteStreamRequest]:
        nonlocal pulled
        while True:
            pulled += 1
            yield call(pulled)

    async def main() -> None:
        stream = CallsStream(endless(), writer, answered_by(), max_in_flight=8)
        answers = stream.answers()
        first = await anext(answers)
        assert first.call_id == 1 and first.set_state.reason == "run-1"
        # The client reads no more: 8 calls were taken, one is sent, 7 are held answered, and
        # the 9th waits for room.
        await until(lambda: stream.waiting_for_room, "the stream to stop reading")
        assert (pulled, stream.held) == (9, 7)
        for _ in range(200):
            await asyncio.sleep(0)  # the loop turns: nothing more is read meanwhile
        assert (pulled, stream.held) == (9, 7)
        # The client reads again: each answer read makes room for one more call.
        for expected in range(2, 40):
            answer = await anext(answers)
            assert answer.call_id == expected
            assert answer.set_state.reason == f"run-{expected}"
            assert stream.held <= 8
        await answers.aclose()

    asyncio.run(main())
    assert writer.calls >= 39


def test_a_call_id_reused_in_flight_ends_the_stream_after_the_first_is_answered(
    tmp_path: Path,
) -> None:
    orchestrator = Orchestrator(Store(tmp_path / "duplicate.db"))
    # In a thread of its own: call 1 is still being decided when its id comes again.
    writer = GroupCommitWriter(orchestrator, in_thread=True)
    release = threading.Event()
    ran: list[str] = []

    def answer(request: pb.ExecuteStreamRequest) -> None:
        ran.append(request.set_state.run_id)
        assert release.wait(30)

    async def requests() -> AsyncIterator[pb.ExecuteStreamRequest]:
        yield call(1)
        release_when_read = call(1)
        release_when_read.set_state.run_id = "run-1-again"
        release.set()  # call 1 is in flight: the reader checks the next call in this turn
        yield release_when_read
        yield call(2)

    async def main() -> tuple[list[pb.ExecuteStreamResponse], ServiceError]:
        stream = CallsStream(requests(), writer, answered_by(answer))
        received: list[pb.ExecuteStreamResponse] = []
        with pytest.raises(ServiceError) as ended:
            async for response in stream.answers():
                received.append(response)
        return received, ended.value

    try:
        received, error = asyncio.run(main())
    finally:
        writer.stop()
        orchestrator.close()
    assert [(r.call_id, r.set_state.reason) for r in received] == [(1, "run-1")]
    assert error.code == StatusCode.INVALID_ARGUMENT
    assert "call_id: 1 is the id of a call still in flight" in error.message
    assert ran == ["run-1"]  # neither the second call 1 nor call 2 ran


def test_closing_answers_the_calls_in_flight_then_ends_with_unavailable(
    writer: GroupCommitWriter,
) -> None:
    async def main() -> tuple[list[int], ServiceError]:
        more = asyncio.Event()

        async def requests() -> AsyncIterator[pb.ExecuteStreamRequest]:
            for call_id in (1, 2, 3):
                yield call(call_id)
            await more.wait()  # the client keeps its stream open
            yield call(4)

        stream = CallsStream(requests(), writer, answered_by())
        received: list[int] = []
        with pytest.raises(ServiceError) as ended:
            async for response in stream.answers():
                received.append(response.call_id)
                if len(received) == 3:
                    stream.close()
                    more.set()
        return received, ended.value

    received, error = asyncio.run(main())
    assert received == [1, 2, 3]
    assert error.code == StatusCode.UNAVAILABLE and "shutting down" in error.message


def test_a_call_with_nothing_in_it_is_answered_with_invalid_argument(
    writer: GroupCommitWriter,
) -> None:
    from stateward_service.errors import invalid

    def operation_for(request: pb.ExecuteStreamRequest) -> Callable[[], Any]:
        if request.WhichOneof("call") is None:
            raise invalid("call", "is empty")
        return answered_by()(request)

    async def requests() -> AsyncIterator[pb.ExecuteStreamRequest]:
        yield pb.ExecuteStreamRequest(call_id=7)
        yield call(8)

    async def main() -> dict[int, pb.ExecuteStreamResponse]:
        stream = CallsStream(requests(), writer, operation_for)
        return {response.call_id: response async for response in stream.answers()}

    answers = asyncio.run(main())
    assert answers[7].error.code == StatusCode.INVALID_ARGUMENT
    assert "call: is empty" in answers[7].error.message
    assert answers[8].set_state.reason == "run-8"
