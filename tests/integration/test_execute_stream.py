"""ExecuteStream, the long-lived stream of calls: each call is answered as its RPC answers it
(statuses, refusals, idempotency), the SDK's clients (Client and AsyncClient) send their
proposals on one stream, a stream that breaks fails the calls in flight with UNAVAILABLE, whose
retries write once, and a server shutting down answers the calls in flight, then ends it."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from stateward.client import AsyncClient, Client
from stateward.exceptions import InvalidArgument, NotFound, ResourceExhausted, ServerUnavailable
from stateward.runs import SetStateStatus
from stateward.states import ResultData, State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import ST, ServerProcess, new_flow_run, state, wait_until

Send = Callable[[pb.SetStateRequest], Any]


class StreamCaller:
    """Calls sent one at a time on one ExecuteStream; `send` returns the SetStateResponse, or
    the error's (code, message)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.requests: queue.SimpleQueue[pb.ExecuteStreamRequest | None] = queue.SimpleQueue()
        stub = pb_stub(channel)
        self.responses: Iterator[pb.ExecuteStreamResponse] = stub.ExecuteStream(
            iter(self.requests.get, None)
        )
        self.ids = iter(range(1, 1_000_000))

    def send(self, request: pb.SetStateRequest) -> Any:
        call_id = next(self.ids)
        self.requests.put(pb.ExecuteStreamRequest(call_id=call_id, set_state=request))
        answer = next(self.responses)
        assert answer.call_id == call_id
        if answer.WhichOneof("result") == "error":
            return (answer.error.code, answer.error.message)
        return answer.set_state

    def close(self) -> None:
        self.requests.put(None)
        assert list(self.responses) == []  # the server ends the stream once the client did


def pb_stub(channel: grpc.Channel) -> Any:
    from stateward.v1 import orchestration_pb2_grpc

    return orchestration_pb2_grpc.OrchestrationServiceStub(channel)


def unary(channel: grpc.Channel) -> Send:
    stub = pb_stub(channel)

    def send(request: pb.SetStateRequest) -> Any:
        try:
            return stub.SetState(request)
        except grpc.RpcError as error:
            return (error.code().value[0], error.details())

    return send


def scenario(stub: Any, send: Send, later: datetime) -> list[Any]:
    """Proposals that meet each kind of answer: ACCEPT, REJECT with a state in its place, a
    null REJECT, WAIT, ABORT, a retried proposal, an unknown run and bad input. What came back,
    with the ids that differ from run to run taken out."""
    answers: list[Any] = []
    run = new_flow_run(stub, retry_policy={"retries": 1})
    waiting = new_flow_run(stub, initial=None)
    ids = {run.id: "<run>", waiting.id: "<waiting>"}

    def propose(run_id: str, proposed: Any, **fields: Any) -> None:
        answers.append(send(pb.SetStateRequest(run_id=run_id, state=proposed, **fields)))

    propose(run.id, state(ST.STATE_TYPE_RUNNING))  # ACCEPT
    propose(run.id, state(ST.STATE_TYPE_FAILED))  # REJECT: AwaitingRetry in its place
    propose(run.id, state(ST.STATE_TYPE_PAUSED))  # REJECT: only a RUNNING run pauses
    propose(waiting.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=later))
    propose(waiting.id, state(ST.STATE_TYPE_RUNNING))  # WAIT
    propose(waiting.id, state(ST.STATE_TYPE_RUNNING), expected_state_id=run.id)  # ABORT
    retried = state(ST.STATE_TYPE_RUNNING, transition_id=str(uuid.uuid4()))
    ids[retried.details.transition_id] = "<transition>"
    propose(run.id, retried)  # ACCEPT
    propose(run.id, retried)  # REJECT: already applied
    unknown = str(uuid.uuid4())
    ids[unknown] = "<unknown>"
    propose(unknown, state(ST.STATE_TYPE_RUNNING))  # NOT_FOUND
    answers.append(send(pb.SetStateRequest(run_id=run.id)))  # INVALID_ARGUMENT: no state
    propose("not-an-id", state(ST.STATE_TYPE_RUNNING))  # INVALID_ARGUMENT: run_id
    propose(run.id, state(ST.STATE_TYPE_RUNNING), expected_state_id="nope")  # INVALID_ARGUMENT
    return [normalised(answer, ids) for answer in answers]


