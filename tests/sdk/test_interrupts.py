"""Timeouts and cancels reach user code only: never the engine's own work (in the embedded
server, writes to the database run on the caller's thread). A run stopped by the run around it
ends Cancelled and passes the interrupt on."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from stateward import flow, task
from stateward._context import flow_run_context
from stateward.exceptions import RunTimedOut
from stateward.states import State, StateType
from tests.sdk.conftest import python
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")

# Code a test expects to be stopped runs this long when it is not: no load lets it end on its own
# first, and a failure still shows before the test's timeout. Whether it was stopped is read in
# what it recorded (and in the states written), never in a clock.
UNSTOPPED_SECONDS = 60


# A flow's timeout that must fire after its task calls were set up (their runs created, submitted
# to the runner): the set-up takes milliseconds, but over 0.3 s was seen at load 18.
AFTER_SET_UP_SECONDS = 2


def busy_for(seconds: float) -> None:
    """Short sleeps for `seconds`: an interrupt lands between them, on any thread."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)


def test_timeouts_firing_during_engine_work_never_wedge_the_embedded_server(tmp_path):
    """Flows that time out while they call tasks over and over, so the timeout often falls in
    the middle of a write: nothing breaks, and a live watcher still sees every transition."""
    result = python(
        """
        import collections, json, os, sqlite3, threading, time
        from stateward import flow, task
        from stateward._embedded import get_client

        @task
        def tiny(i):
            return i

        @flow(timeout_seconds=0.2)
        def busy():
            i = 0
            while True:
                tiny(i)
                i += 1

        seen, ready = set(), threading.Event()
        watcher = get_client()  # the process's own broadcaster

        def watch():
            for transition in watcher.watch(started=lambda _: ready.set()):
                seen.add(transition.sequence)

        threading.Thread(target=watch, daemon=True).start()
        ready.wait(10)
        outcomes, errors = collections.Counter(), []
        for _ in range(15):
            try:
                outcomes[busy(return_state=True).name] += 1
            except BaseException as error:
                errors.append(repr(error))
        after = tiny(1)  # everything still works
        db = sqlite3.connect(os.path.join(os.environ["STATEWARD_HOME"], "stateward.db"))
        logged = {row[0] for row in db.execute("SELECT sequence FROM transitions")}
        deadline = time.monotonic() + 30
        while not logged <= seen and time.monotonic() < deadline:
            time.sleep(0.05)  # the watcher catches up
        task_states = collections.Counter(
            row[0] for row in db.execute("SELECT state_name FROM task_runs")
        )
        print(json.dumps({
            "outcomes": outcomes, "errors": errors, "after": after,
            "missing": sorted(logged - seen), "task_states": task_states,
        }))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["errors"] == []
    assert report["outcomes"] == {"TimedOut": 15}
    assert report["after"] == 1
    assert report["missing"] == []
    # None left Pending or Running. (The tiny task's own code is so short that the timeout
    # nearly always falls in the engine's work, and lands in the flow's loop once it is done.)
    assert set(report["task_states"]) <= {"Completed", "Cancelled"}, report["task_states"]


def test_a_flow_timeout_during_an_inline_task_cancels_the_task(client):
    ran = []

    @task
    def slow_step():
        time.sleep(UNSTOPPED_SECONDS)  # one blocking call: the signal wakes it
        ran.append("to its end")

    @flow(name="times-out-in-task", timeout_seconds=AFTER_SET_UP_SECONDS)
    def outer():
        slow_step()

    state = outer(return_state=True)
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")
    assert ran == []  # stopped, not run to its end
    run = next(client.list_flow_runs(flow_names=["times-out-in-task"], limit=1))
    (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
    assert task_run.state.type is StateType.CANCELLED
    assert "timed out" in task_run.state.message


def test_a_flow_timing_out_while_it_waits_for_submitted_tasks(client):
    @task
    def sleeper(seconds: float) -> float:
        busy_for(seconds)  # short sleeps: an interrupt lands between them
        return seconds

    @flow(name="times-out-waiting", timeout_seconds=AFTER_SET_UP_SECONDS)
    def fan_out():
        # More than the workers: some queue.
        return [sleeper.submit(UNSTOPPED_SECONDS) for _ in range(40)]

    state = fan_out(return_state=True)
    assert state.name == "TimedOut"
    assert flow_run_context.get() is None  # the flow's context did not leak

    @task(name="standalone-after")
    def standalone():
        return "alone"

    assert standalone() == "alone"
    assert next(client.list_task_runs(task_keys=["standalone-after"], limit=1)).flow_run_id == ""
    run = next(client.list_flow_runs(flow_names=["times-out-waiting"], limit=1))
    deadline = time.monotonic() + 10
    while True:
        finals = {t.state.type for t in client.list_task_runs(flow_run_ids=[run.id], limit=100)}
        if finals <= {StateType.CANCELLED, StateType.COMPLETED} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert finals == {StateType.CANCELLED}, finals


def test_async_tasks_stopped_with_their_flow_end_cancelled(client):
    @task
    async def waits():
        await asyncio.sleep(10)

    # Long enough for both task runs to be set up first, whatever the load.
    @flow(name="async-times-out", timeout_seconds=1.5)
    async def outer():
        await asyncio.gather(waits(), waits())

    state = asyncio.run(outer(return_state=True))
    assert state.name == "TimedOut"
    run = next(client.list_flow_runs(flow_names=["async-times-out"], limit=1))
    finals = [t.state.type for t in client.list_task_runs(flow_run_ids=[run.id])]
    assert finals == [StateType.CANCELLED, StateType.CANCELLED]


def finals_of(client, flow_name: str) -> tuple[object, list[object]]:
    """The newest flow run of that name and the final states of its task runs, once final."""
    run = next(client.list_flow_runs(flow_names=[flow_name], limit=1))
    deadline = time.monotonic() + 30
    while True:
        task_runs = list(client.list_task_runs(flow_run_ids=[run.id], limit=100))
        if all(t.state.is_final() for t in task_runs) or time.monotonic() > deadline:
            return run, task_runs
        time.sleep(0.05)


@pytest.mark.parametrize("subflow_options", [{}, {"timeout_seconds": 30, "retries": 1}])
def test_a_timeout_reaching_a_task_inside_a_subflow_stops_both(client, subflow_options):
    """Neither the subflow (with or without its own timeout and retries) nor its task takes
    the parent's timeout for its own: both end Cancelled, the parent TimedOut."""
    name = f"parent-{len(subflow_options)}"

    ran = []

    @task
    def step():
        busy_for(UNSTOPPED_SECONDS)
        ran.append("to its end")

    @flow(name=f"{name}-sub", **subflow_options)
    def inner():
        step()

    # Long enough for the subflow and its task to be set up first, whatever the load.
    @flow(name=name, timeout_seconds=1.5)
    def outer():
        inner()

    state = outer(return_state=True)
    assert state.name == "TimedOut"
    assert ran == []  # stopped, not run to its end
    subflow, (task_run,) = finals_of(client, f"{name}-sub")
    assert [s.name for s in client.list_states(subflow.id)] == ["Pending", "Running", "Cancelled"]
    assert subflow.state.message == "stopped: the run around it timed out"
    assert task_run.state.type is StateType.CANCELLED


def test_a_task_called_in_a_finally_after_the_timeout_runs_once(client):
    """The timeout is raised in the flow's code once: cleanup code may still call tasks."""
    ran = []

    @task
    def cleanup(step: str) -> str:
        ran.append(step)
        return step

    @flow(name="cleans-up", timeout_seconds=0.3)
    def outer():
        try:
            for _ in range(100):
                time.sleep(0.05)
        finally:
            cleanup("first")
            cleanup("second")

    assert outer(return_state=True).name == "TimedOut"
    assert ran == ["first", "second"]
    _, task_runs = finals_of(client, "cleans-up")
    assert {t.state.name for t in task_runs} == {"Completed"}


@pytest.mark.parametrize("mode", ["inline", "submit"])
def test_a_flow_timeout_stops_a_task_waiting_to_retry(client, mode):
    attempts = []

    # The retry's delay outlasts any load: only the flow's timeout can end the wait.
    @task(retries=1, retry_delay_seconds=UNSTOPPED_SECONDS)
    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ValueError("the first attempt fails")

    @flow(name=f"stops-retry-{mode}", timeout_seconds=1)
    def outer():
        if mode == "inline":
            flaky()
        else:
            flaky.submit().result()

    state = outer(return_state=True)
    assert state.name == "TimedOut"
    _, (task_run,) = finals_of(client, f"stops-retry-{mode}")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"
    assert len(attempts) == 1  # no second attempt after the flow timed out


def test_a_timeout_while_submitting_leaves_no_task_run_behind(client):
    @task
    def noop(i: int) -> int:
        return i

    @flow(name="submits-until-stopped", timeout_seconds=0.3)
    def submits():
        i = 0
        while True:
            noop.submit(i)
            i += 1

    for _ in range(3):
        assert submits(return_state=True).name == "TimedOut"
    for run in client.list_flow_runs(flow_names=["submits-until-stopped"], limit=3):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = {t.state.name for t in client.list_task_runs(flow_run_ids=[run.id])}
            if names <= {"Completed", "Cancelled"}:
                break
            time.sleep(0.1)
        assert names <= {"Completed", "Cancelled"}, names


def test_a_cancelled_error_from_async_task_code_is_not_taken_for_a_cancel(client):
    """Only a cancel of the asyncio task stops a task run with its flow: its own code raising
    CancelledError crashes it."""

    @task(name="raises-cancelled-error")
    async def inner():
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @flow(name="async-own-cancelled-error")
    async def outer():
        return await inner(return_state=True)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(outer())
    (task_run,) = client.list_task_runs(task_keys=["raises-cancelled-error"], limit=1)
    assert task_run.state.type is StateType.CRASHED


def test_a_timeout_the_code_caught_is_not_raised_again_by_a_later_task_call(client):
    """Catching the interrupt is the code's choice: a task called afterwards runs, and the
    flow ends as its code returns."""
    ran = []

    @task
    def after() -> str:
        ran.append("after")
        return "after"

    @flow(name="catches-its-timeout", timeout_seconds=0.3)
    def outer():
        try:
            for _ in range(100):
                time.sleep(0.05)
        except RunTimedOut:
            ran.append("caught")
        return after()

    state = outer(return_state=True)
    assert ran == ["caught", "after"]
    assert state.type is StateType.COMPLETED
    assert state.result() == "after"


@pytest.mark.parametrize("mode", ["inline", "submit"])
def test_a_task_still_being_set_up_when_the_timeout_fires_is_stopped(client, mode):
    """The timeout fires while the task call is still in the engine's hands (here, working out
    its cache key): the task does not run to its end after the flow was stopped."""

    def slow_key(context, parameters) -> str:
        time.sleep(3)  # the flow's 1 s timeout fires meanwhile, the key's set-up done before it
        return "slow-key"

    ran = []

    @task(name=f"set-up-slowly-{mode}", cache_key_fn=slow_key)
    def long_step() -> str:
        busy_for(UNSTOPPED_SECONDS)
        ran.append("to its end")
        return "ran to its end"

    @flow(name=f"times-out-in-set-up-{mode}", timeout_seconds=1)
    def outer():
        return long_step() if mode == "inline" else long_step.submit().result()

    assert outer(return_state=True).name == "TimedOut"
    _, (task_run,) = finals_of(client, f"times-out-in-set-up-{mode}")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"
    assert ran == []  # stopped, not run to its end


def test_a_task_waiting_for_a_concurrency_slot_stops_with_its_flow(client):
    client.create_concurrency_limit("one-slot", 1)
    holding, release = threading.Event(), threading.Event()
    ran = []

    @task(name="holds-the-slot", tags=["one-slot"])
    def holder():
        holding.set()
        release.wait(UNSTOPPED_SECONDS)  # the slot is free only once the flow call returned

    @task(name="waits-for-the-slot", tags=["one-slot"])
    def waiter():
        ran.append("got the slot")
        return "ran"

    @flow(name="times-out-waiting-for-a-slot", timeout_seconds=1)
    def outer():
        return waiter()

    other = threading.Thread(target=holder)
    other.start()
    try:
        assert holding.wait(30)
        state = outer(return_state=True)
        assert other.is_alive()  # the WAIT ended with the timeout: the slot is still held
    finally:
        release.set()
        other.join()
    assert state.name == "TimedOut"
    assert ran == []
    _, (task_run,) = finals_of(client, "times-out-waiting-for-a-slot")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"


def test_an_async_flow_timeout_stops_its_submitted_sync_task(client):
    ran = []

    @task
    def sleeper():
        busy_for(UNSTOPPED_SECONDS)
        ran.append("to its end")

    @flow(name="async-flow-sync-task", timeout_seconds=AFTER_SET_UP_SECONDS)
    async def outer():
        sleeper.submit()
        await asyncio.sleep(UNSTOPPED_SECONDS)

    assert asyncio.run(outer(return_state=True)).name == "TimedOut"
    _, (task_run,) = finals_of(client, "async-flow-sync-task")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"
    assert ran == []  # stopped, not run to its end


@pytest.mark.parametrize("mode", ["result", "sleep"])
def test_a_sync_flow_timeout_stops_its_submitted_async_task(client, mode):
    ran = []

    @task
    async def waits():
        await asyncio.sleep(UNSTOPPED_SECONDS)
        ran.append("to its end")

    @flow(name=f"sync-flow-async-task-{mode}", timeout_seconds=AFTER_SET_UP_SECONDS)
    def outer():
        future = waits.submit()
        if mode == "result":
            future.result()
        else:
            time.sleep(UNSTOPPED_SECONDS)

    assert outer(return_state=True).name == "TimedOut"
    _, (task_run,) = finals_of(client, f"sync-flow-async-task-{mode}")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"
    assert ran == []  # stopped, not run to its end


def test_a_task_waiting_for_its_inputs_ends_cancelled_with_its_flow(client):
    """Stopped with its flow, not Failed as if its upstream had failed."""

    @task(name="slow-upstream")
    def upstream() -> int:
        for _ in range(1200):  # a minute: the timeout stops it
            time.sleep(0.05)
        return 1

    @task(name="waiting-downstream")
    def downstream(x: int) -> int:
        return x + 1

    # Time for both submits first (0.3 s was too short at load 18: the downstream's run was
    # not made yet when the flow timed out).
    @flow(name="times-out-before-inputs", timeout_seconds=AFTER_SET_UP_SECONDS)
    def outer():
        downstream.submit(upstream.submit()).result()

    assert outer(return_state=True).name == "TimedOut"
    _, task_runs = finals_of(client, "times-out-before-inputs")
    finals = {t.task_key: t.state for t in task_runs}
    assert {key: state.type for key, state in finals.items()} == {
        "slow-upstream": StateType.CANCELLED,
        "waiting-downstream": StateType.CANCELLED,
    }
    assert finals["waiting-downstream"].message == "stopped: the run around it timed out"


def test_a_timeout_caught_as_it_comes_out_of_an_inline_task_lets_later_tasks_run(client):
    ran = []

    @task(name="slow-inline")
    def slow():
        busy_for(UNSTOPPED_SECONDS)

    @task(name="runs-after-the-catch")
    def after() -> str:
        ran.append("after")
        return "after"

    @flow(name="catches-what-the-task-passed-on", timeout_seconds=AFTER_SET_UP_SECONDS)
    def outer():
        try:
            slow()
        except RunTimedOut:
            ran.append("caught")
        return after()

    state = outer(return_state=True)
    assert ran == ["caught", "after"]
    assert state.type is StateType.COMPLETED
    _, task_runs = finals_of(client, "catches-what-the-task-passed-on")
    finals = {t.task_key: t.state.name for t in task_runs}
    assert finals == {"slow-inline": "Cancelled", "runs-after-the-catch": "Completed"}


def test_a_task_that_caught_its_own_timeout_still_stops_with_its_flow(client):
    fallbacks = []

    @task(name="catches-its-own-timeout", timeout_seconds=0.1)
    def worker() -> str:
        try:
            time.sleep(UNSTOPPED_SECONDS)  # ended by the task's own timeout, whatever the load
        except RunTimedOut:
            fallbacks.append("handled: it goes on with a fallback")
        busy_for(UNSTOPPED_SECONDS)
        fallbacks.append("finished")
        return "finished"

    # Well after the task's own timeout, whatever the load.
    @flow(name="outer-timeout-after-the-task-caught-its-own", timeout_seconds=1)
    def outer():
        return worker()

    assert outer(return_state=True).name == "TimedOut"
    assert fallbacks == ["handled: it goes on with a fallback"]  # stopped, not run to its end
    _, (task_run,) = finals_of(client, "outer-timeout-after-the-task-caught-its-own")
    assert task_run.state.type is StateType.CANCELLED
    assert task_run.state.message == "stopped: the run around it timed out"


def test_a_flow_that_caught_its_timeout_can_still_be_cancelled(client):
    steps = []

    @flow(name="caught-then-cancelled", timeout_seconds=0.2)
    def outer():
        run_id = flow_run_context.get().flow_run.id
        try:
            time.sleep(UNSTOPPED_SECONDS)  # ended by the timeout, whatever the load
        except RunTimedOut:
            steps.append("caught")
        client.set_state(run_id, State(StateType.CANCELLING), force=True)
        busy_for(UNSTOPPED_SECONDS)
        steps.append("ran to its end")

    state = outer(return_state=True)
    assert steps == ["caught"]  # stopped, not run to its end
    assert state.type is StateType.CANCELLED


def test_a_cancel_that_comes_before_the_code_starts_stops_it_at_once(client):
    """Here the cancel arrives while an on_running hook runs, after Running was accepted."""
    steps = []

    def cancels(flow, flow_run, state):
        client.set_state(flow_run.id, State(StateType.CANCELLING), force=True)
        engine = flow_run_context.get().engine  # the hook's context is the run's
        # The code starts only once the cancel reached this process (the supervisor's stream)
        wait_until(lambda: engine.stop.cancel_state is not None, what="the cancel to arrive")

    @flow(name="cancelled-in-its-on-running-hook", on_running=[cancels])
    def outer():
        busy_for(UNSTOPPED_SECONDS)
        steps.append("ran to its end")

    state = outer(return_state=True)
    assert steps == []  # stopped, not run to its end
    assert state.type is StateType.CANCELLED


def test_an_async_task_that_returns_as_its_flow_times_out_is_not_crashed(client):
    """The cancel meant for its code comes after the code returned: it must not land in the
    engine's own work (which took it for a crash)."""

    @task(name="blocks-then-returns")
    async def blocks() -> int:
        time.sleep(2)  # noqa: ASYNC251  # no await left: the cancel cannot reach the code
        return 1

    # The task's code starts well before the timeout, whatever the load, and blocks past it.
    @flow(name="times-out-as-async-task-returns", timeout_seconds=1)
    def outer():
        return blocks.submit().result()

    assert outer(return_state=True).name == "TimedOut"
    _, (task_run,) = finals_of(client, "times-out-as-async-task-returns")
    assert task_run.state.name == "Completed"
    assert [s.name for s in client.list_states(task_run.id)] == ["Pending", "Running", "Completed"]


def test_a_timeout_that_lands_in_a_finaliser_is_sent_again(client):
    """Python drops an exception raised in `__del__`: the timeout, landing there, is sent again
    and stops the flow. (A code that spends nearly all its time in finalisers may still see
    every attempt dropped until it leaves them.)"""

    class Handle:
        def __del__(self) -> None:
            self.closed = True

    @flow(name="times-out-among-finalisers", timeout_seconds=0.2)
    def busy() -> int:
        made = 0
        end = time.monotonic() + UNSTOPPED_SECONDS
        while time.monotonic() < end:
            Handle()  # freed at once: __del__ runs on this thread
            made += 1
        return made  # a run to its end is Completed

    for _ in range(10):
        assert busy(return_state=True).name == "TimedOut"
