"""Futures of submitted task runs: `.result()`, `.wait()`, `.state`, and lists of them."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from stateward.states import State, StateType

R = TypeVar("R")


class StatewardFuture(Generic[R]):
    """A task run executing in the background; resolves to its final State."""

    def __init__(
        self,
        task_run_id: str,
        future: concurrent.futures.Future[State],
        current_state: Callable[[], State | None] | None = None,
    ) -> None:
        self.task_run_id = task_run_id
        self._future = future
        self._current_state = current_state

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the task run is final (or `timeout` seconds pass)."""
        concurrent.futures.wait([self._future], timeout=timeout)

    def done(self) -> bool:
        return self._future.done()

    @property
    def state(self) -> State:
        """The final state once done; while the run is in flight, its current state."""
        if self._future.done():
            return self._future.result()
        current = self._current_state() if self._current_state is not None else None
        return current or State(StateType.PENDING)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task's return value, waiting for it; raises the task's exception if it failed."""
        try:
            state = self._future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"task run {self.task_run_id} did not finish in {timeout}s"
            ) from None
        value: R = state.result(raise_on_failure=raise_on_failure)
        return value

    def __repr__(self) -> str:
        return f"StatewardFuture(task_run_id={self.task_run_id!r}, state={self.state!r})"


class StatewardFutureList(list[StatewardFuture[R]]):
    """The futures of `Task.map`: wait for all, or collect all results."""

    def wait(self, timeout: float | None = None) -> None:
        concurrent.futures.wait([f._future for f in self], timeout=timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        self.wait(timeout)
        return [future.result(raise_on_failure=raise_on_failure) for future in self]


def wait(futures: Iterable[StatewardFuture[Any]], timeout: float | None = None) -> None:
    """Wait for every future."""
    concurrent.futures.wait([f._future for f in futures], timeout=timeout)
