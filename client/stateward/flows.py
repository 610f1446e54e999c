"""`@flow`: a function whose calls are orchestrated flow runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar, overload

from stateward._hooks import Hook, HookedFunction, unique_tags

P = ParamSpec("P")
R = TypeVar("R")


class Flow(HookedFunction, Generic[P, R]):
    """A flow: calling it runs a flow run (a subflow, inside another flow run)."""

    option_readers: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "tags": unique_tags,
        "retries": lambda value: value or 0,
        "retry_delay_seconds": lambda value: value or 0,
    }

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        version: str | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        tags: Iterable[str] | None = None,
        log_prints: bool | None = None,
        validate_parameters: bool = True,
        persist_result: bool | None = None,
        on_completion: Iterable[Hook] | None = None,
        on_failure: Iterable[Hook] | None = None,
        on_cancellation: Iterable[Hook] | None = None,
        on_crashed: Iterable[Hook] | None = None,
        on_running: Iterable[Hook] | None = None,
        **ignored: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError("@flow decorates a function")
        self.fn = fn
        self.name = name or fn.__name__.replace("_", "-")
        self.description = description or inspect.getdoc(fn)
        self.version = version
        self.flow_run_name = flow_run_name
        self.retries = retries or 0
        self.retry_delay_seconds = retry_delay_seconds or 0.0
        self.timeout_seconds = timeout_seconds
        self.tags = unique_tags(tags)
        self.log_prints = bool(log_prints)
        self.validate_parameters = validate_parameters
        self.persist_result = persist_result
        self.init_hooks(
            on_completion=on_completion,
            on_failure=on_failure,
            on_cancellation=on_cancellation,
            on_crashed=on_crashed,
            on_running=on_running,
        )
        self.isasync = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__wrapped__ = fn

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return (float(self.retry_delay_seconds),) if self.retry_delay_seconds else ()

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        from stateward._flow_engine import call_flow

        return call_flow(self, args, kwargs, return_state=return_state)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(__fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Make a function a flow, bare (`@flow`) or with options (`@flow(retries=1)`)."""
    if __fn is not None:
        return Flow(__fn, **options)

    def decorate(fn: Callable[P, R]) -> Flow[P, R]:
        return Flow(fn, **options)

    return decorate
