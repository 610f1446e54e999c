"""Flows and tasks end to end against a real server: states and histories on the server,
failures, retries, timeouts, caching, waits and aborts, futures, subflows, results."""

from __future__ import annotations

import asyncio
import builtins
import gc
import itertools
import json
import logging
import os
import threading
import time
from datetime import timedelta

import pytest

import stateward
from stateward import (
    Completed,
    Failed,
    OrchestrationAborted,
    ResultTooLarge,
    State,
    StateType,
    flow,
    task,
    task_input_hash,
    unmapped,
)
from stateward.runs import RunKind

pytestmark = pytest.mark.usefixtures("sdk_server")


def names(client, run_id: str) -> list[str]:
    return [s.name for s in client.list_states(run_id)]


def flow_run_of(client, flow_name: str):
    return next(client.list_flow_runs(flow_names=[flow_name], limit=1))


def task_runs_of(client, flow_run_id: str):
    return list(reversed(list(client.list_task_runs(flow_run_ids=[flow_run_id]))))


def test_a_flow_with_tasks_completes_and_its_history_is_on_the_server(client):
    @task
    def add(x: int, y: int) -> int:
        return x + y

    @flow(name="sdk-basic")
    def basic(a: int, b: int = 2) -> int:
        return add(add(a, b), 10)

    assert basic(1) == 13
    run = flow_run_of(client, "sdk-basic")
    assert names(client, run.id) == ["Pending", "Running", "Completed"]
    assert run.parameters == {"a": 1, "b": 2}
    assert run.state.result() == 13  # stored as JSON, read back here
    tasks = task_runs_of(client, run.id)
    assert [t.task_key for t in tasks] == ["add", "add"]
    assert all(names(client, t.id) == ["Pending", "Running", "Completed"] for t in tasks)
    assert tasks[1].parameters == {"x": 3, "y": 10}


