"""Hooks see the run as the reference shows it: they run in the run's context, and the run they
get carries its current fields from the server; retry conditions may be async and are not asked
after the last attempt."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from stateward import flow, get_run_context, task
from stateward._context import FlowRunContext, TaskRunContext

pytestmark = pytest.mark.usefixtures("sdk_server")


def seen_by(seen: list):
    def hook(subject, run, state):
        context = get_run_context()
        seen.append((run, state, context))

    return hook


@pytest.mark.parametrize("asynchronous", [False, True])
def test_flow_hooks_run_in_the_context_with_the_run_as_the_server_has_it(asynchronous):
    running, completed = [], []

    if asynchronous:

        @flow(on_running=[seen_by(running)], on_completion=[seen_by(completed)])
        async def observed():
            await asyncio.sleep(0.1)
            return get_run_context().flow_run.id

        run_id = asyncio.run(observed())
    else:

        @flow(on_running=[seen_by(running)], on_completion=[seen_by(completed)])
        def observed():
            time.sleep(0.1)
            return get_run_context().flow_run.id

        run_id = observed()
    ((run, state, context),) = running
    assert run.id == run_id and run.run_count == 1 and run.start_time is not None
    assert run.end_time is None and state.is_running()
    assert isinstance(context, FlowRunContext) and context.flow_run.id == run_id
    ((run, state, context),) = completed
    assert run.id == run_id and state.is_completed() and run.state.is_completed()
    assert run.run_count == 1
    assert run.start_time is not None and run.end_time is not None
    assert run.total_run_time.total_seconds() >= 0.1
    assert isinstance(context, FlowRunContext) and context.flow_run is run
    assert isinstance(context.start_time, datetime)


@pytest.mark.parametrize("how", ["inline", "submitted", "async"])
def test_task_hooks_see_the_attempts_and_times(how):
    failures, completions = [], []
    attempts = []

    def body():
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("first attempt")
        return get_run_context().task_run.id

    if how == "async":

        @task(retries=1, on_completion=[seen_by(completions)])
        async def flaky_async():
            return body()

        @flow
        async def caller_async():
            return await flaky_async()

        run_id = asyncio.run(caller_async())
    else:

        @task(retries=1, on_completion=[seen_by(completions)])
        def flaky():
            return body()

        @flow
        def caller():
            return flaky() if how == "inline" else flaky.submit().result()

        run_id = caller()
    ((run, state, context),) = completions
    assert run.id == run_id and run.run_count == 2 and state.is_completed()
    assert run.start_time is not None and run.end_time is not None
    assert isinstance(context, TaskRunContext) and context.task_run.id == run_id
    assert not failures


def test_the_run_context_has_its_start_time():
    @task
    def started() -> datetime:
        return get_run_context().start_time

    @flow
    def both() -> tuple[datetime, datetime]:
        return get_run_context().start_time, started()

    flow_start, task_start = both()
    assert flow_start <= task_start


@pytest.mark.parametrize("verdict", [True, False])
def test_an_async_retry_condition_is_awaited(verdict):
    attempts = []

    async def decide(task, task_run, state) -> bool:
        await asyncio.sleep(0)
        return verdict

    @task(retries=1, retry_condition_fn=decide)
    def fails():
        attempts.append(1)
        raise ValueError("no")

    @flow
    def caller():
        return fails(return_state=True)

    caller(return_state=True)
    assert len(attempts) == (2 if verdict else 1)


def test_the_retry_condition_is_not_asked_after_the_last_attempt():
    asked = []

    def always(task, task_run, state) -> bool:
        asked.append(task_run.run_count)
        return True

    @task(retries=2, retry_condition_fn=always)
    def fails():
        raise ValueError("no")

    @flow
    def caller():
        return fails(return_state=True)

    caller(return_state=True)
    assert asked == [1, 2]
