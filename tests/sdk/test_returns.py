"""What a run's return value makes of it, as the reference decides: states, futures and map
results handed back as they are and judged; a state the code built taken as the run's own."""

from __future__ import annotations

import asyncio

import pytest

from stateward import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    FailedRun,
    Paused,
    State,
    StateType,
    flow,
    task,
)
from stateward.exceptions import PausedRun
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str):
    return list(reversed(list(client.list_task_runs(flow_run_ids=[flow_run_id]))))


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


@task
def double(x: int) -> int:
    return 2 * x


@task
def refuse_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"{x} is odd")
    return x


@task
async def async_double(x: int) -> int:
    return 2 * x


# --- 1. a flow returning states or futures hands them back, judged ------------------------------


def test_a_flow_returning_map_gets_the_states_back(client):
    @flow(name="ret-map")
    def fan_out():
        return double.map([1, 2, 3])

    states = fan_out()
    assert isinstance(states, list) and len(states) == 3
    assert all(isinstance(s, State) and s.is_completed() for s in states)
    assert [s.result() for s in states] == [2, 4, 6]
    run = flow_run_of(client, "ret-map")
    assert run.state.is_completed() and run.state.message == "All states completed."
    final = fan_out(return_state=True)
    assert final.is_completed()
    assert [s.result() for s in final.result()] == [2, 4, 6]


def test_a_flow_returning_one_future_or_one_state_gets_that_state(client):
    @flow(name="ret-future")
    def one_future():
        return double.submit(4)

    @flow(name="ret-state")
    def one_state():
        return double(5, return_state=True)

    state = one_future()
    assert isinstance(state, State) and state.result() == 8
    final = one_future(return_state=True)
    assert final.is_completed() and final.result().result() == 8
    state = one_state()
    assert isinstance(state, State) and state.is_completed() and state.result() == 10


def test_a_flow_returning_states_with_a_failure_fails_and_raises_its_exception(client):
    @flow(name="ret-failing")
    def some_fail():
        return tuple(refuse_odd.submit(x) for x in (1, 2, 3))

    final = some_fail(return_state=True)
    assert final.is_failed()
    assert final.message == "2/3 states failed."
    states = final.result(raise_on_failure=False)
    assert isinstance(states, tuple)
    assert [s.type for s in states] == [StateType.FAILED, StateType.COMPLETED, StateType.FAILED]
    with pytest.raises(ValueError, match="1 is odd"):
        some_fail()
    assert flow_run_of(client, "ret-failing").state.is_failed()


def test_a_flow_returning_a_cancelled_state_among_others_is_cancelled():
    @flow
    def with_cancel():
        return [Completed(), Cancelled(message="not wanted")]

    final = with_cancel(return_state=True)
    assert final.is_cancelled() and final.message == "1/2 states cancelled."


def test_a_mixed_collection_is_plain_data_and_completes(client):
    @flow(name="ret-mixed")
    def mixed():
        return "bar", double.submit(1)

    value = mixed()
    assert value[0] == "bar"
    assert isinstance(value[1], State) and value[1].result() == 2
    assert flow_run_of(client, "ret-mixed").state.is_completed()


def test_an_async_flow_returning_futures_gets_the_states_back(client):
    @flow(name="ret-async")
    async def fan_out_async():
        return [async_double.submit(x) for x in (1, 2)]

    states = asyncio.run(fan_out_async())
    assert [s.result() for s in states] == [2, 4]
    assert flow_run_of(client, "ret-async").state.message == "All states completed."


# --- 2. a task returning a state takes that state -----------------------------------------------


def test_a_task_returning_failed_ends_failed_and_is_retried(client):
    calls = []

    @task(retries=1)
    def reject():
        calls.append(1)
        return Failed(message="rejected")

    @flow(name="ret-task-failed")
    def caller():
        return reject(return_state=True)

    final = caller(return_state=True)
    assert final.is_failed() and final.message == "1/1 states failed."
    state = final.result(raise_on_failure=False)
    assert state.is_failed() and state.message == "rejected"
    assert len(calls) == 2
    run = flow_run_of(client, "ret-task-failed")
    (task_run,) = task_runs_of(client, run.id)
    assert names(client, task_run.id) == ["Pending", "Running", "Retrying", "Failed"]
    with pytest.raises(FailedRun, match="rejected"):
        state.result()


def test_a_task_returning_failed_raises_when_called_inline_and_submitted():
    @task
    def reject(x: int):
        return Failed(message=f"rejected {x}")

    @flow
    def inline():
        return reject(1)

    @flow
    def submitted():
        return reject.submit(2).result()

    with pytest.raises(FailedRun, match="rejected 1"):
        inline()
    with pytest.raises(FailedRun, match="rejected 2"):
        submitted()


