"""`@flow`: a function whose calls are orchestrated flow runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from stateward._hooks import Hook, HookedFunction, decorator_for, function_name, unique_tags
from stateward._options import RetryDelay, retry_delays
from stateward._results import storage_folder
from stateward.task_runners import TaskRunner

P = ParamSpec("P")
R = TypeVar("R")


class Flow(HookedFunction, Generic[P, R]):
    """A flow: calling it runs a flow run (a subflow, inside another flow run).

    The options are the reference's (`tags` is Stateward's own); an unknown one raises
    TypeError. Those Stateward does not act on yet (see `_options.NOT_YET_ACTIVE`) are kept as
    attributes and named in a warning when a value asks for what they would do."""

    decorator = "@flow"

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: RetryDelay = None,
        task_runner: TaskRunner | type[TaskRunner] | None = None,
        description: str | None = None,
        timeout_seconds: float | None = None,
        validate_parameters: bool | None = None,
        persist_result: bool | None = None,
        result_storage: Any = None,
        result_serializer: Any = None,
        cache_result_in_memory: bool | None = None,
        log_prints: bool | None = None,
        tags: Iterable[str] | None = None,
        on_completion: Iterable[Hook] | None = None,
        on_failure: Iterable[Hook] | None = None,
        on_cancellation: Iterable[Hook] | None = None,
        on_crashed: Iterable[Hook] | None = None,
        on_running: Iterable[Hook] | None = None,
    ) -> None:
        self.keep_options(locals())  # first: exactly the options given, for with_options
        fn = self.take_function(fn)
        self.name = name or function_name(fn).replace("_", "-")
        self.description = description or inspect.getdoc(fn)
        self.version = version
        self.flow_run_name = flow_run_name
        self.retries = retries or 0
        self.retry_delay_seconds = retry_delay_seconds or 0
        if isinstance(task_runner, type) and issubclass(task_runner, TaskRunner):
            task_runner = task_runner()  # the class alone: its default settings
        if task_runner is not None and not isinstance(task_runner, TaskRunner):
            raise TypeError(
                f"task_runner must be a TaskRunner (ThreadPoolTaskRunner(), "
                f"ProcessPoolTaskRunner(), DaskTaskRunner()...), not {task_runner!r}"
            )
        self.task_runner = task_runner
        self.timeout_seconds = timeout_seconds
        self.tags = unique_tags(tags)
        self.log_prints = bool(log_prints)
        self.validate_parameters = validate_parameters is not False
        self.persist_result = persist_result
        self.result_storage = result_storage
        self.result_folder = storage_folder(result_storage)
        self.result_serializer = result_serializer
        self.cache_result_in_memory = cache_result_in_memory is not False
        self.wrap(fn)
        self._parameter_adapters: dict[str, Any] | None = None

    def validated_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """`parameters` validated and coerced from the annotations (unless
        `validate_parameters=False`). Raises ParameterTypeError naming the invalid ones."""
        if not self.validate_parameters:
            return parameters
        from stateward._parameters import adapters_for, validated

        if self._parameter_adapters is None:
            self._parameter_adapters = adapters_for(self.fn, self.signature)
        return validated(
            f"flow {self.name!r}", self.signature, self._parameter_adapters, parameters
        )

    @property
    def retry_delays(self) -> tuple[float, ...]:
        """The delay before each retry (a number for all, a list, or a function of `retries`)."""
        if not self.retry_delay_seconds:
            return ()
        return retry_delays(self.retry_delay_seconds, self.retries)

    def __call__(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        """Run a flow run (a subflow inside a flow run, which first waits for `wait_for` and
        for the futures among its arguments); returns its result, or with `return_state=True`
        its final State. Raises the run's exception when it did not complete."""
        from stateward._flow_engine import call_flow

        return call_flow(self, args, kwargs, return_state=return_state, wait_for=wait_for)

    def __repr__(self) -> str:
        return f"Flow(name={self.name!r})"


@overload
def flow(__fn: Callable[P, R]) -> Flow[P, R]: ...


@overload
def flow(__fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Make a function a flow, bare (`@flow`) or with options (`@flow(retries=1)`); returns the
    `Flow` (or the decorator making it). Raises TypeError for an option `Flow` does not take."""
    return decorator_for(Flow, __fn, options)