def normalised(answer: Any, ids: dict[str, str]) -> Any:
    def text(value: str) -> str:
        for key, name in ids.items():
            value = value.replace(key, name)
        return re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", value)

    if isinstance(answer, tuple):
        return (answer[0], text(answer[1]))
    return (
        answer.status,
        answer.written,
        text(answer.reason),
        answer.delay_seconds > 0,
        answer.state.type,
        answer.state.name,
    )


def test_the_stream_answers_each_call_as_set_state_does(server: ServerProcess) -> None:
    stub = server.stub()
    with grpc.insecure_channel(server.target) as channel:
        later = datetime.now(UTC) + timedelta(minutes=5)
        expected = scenario(stub, unary(channel), later)
        caller = StreamCaller(channel)
        found = scenario(stub, caller.send, later)
        caller.close()
    assert found == expected
    statuses = [answer[0] for answer in expected]
    assert statuses == [
        pb.SET_STATE_STATUS_ACCEPT,
        pb.SET_STATE_STATUS_REJECT,
        pb.SET_STATE_STATUS_REJECT,
        pb.SET_STATE_STATUS_ACCEPT,
        pb.SET_STATE_STATUS_WAIT,
        pb.SET_STATE_STATUS_ABORT,
        pb.SET_STATE_STATUS_ACCEPT,
        pb.SET_STATE_STATUS_REJECT,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]


def test_calls_in_flight_on_one_stream_each_get_their_answer(server: ServerProcess) -> None:
    stub = server.stub()
    runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(32)]
    requests = [
        pb.ExecuteStreamRequest(
            call_id=index + 1,
            set_state=pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_COMPLETED)),
        )
        for index, run in enumerate(runs)
    ]
    requests.append(pb.ExecuteStreamRequest(call_id=99))  # no call at all
    with grpc.insecure_channel(server.target) as channel:
        answers = {
            answer.call_id: answer for answer in pb_stub(channel).ExecuteStream(iter(requests))
        }
    assert len(answers) == 33
    for index, run in enumerate(runs):
        answer = answers[index + 1].set_state
        assert answer.status == pb.SET_STATE_STATUS_ACCEPT
        stored = stub.ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert stored[-1].id == answer.state.id
    assert answers[99].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "set_state or execute_batch" in answers[99].error.message


def test_the_client_sends_its_calls_on_one_stream(server: ServerProcess) -> None:
    with Client(server.target) as client:
        run = client.create_flow_run("streamed", state=State(StateType.PENDING))
        for proposed in (StateType.RUNNING, StateType.COMPLETED):
            answer = client.set_state(run.id, State(proposed))
            assert answer.status is SetStateStatus.ACCEPT
        with pytest.raises(NotFound, match="no flow run or task run has id"):
            client.set_state(str(uuid.uuid4()), State(StateType.RUNNING))
        with pytest.raises(InvalidArgument, match="run_id"):
            client.set_state("not-an-id", State(StateType.RUNNING))
        stream = client.transport.calls_stream  # type: ignore[attr-defined]
        assert stream is not None and stream.opened == 1
    assert [s.type for s in Client(server.target).list_states(run.id)] == [
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]


