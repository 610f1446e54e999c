"""The reference's two ways to hold its client, ported with the import only:
`async with get_client() as client:` (an async client, awaited) and
`with get_client(sync_client=True) as client:` (a blocking one), each in a fresh process on the
embedded default and against a real server. Neither block's end closes the process's own
client, and a method of the reference's client says which to call instead."""

from __future__ import annotations

import json

import pytest

from tests.sdk.conftest import python
from tests.support import ServerProcess

PORTED = """
import asyncio, json
from stateward import flow, get_client

@flow(flow_run_name="ported-run")
def ported():
    return 42

async def main():
    run_id = ported(return_state=True).state_details.flow_run_id
    async with get_client() as client:
        run = await client.get_flow_run(run_id)
        states = [state.name for state in await client.list_states(run_id)]
        listed = [r.id async for r in client.list_flow_runs(ids=[run_id])]
        watched = []
        async for transition in client.watch(flow_run_ids=[run_id], after_sequence=0):
            watched.append(transition.to_state.name)
            if transition.to_state.name == "Completed":
                break
        async with get_client() as inner:  # blocks nest: each closes its own
            inner_name = (await inner.get_flow_run(run_id)).name
        try:
            await client.read_flow_run(run_id)
            hint = None
        except AttributeError as error:
            hint = str(error)
        kind = type(client).__name__
    with get_client(sync_client=True) as client:
        sync_kind = type(client).__name__
        sync_state = client.get_flow_run(run_id).state.name
    after = ported()  # the process's client still serves its flows after both blocks
    print(json.dumps({
        "kind": kind, "name": run.name, "states": states, "listed": listed == [run_id],
        "watched": watched, "inner": inner_name, "hint": hint, "sync_kind": sync_kind,
        "sync_state": sync_state, "after": after,
    }))

asyncio.run(main())
"""


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_the_reference_s_get_client_idioms_work_after_changing_the_import(
    where: str, sdk_server: ServerProcess, tmp_path
):
    env = {"STATEWARD_HOME": str(tmp_path)}
    env["STATEWARD_API_URL"] = sdk_server.target if where == "server" else ""
    done = python(PORTED, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {
        "kind": "AsyncClient",
        "name": "ported-run",
        "states": ["Pending", "Running", "Completed"],
        "listed": True,
        "watched": ["Pending", "Running", "Completed"],
        "inner": "ported-run",
        "hint": (
            "Stateward's AsyncClient has no read_flow_run(): call get_flow_run(id) (its "
            "methods are named for the RPCs; README: 'Differences from the reference')"
        ),
        "sync_kind": "Client",
        "sync_state": "Completed",
        "after": 42,
    }


def test_a_method_the_client_does_not_have_says_where_its_methods_are(sdk_server):
    from stateward import get_client

    client = get_client(sync_client=True)
    with pytest.raises(AttributeError) as raised:
        client.read_deployment("name/of-it")
    assert str(raised.value) == (
        "Stateward's Client has no read_deployment(): its methods are named for the RPCs "
        "(get_flow_run, list_flow_runs, set_state, list_states, watch...) and cover runs, "
        "states, logs and tag concurrency limits only (README: 'Differences from the "
        "reference')"
    )
    with pytest.raises(AttributeError, match="'Client' object has no attribute '_private'"):
        client._private  # noqa: B018
