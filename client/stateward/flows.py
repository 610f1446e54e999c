"""`@flow`: a function whose calls are orchestrated flow runs."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from stateward._hooks import Hook
from stateward.tasks import _hook_list

P = ParamSpec("P")
R = TypeVar("R")


class Flow(Generic[P, R]):
    """A flow: calling it runs a flow run (a subflow, inside another flow run)."""

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
        self.tags = tuple(dict.fromkeys(tags or ()))
        self.log_prints = bool(log_prints)
        self.validate_parameters = validate_parameters
        self.persist_result = persist_result
        self.on_completion_hooks = _hook_list(on_completion)
        self.on_failure_hooks = _hook_list(on_failure)
        self.on_cancellation_hooks = _hook_list(on_cancellation)
        self.on_crashed_hooks = _hook_list(on_crashed)
        self.on_running_hooks = _hook_list(on_running)
        self.isasync = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__wrapped__ = fn

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return (float(self.retry_delay_seconds),) if self.retry_delay_seconds else ()

    def hooks(self, kind: str) -> list[Hook]:
        hooks: list[Hook] = getattr(self, f"{kind}_hooks")
        return hooks

    def with_options(self, **changes: Any) -> Flow[P, R]:
        """A copy with some options replaced; a given hook list replaces the old one."""
        clone = copy.copy(self)
        options = dict(changes)
        for kind in ("on_completion", "on_failure", "on_cancellation", "on_crashed", "on_running"):
            if kind in options:
                setattr(clone, f"{kind}_hooks", _hook_list(options.pop(kind)))
            else:
                setattr(clone, f"{kind}_hooks", list(self.hooks(kind)))
        for key, value in options.items():
            if key == "tags":
                value = tuple(dict.fromkeys(value or ()))
            elif key in ("retries", "retry_delay_seconds"):
                value = value or 0
            if not hasattr(clone, key):
                raise TypeError(f"with_options() got an unknown option {key!r}")
            setattr(clone, key, value)
        return clone

    def on_completion(self, hook: Hook) -> Hook:
        self.on_completion_hooks.append(hook)
        return hook

    def on_failure(self, hook: Hook) -> Hook:
        self.on_failure_hooks.append(hook)
        return hook

    def on_cancellation(self, hook: Hook) -> Hook:
        self.on_cancellation_hooks.append(hook)
        return hook

    def on_crashed(self, hook: Hook) -> Hook:
        self.on_crashed_hooks.append(hook)
        return hook

    def on_running(self, hook: Hook) -> Hook:
        self.on_running_hooks.append(hook)
        return hook

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
