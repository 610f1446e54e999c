"""pause_flow_run and resume_flow_run end to end against a real server (and the embedded
default): the flow's code blocks until another process, the CLI or a thread resumes it; a
pause nobody resumes fails the run ("never resumed") and raises; a pause with input returns
the validated value; a pause key pauses once; task runs are held NotReady meanwhile; bad
resumes are refused and change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid

import pytest
from pydantic import BaseModel

from stateward import flow, pause_flow_run, resume_flow_run, task
from stateward.exceptions import (
    FailedPrecondition,
    FlowPauseTimeout,
    InvalidArgument,
    NotFound,
)
from stateward.flow_runs import apause_flow_run, aresume_flow_run
from stateward.runtime import flow_run
from stateward.states import State, StateDetails, StateType
from tests.sdk.conftest import python, spawn
from tests.support import ROOT, wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")


class Approval(BaseModel):
    approver: str
    level: int


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


def paused_run(client, flow_name: str):
    """The newest run of the flow, once it is PAUSED."""
    found = []

    def check() -> bool:
        runs = list(client.list_flow_runs(flow_names=[flow_name], limit=1))
        if runs and runs[0].state and runs[0].state.type is StateType.PAUSED:
            found.append(runs[0])
            return True
        return False

    wait_until(check, timeout=30, what=f"a paused run of {flow_name}")
    return found[-1]


def resume_when_paused(client, flow_name: str, **options) -> threading.Thread:
    """Resume the flow's run from a thread of this process once it pauses."""

    def resume() -> None:
        resume_flow_run(paused_run(client, flow_name).id, **options)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stateward", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def flat(text: str) -> str:
    """Text with the line breaks the terminal's width put in undone."""
    return " ".join(text.split())


PAUSING_FLOW = """
    import json, sys
    from stateward import flow, pause_flow_run, task

    @task
    def before():
        return "before"

    @flow(name=sys.argv[1] if len(sys.argv) > 1 else "{name}")
    def waits():
        first = before()
        pause_flow_run(timeout=120, poll_interval=30)
        return [first, "after"]

    print(json.dumps(waits()), flush=True)
    """


# --- resumed from elsewhere ---------------------------------------------------------------------


def test_a_pause_resumed_from_a_second_process(client, sdk_server):
    name = f"sdk-pause-second-process-{uuid.uuid4().hex[:6]}"
    owner = spawn(PAUSING_FLOW.replace("{name}", name))
    try:
        run = paused_run(client, name)
        assert run.state.details.pause_key == "pause-1" and run.state.details.pause_timeout
        # How to resume it is in the run's logs, where one looks for what a run waits for.
        hint = f"resume it with `stateward flow-run resume {run.id}`"
        wait_until(
            lambda: any(hint in entry.message for entry in client.list_logs(run.id)),
            timeout=30,
            what="the resume hint in the run's logs",
        )
        resumer = python(
            f"from stateward import resume_flow_run; print(resume_flow_run({run.id!r}).name)"
        )
        assert resumer.returncode == 0, resumer.stderr
        assert resumer.stdout.strip() == "Running"
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == ["before", "after"]
    assert names(client, run.id) == ["Pending", "Running", "Paused", "Running", "Completed"]
    assert client.get_flow_run(run.id).run_count == 1  # a resume is not a new attempt