def test_a_broken_stream_fails_its_calls_and_their_retries_write_once(tmp_path: Any) -> None:
    server = ServerProcess(tmp_path / "broken.db").start()
    setup = server.stub()
    runs = [new_flow_run(setup, initial=ST.STATE_TYPE_RUNNING).id for _ in range(32)]
    client = Client(server.target, timeout=30)
    stop = threading.Event()
    broken: list[BaseException] = []
    proposed: dict[str, list[str]] = {run_id: [] for run_id in runs}
    retries: dict[str, State] = {}

    def propose(run_id: str) -> None:
        while not stop.is_set():
            mine = State(StateType.RUNNING).with_details(transition_id=str(uuid.uuid4()))
            proposed[run_id].append(mine.details.transition_id)
            try:
                client.set_state(run_id, mine)
            except ServerUnavailable as error:
                broken.append(error)
                retries[run_id] = mine
                return

    threads = [threading.Thread(target=propose, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(map(len, proposed.values())) > 300, 60, "300 proposals")
    server.kill()  # the stream breaks with calls in flight
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(broken) == len(runs)  # every call in flight failed with UNAVAILABLE
    server.restart()
    try:
        applied_before = 0
        for run_id, again in retries.items():  # the same proposal again, on a new stream
            answer = client.set_state(run_id, again)
            if answer.status is SetStateStatus.REJECT:  # it was applied before the break
                assert "already applied" in answer.reason
                applied_before += 1
            else:
                assert answer.status is SetStateStatus.ACCEPT
        stream = client.transport.calls_stream  # type: ignore[attr-defined]
        assert stream is not None and stream.opened == 2
        stub = server.stub()
        for run_id, transition_ids in proposed.items():
            stored = stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states
            written = [s.details.transition_id for s in stored[1:]]
            assert len(written) == len(set(written))  # none twice
            assert written == transition_ids  # each once, in order: none lost, none doubled
        print(f"{applied_before} of {len(retries)} retried proposals had been applied")
    finally:
        client.close()
        server.stop()


def test_a_server_shutting_down_answers_the_stream_then_ends_it_unavailable(tmp_path: Any) -> None:
    server = ServerProcess(tmp_path / "closing.db").start()
    try:
        run = new_flow_run(server.stub(), initial=ST.STATE_TYPE_PENDING)
        with grpc.insecure_channel(server.target) as channel:
            caller = StreamCaller(channel)
            answer = caller.send(
                pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING))
            )
            assert answer.status == pb.SET_STATE_STATUS_ACCEPT
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            with pytest.raises(grpc.RpcError) as ended:
                next(caller.responses)
            caller.requests.put(None)
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (ended.value.details() or "")
        assert server.process.wait(30) == 0  # type: ignore[union-attr]
    finally:
        server.stop()
    server.restart()
    try:
        stored = server.stub().ListStates(pb.ListStatesRequest(run_id=run.id)).states
        assert stored[-1].id == answer.state.id
    finally:
        server.stop()


def test_the_async_client_sends_its_calls_on_one_stream(server: ServerProcess) -> None:
    async def scenario() -> tuple[str, list[SetStateStatus], int]:
        async with AsyncClient(server.target) as client:
            run = await client.create_flow_run("streamed", state=State(StateType.PENDING))
            statuses = []
            for proposed in (StateType.RUNNING, StateType.COMPLETED):
                answer = await client.set_state(run.id, State(proposed))
                statuses.append(answer.status)
            with pytest.raises(NotFound, match="no flow run or task run has id"):
                await client.set_state(str(uuid.uuid4()), State(StateType.RUNNING))
            with pytest.raises(InvalidArgument, match="run_id"):
                await client.set_state("not-an-id", State(StateType.RUNNING))
            # Calls in flight together, on the same stream, each get their own answer.
            others = [
                await client.create_flow_run("streamed", state=State(StateType.RUNNING))
                for _ in range(16)
            ]
            answers = await asyncio.gather(
                *(client.set_state(other.id, State(StateType.COMPLETED)) for other in others)
            )
            for answer, other in zip(answers, others, strict=True):
                assert answer.status is SetStateStatus.ACCEPT
                assert (await client.get_flow_run(other.id)).state == answer.state
            stream = client.transport.calls_stream
            assert stream is not None
            return run.id, statuses, stream.opened

    run_id, statuses, opened = asyncio.run(scenario())
    assert statuses == [SetStateStatus.ACCEPT, SetStateStatus.ACCEPT]
    assert opened == 1
    assert [s.type for s in Client(server.target).list_states(run_id)] == [
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]


