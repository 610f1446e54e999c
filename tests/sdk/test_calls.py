"""Calls as the reference takes them: flows and tasks on methods, classmethods, staticmethods
and callable objects; flow parameters validated and coerced from their annotations; an async
flow returning an un-awaited async task call."""

from __future__ import annotations

import asyncio

import pytest

from stateward import flow, task

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


# --- 15. an async flow returning an un-awaited async task call -----------------------------------


@task
async def triple(x: int) -> int:
    return 3 * x


def test_an_async_flow_returning_an_unawaited_task_call_returns_its_value(client):
    @flow(name="call-unawaited")
    async def hands_over() -> int:
        return triple(4)

    assert asyncio.run(hands_over()) == 12
    final = asyncio.run(hands_over(return_state=True))
    assert final.is_completed() and final.result() == 12
    run = flow_run_of(client, "call-unawaited")
    (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
    assert task_run.state.is_completed() and task_run.state.result() == 12