def test_a_pause_resumed_from_the_cli_on_the_embedded_default(tmp_path):
    env = {"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)}
    program = """
        import sys
        from stateward import flow, pause_flow_run
        from stateward.runtime import flow_run

        @flow(name="embedded-pause")
        def waits():
            print(flow_run.id, flush=True)
            pause_flow_run(timeout=120, poll_interval=30)
            return "resumed"

        print(waits(), flush=True)
        """
    owner = spawn(program, env=env)
    try:
        run_id = owner.stdout.readline().strip()
        answers: list[subprocess.CompletedProcess[str]] = []

        def resumed() -> bool:  # the pause may not be written yet: "not paused", try again
            answers.append(cli("flow-run", "resume", run_id, env=env))
            return answers[-1].returncode == 0

        wait_until(resumed, timeout=60, what="the CLI to resume the run")
        assert f"({run_id}) is Running" in answers[-1].stdout
        assert all("is not paused" in flat(a.stderr) for a in answers[:-1])
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0, err
    assert out.strip().splitlines()[-1] == "resumed"
    again = cli("flow-run", "resume", run_id, env=env)
    assert again.returncode == 1 and "is not paused (it is Completed)" in flat(again.stderr)


def test_an_async_flow_awaits_its_pause(client):
    name = "sdk-pause-async"

    @flow(name=name)
    async def waits() -> str:
        await pause_flow_run(timeout=60, poll_interval=30)
        return "resumed"

    resumer = resume_when_paused(client, name)
    assert asyncio.run(waits()) == "resumed"
    resumer.join(10)
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    assert names(client, run.id) == ["Pending", "Running", "Paused", "Running", "Completed"]


def test_a_sync_flow_called_from_async_code_blocks_in_its_pause(client):
    # A sync flow's code runs in the caller's thread, where the caller's event loop runs: its
    # pause_flow_run() returned a coroutine nobody awaited, and the flow went on unpaused.
    name = "sdk-pause-sync-in-async"

    @flow(name=name)
    def waits() -> str:
        pause_flow_run(timeout=60, poll_interval=30)
        return "resumed"

    async def caller() -> str:
        return waits()

    resumer = resume_when_paused(client, name)
    assert asyncio.run(caller()) == "resumed"
    resumer.join(10)
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    assert names(client, run.id) == ["Pending", "Running", "Paused", "Running", "Completed"]


def test_a_sync_flow_called_from_async_code_resumes_in_place(client):
    # resume_flow_run in such a flow returned a coroutine nobody awaited: nothing resumed.
    name = "sdk-pause-resumed-by-sync-in-async"

    @flow(name=name)
    def waits() -> str:
        pause_flow_run(timeout=60, poll_interval=30)
        return "resumed"

    results: list[str] = []
    runner = threading.Thread(target=lambda: results.append(waits()), daemon=True)
    runner.start()
    target = paused_run(client, name)

    @flow
    def resumes() -> str:
        return type(resume_flow_run(target.id)).__name__

    async def caller() -> str:
        return resumes()

    assert asyncio.run(caller()) == "State"
    runner.join(30)
    assert results == ["resumed"]


def test_the_async_forms_under_the_references_names(client):
    name = "sdk-pause-async-names"

    def resume_with_aresume() -> None:
        run = paused_run(client, name)
        state = asyncio.run(aresume_flow_run(run.id, {"approver": "ann", "level": 1}))
        assert state.type is StateType.RUNNING

    @flow(name=name)
    async def waits() -> str:
        answer = await apause_flow_run(wait_for_input=Approval, timeout=60, poll_interval=30)
        return answer.approver

    resumer = threading.Thread(target=resume_with_aresume, daemon=True)
    resumer.start()
    assert asyncio.run(waits()) == "ann"
    resumer.join(10)


# --- timeouts and keys ---------------------------------------------------------------------------


def test_a_pause_nobody_resumes_fails_the_run_and_raises(client):
    name = "sdk-pause-timeout"
    caught: list[BaseException] = []

    @flow(name=name)
    def waits() -> None:
        try:
            pause_flow_run(timeout=1, poll_interval=30)
        except FlowPauseTimeout as error:
            caught.append(error)
            raise

    state = waits(return_state=True)
    assert state.is_failed() and "never resumed" in state.message
    assert caught and "never resumed" in str(caught[0])
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    history = client.list_states(run.id)
    assert [s.name for s in history][:3] == ["Pending", "Running", "Paused"]
    assert history[-1].type is StateType.FAILED and "never resumed" in history[-1].message
    with pytest.raises(FailedPrecondition, match="is not paused"):
        resume_flow_run(run.id)


def test_a_pause_key_pauses_once(client):
    name = "sdk-pause-key"
    passes: list[str] = []

    @flow(name=name)
    def twice() -> None:
        for attempt in ("first", "second"):
            pause_flow_run(key="approval", timeout=60, poll_interval=30)
            passes.append(attempt)

    resumer = resume_when_paused(client, name)
    twice()
    resumer.join(10)
    assert passes == ["first", "second"]
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    assert names(client, run.id).count("Paused") == 1


# --- input ---------------------------------------------------------------------------------------


def test_a_pause_with_input_returns_the_validated_value(client, sdk_server):
    name = f"sdk-pause-input-{uuid.uuid4().hex[:6]}"
    program = f"""
        import json
        from pydantic import BaseModel
        from stateward import flow, pause_flow_run

        class Approval(BaseModel):
            approver: str
            level: int

        @flow(name="{name}")
        def asks():
            answer = pause_flow_run(wait_for_input=Approval, timeout=120, poll_interval=30)
            return [type(answer).__name__, answer.approver, answer.level]

        print(json.dumps(asks()), flush=True)
        """
    owner = spawn(program)
    try:
        run = paused_run(client, name)
        schema = json.loads(run.state.details.run_input_schema)
        assert set(schema["properties"]) == {"approver", "level"}
        with pytest.raises(InvalidArgument, match="waits for input"):
            client.resume_flow_run(run.id)
        with pytest.raises(InvalidArgument, match="level"):
            client.resume_flow_run(run.id, json.dumps({"approver": "ann", "level": "high"}))
        with pytest.raises(InvalidArgument, match="not valid JSON"):
            client.resume_flow_run(run.id, "{approver")
        assert client.get_flow_run(run.id).state.id == run.state.id  # nothing was written
        state = resume_flow_run(run.id, Approval(approver="ann", level=2))
        assert json.loads(state.details.run_input) == {"approver": "ann", "level": 2}
        out, err = owner.communicate(timeout=60)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert owner.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == ["Approval", "ann", 2]


def test_input_of_a_builtin_type_and_a_plain_dict(client):
    name = "sdk-pause-input-int"

    @flow(name=name)
    def asks() -> int:
        return pause_flow_run(wait_for_input=int, timeout=60, poll_interval=30) + 1

    resumer = resume_when_paused(client, name, run_input=41)
    assert asks() == 42
    resumer.join(10)


class Step(BaseModel):
    """A model whose schema is a $ref to its own $defs entry (it refers to itself)."""

    name: str
    value: Step | None = None


def test_a_recursive_models_input_is_never_unwrapped(client):
    """A model that refers to itself has the schema {"$ref": "#/$defs/Step", "$defs": ...},
    without top-level properties: it is still a model's, so {"value": ...} is its field
    `value`, never the reference's wrapped input (an input missing `name` was taken as its
    `value` alone)."""
    name = "sdk-pause-input-recursive"

    @flow(name=name)
    def asks() -> str:
        step = pause_flow_run(wait_for_input=Step, timeout=60, poll_interval=30)
        return step.name

    seen: dict[str, object] = {}

    def resume() -> None:
        run = paused_run(client, name)
        with pytest.raises(InvalidArgument) as refused:
            client.resume_flow_run(run.id, json.dumps({"value": {"name": "inner"}}))
        seen["refused"] = str(refused.value)
        resume_flow_run(run.id, Step(name="outer", value=Step(name="inner")))

    resumer = threading.Thread(target=resume, daemon=True)
    resumer.start()
    assert asks() == "outer"
    resumer.join(10)
    assert "'name' is a required property" in str(seen["refused"]), seen


def test_a_builtin_types_input_is_also_taken_in_the_references_wrapped_form(client):
    """The reference resumes `wait_for_input=int` with {"value": 21}: taken as 21 (the value
    itself works too); a wrong wrapped value is refused naming `value`, and a model's input is
    never unwrapped (the reference does not wrap a model's)."""
    name = "sdk-pause-input-wrapped"

    class Approval(BaseModel):
        approver: str

    @flow(name=name)
    def asks() -> list[object]:
        number = pause_flow_run(wait_for_input=int, timeout=60, poll_interval=30)
        approval = pause_flow_run(wait_for_input=Approval, timeout=60, poll_interval=30)
        return [number + 1, approval.approver]

    seen: dict[str, object] = {}

    def resume() -> None:
        run = paused_run(client, name)
        with pytest.raises(InvalidArgument) as refused:
            client.resume_flow_run(run.id, json.dumps({"value": "21"}))
        seen["refused"] = str(refused.value)
        seen["input"] = resume_flow_run(run.id, {"value": 21}).details.run_input
        wait_until(
            lambda: client.get_flow_run(run.id).state.details.pause_key == "pause-2",
            timeout=30,
            what="the second pause",
        )
        with pytest.raises(InvalidArgument) as model:
            client.resume_flow_run(run.id, json.dumps({"value": {"approver": "ann"}}))
        seen["model"] = str(model.value)
        resume_flow_run(run.id, Approval(approver="ann"))

    resumer = threading.Thread(target=resume, daemon=True)
    resumer.start()
    assert asks() == [22, "ann"]
    resumer.join(10)
    assert seen["input"] == "21"
    assert "at value: '21' is not of type 'integer'" in str(seen["refused"]), seen
    assert "'approver' is a required property" in str(seen["model"]), seen


def test_a_pause_without_input_refuses_an_input(client):
    name = "sdk-pause-no-input"
    refused: list[BaseException] = []

    def resume() -> None:
        run = paused_run(client, name)
        try:
            resume_flow_run(run.id, {"unexpected": True})
        except InvalidArgument as error:
            refused.append(error)
        resume_flow_run(run.id)

    @flow(name=name)
    def waits() -> None:
        pause_flow_run(timeout=60, poll_interval=30)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    waits()
    thread.join(10)
    assert refused and "waits for no input" in str(refused[0])


# --- tasks of a paused flow ----------------------------------------------------------------------


def test_task_runs_of_a_paused_flow_are_held_not_ready_and_go_on_after_the_resume(client):
    name = "sdk-pause-not-ready"
    gate = threading.Event()

    @task(task_run_name="gate")
    def wait_for_gate() -> int:
        assert gate.wait(30)
        return 1

    @task(task_run_name="held")
    def held(x: int) -> int:
        return x + 1

    @flow(name=name)
    def pausing() -> int:
        upstream = wait_for_gate.submit()
        downstream = held.submit(upstream)
        pause_flow_run(timeout=60, poll_interval=30)
        return downstream.result()

    def drive() -> None:
        run = paused_run(client, name)
        gate.set()  # the upstream completes now, while the flow is paused

        def held_not_ready() -> bool:
            runs = {r.name: r for r in client.list_task_runs(flow_run_ids=[run.id])}
            state = runs.get("held") and runs["held"].state
            return bool(state) and state.name == "NotReady"

        wait_until(held_not_ready, timeout=30, what="the downstream task to be held NotReady")
        resume_flow_run(run.id)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    assert pausing() == 2
    driver.join(10)
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    (held_run,) = [r for r in client.list_task_runs(flow_run_ids=[run.id]) if r.name == "held"]
    history = names(client, held_run.id)
    assert "NotReady" in history and history[-1] == "Completed"
    assert history.index("NotReady") < history.index("Running")


# --- refusals ------------------------------------------------------------------------------------


def test_pause_flow_run_outside_a_flow_or_in_a_task_raises():
    with pytest.raises(RuntimeError, match="inside a flow run"):
        pause_flow_run()

    @task
    def pauses() -> None:
        pause_flow_run()

    @flow(name="sdk-pause-in-task")
    def calls() -> None:
        pauses()

    with pytest.raises(RuntimeError, match="not in a task"):
        calls()


def test_resume_refusals(client):
    with pytest.raises(NotFound):
        resume_flow_run(str(uuid.uuid4()))

    @flow(name="sdk-pause-done")
    def done() -> str | None:
        return flow_run.id

    run_id = done()
    assert run_id is not None
    with pytest.raises(FailedPrecondition, match="is not paused"):
        client.resume_flow_run(run_id)
    with pytest.raises(TypeError, match="JSON can hold"):
        resume_flow_run(run_id, object())


def test_only_resume_flow_run_writes_an_input_and_a_schema_must_be_valid(client):
    run = client.create_flow_run("sdk-pause-raw", state=State(StateType.RUNNING))
    sneaky = State(StateType.RUNNING, details=StateDetails(run_input='{"a": 1}'))
    with pytest.raises(InvalidArgument, match="written by ResumeFlowRun only"):
        client.set_state(run.id, sneaky)
    bad = State(StateType.PAUSED, details=StateDetails(run_input_schema='{"type": 12}'))
    with pytest.raises(InvalidArgument, match="not a valid JSON Schema"):
        client.set_state(run.id, bad)
    not_object = State(StateType.PAUSED, details=StateDetails(run_input_schema="[1]"))
    with pytest.raises(InvalidArgument, match="JSON Schema object"):
        client.set_state(run.id, not_object)
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING


@pytest.mark.parametrize(
    "ref",
    ["#/$defs/nowhere", "#/definitions/nope", "http://127.0.0.1:1/schema.json", "other.json"],
)
def test_a_schema_whose_ref_leads_nowhere_is_refused_at_the_pause(client, ref):
    """Such a pause could never be resumed: ResumeFlowRun answered INTERNAL on every input."""
    run = client.create_flow_run("sdk-pause-raw", state=State(StateType.RUNNING))
    schema = json.dumps({"type": "object", "properties": {"a": {"$ref": ref}}})
    pause = State(StateType.PAUSED, details=StateDetails(run_input_schema=schema))
    with pytest.raises(InvalidArgument, match="leads nowhere"):
        client.set_state(run.id, pause)
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING
    # Local references that resolve are fine, as pydantic writes them.
    good = {"$defs": {"A": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/A"}}}
    paused = State(StateType.PAUSED, details=StateDetails(run_input_schema=json.dumps(good)))
    assert client.set_state(run.id, paused).state.type is StateType.PAUSED
    with pytest.raises(InvalidArgument, match="schema"):
        resume_flow_run(run.id, {"a": 5})
    resume_flow_run(run.id, {"a": "ok"})
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING


def test_a_backtracking_pattern_cannot_stall_the_server(client):
    """A pause's schema patterns run on a linear-time engine: `^(a+)+$` against thousands of
    characters and a `!` is refused at once (Python's `re` would take longer than the age of
    the universe, holding the GIL), and the server answers other calls meanwhile."""
    run = client.create_flow_run("sdk-pause-raw", state=State(StateType.RUNNING))
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}}
    paused = State(StateType.PAUSED, details=StateDetails(run_input_schema=json.dumps(schema)))
    assert client.set_state(run.id, paused).state.type is StateType.PAUSED
    answers: list[BaseException | None] = []

    def resume() -> None:
        try:
            resume_flow_run(run.id, {"a": "a" * 5_000 + "!"})
        except BaseException as error:  # handed to the test thread
            answers.append(error)
        else:
            answers.append(None)

    worker = threading.Thread(target=resume, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert answers, "the resume did not answer within 10 s"
    assert isinstance(answers[0], InvalidArgument)
    assert "does not match" in str(answers[0])
    assert client.get_flow_run(run.id).state.type is StateType.PAUSED
    resume_flow_run(run.id, {"a": "aaaa"})
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"properties": {"a": {"type": "string", "pattern": "(?=x)x"}}}, "look-around"),
        ({"properties": {"a": {"type": "string", "pattern": r"(a)\1"}}}, "back"),
        ({"patternProperties": {"(?<=a)b": {}}}, "look-around"),
        (
            {"patternProperties": {"^x": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties",
        ),
    ],
)
def test_a_pattern_that_could_backtrack_is_refused_at_the_pause(client, schema, reason):
    run = client.create_flow_run("sdk-pause-raw", state=State(StateType.RUNNING))
    pause = State(StateType.PAUSED, details=StateDetails(run_input_schema=json.dumps(schema)))
    with pytest.raises(InvalidArgument, match=reason):
        client.set_state(run.id, pause)
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING


def test_pattern_properties_and_additional_properties_on_the_linear_engine(client):
    run = client.create_flow_run("sdk-pause-raw", state=State(StateType.RUNNING))
    schema = {
        "type": "object",
        "patternProperties": {"^n_": {"type": "integer"}},
        "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}},
        "additionalProperties": False,
    }
    paused = State(StateType.PAUSED, details=StateDetails(run_input_schema=json.dumps(schema)))
    assert client.set_state(run.id, paused).state.type is StateType.PAUSED
    with pytest.raises(InvalidArgument, match="at n_1: 'one' is not of type"):
        resume_flow_run(run.id, {"name": "ok", "n_1": "one"})
    with pytest.raises(InvalidArgument, match="unexpected"):
        resume_flow_run(run.id, {"name": "ok", "other": 1})
    with pytest.raises(InvalidArgument, match="does not match"):
        resume_flow_run(run.id, {"name": "Not Lower"})
    assert client.get_flow_run(run.id).state.type is StateType.PAUSED
    resume_flow_run(run.id, {"name": "ok", "n_1": 1, "n_2": 2})
    assert client.get_flow_run(run.id).state.type is StateType.RUNNING
