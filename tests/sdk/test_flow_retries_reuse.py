"""Flow retries reuse finished work, as the reference does: task runs and subflows an earlier
attempt of the same flow run completed are not run again; their result is reused (the same
task run), and a subflow keeps one tracking task run across the parent's attempts."""

from __future__ import annotations

import asyncio

import pytest

from stateward import flow, task

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str):
    return list(reversed(list(client.list_task_runs(flow_run_ids=[flow_run_id]))))


def test_a_retried_flow_does_not_rerun_completed_task_runs(client):
    calls = {"step": 0, "flaky": 0}

    @task
    def step(x: int) -> int:
        calls["step"] += 1
        return x * 10

    @task
    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ValueError("first attempt")
        return "ok"

    @flow(name="reuse-tasks", retries=1)
    def pipeline() -> tuple:
        first = step(1)
        second = step.submit(2).result()
        return first, second, flaky()

    assert pipeline() == (10, 20, "ok")
    assert calls == {"step": 2, "flaky": 2}  # each step once, flaky twice
    run = flow_run_of(client, "reuse-tasks")
    assert run.run_count == 2
    keys = [t.task_key for t in task_runs_of(client, run.id)]
    assert keys.count("step") == 2 and keys.count("flaky") == 2


def test_a_retried_async_flow_does_not_rerun_completed_task_runs():
    calls = []

    @task
    async def once(x: int) -> int:
        calls.append(x)
        return x

    attempts = []

    @flow(retries=1)
    async def pipeline_async() -> int:
        value = await once(7)
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("retry me")
        return value

    assert asyncio.run(pipeline_async()) == 7
    assert calls == [7] and len(attempts) == 2


def test_a_retried_flow_reuses_a_completed_subflow_and_keeps_its_tracking_task_run(client):
    runs = {"done": 0, "flaky": 0}

    @flow(name="reuse-child-done")
    def child_done() -> str:
        runs["done"] += 1
        return "done"

    @flow(name="reuse-child-flaky")
    def child_flaky() -> str:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise ValueError("first attempt")
        return "flaky ok"

    @flow(name="reuse-parent", retries=1)
    def parent() -> tuple:
        return child_done(), child_flaky()

    assert parent() == ("done", "flaky ok")
    assert runs == {"done": 1, "flaky": 2}
    run = flow_run_of(client, "reuse-parent")
    tracking = [t for t in task_runs_of(client, run.id) if t.task_key == "reuse-child-flaky"]
    assert len(tracking) == 1 and tracking[0].state.is_completed()
    child_runs = list(client.list_flow_runs(flow_names=["reuse-child-flaky"], limit=2))
    assert {r.parent_task_run_id for r in child_runs} == {tracking[0].id}
