"""tags(), allow_failure, quote and stateward.runtime end to end against a real server: tags
recorded on the runs created in a block (nested, sync and async, submitted tasks too) and used
by tag concurrency limits; a downstream run that starts after a failed upstream; a quoted value
passed untouched; the runtime values inside flow runs and task runs, and outside any run."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

import stateward
from stateward import allow_failure, flow, quote, tags, task
from stateward.futures import StatewardFuture
from stateward.runtime import flow_run, task_run
from tests.sdk.conftest import python

pytestmark = pytest.mark.usefixtures("sdk_server")


def flow_run_named(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str) -> dict[str, object]:
    return {run.name: run for run in client.list_task_runs(flow_run_ids=[flow_run_id])}


# --- tags() --------------------------------------------------------------------------------------


def test_tags_blocks_nest_and_reach_every_run_created_inside(client):
    @task(task_run_name="{label}", tags=["own"])
    def step(label: str) -> str:
        return label

    @flow(name="sdk-tags-nested")
    def tagged() -> None:
        step("plain")
        with tags("outer"):
            step("outer")
            with tags("inner", "outer") as now:
                assert now == {"around-the-flow", "outer", "inner"}
                step("inner")
                step.submit("submitted").wait()
            step("outer-again")

    with tags("around-the-flow"):
        tagged()
    run = flow_run_named(client, "sdk-tags-nested")
    assert set(run.tags) == {"around-the-flow"}
    runs = task_runs_of(client, run.id)
    assert set(runs["plain"].tags) == {"own", "around-the-flow"}
    assert set(runs["outer"].tags) == {"own", "around-the-flow", "outer"}
    assert set(runs["inner"].tags) == {"own", "around-the-flow", "outer", "inner"}
    assert set(runs["submitted"].tags) == {"own", "around-the-flow", "outer", "inner"}
    assert set(runs["outer-again"].tags) == {"own", "around-the-flow", "outer"}
    assert [r.id for r in client.list_flow_runs(tags=["around-the-flow"])] == [run.id]


def test_tags_work_in_async_code(client):
    @task(task_run_name="{label}")
    async def step(label: str) -> str:
        return label

    @flow(name="sdk-tags-async")
    async def tagged() -> None:
        with tags("async-outer"):
            await step("a")
            with tags("async-inner"):
                await asyncio.gather(step("b"), step("c"))

    asyncio.run(tagged())
    runs = task_runs_of(client, flow_run_named(client, "sdk-tags-async").id)
    assert set(runs["a"].tags) == {"async-outer"}
    assert set(runs["b"].tags) == set(runs["c"].tags) == {"async-outer", "async-inner"}


def test_tags_from_a_block_take_tag_concurrency_slots(client):
    client.create_concurrency_limit("sdk-tags-block-limit", 0)  # 0: never runs

    @task
    def blocked() -> None:
        raise AssertionError("a task under a limit of 0 must not run")

    @flow(name="sdk-tags-limit")
    def limited() -> str:
        with tags("sdk-tags-block-limit"):
            state = blocked(return_state=True)
        return state.name

    try:
        with pytest.raises(stateward.OrchestrationAborted, match="sdk-tags-block-limit"):
            limited()
    finally:
        client.delete_concurrency_limit("sdk-tags-block-limit")


def test_a_tag_must_be_a_string():
    with pytest.raises(TypeError, match="a tag is a string"), tags("ok", 3):  # type: ignore[arg-type]
        pass


# --- allow_failure and quote ---------------------------------------------------------------------


def test_allow_failure_lets_the_downstream_run_and_gives_it_the_exception(client):
    @task
    def breaks() -> int:
        raise ValueError("upstream broke")

    @task
    def fine() -> int:
        return 1

    @task(task_run_name="cleanup")
    def cleanup(value: object, others: list) -> str:
        return f"{type(value).__name__}: {value} / {others}"

    @task(task_run_name="strict")
    def strict(value: object) -> object:
        return value

    @task(task_run_name="after")
    def after() -> str:
        return "ran"

    @flow(name="sdk-allow-failure")
    def tolerant() -> tuple[str, str, str]:
        broken = breaks.submit()
        summary = cleanup(allow_failure(broken), [allow_failure(fine.submit())])
        waited = after.submit(wait_for=[allow_failure(broken)]).result()
        stopped = strict(broken, return_state=True)
        return summary, waited, stopped.name

    summary, waited, stopped = tolerant()
    assert (summary, waited, stopped) == ("ValueError: upstream broke / [1]", "ran", "NotReady")
    runs = task_runs_of(client, flow_run_named(client, "sdk-allow-failure").id)
    assert runs["cleanup"].state.is_completed() and runs["after"].state.is_completed()
    assert json.loads(client.list_states(runs["cleanup"].id)[-1].data.json) == summary
    assert runs["strict"].state.name == "NotReady"  # without allow_failure, it does not run


def test_allow_failure_in_a_flow_that_handles_it_completes():
    @task
    def breaks() -> int:
        raise ValueError("no")

    @task
    def report(value: object) -> str:
        return type(value).__name__

    @flow(name="sdk-allow-failure-handled")
    def handled() -> str:
        return report(allow_failure(breaks.submit()))

    assert handled() == "ValueError"


def test_quote_passes_futures_and_states_untouched():
    @task
    def one() -> int:
        return 1

    @task
    def look(value: object, resolved: object) -> tuple[str, int]:
        assert isinstance(value, list) and isinstance(value[0], StatewardFuture)
        return type(value[0]).__name__, resolved  # type: ignore[return-value]

    @flow(name="sdk-quote")
    def quoting() -> tuple[str, int]:
        future = one.submit()
        return look(quote([future]), future)

    assert quoting() == ("StatewardFuture", 1)


def test_map_passes_quoted_values_whole():
    @task
    def size(items: list[int], item: int) -> int:
        return len(items) + item

    @flow(name="sdk-quote-map")
    def mapping() -> list[int]:
        return size.map(quote([1, 2, 3]), [10, 20]).result()

    assert mapping() == [13, 23]


# --- stateward.runtime ---------------------------------------------------------------------------


def test_runtime_values_inside_a_flow_run_and_a_task_run(client):
    seen: dict[str, object] = {}

    @task(name="probe", task_run_name="probe-{x}", retries=1, tags=["t"])
    def probe(x: int) -> None:
        seen["task"] = (
            task_run.id,
            task_run.name,
            task_run.task_name,
            task_run.run_count,
            task_run.parameters,
            flow_run.id,
        )
        if task_run.run_count == 1:
            raise RuntimeError("once more")

    @flow(name="sdk-runtime", flow_run_name="runtime-{n}")
    def inspected(n: int = 3) -> None:
        seen["flow"] = (
            flow_run.id,
            flow_run.name,
            flow_run.parameters,
            flow_run.tags,
            flow_run.run_count,
            flow_run.scheduled_start_time,
        )
        seen["task-outside-task"] = task_run.id
        probe(n)

    with tags("rt"):
        inspected()
    run = flow_run_named(client, "sdk-runtime")
    run_id, name, parameters, run_tags, count, scheduled = seen["flow"]  # type: ignore[misc]
    assert (run_id, name, parameters, run_tags, count) == (run.id, "runtime-3", {"n": 3}, ["rt"], 1)
    assert isinstance(scheduled, datetime)
    assert seen["task-outside-task"] is None
    (probe_run,) = task_runs_of(client, run.id).values()
    assert seen["task"] == (probe_run.id, "probe-3", "probe", 2, {"x": 3}, run.id)


def test_run_name_functions_see_the_run_they_name(client):
    # The reference's documented pattern: a run name function reads the run's parameters,
    # its task's or flow's name and its flow run from prefect.runtime.
    seen: dict[str, object] = {}

    def task_run_name() -> str:
        seen["task"] = (task_run.id, task_run.name, task_run.tags, flow_run.name, flow_run.id)
        return f"{task_run.task_name}-{task_run.parameters['name']}-in-{flow_run.name}"

    def flow_run_name() -> str:
        seen["flow"] = (flow_run.id, flow_run.name, flow_run.tags, task_run.id)
        return f"{flow_run.flow_name}-{flow_run.parameters['name']}"

    @task(name="greet", task_run_name=task_run_name, tags=["t"])
    def greet(name: str) -> str:
        return f"hello {name}"

    @flow(name="sdk-named-by-functions", flow_run_name=flow_run_name)
    def greeting(name: str) -> str:
        return greet(name.upper())

    with tags("rt"):
        assert greeting("ada") == "hello ADA"
    run = flow_run_named(client, "sdk-named-by-functions")
    assert run.name == "sdk-named-by-functions-ada"
    assert seen["flow"] == (run.id, None, ["rt"], None)
    (greet_run,) = task_runs_of(client, run.id).values()
    assert greet_run.name == "greet-ADA-in-sdk-named-by-functions-ada"
    assert seen["task"] == (greet_run.id, None, ["t", "rt"], run.name, run.id)


def test_runtime_values_in_async_runs():
    @task
    async def probe() -> tuple[str | None, str | None]:
        return task_run.task_name, flow_run.name

    @flow(name="sdk-runtime-async", flow_run_name="async-runtime")
    async def inspected() -> tuple[object, ...]:
        return (await probe(), flow_run.run_count)

    assert asyncio.run(inspected()) == (("probe", "async-runtime"), 1)


def test_runtime_values_outside_any_run_are_none_or_empty():
    assert (flow_run.id, flow_run.name, flow_run.scheduled_start_time) == (None, None, None)
    assert (flow_run.parameters, flow_run.tags, flow_run.run_count) == ({}, [], 0)
    assert (task_run.id, task_run.name, task_run.task_name) == (None, None, None)
    assert (task_run.parameters, task_run.run_count) == ({}, 0)
    with pytest.raises(AttributeError, match="has no attribute 'idd'"):
        _ = flow_run.idd


def test_a_standalone_task_run_has_no_flow_run():
    @task
    def alone() -> tuple[object, object]:
        return flow_run.id, task_run.task_name

    assert alone() == (None, "alone")


# --- the embedded default ------------------------------------------------------------------------


def test_tags_allow_failure_and_runtime_on_the_embedded_default(tmp_path):
    result = python(
        """
        import json
        from stateward import allow_failure, flow, get_client, tags, task
        from stateward.runtime import flow_run, task_run

        @task
        def breaks():
            raise ValueError("boom")

        @task
        def after(value):
            return [type(value).__name__, task_run.task_name, sorted(task_run.tags)]

        @flow(name="embedded-features")
        def features():
            with tags("embedded"):
                return after(allow_failure(breaks.submit())), flow_run.name

        (value, name) = features()
        run = next(get_client().list_flow_runs(flow_names=["embedded-features"]))
        print(json.dumps([value, name == run.name, list(run.tags)]))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    value, same_name, run_tags = json.loads(result.stdout.splitlines()[-1])
    assert value == ["ValueError", "after", ["embedded"]]
    assert same_name is True and run_tags == []