def test_a_broken_stream_fails_async_calls_and_their_retries_write_once(tmp_path: Any) -> None:
    server = ServerProcess(tmp_path / "broken-async.db").start()
    setup = server.stub()
    runs = [new_flow_run(setup, initial=ST.STATE_TYPE_RUNNING).id for _ in range(32)]
    proposed: dict[str, list[str]] = {run_id: [] for run_id in runs}
    retries: dict[str, State] = {}
    broken: list[BaseException] = []

    async def scenario() -> tuple[int, int]:
        client = AsyncClient(server.target, timeout=30)
        stop, enough = asyncio.Event(), asyncio.Event()
        sent = 0

        async def propose(run_id: str) -> None:
            nonlocal sent
            while not stop.is_set():
                mine = State(StateType.RUNNING).with_details(transition_id=str(uuid.uuid4()))
                proposed[run_id].append(mine.details.transition_id)
                sent += 1
                if sent > 300:
                    enough.set()
                try:
                    await client.set_state(run_id, mine)
                except ServerUnavailable as error:
                    broken.append(error)
                    retries[run_id] = mine
                    return

        async def kill_when_enough() -> None:
            await enough.wait()
            await asyncio.to_thread(server.kill)  # the stream breaks with calls in flight
            stop.set()

        await asyncio.wait_for(
            asyncio.gather(kill_when_enough(), *(propose(run_id) for run_id in runs)), 120
        )
        await asyncio.to_thread(server.restart)
        applied_before = 0
        for run_id, again in retries.items():  # the same proposal again, on a new stream
            answer = await client.set_state(run_id, again)
            if answer.status is SetStateStatus.REJECT:  # it was applied before the break
                assert "already applied" in answer.reason
                applied_before += 1
            else:
                assert answer.status is SetStateStatus.ACCEPT
        stream = client.transport.calls_stream
        assert stream is not None
        opened = stream.opened
        await client.close()
        return applied_before, opened

    try:
        applied_before, opened = asyncio.run(scenario())
        assert len(broken) == len(runs)  # every call in flight failed with UNAVAILABLE
        assert opened == 2
        stub = server.stub()
        for run_id, transition_ids in proposed.items():
            stored = stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states
            written = [s.details.transition_id for s in stored[1:]]
            assert written == transition_ids  # each once, in order: none lost, none doubled
        print(f"{applied_before} of {len(retries)} retried proposals had been applied")
    finally:
        server.stop()


