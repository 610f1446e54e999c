"""`stateward.futures` as the reference's `prefect.futures`: `wait` answers which futures are
done, `as_completed` yields them as their runs end (or raises TimeoutError), a future calls
back when done, and a list's `result(timeout=)` gives up in time. Real flows, on a real server
(the session's) and on the embedded default (a subprocess)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, defaultdict

import pytest

from stateward import flow, quote, task
from stateward.exceptions import RunTimedOut
from stateward.futures import (
    DoneAndNotDoneFutures,
    StatewardFuture,
    as_completed,
    resolve_futures_to_results,
    resolve_futures_to_states,
    wait,
)
from tests.sdk.conftest import python

pytestmark = pytest.mark.usefixtures("sdk_server")

# Set by the test to let `held` end; each test makes its own (tasks run in this process's
# threads, so they see it).
release = threading.Event()


@task
def held(name: str) -> str:
    """Ends when the test releases it (or after 30 s, so that a failing test ends too)."""
    release.wait(30)
    return name


@task
def quick(name: str) -> str:
    return name


@pytest.fixture(autouse=True)
def fresh_release():
    global release
    release = threading.Event()
    yield
    release.set()


def test_as_completed_yields_each_future_as_its_run_ends():
    @flow
    def first_come() -> list[str]:
        slow, fast = held.submit("slow"), quick.submit("fast")
        order = []
        for future in as_completed([slow, fast, fast]):  # a future given twice comes once
            order.append(future.result())
            release.set()  # the slow one may end once the fast one came
        return order

    assert first_come() == ["fast", "slow"]


def test_as_completed_raises_timeout_error_naming_the_unfinished():
    @flow
    def too_slow() -> tuple[list[str], str]:
        slow, fast = held.submit("slow"), quick.submit("fast")
        fast.wait()
        came = []
        started = time.monotonic()
        try:
            for future in as_completed([slow, fast], timeout=0.3):
                came.append(future.result())
        except TimeoutError as error:
            waited = time.monotonic() - started
            assert 0.3 <= waited < 10, waited
            release.set()
            return came, str(error)
        raise AssertionError("no TimeoutError")

    assert too_slow() == (["fast"], "1 (of 2) futures unfinished")


def test_wait_answers_the_done_and_the_not_done():
    @flow
    def partly() -> tuple[list[str], list[str], list[str]]:
        slow, fast = held.submit("slow"), quick.submit("fast")
        fast.wait()
        first = wait([slow, fast, fast], timeout=0.2)
        assert isinstance(first, DoneAndNotDoneFutures)
        done, not_done = first
        release.set()
        second = wait([slow, fast])
        return (
            [f.result() for f in done],
            [f.result() for f in not_done],
            [*sorted(f.result() for f in second.done), str(len(second.not_done))],
        )

    assert partly() == (["fast"], ["slow"], ["fast", "slow", "0"])


def test_a_futures_callback_runs_when_its_run_ends_or_at_once_when_it_has():
    called: list[tuple[str, bool]] = []

    @flow
    def calling_back() -> list[tuple[str, bool]]:
        slow = held.submit("slow")
        slow.add_done_callback(lambda f: called.append((f.result(), f is slow)))
        assert called == []  # not before the run ended
        release.set()
        slow.wait()
        deadline = time.monotonic() + 10
        while not called and time.monotonic() < deadline:  # called in the finishing thread
            time.sleep(0.01)
        fast = quick.submit("fast")
        fast.wait()
        fast.add_done_callback(lambda f: called.append((f.result(), f is fast)))
        return list(called)  # the second call came at once, in this thread

    assert calling_back() == [("slow", True), ("fast", True)]


def test_a_future_lists_result_gives_up_after_its_timeout():
    threading.Timer(20, release.set).start()  # without a timeout the test still ends

    @flow
    def give_up() -> str:
        futures = held.map(["a", "b"])
        started = time.monotonic()
        try:
            futures.result(timeout=0.3)
        except TimeoutError as error:
            assert time.monotonic() - started < 10
            release.set()
            assert futures.result() == ["a", "b"]
            return str(error)
        return "no TimeoutError"

    assert give_up() == "Timed out waiting for all futures to complete within 0.3 seconds"


def test_futures_are_statewardfutures_with_their_task_run_ids():
    @flow
    def one() -> tuple[bool, str, str]:
        future = quick.submit("x")
        future.wait()
        return isinstance(future, StatewardFuture), future.task_run_id, future.state.name

    is_future, run_id, state = one()
    assert is_future and len(run_id) == 36 and state == "Completed"


def test_as_completed_and_wait_on_the_embedded_default(tmp_path):
    result = python(
        """
        import json
        from stateward import flow, task
        from stateward.futures import as_completed, wait

        @task
        def square(x):
            return x * x

        @flow
        def squares():
            futures = square.map([1, 2, 3])
            done, not_done = wait(futures)
            return sorted(f.result() for f in as_completed(futures)), len(done), len(not_done)

        print(json.dumps(squares()))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == [[1, 4, 9], 3, 0]