def test_an_async_task_returning_cancelled_ends_cancelled():
    @task
    async def give_up():
        return Cancelled(message="not today")

    @flow
    async def caller():
        return await give_up(return_state=True)

    final = asyncio.run(caller(return_state=True))
    assert final.is_cancelled()
    state = final.result(raise_on_failure=False)
    assert state.is_cancelled() and state.message == "not today"


@pytest.mark.parametrize("returned", ["cancelling", "cancelled"])
def test_a_flow_returning_cancelling_or_cancelled_ends_cancelled_with_its_hook(client, returned):
    seen = []

    def note(flow, flow_run, state):
        seen.append(state.type)

    @flow(name=f"ret-{returned}", on_cancellation=[note])
    def stop_here():
        if returned == "cancelling":
            return State(type=StateType.CANCELLING, message="stop")
        return Cancelled(message="stop")

    final = stop_here(return_state=True)
    assert final.is_cancelled()
    assert seen == [StateType.CANCELLED]
    assert flow_run_of(client, f"ret-{returned}").state.is_cancelled()


def test_a_flow_returning_paused_keeps_its_timeout_and_the_server_fails_it(client):
    @flow(name="ret-paused")
    def pause_me():
        return Paused(timeout_seconds=1)

    with pytest.raises(PausedRun):
        pause_me()
    run = flow_run_of(client, "ret-paused")
    assert run.state.is_paused() and run.state.details.pause_timeout is not None
    wait_until(
        lambda: client.get_flow_run(run.id).state.is_failed(),
        timeout=30,
        what="the expired pause to fail the run",
    )


def test_a_task_returning_paused_keeps_its_timeout(client):
    @task
    def park():
        return Paused(timeout_seconds=60)

    @flow(name="ret-task-paused")
    def caller():
        return park(return_state=True)

    with pytest.raises(PausedRun):
        caller()
    (task_run,) = task_runs_of(client, flow_run_of(client, "ret-task-paused").id)
    assert task_run.state.is_paused() and task_run.state.details.pause_timeout is not None


# --- 11. states as users build them ------------------------------------------------------------


def test_states_built_with_data_give_it_back_or_raise_it():
    error = KeyError("gone")
    with pytest.raises(KeyError, match="gone"):
        Failed(data=error).result()
    assert Failed(data=error).result(raise_on_failure=False) is error
    with pytest.raises(RuntimeError, match="crash"):
        Crashed(data=RuntimeError("crash")).result()
    assert Cancelled(data=7).result(raise_on_failure=False) == 7
    assert State(type=StateType.COMPLETED, data={"k": 1}).result() == {"k": 1}
    assert State(type="COMPLETED", data=3).result() == 3


def test_state_details_and_state_type_names():
    state = Completed(message="ok")
    assert state.state_details is state.details
    assert StateType.COMPLETED == "COMPLETED"
    assert state.type == "COMPLETED" and state.type != "FAILED"
    assert StateType("FAILED") is StateType.FAILED
    assert {StateType.COMPLETED: 1}[StateType.COMPLETED] == 1


def test_result_can_be_awaited_in_async_code_as_well_as_called():
    @task
    async def three() -> int:
        return 3

    @flow
    async def inside() -> tuple[int, int]:
        state = await three(return_state=True)
        return await state.result(), state.result()

    async def outside() -> tuple[int, int, int]:
        state = await inside(return_state=True)
        awaited = await state.result()
        called = Completed(data=5).result()
        return *awaited, called

    assert asyncio.run(outside()) == (3, 3, 5)


def test_a_flow_returning_failed_with_an_exception_raises_it_sync_and_async(client):
    @flow(name="ret-failed-data")
    def fails_with():
        return Failed(data=ValueError("mine"), message="failed on purpose")

    @flow
    async def fails_with_async():
        return Failed(data=ValueError("mine too"))

    with pytest.raises(ValueError, match="mine"):
        fails_with()
    run = flow_run_of(client, "ret-failed-data")
    assert run.state.is_failed() and run.state.message == "failed on purpose"
    with pytest.raises(ValueError, match="mine"):
        run.state.result()  # stored: read back from the server
    with pytest.raises(ValueError, match="mine too"):
        asyncio.run(fails_with_async())


def test_a_flow_returning_paused_raises_paused_run_sync_and_async():
    @flow
    def pause_now():
        return Paused()

    @flow
    async def pause_now_async():
        return Paused()

    with pytest.raises(PausedRun):
        pause_now()
    with pytest.raises(PausedRun):
        asyncio.run(pause_now_async())
