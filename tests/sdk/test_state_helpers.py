"""`stateward.states`' helpers and `State.result()` on runs that have not ended, as the
reference's `prefect.states`: get_state_exception, raise_state_exception, get_state_result,
is_state_iterable; UnfinishedRun while a run runs, PausedRun while it is paused. Real flows on a
real server (the session's) and on the embedded default (a subprocess)."""

from __future__ import annotations

import json
import threading

import pytest

from stateward import flow, pause_flow_run, resume_flow_run, task
from stateward.exceptions import FailedRun, PausedRun, UnfinishedRun
from stateward.states import (
    Completed,
    Failed,
    State,
    StateType,
    get_state_exception,
    get_state_result,
    is_state_iterable,
    raise_state_exception,
)
from tests.sdk.conftest import python
from tests.support import wait_until

pytestmark = pytest.mark.usefixtures("sdk_server")

release = threading.Event()


@task
def held() -> int:
    release.wait(30)
    return 7


@task
def breaks(x: int) -> int:
    if x == 2:
        raise ValueError(f"no {x}")
    return x


def test_a_running_runs_state_has_no_result_yet():
    release.clear()

    @flow
    def asks_early() -> tuple[str, str, int]:
        future = held.submit()
        wait_until(lambda: future.state.is_running(), timeout=30, what="the task to run")
        with pytest.raises(UnfinishedRun, match="Running") as raised:
            future.state.result(raise_on_failure=False)  # no matter: there is none
        release.set()
        value = future.result()
        return future.state.name, type(raised.value).__name__, value

    assert asks_early() == ("Completed", "UnfinishedRun", 7)


def test_a_paused_runs_state_has_no_result(client):
    name = "sdk-state-paused-result"
    seen: list[BaseException] = []

    def look_then_resume() -> None:
        def paused() -> bool:
            runs = list(client.list_flow_runs(flow_names=[name], limit=1))
            return bool(runs) and runs[0].state.type is StateType.PAUSED

        wait_until(paused, timeout=30, what="the pause")
        run = next(client.list_flow_runs(flow_names=[name], limit=1))
        try:
            run.state.result()
        except PausedRun as error:
            seen.append(error)
        resume_flow_run(run.id)

    @flow(name=name)
    def waits() -> str:
        pause_flow_run(timeout=60, poll_interval=30)
        return "on"

    thread = threading.Thread(target=look_then_resume, daemon=True)
    thread.start()
    assert waits() == "on"
    thread.join(10)
    assert len(seen) == 1 and "paused" in str(seen[0])


def test_the_exception_of_failed_states_and_none_for_the_others():
    @flow
    def mixed() -> tuple[list[State], State]:
        return breaks.map([1, 2], return_state=True), breaks(2, return_state=True)

    states, failed = mixed()
    completed, failed_in_map = states
    assert is_state_iterable(states) and not is_state_iterable([]) and not is_state_iterable([1])
    assert not is_state_iterable({"a": completed})
    error = get_state_exception(failed)
    assert isinstance(error, ValueError) and str(error) == "no 2"
    with pytest.raises(ValueError, match="no 2"):
        raise_state_exception(failed_in_map)
    assert raise_state_exception(completed) is None
    with pytest.raises(ValueError, match="expected a Failed, Crashed or Cancelled state"):
        get_state_exception(completed)
    assert get_state_result(completed) == 1
    assert isinstance(get_state_result(failed, raise_on_failure=False), ValueError)


def test_a_failed_state_judged_by_the_states_it_returned_gives_the_first_failures():
    @flow
    def returns_states() -> list[State]:
        return [Completed(1), breaks(2, return_state=True), Failed(message="later")]

    state = returns_states(return_state=True)
    assert state.is_failed()
    assert str(get_state_exception(state)) == "no 2"
    bare = Failed(message="nothing carried")
    assert isinstance(get_state_exception(bare), FailedRun)
    assert str(get_state_exception(bare)) == "nothing carried"


def test_a_failed_runs_exception_read_in_another_process_on_the_embedded_default(tmp_path):
    result = python(
        """
        from stateward import flow
        from stateward.runtime import flow_run

        @flow
        def refuses():
            print(flow_run.id, flush=True)
            raise LookupError("not today")

        refuses(return_state=True)
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split()[0]
    reader = python(
        f"""
        import json
        from stateward import get_client
        from stateward.states import get_state_exception, raise_state_exception

        state = get_client().get_flow_run({run_id!r}).state
        error = get_state_exception(state)
        try:
            raise_state_exception(state)
        except BaseException as raised:
            print(json.dumps([type(error).__name__, str(error), raised is not None]))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert reader.returncode == 0, reader.stderr
    assert json.loads(reader.stdout.splitlines()[-1]) == ["LookupError", "not today", True]