@task
def fails() -> None:
    raise KeyError("gone")


def test_resolving_futures_inside_collections_to_states_and_results():
    @flow
    def nested() -> tuple[object, object, str]:
        one, two, three = quick.submit("one"), quick.submit("two"), quick.submit("three")
        shape = {"a": [one, (two,)], "b": {three}, "q": quote(one), "plain": 1}
        states = resolve_futures_to_states(shape)
        results = resolve_futures_to_results(shape)
        failing = fails.submit()
        try:
            resolve_futures_to_results([failing])
        except KeyError as error:
            raised = str(error)
        return states, results, raised

    states, results, raised = nested()
    assert [s.name for s in (states["a"][0], states["a"][1][0], *states["b"])] == ["Completed"] * 3
    assert isinstance(states["q"], quote) and isinstance(states["q"].unquote(), StatewardFuture)
    assert results == {"a": ["one", ("two",)], "b": {"three"}, "q": results["q"], "plain": 1}
    assert raised == "'gone'"


def test_resolving_futures_keeps_the_type_of_a_dict_subclass():
    @flow
    def shaped() -> tuple[object, object]:
        one, two = quick.submit("one"), quick.submit("two")
        ordered = resolve_futures_to_results(OrderedDict([("z", one), ("a", two)]))
        counts = resolve_futures_to_results(defaultdict(list, {"one": [one]}))
        return ordered, counts

    ordered, counts = shaped()
    assert type(ordered) is OrderedDict and list(ordered.items()) == [("z", "one"), ("a", "two")]
    assert type(counts) is defaultdict and counts == {"one": ["one"]}
    assert counts["missing"] == []  # its default_factory came along


def test_a_flows_timeout_interrupts_its_wait_in_as_completed():
    waited: list[float] = []

    @flow(timeout_seconds=0.5)
    def times_out() -> None:
        future = held.submit("slow")
        started = time.monotonic()
        try:
            for _ in as_completed([future]):
                pass
        except RunTimedOut:
            waited.append(time.monotonic() - started)
            release.set()
            raise

    state = times_out(return_state=True)
    assert state.name == "TimedOut"
    assert len(waited) == 1 and waited[0] < 10, waited  # not the held task's 30 s


def test_code_written_for_the_reference_names_runs_unchanged():
    """`PrefectFuture`, `PrefectFutureList` and `PrefectException`, imported from the module
    paths the reference has them in, are what Stateward's flows give and raise."""
    from stateward.exceptions import PrefectException
    from stateward.futures import PrefectFuture, PrefectFutureList

    @task
    def broken() -> None:
        raise PrefectException("a task raising the reference's root error")

    @flow
    def written_for_the_reference() -> tuple[bool, bool, str]:
        futures: PrefectFutureList[str] = quick.map(["a", "b"])
        one: PrefectFuture[str] = quick.submit("c")
        try:
            broken.submit().result()
        except PrefectException as error:  # StatewardError and its subclasses
            caught = str(error)
        return (
            isinstance(futures, PrefectFutureList),
            all(isinstance(f, PrefectFuture) for f in [*futures, one]),
            caught,
        )

    is_list, are_futures, caught = written_for_the_reference()
    assert is_list and are_futures
    assert caught == "a task raising the reference's root error"


class Abandoned(BaseException):
    """Not an Exception: the engine crashes the run and lets it through its worker thread."""


@task
def abandons() -> None:
    raise Abandoned("gave up")


def test_a_crashed_futures_state_is_its_runs_crashed_state():
    # A task run ended by a BaseException is Crashed; its future's `state` says so (the
    # reference's reads the run's state), and so do what read it: repr, resolving to states.
    # It raised the BaseException, as a property, in repr and in resolve_futures_to_states.
    @flow
    def crashing() -> tuple[str, str, str]:
        future = abandons.submit()
        future.wait()
        (resolved,) = resolve_futures_to_states([future])
        return future.state.type.name, resolved.type.name, repr(future)

    state_type, resolved_type, shown = crashing()
    assert (state_type, resolved_type) == ("CRASHED", "CRASHED")
    assert "Crashed" in shown
