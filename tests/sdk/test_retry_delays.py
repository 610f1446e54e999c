"""Retries as the reference makes them: without a delay a task run goes straight from Running to
Retrying (no AwaitingRetry written); with a delay it waits as AwaitingRetry."""

from __future__ import annotations

import asyncio

import pytest

from stateward import flow, task

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str):
    return list(reversed(list(client.list_task_runs(flow_run_ids=[flow_run_id]))))


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


# --- 14. retries without a delay ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["inline", "submitted", "async"])
def test_task_retries_without_delay_go_straight_to_retrying(client, how):
    attempts = []

    def body():
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return len(attempts)

    if how == "async":

        @task(retries=2)
        async def flaky():
            return body()

        @flow(name=f"rt-nodelay-{how}")
        async def caller():
            return await flaky()

        assert asyncio.run(caller()) == 3
    else:

        @task(retries=2)
        def flaky():
            return body()

        @flow(name=f"rt-nodelay-{how}")
        def caller():
            return flaky() if how == "inline" else flaky.submit().result()

        assert caller() == 3
    (task_run,) = task_runs_of(client, flow_run_of(client, f"rt-nodelay-{how}").id)
    assert names(client, task_run.id) == ["Pending", "Running", "Retrying", "Retrying", "Completed"]
    assert client.get_task_run(task_run.id).run_count == 3


def test_task_retries_with_a_delay_keep_awaiting_retry(client):
    attempts = []

    @task(retries=1, retry_delay_seconds=0.1)
    def flaky():
        attempts.append(1)
        if len(attempts) < 2:
            raise ValueError("not yet")
        return "ok"

    @flow(name="rt-delay")
    def caller():
        return flaky()

    assert caller() == "ok"
    (task_run,) = task_runs_of(client, flow_run_of(client, "rt-delay").id)
    assert names(client, task_run.id) == [
        "Pending",
        "Running",
        "AwaitingRetry",
        "Retrying",
        "Completed",
    ]


def test_a_task_out_of_retries_without_delay_ends_failed(client):
    @task(retries=1)
    def always():
        raise ValueError("never")

    @flow(name="rt-exhausted")
    def caller():
        return always(return_state=True)

    caller(return_state=True)
    (task_run,) = task_runs_of(client, flow_run_of(client, "rt-exhausted").id)
    assert names(client, task_run.id) == ["Pending", "Running", "Retrying", "Failed"]
