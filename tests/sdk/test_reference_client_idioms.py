"""The reference's two ways to hold its client, ported with the import only:
`async with get_client() as client:` (an async client, awaited) and
`with get_client(sync_client=True) as client:` (a blocking one), each in a fresh process on the
embedded default and against a real server. Neither block's end closes the process's own
client, and a method of the reference's client says which to call instead."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from stateward.runs import SetStateStatus
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
        try:
            await client.read_flow_runs()
            listing_hint = None
        except AttributeError as error:
            listing_hint = str(error)
        kind = type(client).__name__
    with get_client(sync_client=True) as client:
        sync_kind = type(client).__name__
        sync_state = client.get_flow_run(run_id).state.name
    after = ported()  # the process's client still serves its flows after both blocks
    print(json.dumps({
        "kind": kind, "name": run.name, "states": states, "listed": listed == [run_id],
        "watched": watched, "inner": inner_name, "hint": hint, "listing_hint": listing_hint,
        "sync_kind": sync_kind,
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
            "Stateward's AsyncClient has no read_flow_run(): await client.get_flow_run(id) "
            "(its methods are named for the RPCs; README: 'Differences from the reference')"
        ),
        "listing_hint": (
            "Stateward's AsyncClient has no read_flow_runs(): iterate `async for run in "
            "client.list_flow_runs(flow_names=, state_types=, tags=, ids=, limit=)` (its "
            "methods are named for the RPCs; README: 'Differences from the reference')"
        ),
        "sync_kind": "Client",
        "sync_state": "Completed",
        "after": 42,
    }


def test_a_method_the_client_does_not_have_says_where_its_methods_are(sdk_server):
    from stateward import get_client

    client = get_client(sync_client=True)
    with pytest.raises(AttributeError, match=r"read_flow_runs\(\): iterate client.list_flow_runs"):
        client.read_flow_runs()
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


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (
            "get_client(sync_client=True).read_flow_runs()",
            "AttributeError: Stateward's Client has no read_flow_runs(): iterate "
            "client.list_flow_runs(flow_names=, state_types=, tags=, ids=, limit=), which reads "
            "page by page (list() it for a list) (its methods are named for the RPCs; README: "
            "'Differences from the reference')",
        ),
        (
            "asyncio.run(read_flow_run('some-id'))",
            "AttributeError: Stateward's AsyncClient has no read_flow_run(): await "
            "client.get_flow_run(id) (its methods are named for the RPCs; README: 'Differences "
            "from the reference')",
        ),
        ("flow(lambda: None).serve()", "AttributeError: Stateward's Flow has no serve()"),
    ],
)
def test_a_reference_method_left_out_says_what_to_call_without_pythons_guess(
    call: str, said: str, tmp_path
):
    """Python adds "Did you mean: 'create_flow_run'?" to an AttributeError of a name spelt
    like another attribute: not to ours, whose message names the method to call. Seen as a
    script's user sees it (uncaught: the interpreter's display), and through the traceback
    module (which guesses too from Python 3.12)."""
    program = f"""
        import asyncio, sys, traceback
        from stateward import flow, get_client
        async def read_flow_run(run_id):
            async with get_client() as client:
                return await client.read_flow_run(run_id)
        try:
            {call}
        except AttributeError as error:
            print("".join(traceback.format_exception_only(error)), end="")
        {call}
        """
    done = python(program, env={"STATEWARD_HOME": str(tmp_path), "STATEWARD_API_URL": ""})
    assert done.returncode == 1
    assert done.stdout.startswith(said) and "Did you mean" not in done.stdout, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(said) and "Did you mean" not in last, done.stderr


def test_a_misspelt_client_method_keeps_pythons_guess(tmp_path):
    """A name that is not the reference's is a typo more often than not: Python's guess stays."""
    program = "from stateward import get_client\nget_client(sync_client=True).list_flow_run()"
    done = python(program, env={"STATEWARD_HOME": str(tmp_path), "STATEWARD_API_URL": ""})
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith("Did you mean: 'list_flow_runs'?"), done.stderr


def test_a_resume_from_the_async_client_takes_the_input_as_a_dict_as_the_reference_s(client):
    """`await client.resume_flow_run(id, run_input={...})`: the reference's client takes the
    input as a dict; so does Stateward's (JSON text too, as before)."""
    from pydantic import BaseModel

    from stateward import flow, get_client, pause_flow_run
    from tests.sdk.test_pause import paused_run

    class Approval(BaseModel):
        approver: str

    @flow(name="sdk-resumed-with-a-dict")
    def approved() -> str:
        return pause_flow_run(wait_for_input=Approval, timeout=60, poll_interval=30).approver

    async def resume(run_id: str) -> SetStateStatus:
        async with get_client() as resuming:
            answer = await resuming.resume_flow_run(run_id, run_input={"approver": "ann"})
        return answer.status

    answers: list[SetStateStatus] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            asyncio.run(resume(paused_run(client, "sdk-resumed-with-a-dict").id))
        ),
        daemon=True,
    )
    thread.start()
    assert approved() == "ann"
    thread.join(30)
    assert answers == [SetStateStatus.ACCEPT]
    with pytest.raises(TypeError, match=r"run_input must be a pydantic model or a value JSON"):
        get_client().resume_flow_run("any", run_input={1, 2})


def test_creating_a_run_from_a_flow_object_says_to_give_its_name(client):
    from stateward import flow, get_client

    @flow
    def listed() -> None:
        pass

    with pytest.raises(TypeError) as raised:
        get_client().create_flow_run(listed)  # the reference's client takes the Flow
    assert str(raised.value) == (
        "flow_name must be a str (the flow's name: my_flow.name), not Flow: Stateward's "
        "client takes names where the reference's takes Flow and Task objects"
    )
