"""`@task`: a function whose calls are orchestrated task runs."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import pickle
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from stateward._context import for_this_run
from stateward._hooks import Hook, HookedFunction, decorator_for, function_name, unique_tags
from stateward._options import RetryDelay, retry_delays
from stateward._results import storage_folder
from stateward.cache_policies import DEFAULT, NO_CACHE, CacheKeyFnPolicy, CachePolicy
from stateward.settings import results_persist_by_default
from stateward.utilities.annotations import unmapped as unmapped  # its historic home

if TYPE_CHECKING:
    from stateward._context import TaskRunContext

log = logging.getLogger("stateward")

P = ParamSpec("P")
R = TypeVar("R")


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """Retry delays that double: `backoff_factor * 2 ** n` seconds before retry n + 1."""

    def delays(retries: int) -> list[float]:
        return [backoff_factor * 2**n for n in range(retries)]

    return delays


def task_input_hash(context: TaskRunContext, arguments: dict[str, Any]) -> str | None:
    """A cache key from the task's identity (its name, qualified name and a hash of its
    source, so two unrelated tasks sharing a name never share an entry) and its arguments:
    the same task with the same inputs hits the same cache entry. None (no caching) when the
    arguments can be neither JSON-encoded nor pickled."""
    try:
        payload = json.dumps(arguments, sort_keys=True, default=repr).encode()
    except (TypeError, ValueError):
        try:
            payload = pickle.dumps(arguments)
        except Exception:
            return None
    task = context.task
    identity = f"{task.task_key}\0{task.identity}".encode()
    digest = hashlib.sha256(identity + b"\0" + payload).hexdigest()
    return f"{task.task_key}-{digest}"


class NotSet:
    """The default of an option that was not given (told apart from an explicit None)."""


def _cache_policy(
    task: Task[..., Any], given: CachePolicy | type[NotSet] | None, persist_result: bool | None
) -> tuple[CachePolicy | None, bool | None]:
    """The task's cache policy and whether its results persist, as the reference decides them:
    a `cache_key_fn` wins over a `cache_policy` (with a warning); without either, `DEFAULT`;
    a policy or key function given makes results persist; `persist_result=False` means
    `NO_CACHE`. Raises TypeError for a policy that is not a `CachePolicy`."""
    if given is not NotSet and given is not None and not isinstance(given, CachePolicy):
        raise TypeError(f"cache_policy takes a policy of stateward.cache_policies, not {given!r}")
    if given is not NotSet and task.cache_key_fn is not None:
        log.warning(
            "Task %r has both cache_policy and cache_key_fn; cache_key_fn is used", task.name
        )
    if task.cache_key_fn is not None:
        given = CacheKeyFnPolicy(cache_key_fn=task.cache_key_fn)
    chose = given is not NotSet and given is not None and given != NO_CACHE
    if persist_result is None and chose:
        persist_result = True
    if persist_result is False:
        return (None if given is None else NO_CACHE), False
    if given is NotSet:
        return DEFAULT, persist_result
    return given, persist_result  # type: ignore[return-value]


class Task(HookedFunction, Generic[P, R]):
    """A task: calling it runs a task run (in the current flow run, if any).

    The options are the reference's (`on_cancellation`, `on_crashed` and `on_running` are
    Stateward's own); an unknown one raises TypeError. Those Stateward does not act on yet (see
    `_options.NOT_YET_ACTIVE`) are kept as attributes and named in a warning when a value asks
    for what they would do."""

    decorator = "@task"

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Iterable[str] | None = None,
        version: str | None = None,
        cache_policy: CachePolicy | type[NotSet] | None = NotSet,
        cache_key_fn: Callable[[TaskRunContext, dict[str, Any]], str | None] | None = None,
        cache_expiration: timedelta | None = None,
        task_run_name: str | Callable[[], str] | None = None,
        retries: int | None = None,
        retry_delay_seconds: RetryDelay = None,
        retry_jitter_factor: float | None = None,
        persist_result: bool | None = None,
        result_storage: Any = None,
        result_serializer: Any = None,
        result_storage_key: str | None = None,
        cache_result_in_memory: bool | None = None,
        timeout_seconds: float | None = None,
        log_prints: bool | None = None,
        refresh_cache: bool | None = None,
        on_completion: Iterable[Hook] | None = None,
        on_failure: Iterable[Hook] | None = None,
        on_cancellation: Iterable[Hook] | None = None,
        on_crashed: Iterable[Hook] | None = None,
        on_running: Iterable[Hook] | None = None,
        on_rollback: Iterable[Callable[..., Any]] | None = None,
        on_commit: Iterable[Callable[..., Any]] | None = None,
        retry_condition_fn: Callable[[Task[..., Any], Any, Any], bool] | None = None,
        viz_return_value: Any = None,
        asset_deps: Iterable[Any] | None = None,
    ) -> None:
        self.keep_options(locals())  # first: exactly the options given, for with_options
        fn = self.take_function(fn)
        self.name = name or function_name(fn)
        self.description = description or inspect.getdoc(fn)
        self.tags = unique_tags(tags)
        self.version = version
        self.cache_key_fn = cache_key_fn
        self.cache_policy, self.persist_result = _cache_policy(self, cache_policy, persist_result)
        self.cache_expiration = cache_expiration
        self.refresh_cache = bool(refresh_cache)
        self.task_run_name = task_run_name
        self.retries = retries or 0
        self.retry_delay_seconds = retry_delay_seconds
        self.retry_jitter_factor = retry_jitter_factor or 0.0
        self.retry_condition_fn = retry_condition_fn
        self.timeout_seconds = timeout_seconds
        self.log_prints = bool(log_prints)
        self.result_storage = result_storage
        self.result_folder = storage_folder(result_storage)
        self.result_serializer = result_serializer
        self.result_storage_key = result_storage_key
        self.cache_result_in_memory = cache_result_in_memory is not False
        self.on_rollback = list(on_rollback or ())
        self.on_commit = list(on_commit or ())
        self.viz_return_value = viz_return_value
        self.asset_deps = list(asset_deps or ())
        self.wrap(fn)

    @property
    def task_key(self) -> str:
        return self.name

    @functools.cached_property
    def identity(self) -> str:
        """What tells this task from another of the same name: its function's qualified name
        and a hash of its source (of its bytecode when the source cannot be read)."""
        fn = getattr(self.fn, "__func__", self.fn)
        if not inspect.isroutine(fn):
            fn = type(fn)  # a callable object: its class
        qualname = getattr(fn, "__qualname__", repr(fn))
        try:
            source = inspect.getsource(fn).encode()
        except (OSError, TypeError):
            code = getattr(fn, "__code__", None)
            source = code.co_code if code is not None else repr(fn).encode()
        return f"{qualname}-{hashlib.sha256(source).hexdigest()[:16]}"

    def caching_policy(self) -> CachePolicy | None:
        """The policy this task's runs are cached by now, None when they are not: only while
        its results persist (`persist_result=True`, a policy or key function given, or
        STATEWARD_RESULTS_PERSIST_BY_DEFAULT=true)."""
        persist = self.persist_result
        if persist is None:
            persist = for_this_run(results_persist_by_default)
        if not persist or self.cache_policy is None or self.cache_policy == NO_CACHE:
            return None
        return self.cache_policy

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return retry_delays(self.retry_delay_seconds, self.retries)

    def __call__(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        from stateward._task_engine import call_task

        return call_task(self, args, kwargs, return_state=return_state, wait_for=wait_for)

    def submit(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        """Run the task in the background of the flow run; returns a future of its result (with
        `return_state=True`: its final State, once done). Raises RuntimeError outside a flow."""
        from stateward._task_engine import submit_task

        future = submit_task(self, args, kwargs, wait_for=wait_for)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        """Submit one run per element of the iterable arguments given (a future's or a state's
        result counts as given; defaults, strings, bytes, dicts and `unmapped` values go whole
        to every run); returns their futures (with `return_state=True`: their final States).
        Raises MappingMissingIterable (no iterable argument) or MappingLengthMismatch (lengths
        differ), both ValueErrors, and RuntimeError outside a flow."""
        from stateward._task_engine import map_task

        futures = map_task(self, args, kwargs, wait_for=wait_for)
        if return_state:
            futures.wait()
            return [future.state for future in futures]
        return futures

    def __repr__(self) -> str:
        return f"Task(name={self.name!r})"


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(__fn: None = None, **options: Any) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Make a function a task, bare (`@task`) or with options (`@task(retries=2)`); returns the
    `Task` (or the decorator making it). Raises TypeError for an option `Task` does not take."""
    return decorator_for(Task, __fn, options)
