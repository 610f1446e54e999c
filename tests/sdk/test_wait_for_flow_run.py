"""`stateward.flow_runs.wait_for_flow_run` as the reference's: it returns the flow run once it
has ended, from another process, raises FlowRunWaitTimeout (a TimeoutError) past its timeout,
logs the states on request, and is awaited in async code. A flow run in a subprocess on the
session's real server; and both ends in one script on the embedded default. `FlowRunContext.get()`
and `TaskRunContext.get()` as the reference's."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import pytest

from stateward import flow, task
from stateward.context import FlowRunContext, TaskRunContext
from stateward.exceptions import FlowRunWaitTimeout, NotFound
from stateward.flow_runs import wait_for_flow_run
from stateward.runs import FlowRun
from stateward.states import State, StateType
from tests.sdk.conftest import python, spawn

pytestmark = pytest.mark.usefixtures("sdk_server")

WAITING_FLOW = """
    import sys
    from stateward import flow
    from stateward.runtime import flow_run

    @flow(name="sdk-waited-for")
    def waits_for_the_word():
        print(flow_run.id, flush=True)
        sys.stdin.readline()
        return "done"

    waits_for_the_word()
    """


def test_waiting_for_a_flow_run_of_another_process(caplog):
    owner = spawn(WAITING_FLOW)
    try:
        run_id = owner.stdout.readline().strip()
        with pytest.raises(FlowRunWaitTimeout, match=r"did not end within 0\.3s") as raised:
            wait_for_flow_run(run_id, timeout=0.3)
        assert isinstance(raised.value, TimeoutError)
        owner.stdin.write("go\n")
        owner.stdin.flush()
        with caplog.at_level(logging.INFO, logger="stateward.flow_runs"):
            run = wait_for_flow_run(run_id, timeout=60, log_states=True)
        owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert isinstance(run, FlowRun) and run.id == run_id
    assert run.state.is_completed() and run.state.result() == "done"
    said = [r.getMessage() for r in caplog.records if r.name == "stateward.flow_runs"]
    assert said[-1] == f"Flow run {run_id} - Completed"
    assert len(said) == len(set(said))  # each state once


def test_a_finished_run_is_returned_at_once_and_async_code_awaits():
    @flow
    def quick() -> int:
        return 1

    state = quick(return_state=True)
    run_id = state.details.flow_run_id

    async def awaits() -> FlowRun:
        return await wait_for_flow_run(run_id, timeout=5)

    assert asyncio.run(awaits()).state.is_completed()
    with pytest.raises(NotFound):
        wait_for_flow_run("5b0f2a47-0000-4000-8000-000000000000", timeout=1)
    with pytest.raises(ValueError, match="positive timeout"):
        wait_for_flow_run(run_id, timeout=0)


def test_waiting_in_a_script_on_the_embedded_default(tmp_path):
    result = python(
        """
        import json, threading
        from stateward import flow
        from stateward.flow_runs import wait_for_flow_run
        from stateward.runtime import flow_run

        started, release, ids = threading.Event(), threading.Event(), []

        @flow
        def held():
            ids.append(flow_run.id)
            started.set()
            release.wait(30)
            return 5

        thread = threading.Thread(target=held)
        thread.start()
        started.wait(30)
        try:
            wait_for_flow_run(ids[0], timeout=0.3)
            timed_out = False
        except TimeoutError:
            timed_out = True
        left = [thread for thread in threading.enumerate() if thread.name == "stateward-wait"]
        for waiter in left:
            waiter.join(10)  # the timed-out wait's watch ends with it
        watching = sum(waiter.is_alive() for waiter in left)
        release.set()
        run = wait_for_flow_run(ids[0], timeout=30)
        thread.join()
        print(json.dumps([timed_out, watching, run.state.name, run.state.result()]))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [True, 0, "Completed", 5]


def test_run_contexts_get_the_current_one_or_none():
    @task
    def inner() -> tuple[bool, bool]:
        flow_context, task_context = FlowRunContext.get(), TaskRunContext.get()
        return flow_context is not None, task_context is not None and task_context.task is inner

    @flow
    def outer() -> tuple[object, ...]:
        context = FlowRunContext.get()
        assert context is not None
        return context.flow is outer, TaskRunContext.get(), *inner()

    assert outer() == (True, None, True, True)
    assert FlowRunContext.get() is None and TaskRunContext.get() is None


def test_a_wait_that_timed_out_leaves_no_stream_behind(client):
    # A wait that times out stops following the run: no thread and no stream of transitions
    # stay behind it (a script polling a run that never ends with short waits opened one
    # more each time, for as long as the process lived).
    run = client.create_flow_run("sdk-waited-for-in-vain", state=State(StateType.RUNNING))
    before = {thread for thread in threading.enumerate() if thread.name == "stateward-wait"}
    for _ in range(3):
        with pytest.raises(FlowRunWaitTimeout):
            wait_for_flow_run(run.id, timeout=0.2)
    left = [
        thread
        for thread in threading.enumerate()
        if thread.name == "stateward-wait" and thread not in before
    ]
    for thread in left:
        thread.join(timeout=10)
    assert [thread for thread in left if thread.is_alive()] == []


def test_an_awaited_wait_that_is_cancelled_leaves_no_stream_behind(client):
    # asyncio.wait_for (or a cancelled task) gives up on the awaited wait: the thread doing it
    # went on for as long as its timeout (three hours by default), following the run.
    run = client.create_flow_run("sdk-waited-for-and-cancelled", state=State(StateType.RUNNING))
    before = {thread for thread in threading.enumerate() if thread.name == "stateward-wait"}

    async def gives_up() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(wait_for_flow_run(run.id), 0.3)

    asyncio.run(gives_up())
    left = [
        thread
        for thread in threading.enumerate()
        if thread.name == "stateward-wait" and thread not in before
    ]
    for thread in left:
        thread.join(timeout=10)
    assert [thread for thread in left if thread.is_alive()] == []


def test_a_sync_flow_called_from_async_code_waits_in_place():
    # In such a flow the code is sync, though an event loop runs in its thread: it got a
    # coroutine (never awaited) in place of the run.
    @flow
    def quick() -> int:
        return 1

    run_id = quick(return_state=True).details.flow_run_id

    @flow
    def waits() -> str:
        return type(wait_for_flow_run(run_id, timeout=10)).__name__

    async def caller() -> str:
        return waits()

    assert asyncio.run(caller()) == "FlowRun"
