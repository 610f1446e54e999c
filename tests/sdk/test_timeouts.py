"""Timeouts as the reference has them: a timed-out run raises a TimeoutError naming its timeout,
0 or None means no timeout, a TimeoutError of the code's own is TimedOut."""

from __future__ import annotations

import asyncio
import time

import pytest

from stateward import flow, task

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str):
    return list(reversed(list(client.list_task_runs(flow_run_ids=[flow_run_id]))))


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


# --- 6. timeouts --------------------------------------------------------------------------------


def test_a_timed_out_flow_raises_a_timeout_error_naming_its_timeout(client):
    @flow(name="to-flow", timeout_seconds=0.3)
    def endless():
        time.sleep(10)

    with pytest.raises(TimeoutError, match=r"timeout of 0\.3s"):
        endless()
    state = flow_run_of(client, "to-flow").state
    assert state.name == "TimedOut"
    with pytest.raises(TimeoutError, match=r"timeout of 0\.3s"):
        state.result()  # read back from the server


def test_a_timed_out_async_flow_raises_a_timeout_error():
    @flow(timeout_seconds=0.3)
    async def endless_async():
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError, match=r"timeout of 0\.3s"):
        asyncio.run(endless_async())


@pytest.mark.parametrize("how", ["inline", "submitted"])
def test_a_timed_out_task_raises_a_timeout_error(how):
    @task(timeout_seconds=0.3)
    def slow():
        time.sleep(10)

    @flow
    def caller():
        if how == "inline":
            return slow()
        return slow.submit().result()

    with pytest.raises(TimeoutError, match=r"timeout of 0\.3s"):
        caller()


def test_a_timed_out_async_task_raises_a_timeout_error():
    @task(timeout_seconds=0.3)
    async def slow_async():
        await asyncio.sleep(10)

    @flow
    async def caller():
        return await slow_async()

    with pytest.raises(TimeoutError, match=r"timeout of 0\.3s"):
        asyncio.run(caller())


@pytest.mark.parametrize("timeout", [0, None])
def test_no_timeout_for_zero_or_none_also_through_with_options(timeout):
    @task(timeout_seconds=timeout)
    def takes_a_while() -> str:
        time.sleep(0.3)
        return "done"

    @flow(timeout_seconds=timeout)
    def waits() -> str:
        return takes_a_while()

    @flow(timeout_seconds=0.05)
    def would_time_out() -> str:
        time.sleep(0.3)
        return "done"

    assert waits() == "done"
    assert would_time_out.with_options(timeout_seconds=timeout)() == "done"
    assert takes_a_while.with_options(timeout_seconds=timeout)() == "done"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_task_raising_timeout_error_itself_is_timed_out(client, kind):
    if kind == "sync":

        @task
        def gives_up():
            raise TimeoutError("the service did not answer")

        @flow(name=f"to-own-{kind}")
        def caller():
            return gives_up(return_state=True)

        final = caller(return_state=True)
    else:

        @task
        async def gives_up_async():
            raise TimeoutError("the service did not answer")

        @flow(name=f"to-own-{kind}")
        async def caller_async():
            return await gives_up_async(return_state=True)

        final = asyncio.run(caller_async(return_state=True))
    state = final.result(raise_on_failure=False)
    assert state.is_failed() and state.name == "TimedOut"
    with pytest.raises(TimeoutError, match="did not answer"):
        state.result()
    (task_run,) = task_runs_of(client, flow_run_of(client, f"to-own-{kind}").id)
    assert task_run.state.name == "TimedOut"