def test_a_task_run_leaves_no_reference_cycle_behind():
    # Its engine is freed by reference counting when the call returns: an engine holding the
    # context whose record a closure over the engine makes was a cycle, left for the cyclic
    # collector by every task run (and the collector ran twice as often).
    @task
    def step(i):
        return i

    @flow
    def steps():
        for i in range(3):
            step(i)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        steps()
        gc.collect()
        left = {type(thing).__name__ for thing in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert "FlowRunEngine" in left  # what the flow run leaves: the check sees garbage
    assert not left & {"TaskRunEngine", "TaskRunContext"}, left


def test_parameters_json_cannot_hold_are_recorded_as_text(client):
    @task
    def half(x: float) -> float:
        return x / 2

    @flow(name="sdk-non-finite")
    def non_finite(x: float, y: float) -> float:
        return half(x)

    assert non_finite(float("inf"), float("nan")) == float("inf")
    run = flow_run_of(client, "sdk-non-finite")
    assert run.parameters == {"x": "inf", "y": "nan"}
    assert run.state.is_completed()


def test_a_failing_task_fails_its_flow_with_the_original_exception(client):
    class Boom(Exception):
        pass

    @task
    def explode():
        raise Boom("kaboom")

    @flow(name="sdk-fail")
    def failing():
        explode()

    with pytest.raises(Boom, match="kaboom"):
        failing()
    run = flow_run_of(client, "sdk-fail")
    assert run.state.type is StateType.FAILED and "Boom: kaboom" in run.state.message
    (task_run,) = task_runs_of(client, run.id)
    assert names(client, task_run.id) == ["Pending", "Running", "Failed"]


def test_return_state_gives_the_final_state_instead_of_raising():
    @task
    def explode():
        raise ValueError("no")

    @flow
    def tolerant():
        state = explode(return_state=True)
        assert state.is_failed() and not state.is_completed() and state.is_final()
        with pytest.raises(ValueError, match="no"):
            state.result()
        assert isinstance(state.result(raise_on_failure=False), ValueError)
        return "fine"

    final = tolerant(return_state=True)
    assert final.is_completed() and final.result() == "fine"


def test_task_retries_leave_the_full_history_on_the_server(client):
    attempts = []

    @task(retries=2, retry_delay_seconds=0.05)
    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError(f"attempt {len(attempts)}")
        return "third time"

    @flow(name="sdk-retries")
    def retrying():
        return flaky()

    assert retrying() == "third time"
    (task_run,) = task_runs_of(client, flow_run_of(client, "sdk-retries").id)
    assert names(client, task_run.id) == [
        "Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry", "Retrying", "Completed",
    ]  # fmt: skip
    assert client.get_task_run(task_run.id).run_count == 3
    assert attempts[1] - attempts[0] >= 0.05 and attempts[2] - attempts[1] >= 0.05


def test_retry_delays_as_a_list_and_exponential_backoff():
    assert stateward.exponential_backoff(0.5)(3) == [0.5, 1.0, 2.0]
    seen = []

    @task(retries=3, retry_delay_seconds=stateward.exponential_backoff(0.02))
    def flaky():
        seen.append(time.monotonic())
        if len(seen) < 4:
            raise RuntimeError("again")
        return len(seen)

    assert flaky() == 4  # a task outside any flow
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08


def test_retry_condition_fn_can_refuse_a_retry(client):
    calls = []

    def only_value_errors(task, task_run, state) -> bool:
        calls.append((task.name, task_run.id, state.type))
        return isinstance(state.result(raise_on_failure=False), ValueError)

    @task(retries=5, retry_condition_fn=only_value_errors)
    def picky():
        raise KeyError("not retried")

    @flow(name="sdk-retry-condition")
    def run_it():
        return picky(return_state=True)  # a returned failed state fails the flow

    state = run_it(return_state=True)
    assert state.is_failed() and state.message == "1/1 states failed."
    assert "not retried" in state.result(raise_on_failure=False).message
    (task_run,) = task_runs_of(client, flow_run_of(client, "sdk-retry-condition").id)
    assert names(client, task_run.id) == ["Pending", "Running", "Failed"]
    assert calls == [("picky", task_run.id, StateType.FAILED)]


def test_flow_retries(client):
    attempts = []

    @flow(name="sdk-flow-retries", retries=1, retry_delay_seconds=0)
    def shaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first")
        return "ok"

    assert shaky() == "ok"
    run = flow_run_of(client, "sdk-flow-retries")
    assert names(client, run.id) == [
        "Pending", "Running", "AwaitingRetry", "Retrying", "Completed",
    ]  # fmt: skip


def test_timeouts_fail_the_run_as_timed_out_and_are_retried(client):
    attempts, ended = [], []

    @task(timeout_seconds=0.2, retries=1)
    def slow():
        attempts.append(1)
        time.sleep(60)  # one blocking call, woken by the timeout's signal, whatever the load
        ended.append("ran to its end")

    @flow(name="sdk-timeout")
    def waits():
        return slow(return_state=True)

    final = waits(return_state=True)  # the flow is judged by the returned TimedOut state
    assert ended == []  # each attempt was stopped by its timeout
    state = final.result(raise_on_failure=False)
    assert final.is_failed() and state.is_failed() and state.name == "TimedOut"
    assert "timeout of 0.2s" in state.message
    assert len(attempts) == 2
    (task_run,) = task_runs_of(client, flow_run_of(client, "sdk-timeout").id)
    assert names(client, task_run.id) == ["Pending", "Running", "Retrying", "TimedOut"]


def test_a_flow_timeout(client):
    @flow(name="sdk-flow-timeout", timeout_seconds=0.2)
    def endless():
        while True:
            time.sleep(0.01)

    state = endless(return_state=True)
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")


def test_cache_hits_return_the_stored_result_without_running(client):
    calls = []

    @task(cache_key_fn=task_input_hash, cache_expiration=timedelta(minutes=5))
    def expensive(x: int) -> dict:
        calls.append(x)
        return {"square": x * x}

    @flow(name="sdk-cache")
    def cached():
        return expensive(7), expensive(7), expensive(8)

    assert cached() == ({"square": 49}, {"square": 49}, {"square": 64})
    assert calls == [7, 8]
    tasks = task_runs_of(client, flow_run_of(client, "sdk-cache").id)
    assert [names(client, t.id)[-1] for t in tasks] == ["Completed", "Cached", "Completed"]
    refreshed = expensive.with_options(refresh_cache=True)
    assert refreshed(7) == {"square": 49} and calls == [7, 8, 7]


def test_a_full_concurrency_limit_makes_the_task_wait(client):
    client.create_concurrency_limit("sdk-one-at-a-time", 1)
    order = []

    @task(tags=["sdk-one-at-a-time"])
    def exclusive(i: int) -> int:
        order.append(("start", i))
        time.sleep(0.1)
        order.append(("end", i))
        return i

    @flow(name="sdk-limited")
    def limited():
        return exclusive.map([1, 2, 3]).result()

    assert limited() == [1, 2, 3]
    for first, second in zip(order[::2], order[1::2], strict=True):
        assert first[0] == "start" and second == ("end", first[1])  # never two at once
    assert client.get_concurrency_limit("sdk-one-at-a-time").active_slots == ()


def test_an_abort_stops_the_run_with_an_error_naming_the_reason(client):
    client.create_concurrency_limit("sdk-never", 0)

    @task(tags=["sdk-never"])
    def forbidden():
        raise AssertionError("must not run")

    with pytest.raises(OrchestrationAborted, match="concurrency limit of 0"):
        forbidden()


def test_a_flow_returning_states_is_judged_by_them(client):
    @flow
    def all_good():
        return [Completed(1), Completed(2)]

    @flow
    def one_bad():
        return Completed(), Failed(message="nope")

    @flow
    def returns_a_state():
        return Completed(message="done", data={"k": 1})

    assert all_good(return_state=True).is_completed()
    bad = one_bad(return_state=True)
    assert bad.is_failed() and "1/2" in bad.message
    with pytest.raises(stateward.FailedRun):
        one_bad()
    done = returns_a_state(return_state=True)
    assert done.message == "done" and done.result() == {"k": 1}
    run = flow_run_of(client, "returns-a-state")
    assert json.loads(run.state.data.json) == {"k": 1}


def test_submit_futures_and_map(client):
    # The three mapped runs meet here: one after the other, the first would wait alone.
    mapped_together = threading.Barrier(3, timeout=60)

    @task
    def double(x: int) -> int:
        if x in (1, 2, 3):
            mapped_together.wait()
        return 2 * x

    @task
    def total(values: list[int], offset: int) -> int:
        return sum(values) + offset

    @flow(name="sdk-futures")
    def fan_out():
        future = double.submit(5)
        assert isinstance(future, stateward.StatewardFuture)
        assert future.result() == 10 and future.state.is_completed()
        mapped = double.map([1, 2, 3])
        future_total = total.submit(mapped, unmapped(100))
        future_total.wait()
        assert future_total.done()
        return future_total.result(), mapped.result()

    assert fan_out() == (112, [2, 4, 6])  # the mapped runs overlapped: they met
    run = flow_run_of(client, "sdk-futures")
    assert len(task_runs_of(client, run.id)) == 5


def test_a_failed_upstream_future_stops_the_downstream_task(client):
    @task
    def breaks():
        raise RuntimeError("upstream")

    ran = []

    @task
    def downstream(x):
        ran.append(x)

    @flow(name="sdk-upstream")
    def chain():
        return downstream.submit(breaks.submit())

    final = chain(return_state=True)
    assert not ran and final.is_failed()  # the returned future's state decides the flow's
    state = final.result(raise_on_failure=False)
    assert "upstream task run" in state.message
    runs = task_runs_of(client, flow_run_of(client, "sdk-upstream").id)
    downstream_run = next(r for r in runs if r.task_key == "downstream")
    assert (downstream_run.state.type, downstream_run.state.name) == (StateType.PENDING, "NotReady")


def test_subflows_are_tracked_by_a_task_run_in_their_parent(client):
    @flow(name="sdk-child")
    def child(n: int) -> int:
        return n * 3

    @flow(name="sdk-parent")
    def parent() -> int:
        return child(2) + child(3)

    assert parent() == 15
    parent_run = flow_run_of(client, "sdk-parent")
    stand_ins = task_runs_of(client, parent_run.id)
    assert [t.task_key for t in stand_ins] == ["sdk-child", "sdk-child"]
    children = list(client.list_flow_runs(flow_names=["sdk-child"], limit=2))
    assert {c.parent_task_run_id for c in children} == {t.id for t in stand_ins}
    for stand_in in stand_ins:
        assert names(client, stand_in.id) == ["Pending", "Running", "Completed"]
        assert client.get_task_run(stand_in.id).child_flow_run_id


def test_a_task_outside_any_flow_is_a_standalone_task_run(client):
    @task(name="sdk-standalone")
    def alone(x):
        return x

    assert alone("solo") == "solo"
    run = next(client.list_task_runs(task_keys=["sdk-standalone"], limit=1))
    assert run.flow_run_id == "" and run.state.is_completed()


def test_results_are_json_when_they_can_be_and_pickled_otherwise(client):
    @task(name="sdk-json")
    def as_json():
        return {"a": [1, 2.5, None, True, "x"]}

    @task(name="sdk-pickle")
    def as_pickle():
        return (1, 2), {3}

    assert as_json() == {"a": [1, 2.5, None, True, "x"]}
    assert as_pickle() == ((1, 2), {3})
    stored_json = next(client.list_task_runs(task_keys=["sdk-json"], limit=1)).state
    assert json.loads(stored_json.data.json) == {"a": [1, 2.5, None, True, "x"]}
    stored_pickle = next(client.list_task_runs(task_keys=["sdk-pickle"], limit=1)).state
    assert stored_pickle.data.pickle and stored_pickle.result() == ((1, 2), {3})


def test_a_result_over_the_size_limit_asked_to_persist_fails_clearly(monkeypatch):
    monkeypatch.setenv("STATEWARD_MAX_RESULT_BYTES", "1000")

    @task(persist_result=True)
    def huge():
        return "x" * 5000

    with pytest.raises(ResultTooLarge, match="over the limit of 1,000 bytes"):
        huge()


def test_async_flows_and_tasks(client):
    started = []

    @task
    async def fetch(i: int) -> int:
        # Each waits until all five started: one after the other, the first would wait alone.
        started.append(i)
        deadline = time.monotonic() + 60
        while len(started) < 5:
            assert time.monotonic() < deadline, f"only {sorted(started)} started: not concurrent"
            await asyncio.sleep(0.01)
        return i

    @flow(name="sdk-async")
    async def gather_all() -> list[int]:
        return list(await asyncio.gather(*(fetch(i) for i in range(5))))

    assert asyncio.run(gather_all()) == [0, 1, 2, 3, 4]  # concurrent: they all met
    run = flow_run_of(client, "sdk-async")
    assert names(client, run.id) == ["Pending", "Running", "Completed"]
    assert [names(client, t.id)[-1] for t in task_runs_of(client, run.id)] == ["Completed"] * 5


def test_an_async_task_timeout(client):
    @task(timeout_seconds=0.1)
    async def sleepy():
        await asyncio.sleep(10)

    state = asyncio.run(sleepy(return_state=True))
    assert state.name == "TimedOut"


def test_run_names_from_templates(client):
    @flow(name="sdk-named", flow_run_name="run-for-{who}")
    def named(who: str):
        return who

    named("ada")
    assert flow_run_of(client, "sdk-named").name == "run-for-ada"


def test_run_names_from_text_no_utf8_can_hold_are_stored_escaped(client):
    # A name made from a file name decoded with 'surrogateescape' (os.listdir of a name that
    # is not UTF-8, say): UnicodeEncodeError came out of the call, naming no field, and the
    # run never started.
    odd = os.fsdecode(b"data-\xfe.csv")

    @task(task_run_name="load-{path}")
    def load(path: str) -> str:
        return path

    @flow(name="sdk-odd-names", flow_run_name="for-{path}")
    def loads(path: str, more: list[str]) -> str:
        return load(path)

    assert loads(odd, [odd]) == odd  # the value itself is passed on untouched
    run = flow_run_of(client, "sdk-odd-names")
    assert run.name == "for-data-\\udcfe.csv"
    # Recorded escaped; inside a collection, the collection as text (as for what JSON cannot hold).
    assert run.parameters == {"path": "data-\\udcfe.csv", "more": "['data-\\udcfe.csv']"}
    (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
    assert task_run.name == "load-data-\\udcfe.csv"


def test_get_run_context_and_logger_inside_runs():
    @task
    def inner():
        context = stateward.get_run_context()
        stateward.get_run_logger().info("hello from a task")
        return context.task_run.id

    @flow
    def outer():
        context = stateward.get_run_context()
        return context.flow_run.id, inner()

    flow_run_id, task_run_id = outer()
    assert flow_run_id and task_run_id and flow_run_id != task_run_id
    with pytest.raises(RuntimeError):
        stateward.get_run_context()


def _printed_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("stateward.")]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_log_prints_sends_prints_to_the_run_logger_while_the_run_runs(caplog, capsys, asynchronous):
    original = builtins.print

    @task(log_prints=True)
    def shout(word: str) -> None:
        print(word, "from a task")

    @task
    def whisper() -> None:
        print("whispered")  # a task that does not say inherits the flow's log_prints

    @flow(log_prints=True)
    def loud() -> None:
        print("from the flow")
        shout("hello")
        print("still logged after the task ended")
        whisper()

    @flow(log_prints=True)
    async def loud_async() -> None:
        print("from the flow")
        shout("hello")
        print("still logged after the task ended")
        whisper()

    with caplog.at_level(logging.INFO, logger="stateward"):
        asyncio.run(loud_async()) if asynchronous else loud()
    logged = _printed_lines(caplog)
    assert any(line.endswith("- from the flow") for line in logged)
    assert any(line.endswith("- hello from a task") for line in logged)
    assert any(line.endswith("- still logged after the task ended") for line in logged)
    assert any(line.endswith("- whispered") for line in logged)
    assert capsys.readouterr().out == ""
    assert builtins.print is original  # not left patched once the run ended
    print("after the run")
    assert capsys.readouterr().out == "after the run\n"


def test_print_is_restored_when_a_log_prints_run_fails(caplog):
    original = builtins.print

    @flow(log_prints=True)
    def noisy_failure() -> None:
        print("about to fail")
        raise ValueError("no")

    with caplog.at_level(logging.INFO, logger="stateward"), pytest.raises(ValueError):
        noisy_failure()
    assert any(line.endswith("- about to fail") for line in _printed_lines(caplog))
    assert builtins.print is original


def test_transitions_of_an_sdk_run_stream_to_watchers(client):
    @flow(name="sdk-watched")
    def watched():
        return 1

    start = next(client.watch(state_types=[StateType.PENDING], after_sequence=0)).sequence - 1
    watched()
    run = flow_run_of(client, "sdk-watched")
    seen = []
    for transition in client.watch(run_ids=[run.id], after_sequence=start):
        seen.append(transition.to_state.name)
        assert transition.run_kind is RunKind.FLOW_RUN
        if transition.to_state.is_final():
            break
    assert seen == ["Pending", "Running", "Completed"]


def test_state_objects():
    a = State(StateType.COMPLETED, message="x")
    assert a == State(StateType.COMPLETED, message="x") and a.name == "Completed"
    assert a != State(StateType.COMPLETED, message="y")
    for predicate in ("is_scheduled", "is_pending", "is_running", "is_paused", "is_cancelling",
                      "is_completed", "is_failed", "is_cancelled", "is_crashed"):  # fmt: skip
        assert getattr(stateward.Running(), predicate)() is (predicate == "is_running")
    assert stateward.Crashed().is_final() and not stateward.Pending().is_final()
    assert stateward.AwaitingRetry().name == "AwaitingRetry"
    assert stateward.Completed(5).result() == 5
    with pytest.raises(stateward.CrashedRun):
        stateward.Crashed(message="gone").result()
