"""Cache keys as the reference makes them: task_input_hash includes the task's identity, so two
unrelated tasks that share a name never share a cache entry."""

from __future__ import annotations

import pytest

from stateward import flow, task, task_input_hash

pytestmark = pytest.mark.usefixtures("sdk_server")


def test_tasks_sharing_a_name_do_not_share_cache_entries():
    calls = []

    @task(name="ck-shared-name", cache_key_fn=task_input_hash)
    def first(x: int) -> str:
        calls.append("first")
        return f"first {x}"

    @task(name="ck-shared-name", cache_key_fn=task_input_hash)
    def second(x: int) -> str:
        calls.append("second")
        return f"second {x}"

    @flow
    def both() -> tuple:
        return (
            first(1),
            second(1),
            first(1, return_state=True).name,
            second(1, return_state=True).name,
        )

    assert both() == ("first 1", "second 1", "Cached", "Cached")
    assert calls == ["first", "second"]


def test_the_key_names_the_task_and_follows_its_source():
    @task(name="ck-identity")
    def one(x: int) -> int:
        return x

    @task(name="ck-identity")
    def other(x: int) -> int:
        return x + 0

    assert one.identity != other.identity
    assert one.identity.startswith(one.fn.__qualname__)
    assert one.with_options(retries=1).identity == one.identity
