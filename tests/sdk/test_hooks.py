"""State change hooks: the seed's example as written, every hook for flows and tasks, order,
isolation of a raising hook, async hooks, and how often each runs."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import pytest

from stateward import flow, task

pytestmark = pytest.mark.usefixtures("sdk_server")


def test_the_seed_partial_hook_example_as_written():
    # From the seed document, with `from prefect import flow, task` changed to stateward.
    data = {}

    def my_hook(task, task_run, state, **kwargs):
        data.update(state=state, **kwargs)

    @task
    def bad_task():
        raise ValueError("meh")

    @flow
    def ok_with_failure_flow(x: str = "foo", y: int = 42):
        bad_task_with_a_hook = bad_task.with_options(
            on_failure=[partial(my_hook, **dict(x=x, y=y))]
        )
        # return a tuple of "bar" and the task run state
        # to avoid raising the task's exception
        return "bar", bad_task_with_a_hook(return_state=True)

    _, task_run_state = ok_with_failure_flow()
    assert data == {"x": "foo", "y": 42, "state": task_run_state}


def test_the_seed_success_and_shared_hooks(capsys):
    def my_success_hook(flow, flow_run, state):
        print("Flow run succeeded!")

    @flow(on_completion=[my_success_hook])
    def my_flow():
        return 42

    assert my_flow() == 42
    assert capsys.readouterr().out == "Flow run succeeded!\n"

    def task_success(task, task_run, state):
        print("Task run succeeded!")

    def task_failure(task, task_run, state):
        print("Task run failed!")

    def succeed_or_fail(task, task_run, state):
        print("If the task run succeeds or fails, this hook runs.")

    @task(
        on_completion=[task_success, succeed_or_fail],
        on_failure=[task_failure, succeed_or_fail],
    )
    def either(fail: bool):
        if fail:
            raise RuntimeError("failed")

    either(False)
    either(True, return_state=True)
    assert capsys.readouterr().out.splitlines() == [
        "Task run succeeded!",
        "If the task run succeeds or fails, this hook runs.",
        "Task run failed!",
        "If the task run succeeds or fails, this hook runs.",
    ]


def test_hooks_get_the_subject_its_run_and_the_accepted_state(client):
    seen = []

    def hook(subject, run, state):
        seen.append((subject, run, state))

    @task(on_completion=[hook], on_running=[hook])
    def work(x):
        return x

    @flow(on_completion=[hook], on_running=[hook], name="sdk-hook-args")
    def outer():
        return work(5)

    outer()
    kinds = [(type(s).__name__, r.name, st.name) for s, r, st in seen]
    assert [k[0] for k in kinds] == ["Flow", "Task", "Task", "Flow"]
    assert [k[2] for k in kinds] == ["Running", "Running", "Completed", "Completed"]
    flow_subject, flow_run, completed = seen[-1]
    assert flow_subject is outer and flow_run.flow_name == "sdk-hook-args"
    assert completed == client.list_states(flow_run.id)[-1]  # the accepted state
    task_subject, task_run, _ = seen[2]
    assert task_subject.name == "work" and task_run.parameters == {"x": 5}


def test_hooks_run_in_order_and_a_raising_hook_does_not_stop_the_others(caplog):
    calls = []

    def first(*args):
        calls.append("first")

    def broken(*args):
        calls.append("broken")
        raise RuntimeError("hook broke")

    def last(*args):
        calls.append("last")

    @flow(on_completion=[first, broken, last])
    def hooked():
        return "value"

    with caplog.at_level(logging.ERROR, logger="stateward"):
        assert hooked() == "value"  # a hook never changes the run's outcome
    assert calls == ["first", "broken", "last"]
    failures = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(failures) == 1
    assert "on_completion hook" in failures[0].getMessage()
    assert "broken" in failures[0].getMessage() and failures[0].exc_info is not None


def test_decorator_registration_and_with_options_replacing_hooks():
    calls = []

    @flow
    def registered():
        raise ValueError("x")

    @registered.on_failure
    def one(flow, flow_run, state):
        calls.append("one")

    @registered.on_failure
    def two(flow, flow_run, state):
        calls.append("two")

    registered(return_state=True)
    assert calls == ["one", "two"]
    replaced = registered.with_options(on_failure=[lambda *a: calls.append("replaced")])
    replaced(return_state=True)
    assert calls == ["one", "two", "replaced"]
    registered(return_state=True)  # the original keeps its own list
    assert calls[-2:] == ["one", "two"]


def test_async_hooks_and_hooks_with_kwargs():
    calls = []

    async def async_hook(flow, flow_run, state):
        await asyncio.sleep(0.01)
        calls.append(("async", state.name))

    def kwargs_hook(flow, flow_run, state, **kwargs):
        calls.append(("kwargs", kwargs))

    @flow(on_completion=[async_hook, partial(kwargs_hook, tag="t")])
    def sync_flow():
        return 1

    @flow(on_completion=[async_hook])
    async def async_flow():
        return 2

    sync_flow()
    asyncio.run(async_flow())
    assert calls == [("async", "Completed"), ("kwargs", {"tag": "t"}), ("async", "Completed")]


def test_on_running_runs_on_each_entry_and_final_hooks_once():
    events = []
    attempts = []

    def record(name):
        return lambda task, task_run, state: events.append((name, state.name))

    @task(
        retries=2,
        retry_delay_seconds=0,
        on_running=[record("running")],
        on_failure=[record("failure")],
        on_completion=[record("completion")],
    )
    def twice_failing():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("again")

    twice_failing()
    assert events == [
        ("running", "Running"),
        ("running", "Retrying"),
        ("running", "Retrying"),
        ("completion", "Completed"),
    ]
    events.clear()
    attempts.clear()
    always = twice_failing.with_options(retries=1)
    always(return_state=True)
    assert events == [("running", "Running"), ("running", "Retrying"), ("failure", "Failed")]


def test_hooks_for_every_final_state_of_a_task():
    events = []

    def record(kind):
        return lambda task, task_run, state: events.append((kind, state.type.name))

    hooks = {
        kind: [record(kind)]
        for kind in ("on_completion", "on_failure", "on_crashed", "on_cancellation")
    }

    @task(**hooks)
    def crashes():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crashes()
    assert events == [("on_crashed", "CRASHED")]
