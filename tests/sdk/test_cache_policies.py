"""Cache policies end to end against a real server: each policy and composition gives hits and
misses as the reference's does, the key is computed in the SDK and the server keeps the cached
states (Cached, across flow runs and processes); the reference's default (identical calls in one
flow run cached when results persist); cache_key_fn against cache_policy; key storages."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from stateward import flow, task, task_input_hash
from stateward.cache_policies import (
    DEFAULT,
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    NONE,
    RUN_ID,
    TASK_SOURCE,
    CacheKeyFnPolicy,
    CompoundCachePolicy,
    Inputs,
)
from tests.sdk.conftest import python

pytestmark = pytest.mark.usefixtures("sdk_server")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def states_of(client, flow_name: str) -> list[str]:
    """The final state names of the task runs of every run of the flow, oldest first."""
    runs = list(reversed(list(client.list_flow_runs(flow_names=[flow_name]))))
    names = []
    for run in runs:
        tasks = reversed(list(client.list_task_runs(flow_run_ids=[run.id])))
        names.extend(t.state.name for t in tasks)
    return names


def test_the_default_caches_identical_calls_in_one_flow_run_when_results_persist(client):
    calls: list[int] = []
    name = unique("sdk-cache-default")

    @task(persist_result=True)
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @flow(name=name)
    def twice() -> list[int]:
        return [double(1), double(1), double(2)]

    assert twice() == [2, 2, 4] and calls == [1, 2]
    assert twice() == [2, 2, 4] and calls == [1, 2, 1, 2]  # another flow run: RUN_ID differs
    assert states_of(client, name) == ["Completed", "Cached", "Completed"] * 2
    assert double.cache_policy == DEFAULT == INPUTS + TASK_SOURCE + RUN_ID


def test_without_persisted_results_nothing_is_cached(client):
    calls: list[int] = []
    name = unique("sdk-cache-off")

    @task
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @task(persist_result=False, cache_policy=INPUTS)
    def never(x: int) -> int:
        calls.append(x)
        return x

    @flow(name=name)
    def twice() -> None:
        double(1), double(1), never(5), never(5)

    twice()
    assert calls == [1, 1, 5, 5] and never.cache_policy == NO_CACHE
    assert states_of(client, name) == ["Completed"] * 4


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # Calls: (flow parameter, task input) in two flow runs: (1, 1), (1, 1), (1, 2) / (2, 1).
        (INPUTS, ["Completed", "Cached", "Completed", "Cached"]),
        (TASK_SOURCE, ["Completed", "Cached", "Cached", "Cached"]),
        (RUN_ID, ["Completed", "Cached", "Cached", "Completed"]),
        (FLOW_PARAMETERS, ["Completed", "Cached", "Cached", "Completed"]),
        (INPUTS + FLOW_PARAMETERS, ["Completed", "Cached", "Completed", "Completed"]),
        (DEFAULT, ["Completed", "Cached", "Completed", "Completed"]),
        (NO_CACHE, ["Completed"] * 4),
        (NONE, ["Completed"] * 4),
        (Inputs(exclude=["x"]), ["Completed", "Cached", "Cached", "Cached"]),
        (INPUTS - "x", ["Completed", "Cached", "Cached", "Cached"]),
        (DEFAULT - "x", ["Completed", "Cached", "Cached", "Completed"]),
        (CacheKeyFnPolicy(cache_key_fn=lambda ctx, args: f"k{args['x']}"), None),
    ],
    ids=[
        "INPUTS",
        "TASK_SOURCE",
        "RUN_ID",
        "FLOW_PARAMETERS",
        "INPUTS+FLOW_PARAMETERS",
        "DEFAULT",
        "NO_CACHE",
        "NONE",
        "Inputs(exclude)",
        "INPUTS-x",
        "DEFAULT-x",
        "CacheKeyFnPolicy",
    ],
)
def test_each_policy_hits_and_misses_as_its_recipe_says(client, policy, expected):
    name = unique("sdk-cache-policy")
    calls: list[int] = []

    # Its own key storage keeps the cache of the other cases (and earlier sessions) out.
    @task(cache_policy=policy.configure(key_storage=name), persist_result=True)
    def work(x: int) -> int:
        calls.append(x)
        return x

    @flow(name=name)
    def run(p: int, inputs: list[int]) -> list[int]:
        return [work(x) for x in inputs]

    run(1, [1, 1, 2])
    run(2, [1])
    got = states_of(client, name)
    if expected is None:  # the function's key: the input alone, across flow runs
        expected = ["Completed", "Cached", "Completed", "Cached"]
    assert got == expected
    assert len(calls) == expected.count("Completed")


def test_inputs_hit_across_processes_on_the_server(client, sdk_server):
    marker = uuid.uuid4().hex
    program = f"""
        import json
        from stateward import flow, task
        from stateward.cache_policies import INPUTS

        calls = []

        @task(cache_policy=INPUTS)
        def fetch(key):
            calls.append(key)
            return {{"key": key}}

        @flow(name="sdk-cache-processes")
        def once():
            return fetch("{marker}")

        print(json.dumps([once(), calls]))
        """
    first = python(program, env={"STATEWARD_API_URL": sdk_server.target})
    second = python(program, env={"STATEWARD_API_URL": sdk_server.target})
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout.splitlines()[-1]) == [{"key": marker}, [marker]]
    assert json.loads(second.stdout.splitlines()[-1]) == [{"key": marker}, []]


def test_key_storages_keep_caches_apart(client):
    name = unique("sdk-cache-storage")
    calls: list[str] = []
    salt = uuid.uuid4().hex

    def make(label: str, storage: str):
        @task(name=label, cache_policy=INPUTS.configure(key_storage=storage))
        def work(x: str) -> str:
            calls.append(label)
            return x

        return work

    shared_a, shared_b, apart = make("a", "/tmp/one"), make("b", "/tmp/one"), make("c", "two")

    @flow(name=name)
    def run() -> None:
        shared_a(salt), shared_b(salt), apart(salt)

    run()
    assert calls == ["a", "c"]  # b shares a's storage (INPUTS alone: same key), c does not
    assert INPUTS.configure() is INPUTS
    with pytest.raises(ValueError, match="no transactions"):
        INPUTS.configure(isolation_level="SERIALIZABLE")
    with pytest.raises(TypeError, match="key_storage is a name or a path"):
        INPUTS.configure(key_storage=object())  # type: ignore[arg-type]


def test_cache_key_fn_wins_over_cache_policy_with_a_warning(caplog):
    calls: list[int] = []
    with caplog.at_level(logging.WARNING, logger="stateward"):

        @task(cache_policy=NO_CACHE, cache_key_fn=task_input_hash)
        def keyed(x: int) -> int:
            calls.append(x)
            return x

    assert "has both cache_policy and cache_key_fn; cache_key_fn is used" in caplog.text
    assert isinstance(keyed.cache_policy, CacheKeyFnPolicy) and keyed.persist_result is True

    @flow(name=unique("sdk-cache-key-fn-wins"))
    def run(salt: int) -> None:
        keyed(salt), keyed(salt)

    run(uuid.uuid4().int % 10**9)
    assert len(calls) == 1


def test_a_policy_must_be_a_policy():
    with pytest.raises(TypeError, match="cache_policy takes a policy"):
        task(cache_policy="INPUTS")(lambda: None)  # type: ignore[arg-type]


def test_an_input_that_cannot_be_hashed_runs_uncached_and_says_why(caplog):
    calls = []

    @task(cache_policy=INPUTS)
    def takes(lock: object) -> int:
        calls.append(1)
        return len(calls)

    @flow(name=unique("sdk-cache-unhashable"))
    def run() -> list[int]:
        import threading

        lock = threading.Lock()
        return [takes(lock), takes(lock)]

    with caplog.at_level(logging.WARNING, logger="stateward"):
        assert run() == [1, 2]
    assert "not cached: its cache key could not be computed" in caplog.text


def test_compositions_flatten_and_ignore_no_cache():
    assert INPUTS + NO_CACHE is INPUTS and NO_CACHE + RUN_ID is RUN_ID
    composed = INPUTS + TASK_SOURCE + INPUTS
    assert isinstance(composed, CompoundCachePolicy) and composed.policies == (INPUTS, TASK_SOURCE)


def test_async_tasks_are_cached_by_their_policy(client):
    calls: list[int] = []
    name = unique("sdk-cache-async")

    @task(cache_policy=INPUTS + RUN_ID)
    async def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @flow(name=name)
    async def twice() -> list[int]:
        first = await double(21)
        return [first, await double(21)]

    assert asyncio.run(twice()) == [42, 42] and calls == [21]
    assert states_of(client, name) == ["Completed", "Cached"]


def test_the_default_and_a_policy_on_the_embedded_default_across_processes(tmp_path):
    program = """
        import json
        from stateward import flow, task
        from stateward.cache_policies import INPUTS

        calls = []

        @task
        def by_default(x):
            calls.append("default")
            return x

        @task(cache_policy=INPUTS)
        def by_inputs(x):
            calls.append("inputs")
            return x

        @flow(name="embedded-cache")
        def run():
            return [by_default(1), by_default(1), by_inputs(2)]

        print(json.dumps([run(), calls]))
        """
    env = {
        "STATEWARD_API_URL": "",
        "STATEWARD_HOME": str(tmp_path),
        "STATEWARD_RESULTS_PERSIST_BY_DEFAULT": "true",
    }
    first = python(program, env=env)
    second = python(program, env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout.splitlines()[-1]) == [[1, 1, 2], ["default", "inputs"]]
    # A new flow run: DEFAULT (with RUN_ID) misses, INPUTS alone hits in the other process.
    assert json.loads(second.stdout.splitlines()[-1]) == [[1, 1, 2], ["default"]]
