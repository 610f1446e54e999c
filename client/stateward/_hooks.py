"""State change hooks: called in list order after the state they react to was accepted. A hook
that raises is logged with its name and the next one still runs; hooks never change a state."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

from stateward._options import check_options, warn_not_yet_active

Hook = Callable[..., Any]

HOOK_KINDS = ("on_completion", "on_failure", "on_cancellation", "on_crashed", "on_running")


def hook_list(hooks: Iterable[Hook] | None) -> list[Hook]:
    if hooks is None:
        return []
    found = list(hooks)
    for hook in found:
        if not callable(hook):
            raise TypeError(f"a hook must be callable, not {hook!r}")
    return found


def function_name(fn: Any) -> str:
    """The name of a function, or of a callable object's class."""
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def unique_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tags or ()))


class HookedFunction:
    """What flows and tasks share: their five hook lists, registration as decorators
    (`@my_flow.on_failure`), the options they were made with, and `with_options`."""

    decorator = "@flow/@task"
    fn: Callable[..., Any]
    name: str

    if not TYPE_CHECKING:  # (for type checkers, a misspelt attribute stays an error)

        def __getattr__(self, name: str) -> Any:
            """Only for an attribute not found: one the reference's flows or tasks have and
            these leave out (`serve`, `deploy`, `delay`...) says what to do instead."""
            from stateward._left_out import missing_method

            raise missing_method(self, name)

    def keep_options(self, given: dict[str, Any]) -> None:
        """Keep the options of `__init__` (its `locals()` as it starts), and warn about those
        Stateward does not act on yet."""
        self.options = {
            key: value for key, value in given.items() if key not in ("self", "fn", "__class__")
        }
        warn_not_yet_active(self.decorator, self.options)

    def wrap(self, fn: Callable[..., Any]) -> None:
        """Take the hook lists from the options kept, and look like `fn` (its signature, doc
        and name; whether it is async)."""
        for kind in HOOK_KINDS:
            setattr(self, f"{kind}_hooks", hook_list(self.options.get(kind)))
        call = fn if inspect.isroutine(fn) else type(fn).__call__  # a callable object's method
        self.isasync = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = function_name(fn)
        self.__wrapped__ = fn

    def hooks(self, kind: str) -> list[Hook]:
        hooks: list[Hook] = getattr(self, f"{kind}_hooks")
        return hooks

    def with_options(self, **changes: Any) -> Self:
        """A copy made with the same options as this one but `changes` (the decorator's
        options; a given hook list replaces the old one, hooks registered since are kept).
        Raises TypeError for an option the decorator does not take."""
        check_options("with_options()", type(self).__init__, changes)
        hooks = {kind: list(self.hooks(kind)) for kind in HOOK_KINDS}
        make: Callable[..., Self] = type(self)  # Flow or Task: they take the function first
        made = make(self.decorated, **{**self.options, **hooks, **changes})
        bound_to = getattr(self.fn, "__self__", None)  # a copy of a bound one is bound too
        return made._bound(bound_to) if isinstance(self.fn, types.MethodType) else made

    # --- what is decorated: a function, a method, a classmethod, a staticmethod, an object ------

    def take_function(self, fn: Any) -> Callable[..., Any]:
        """Keep the decorated callable: a classmethod or staticmethod is unwrapped (and binds
        as one when looked up on its class), a callable object is taken as it is. Returns the
        function to call; raises TypeError when `fn` is not callable."""
        self.decorated = fn
        self.binding = "instance"
        if isinstance(fn, classmethod):
            self.binding, fn = "class", fn.__func__
        elif isinstance(fn, staticmethod):
            self.binding, fn = "static", fn.__func__
        if not callable(fn):
            raise TypeError(f"{self.decorator} decorates a function or a callable, not {fn!r}")
        self.fn = fn
        taken: Callable[..., Any] = fn
        return taken

    def __get__(self, instance: Any, owner: type | None = None) -> Self:
        """Looked up on a class or an instance, a flow or task made of a method binds like one:
        to the instance (a method), to the class (a classmethod), or not at all."""
        if self.binding == "static":
            return self
        if self.binding == "class":
            return self._bound(owner if owner is not None else type(instance))
        return self if instance is None else self._bound(instance)

    def _bound(self, target: Any) -> Self:
        """A copy whose function has `target` as its first argument."""
        bound = copy.copy(self)
        bound.fn = types.MethodType(self.fn, target)
        bound.signature = inspect.signature(bound.fn)
        return bound

    def _register(self, kind: str, hook: Hook) -> Hook:
        self.hooks(kind).append(hook)
        return hook

    def on_completion(self, hook: Hook) -> Hook:
        return self._register("on_completion", hook)

    def on_failure(self, hook: Hook) -> Hook:
        return self._register("on_failure", hook)

    def on_cancellation(self, hook: Hook) -> Hook:
        return self._register("on_cancellation", hook)

    def on_crashed(self, hook: Hook) -> Hook:
        return self._register("on_crashed", hook)

    def on_running(self, hook: Hook) -> Hook:
        return self._register("on_running", hook)


H = TypeVar("H", bound=HookedFunction)


def decorator_for(kind: type[H], fn: Callable[..., Any] | None, options: dict[str, Any]) -> Any:
    """What `@flow`/`@task` return: with `fn` (the bare decorator), the Flow or Task made of it;
    else the decorator that makes one with `options`. Raises TypeError for an option `kind`
    does not take, before any function is decorated."""
    check_options(f"{kind.decorator}()", kind.__init__, options)
    make: Callable[..., H] = kind
    if fn is not None:
        return make(fn, **options)
    return lambda fn: make(fn, **options)


def hook_name(hook: Hook) -> str:
    target: Any = hook
    while isinstance(target, functools.partial):
        target = target.func
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(hook)


def await_from_sync(awaitable: Any) -> Any:
    """Await a coroutine (a hook's, an async retry condition's) from synchronous code, whether
    or not a loop runs here (if one does, in a thread of its own); returns its value."""

    async def wrapped() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrapped())
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(wrapped()))
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def run_hooks(
    hooks: Sequence[Hook], kind: str, subject: Any, run: Any, state: Any, log: logging.Logger
) -> None:
    for hook in hooks:
        name = hook_name(hook)
        try:
            result = hook(subject, run, state)
            if inspect.isawaitable(result):
                await_from_sync(result)
        except Exception:
            log.exception("%s hook %r failed", kind, name)
        else:
            log.debug("%s hook %r finished", kind, name)


async def run_hooks_async(
    hooks: Sequence[Hook], kind: str, subject: Any, run: Any, state: Any, log: logging.Logger
) -> None:
    for hook in hooks:
        name = hook_name(hook)
        try:
            result = hook(subject, run, state)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("%s hook %r failed", kind, name)
        else:
            log.debug("%s hook %r finished", kind, name)