def test_parent_and_root_flow_run_ids_along_a_chain_of_subflows():
    @flow
    def innermost() -> tuple[object, ...]:
        return flow_run.id, flow_run.parent_flow_run_id, flow_run.root_flow_run_id

    @task
    def calls_innermost() -> tuple[object, ...]:
        return (flow_run.parent_flow_run_id, flow_run.root_flow_run_id, *innermost())

    @flow
    def middle() -> tuple[object, ...]:
        return (flow_run.id, *calls_innermost())

    @flow
    def top() -> tuple[object, ...]:
        return flow_run.id, flow_run.parent_flow_run_id, flow_run.root_flow_run_id, *middle()

    (top_id, top_parent, top_root, middle_id, task_parent, task_root, inner_id, inner_parent,
     inner_root) = top()  # fmt: skip
    assert top_parent is None and top_root == top_id
    assert (task_parent, task_root) == (top_id, top_id)  # in a task: its flow run's
    assert inner_parent == middle_id and inner_root == top_id
    assert len({top_id, middle_id, inner_id}) == 3
    assert (flow_run.parent_flow_run_id, flow_run.root_flow_run_id) == (None, None)


def test_flow_version_is_the_given_one_or_a_hash_of_the_source_file():
    @flow
    def unversioned() -> object:
        return flow_run.flow_version

    @flow(version="2.1")
    def versioned() -> object:
        return flow_run.flow_version

    source_hash = hashlib.md5(Path(__file__).read_bytes()).hexdigest()
    assert (unversioned(), versioned(), flow_run.flow_version) == (source_hash, "2.1", None)
