"""The options of @flow, @task and with_options: an unknown one raises TypeError naming it; the
reference's options are accepted by the decorators and with_options alike and kept as
attributes; those Stateward does not act on yet log one warning naming them; retry delays as a
list or a function work on flows as on tasks."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

import pytest

import stateward
import stateward.cache_policies
from stateward import Flow, Task, flow, task
from stateward._options import NOT_YET_ACTIVE
from stateward.filesystems import LocalFileSystem
from stateward.task_runners import ThreadPoolTaskRunner
from tests.sdk.conftest import python


def f(x: int = 1) -> int:
    return x


# --- unknown options raise ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: flow(retreis=3),
        lambda: flow(f, retreis=3),
        lambda: flow(f).with_options(retreis=3),
        lambda: task(retreis=3),
        lambda: task(f, retreis=3),
        lambda: task(f).with_options(retreis=3),
    ],
    ids=["@flow()", "flow(fn)", "flow.with_options", "@task()", "task(fn)", "task.with_options"],
)
def test_an_unknown_option_raises_a_type_error_naming_it(make: Any) -> None:
    with pytest.raises(TypeError, match=r"'retreis' \(did you mean 'retries'\?\)"):
        make()


def test_the_classes_refuse_unknown_options_too() -> None:
    with pytest.raises(TypeError, match="retreis"):
        Flow(f, retreis=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="retreis"):
        Task(f, retreis=3)  # type: ignore[call-arg]


def test_an_unknown_option_with_nothing_close_is_named_alone() -> None:
    with pytest.raises(TypeError, match=r"@task\(\) got an unknown option 'zzz'$"):
        task(zzz=1)


def test_a_flow_only_option_is_unknown_to_tasks_and_the_other_way_round() -> None:
    with pytest.raises(TypeError, match="task_runner"):
        task(task_runner=object())
    with pytest.raises(TypeError, match="cache_key_fn"):
        flow(cache_key_fn=stateward.task_input_hash)


# --- the reference's options are kept, by the decorators and with_options alike ----------------

FLOW_OPTIONS: dict[str, Any] = {
    "name": "named-flow",
    "version": "1.2.3",
    "description": "what it does",
    "flow_run_name": "run-{x}",
    "retries": 2,
    "retry_delay_seconds": [1.0, 2.0],
    "timeout_seconds": 5.0,
    "validate_parameters": False,
    "persist_result": True,
    "result_storage": "/tmp/stateward-results",
    "result_serializer": "json",
    "cache_result_in_memory": False,
    "task_runner": ThreadPoolTaskRunner(max_workers=3),
    "log_prints": True,
}

TASK_OPTIONS: dict[str, Any] = {
    "name": "named-task",
    "version": "4.5",
    "description": "what it does",
    "tags": ("a", "b"),
    "cache_policy": stateward.cache_policies.INPUTS,
    "cache_key_fn": stateward.task_input_hash,
    "cache_expiration": timedelta(minutes=1),
    "task_run_name": "task-{x}",
    "retries": 3,
    "retry_delay_seconds": [0.5, 1.0],
    "retry_jitter_factor": 0.5,
    "persist_result": True,
    "result_storage": LocalFileSystem(basepath="/tmp/stateward-results"),
    "result_serializer": "pickle",
    "result_storage_key": "{parameters[x]}",
    "cache_result_in_memory": False,
    "timeout_seconds": 3.0,
    "log_prints": True,
    "refresh_cache": True,
    "on_rollback": [print],
    "on_commit": [print],
    "viz_return_value": 42,
    "asset_deps": ["s3://bucket/key"],
}


@pytest.mark.parametrize(("option", "value"), list(FLOW_OPTIONS.items()))
def test_a_flow_keeps_each_option_given_to_the_decorator_or_with_options(option, value) -> None:
    decorated = flow(**{option: value})(f)
    changed = flow(f).with_options(**{option: value})
    for made in (decorated, changed):
        assert getattr(made, option) == value
        assert made.options[option] == value


@pytest.mark.parametrize(("option", "value"), list(TASK_OPTIONS.items()))
def test_a_task_keeps_each_option_given_to_the_decorator_or_with_options(option, value) -> None:
    decorated = task(**{option: value})(f)
    changed = task(f).with_options(**{option: value})
    for made in (decorated, changed):
        assert getattr(made, option) == value
        assert made.options[option] == value


def test_with_options_keeps_the_other_options_and_the_registered_hooks() -> None:
    @task(retries=2, tags=["x"], description="kept")
    def original() -> None: ...

    @original.on_failure
    def registered(*args: Any) -> None: ...

    changed = original.with_options(retries=5)
    assert (changed.retries, changed.tags, changed.description) == (5, ("x",), "kept")
    assert changed.on_failure_hooks == [registered]
    assert (original.retries, original.on_failure_hooks) == (2, [registered])


def test_defaults_match_the_reference() -> None:
    made = flow(f)
    assert made.validate_parameters is True and made.cache_result_in_memory is True
    assert made.task_runner is None and made.persist_result is None
    made_task = task(f)
    assert made_task.cache_policy == stateward.cache_policies.DEFAULT
    assert made_task.persist_result is None and made_task.cache_result_in_memory is True
    assert made_task.on_rollback == [] and made_task.on_commit == []


# --- options that do nothing yet say so, once ---------------------------------------------------


def test_options_without_effect_yet_log_one_warning_each_when_used_not_at_import() -> None:
    values = {
        "result_storage_key": "'key'",
        "result_serializer": "'json'",
        "cache_result_in_memory": False,
        "on_commit": "[print]",
        "on_rollback": "[print]",
        "viz_return_value": 1,
        "asset_deps": "['a']",
    }
    assert set(values) == set(NOT_YET_ACTIVE)
    flow_only: set[str] = set()  # every flow option acts now
    task_only = {"result_storage_key", "on_commit", "on_rollback"}
    task_only |= {"viz_return_value", "asset_deps"}
    uses = []
    for option, value in values.items():
        decorator = "flow" if option in flow_only else "task"
        uses.append(f"{decorator}({option}={value})(f)")
        uses.append(f"{decorator}(f).with_options({option}={value})")  # a second use: silent
        if option not in flow_only | task_only:
            uses.append(f"flow({option}={value})(f)")
    code = "\n".join(
        [
            "import sys",
            "import stateward",
            "from stateward import flow, task",
            "def f(): pass",
            # Options that do something, or that ask for nothing, log nothing.
            "flow(retries=1, persist_result=True, validate_parameters=False)(f)",
            "task(cache_result_in_memory=True, result_storage=None, on_commit=[])(f)",
            "print('--- uses', file=sys.stderr, flush=True)",
            *uses,
        ]
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    before, after = result.stderr.split("--- uses\n")
    assert before == ""  # nothing at import, nothing for options that do something
    lines = after.splitlines()
    assert len(lines) == len(values)
    for option in values:
        (line,) = [line for line in lines if f" option {option}=" in line]
        assert "accepted but has no effect in Stateward yet" in line


# --- retry delays on flows, as on tasks ---------------------------------------------------------


@pytest.mark.parametrize(
    "delays",
    [[0.05, 0.2], stateward.exponential_backoff(0.05)],
    ids=["list", "function"],
)
def test_a_flow_retries_with_a_list_of_delays_or_a_backoff(client, delays) -> None:
    seen: list[float] = []
    name = f"sdk-flow-retry-delays-{'list' if isinstance(delays, list) else 'backoff'}"

    @flow(name=name, retries=2, retry_delay_seconds=delays)
    def shaky() -> int:
        seen.append(time.monotonic())
        if len(seen) < 3:
            raise RuntimeError("again")
        return len(seen)

    assert shaky() == 3
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    expected = (0.05, 0.2) if isinstance(delays, list) else (0.05, 0.1)
    assert run.retry_policy.retry_delay_seconds == expected
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= expected[0] and gaps[1] >= expected[1]


def test_with_options_gives_a_flow_a_list_of_delays(client) -> None:
    changed = flow(f, name="sdk-flow-delays-by-with-options").with_options(
        retries=3, retry_delay_seconds=[1, 2, 3]
    )
    assert changed.retry_delays == (1.0, 2.0, 3.0)
    assert changed(4) == 4
    run = next(client.list_flow_runs(flow_names=["sdk-flow-delays-by-with-options"], limit=1))
    assert run.retry_policy.retry_delay_seconds == (1.0, 2.0, 3.0)


def test_a_task_runner_that_is_not_one_is_a_type_error_naming_the_runners() -> None:
    with pytest.raises(TypeError, match="ThreadPoolTaskRunner"):
        flow(task_runner=object())(f)
    with pytest.raises(TypeError, match="task_runner must be a TaskRunner"):
        flow(f).with_options(task_runner="threads")
