"""Futures of submitted task runs (`.result()`, `.wait()`, `.state`, `.add_done_callback()`),
lists of them, and waiting for several at once (`wait`, `as_completed`), as the reference's
`prefect.futures` has them."""

from __future__ import annotations

import concurrent.futures
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from stateward.states import State, StateType
from stateward.utilities.annotations import quote

R = TypeVar("R")


class StatewardFuture(Generic[R]):
    """A task run executing in the background; resolves to its final State. The reference's
    PrefectFuture."""

    def __init__(
        self,
        task_run_id: str,
        future: concurrent.futures.Future[State],
        current_state: Callable[[], State | None] | None = None,
        task_run_name: str = "",
    ) -> None:
        self.task_run_id = task_run_id
        self._future = future
        self._current_state = current_state
        self._task_run_name = task_run_name  # for messages about the run ("": not known)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the task run is final, or `timeout` seconds (None: no limit) pass; returns
        None either way, as the reference's does (`.state` then says which)."""
        concurrent.futures.wait([self._future], timeout=timeout)

    def done(self) -> bool:
        """Whether the task run is final."""
        return self._future.done()

    @property
    def state(self) -> State:
        """The final state once done; while the run is in flight, its current state. Never
        raises: a run ended by a BaseException (its worker let it through) has the state it
        was given, Crashed."""
        future = self._future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        current = self._current_state() if self._current_state is not None else None
        return current or State(StateType.PENDING)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task's return value, waiting for it (at most `timeout` seconds, then
        TimeoutError); raises the task's exception if it failed, unless `raise_on_failure` is
        False (then the exception is returned), as the reference's does."""
        try:
            state = self._future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"task run {self.task_run_id} did not finish in {timeout}s"
            ) from None
        value: R = state.result(raise_on_failure=raise_on_failure)
        return value

    def add_done_callback(self, fn: Callable[[StatewardFuture[R]], object]) -> None:
        """Call `fn(self)` once the task run is final: at once, in this thread, if it is
        already; otherwise in the thread that finishes it. As in the reference (and in
        concurrent.futures), an exception `fn` raises is logged and ignored."""
        self._future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"StatewardFuture(task_run_id={self.task_run_id!r}, state={self.state!r})"


class StatewardFutureList(list[StatewardFuture[R]]):
    """The futures of `Task.map`: wait for all, or collect all results. The reference's
    PrefectFutureList."""

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every task run is final, or `timeout` seconds pass (no error then)."""
        wait(self, timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        """Every task's return value, in order, waiting at most `timeout` seconds for all of
        them (then TimeoutError, as the reference raises); the first failed task's exception
        is raised unless `raise_on_failure` is False (then exceptions are in the list)."""
        if wait(self, timeout).not_done:
            raise TimeoutError(
                f"Timed out waiting for all futures to complete within {timeout} seconds"
            )
        return [future.result(raise_on_failure=raise_on_failure) for future in self]


class DoneAndNotDoneFutures(NamedTuple, Generic[R]):
    """What `wait` returns: the futures that are final (`done`) and those that are not yet
    (`not_done`), as sets."""

    done: set[StatewardFuture[R]]
    not_done: set[StatewardFuture[R]]


def wait(
    futures: Iterable[StatewardFuture[R]], timeout: float | None = None
) -> DoneAndNotDoneFutures[R]:
    """Wait until every future's task run is final, or `timeout` seconds (None: no limit)
    pass. Returns the named pair of sets `(done, not_done)`; a future given twice is in it
    once. Mirrors the reference's `prefect.futures.wait` (and concurrent.futures.wait): a
    timeout is no error."""
    unique = set(futures)
    concurrent.futures.wait([future._future for future in unique], timeout=timeout)
    done = {future for future in unique if future.done()}
    return DoneAndNotDoneFutures(done, unique - done)


def as_completed(
    futures: Iterable[StatewardFuture[R]], timeout: float | None = None
) -> Iterator[StatewardFuture[R]]:
    """Yield each future as its task run becomes final (those final already first), each once
    however often it is given. When `timeout` seconds (None: no limit) pass from the first
    request for one with futures still unfinished, raises TimeoutError "N (of M) futures
    unfinished". Mirrors the reference's `prefect.futures.as_completed`."""
    by_inner: dict[concurrent.futures.Future[State], list[StatewardFuture[R]]] = {}
    for future in dict.fromkeys(futures):
        by_inner.setdefault(future._future, []).append(future)
    # concurrent.futures counts distinct inner futures; the message counts ours.
    total = sum(len(wrappers) for wrappers in by_inner.values())
    yielded = 0
    try:
        for inner in concurrent.futures.as_completed(by_inner, timeout=timeout):
            for future in by_inner[inner]:
                yielded += 1
                yield future
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{total - yielded} (of {total}) futures unfinished") from None


def resolve_futures_to_states(expr: Any) -> Any:
    """`expr` with every future in it (itself, or inside lists, tuples, sets and dicts, at any
    depth; each collection keeps its type, an OrderedDict's order and a defaultdict's factory
    too) replaced by its run's final state, waiting for the runs; a `quote`d value and any
    other object are left as they are. Mirrors the reference's
    `prefect.futures.resolve_futures_to_states`."""
    return _replacing_futures(expr, _final_state)


def resolve_futures_to_results(expr: Any) -> Any:
    """As `resolve_futures_to_states`, with each future replaced by its task's return value;
    a failed run's exception is raised. Mirrors the reference's
    `prefect.futures.resolve_futures_to_results`."""
    return _replacing_futures(expr, StatewardFuture.result)


def _final_state(future: StatewardFuture[Any]) -> State:
    future.wait()
    return future.state


def _replacing_futures(expr: Any, replace: Callable[[StatewardFuture[Any]], Any]) -> Any:
    if isinstance(expr, StatewardFuture):
        return replace(expr)
    if isinstance(expr, quote):
        return expr
    if isinstance(expr, list):  # a StatewardFutureList too: a plain list of what replaced them
        return [_replacing_futures(item, replace) for item in expr]
    if isinstance(expr, tuple):
        items = [_replacing_futures(item, replace) for item in expr]
        return type(expr)(*items) if hasattr(expr, "_fields") else type(expr)(items)
    if isinstance(expr, set | frozenset):
        return type(expr)(_replacing_futures(item, replace) for item in expr)
    if isinstance(expr, dict):
        pairs = {
            _replacing_futures(key, replace): _replacing_futures(value, replace)
            for key, value in expr.items()
        }
        if type(expr) is dict:
            return pairs
        replaced = copy.copy(expr)  # an OrderedDict stays one, a defaultdict keeps its factory
        replaced.clear()
        replaced.update(pairs)
        return replaced
    return expr


# The reference's names, for code written for it (`from prefect.futures import PrefectFuture`
# becomes `from stateward.futures import PrefectFuture`): the same classes.
PrefectFuture = StatewardFuture
PrefectFutureList = StatewardFutureList

__all__ = [
    "DoneAndNotDoneFutures",
    "PrefectFuture",
    "PrefectFutureList",
    "StatewardFuture",
    "StatewardFutureList",
    "as_completed",
    "resolve_futures_to_results",
    "resolve_futures_to_states",
    "wait",
]