def test_a_call_too_large_for_the_server_fails_alone(server: ServerProcess) -> None:
    """A call larger than the server takes goes as its own RPC: its RESOURCE_EXHAUSTED does not
    end the stream the other calls are in flight on."""
    setup = server.stub()
    runs = [new_flow_run(setup, initial=ST.STATE_TYPE_RUNNING).id for _ in range(8)]
    big = new_flow_run(setup, initial=ST.STATE_TYPE_RUNNING).id
    huge = State(StateType.COMPLETED, data=ResultData(json='"' + "x" * (5 << 20) + '"'))
    with Client(server.target) as client:
        client.set_state(runs[0], State(StateType.RUNNING), force=True)  # the stream is open
        stream = client.transport.calls_stream  # type: ignore[attr-defined]
        answers: dict[str, list[Any]] = {run_id: [] for run_id in runs}
        failed: list[BaseException] = []
        done = threading.Event()

        def propose(run_id: str) -> None:
            try:
                while not done.is_set():
                    answer = client.set_state(run_id, State(StateType.RUNNING), force=True)
                    answers[run_id].append(answer.status)
            except Exception as error:
                failed.append(error)

        threads = [threading.Thread(target=propose, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(len(a) > 5 for a in answers.values()), 60, "calls in flight")
        with pytest.raises(ResourceExhausted):
            client.set_state(big, huge)
        counts = {run_id: len(a) for run_id, a in answers.items()}
        wait_until(
            lambda: all(len(answers[r]) > counts[r] + 5 for r in runs) or bool(failed),
            60,
            "more answers",
        )
        done.set()
        for thread in threads:
            thread.join(60)
        assert failed == []
        assert all(set(a) == {SetStateStatus.ACCEPT} for a in answers.values())
        assert stream is not None and stream.opened == 1  # the stream never broke
    assert setup.GetFlowRun(pb.GetFlowRunRequest(id=big)).flow_run.state.type == (
        ST.STATE_TYPE_RUNNING
    )


def test_a_stream_closed_by_a_shutdown_answers_every_call_it_ran(tmp_path: Any) -> None:
    """SQLite: a call waiting for the write lock (held by another process) when the server
    begins to shut down is still answered on its stream once it is written, even when its
    answer comes after the stream was told to close and after the client finished sending
    (here the client reads nothing until then: the answers before it fill the stream's
    window). A stream that ended OK with a written call unanswered would leave the client
    unable to tell whether to send it again."""
    database = tmp_path / "closing.db"
    server = ServerProcess(database, env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": "60"}).start()
    stub = pb_stub(server.channel())
    run = new_flow_run(stub, initial=ST.STATE_TYPE_PENDING)
    parameters = Struct()
    parameters.update({"blob": "x" * 50_000})
    big = pb.ExecuteBatchRequest(
        operations=[
            pb.BatchOperation(
                create_flow_run=pb.CreateFlowRunRequest(
                    flow_run=runs_pb2.FlowRun(flow_name="big", parameters=parameters)
                )
            )
        ]
        * 40
    )
    batches = 12  # their answers, ~24 MB, are far more than the stream's window
    last_call = batches + 1
    lock_taken, last_sent = threading.Event(), threading.Event()

    def calls() -> Iterator[pb.ExecuteStreamRequest]:
        for call_id in range(1, batches + 1):
            yield pb.ExecuteStreamRequest(call_id=call_id, execute_batch=big)
        lock_taken.wait(60)
        running = pb.SetStateRequest(run_id=run.id, state=state(ST.STATE_TYPE_RUNNING))
        yield pb.ExecuteStreamRequest(call_id=last_call, set_state=running)
        last_sent.set()  # asked for more: the last call went out

    responses = stub.ExecuteStream(calls(), timeout=120)
    reader = sqlite3.connect(database)
    holder = sqlite3.connect(database, isolation_level=None)
    idle_requests: queue.SimpleQueue[pb.ExecuteStreamRequest | None] = queue.SimpleQueue()
    try:

        def count(query: str, *args: Any) -> int:
            return int(reader.execute(query, args).fetchone()[0])

        wait_until(
            lambda: count("SELECT count(*) FROM flow_runs WHERE flow_name = 'big'") == 40 * batches,
            60,
            "the batches written",
        )
        holder.execute("BEGIN IMMEDIATE")
        lock_taken.set()
        assert last_sent.wait(30)
        # A call on the same connection after it: the server has read the last call (and
        # started it, waiting for the lock) before the shutdown begins.
        # (ListFlowRuns reads a snapshot: it does not wait for the write lock.)
        stub.ListFlowRuns(pb.ListFlowRunsRequest(page_size=1), timeout=30)
        # Another stream, idle: it ends once the server told its streams to close.
        idle = stub.ExecuteStream(iter(idle_requests.get, None), timeout=60)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as ended:
            list(idle)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        holder.execute("COMMIT")
        wait_until(
            lambda: (
                count("SELECT count(*) FROM flow_runs WHERE id = ? AND state_type = 3", run.id) == 1
            ),
            30,
            "the last call written",
        )
        answered: list[int] = []
        try:
            for response in responses:
                answered.append(response.call_id)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        # Written, so answered, whatever the stream ended with.
        assert answered == list(range(1, last_call + 1))
    finally:
        idle_requests.put(None)
        lock_taken.set()
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        reader.close()
        server.stop()
