"""Upstreams as the reference has them: subflows take `wait_for=`; a task or subflow whose
upstream (a `wait_for` or a future argument) did not complete does not run and stays Pending,
named NotReady."""

from __future__ import annotations

import asyncio
import time

import pytest

from stateward import flow, task
from stateward.exceptions import UpstreamTaskError

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


@task
def breaks():
    raise RuntimeError("upstream broke")


@task
async def breaks_async():
    raise RuntimeError("upstream broke")


@pytest.mark.parametrize("how", ["inline", "submitted"])
@pytest.mark.parametrize("upstream", ["wait_for", "argument"])
def test_a_task_whose_upstream_failed_is_pending_not_ready(client, how, upstream):
    ran = []

    @task(name=f"up-down-{how}-{upstream}")
    def downstream(x=None):
        ran.append(x)

    @flow
    def chain():
        failed = breaks.submit()
        kwargs = {"wait_for": [failed]} if upstream == "wait_for" else {"x": failed}
        if how == "inline":
            return downstream(return_state=True, **kwargs)
        future = downstream.submit(**kwargs)
        future.wait()
        return future.state

    chain(return_state=True)
    assert not ran
    run = next(client.list_task_runs(task_keys=[f"up-down-{how}-{upstream}"], limit=1))
    assert (run.state.type.name, run.state.name) == ("PENDING", "NotReady")
    assert names(client, run.id) == ["Pending", "NotReady"]


def test_calling_or_resolving_a_not_ready_task_raises_upstream_task_error():
    @task
    def downstream(x):
        return x

    @flow
    def inline():
        return downstream(breaks.submit())

    @flow
    def submitted():
        return downstream.submit(breaks.submit()).result()

    with pytest.raises(UpstreamTaskError, match="did not complete"):
        inline()
    with pytest.raises(UpstreamTaskError, match="did not complete"):
        submitted()


def test_the_error_names_the_upstream_run_by_its_name_and_id(client):
    @task
    def downstream(x):
        return x

    @flow(name="sdk-upstream-named")
    def chain():
        failed = breaks.submit()
        failed.wait()
        return failed.task_run_id, downstream(failed, return_state=True)

    upstream_id, state = chain()
    assert state.name == "NotReady"
    assert state.message == (
        f"upstream task run 'breaks-0' ({upstream_id}) did not complete (Failed)"
    )


def test_an_async_task_whose_upstream_failed_is_not_ready():
    ran = []

    @task
    async def downstream_async(x):
        ran.append(x)

    @flow
    async def chain_async():
        failed = breaks_async.submit()
        return await downstream_async(failed, return_state=True)

    final = asyncio.run(chain_async(return_state=True))
    state = final.result(raise_on_failure=False)
    assert not ran and state.is_pending() and state.name == "NotReady"
    assert final.is_failed() and final.message == "1/1 states are not final."


def test_a_subflow_waits_for_its_wait_for(client):
    order = []

    @task
    def first():
        time.sleep(0.2)
        order.append("task")

    @flow(name="up-sub-waits")
    def child():
        order.append("subflow")
        return "child"

    @flow
    def parent():
        future = first.submit()
        return child(wait_for=[future])

    assert parent() == "child"
    assert order == ["task", "subflow"]


def test_a_subflow_whose_upstream_failed_is_pending_not_ready(client):
    ran = []

    @flow(name="up-sub-not-ready")
    def child(x=None):
        ran.append(x)

    @flow
    def by_wait_for():
        return child(wait_for=[breaks.submit()], return_state=True)

    @flow
    def by_argument():
        return child(breaks.submit(), return_state=True)

    for parent in (by_wait_for, by_argument):
        parent(return_state=True)
        run = flow_run_of(client, "up-sub-not-ready")
        assert names(client, run.id) == ["Pending", "NotReady"]
    assert not ran


def test_an_async_subflow_takes_wait_for(client):
    order = []

    @task
    async def first_async():
        await asyncio.sleep(0.2)
        order.append("task")

    @flow
    async def child_async():
        order.append("subflow")
        return 1

    @flow
    async def parent_async():
        future = first_async.submit()
        return await child_async(wait_for=[future])

    assert asyncio.run(parent_async()) == 1
    assert order == ["task", "subflow"]
