"""The typed clients over real gRPC: create-and-start in one batch (what the SDK engine uses),
and the asyncio twin answering as the blocking client does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from stateward.client import AsyncClient, Client, Started
from stateward.exceptions import AlreadyExists, NotFound
from stateward.runs import FlowRun, OrchestrationResult, RetryPolicy, SetStateStatus, TaskRun
from stateward.states import State, StateType
from tests.support import ServerProcess

PENDING = State(StateType.PENDING)
RUNNING = State(StateType.RUNNING)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target) as connected:
        yield connected


def new_id() -> str:
    return str(uuid.uuid4())


def answer_of(started: Started) -> OrchestrationResult:
    assert isinstance(started.answer, OrchestrationResult), started.answer
    return started.answer


def test_create_and_start_creates_the_run_and_starts_it_in_one_call(client: Client) -> None:
    run = TaskRun(
        id=new_id(),
        name="batched",
        task_key="client-batch",
        parameters={"x": 1},
        tags=("t",),
        retry_policy=RetryPolicy(2, (1.0, 2.0)),
        state=PENDING,
    )
    started = client.create_and_start([run], RUNNING, lease_seconds=30)
    (created,) = started.created
    assert isinstance(created, TaskRun)
    assert (created.id, created.name, created.parameters, created.tags) == (
        run.id,
        "batched",
        {"x": 1},
        ("t",),
    )
    assert created.retry_policy == RetryPolicy(2, (1.0, 2.0))
    assert created.state is not None and created.state.type is StateType.PENDING
    answer = answer_of(started)
    assert answer.status is SetStateStatus.ACCEPT
    assert answer.state is not None and answer.state.type is StateType.RUNNING
    assert [s.name for s in client.list_states(run.id)] == ["Pending", "Running"]
    assert client.get_task_run(run.id).lease_expires is not None  # the lease was taken


def test_a_subflow_and_its_tracking_task_run_are_created_together(client: Client) -> None:
    parent = client.create_flow_run("client-parent", state=RUNNING)
    tracking = TaskRun(id=new_id(), name="", task_key="child", flow_run_id=parent.id)
    child = FlowRun(
        id=new_id(),
        name="child-run",
        flow_name="child",
        parent_task_run_id=tracking.id,
        state=PENDING,
    )
    started = client.create_and_start([tracking, child], RUNNING)
    made_tracking, made_child = started.created
    assert isinstance(made_tracking, TaskRun) and made_tracking.flow_run_id == parent.id
    assert isinstance(made_child, FlowRun) and made_child.parent_task_run_id == tracking.id
    assert answer_of(started).status is SetStateStatus.ACCEPT
    assert client.get_flow_run(child.id).state.type is StateType.RUNNING  # type: ignore[union-attr]


def test_each_operation_is_refused_alone(client: Client) -> None:
    run = TaskRun(id=new_id(), name="", task_key="client-twice", state=PENDING)
    answer_of(client.create_and_start([run], RUNNING))
    again = client.create_and_start([run], RUNNING)  # as a retry whose first answer was lost
    (refused,) = again.created
    assert isinstance(refused, AlreadyExists)
    assert answer_of(again).state.type is StateType.RUNNING  # type: ignore[union-attr]

    orphan = TaskRun(id=new_id(), name="", task_key="orphan", flow_run_id=new_id())
    lost = client.create_and_start([orphan], RUNNING)
    assert isinstance(lost.created[0], NotFound)  # no such flow run
    assert isinstance(lost.answer, NotFound)  # so no such task run to start


def test_create_and_start_needs_a_run() -> None:
    with Client("127.0.0.1:1") as unused, pytest.raises(ValueError, match="at least one run"):
        unused.create_and_start([], RUNNING)


def test_the_async_client_answers_as_the_blocking_one(server: ServerProcess, client: Client):
    tag = f"client-async-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[FlowRun, Started, list[FlowRun], list[str]]:
        async with AsyncClient(server.target) as aclient:
            flow_run = await aclient.create_flow_run("client-async", tags=[tag], state=RUNNING)
            run = TaskRun(id=new_id(), name="", task_key="a", flow_run_id=flow_run.id)
            started = await aclient.create_and_start([run], RUNNING)
            listed = [r async for r in aclient.list_flow_runs(tags=[tag])]
            await aclient.create_concurrency_limit(tag, 2)
            limits = [limit.tag for limit in await aclient.list_concurrency_limits()]
            assert (await aclient.get_concurrency_limit(tag)).limit == 2
            await aclient.delete_concurrency_limit(tag)
            return flow_run, started, listed, limits

    flow_run, started, listed, limits = asyncio.run(scenario())
    assert [r.id for r in listed] == [r.id for r in client.list_flow_runs(tags=[tag])]
    assert listed == [client.get_flow_run(flow_run.id)]
    assert answer_of(started).status is SetStateStatus.ACCEPT
    assert tag in limits
    with pytest.raises(NotFound):
        client.get_concurrency_limit(tag)
