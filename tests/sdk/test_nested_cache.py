"""A task run called inside another task run's code (the reference's nested transactions): its
cache entry becomes visible only once the outermost task run around it completes, and is dropped
if that run fails, for sync and async code, against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from stateward import task
from stateward.client import Client
from stateward.states import State, StateDetails, StateType

pytestmark = pytest.mark.usefixtures("sdk_server")


def cache_has(client: Client, key: str) -> bool:
    """Whether a new task run proposing RUNNING with `key` is answered Cached (then it is done:
    the probe leaves no entry of its own)."""
    run = client.create_task_run("probe")
    answer = client.set_state(run.id, State(StateType.RUNNING, details=StateDetails(cache_key=key)))
    assert answer.state is not None
    if answer.state.name == "Cached":
        return True
    client.set_state(run.id, State(StateType.CANCELLED, message="probe"))
    return False


class Pause:
    """The outer task stops here until the test has looked (between its inner call and its end)."""

    def __init__(self) -> None:
        self.reached, self.go_on = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.reached.set()
        assert self.go_on.wait(60)


def run_in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(call()))
    thread.start()
    return thread, outcome


def tasks(key: str, isasync: bool, pause: Pause) -> tuple[Any, Any, list[int]]:
    calls: list[int] = []

    def keyed(context: Any, arguments: dict[str, Any]) -> str:
        return key

    if isasync:

        @task(cache_key_fn=keyed)
        async def inner() -> int:
            calls.append(1)
            return 42

        @task
        async def outer(fail: bool) -> int:
            value = await inner()
            await asyncio.to_thread(pause)
            if fail:
                raise ValueError("the outer task fails")
            return value

        return (
            (lambda: asyncio.run(inner())),
            (lambda fail: asyncio.run(outer(fail, return_state=True))),
            calls,
        )

    @task(cache_key_fn=keyed)
    def inner_sync() -> int:
        calls.append(1)
        return 42

    @task
    def outer_sync(fail: bool) -> int:
        value = inner_sync()
        pause()
        if fail:
            raise ValueError("the outer task fails")
        return value

    return inner_sync, (lambda fail: outer_sync(fail, return_state=True)), calls


@pytest.mark.parametrize("isasync", [False, True], ids=["sync", "async"])
def test_a_nested_entry_is_visible_once_the_outer_task_completes(client, isasync) -> None:
    key, pause = f"nested-{uuid.uuid4()}", Pause()
    inner, outer, calls = tasks(key, isasync, pause)
    thread, outcome = run_in_thread(lambda: outer(False))
    assert pause.reached.wait(60)
    try:
        assert calls == [1] and not cache_has(client, key)  # the inner run completed: not yet
    finally:
        pause.go_on.set()
        thread.join(60)
    assert outcome[0].is_completed() and outcome[0].result() == 42
    assert cache_has(client, key)
    assert inner() == 42 and calls == [1]  # a later call is a cache hit


@pytest.mark.parametrize("isasync", [False, True], ids=["sync", "async"])
def test_a_nested_entry_is_dropped_when_the_outer_task_fails(client, isasync) -> None:
    key, pause = f"nested-fail-{uuid.uuid4()}", Pause()
    pause.go_on.set()
    inner, outer, calls = tasks(key, isasync, pause)
    state = outer(True)
    assert state.is_failed() and calls == [1]
    assert not cache_has(client, key)
    assert inner() == 42 and calls == [1, 1]  # computed again, and now cached at top level
    assert cache_has(client, key)


def test_entries_travel_up_through_every_level_and_a_failed_middle_drops_its_own(client) -> None:
    kept, dropped = f"kept-{uuid.uuid4()}", f"dropped-{uuid.uuid4()}"
    seen: list[tuple[bool, bool]] = []

    @task(cache_key_fn=lambda context, arguments: arguments["key"])
    def leaf(key: str) -> str:
        return key

    @task
    def middle(fail: bool) -> None:
        leaf(dropped if fail else kept)
        if fail:
            raise ValueError("the middle task fails")

    @task
    def outer() -> str:
        middle(False)
        with contextlib.suppress(ValueError):  # handled: the outer task completes
            middle(True)
        seen.append((cache_has(client, kept), cache_has(client, dropped)))
        return "done"

    assert outer() == "done"
    assert seen == [(False, False)]  # inside the outer task, neither is visible yet
    assert cache_has(client, kept) and not cache_has(client, dropped)


def test_a_retried_outer_task_drops_what_its_failed_attempt_held(client) -> None:
    first, second = f"first-{uuid.uuid4()}", f"second-{uuid.uuid4()}"
    attempts: list[int] = []

    @task(cache_key_fn=lambda context, arguments: arguments["key"])
    def leaf(key: str) -> str:
        return key

    @task(retries=1)
    def outer() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            leaf(first)
            raise ValueError("the first attempt fails")
        leaf(second)

    outer()
    assert len(attempts) == 2
    assert cache_has(client, second) and not cache_has(client, first)
