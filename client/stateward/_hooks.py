"""State change hooks: called in list order after the state they react to was accepted. A hook
that raises is logged with its name and the next one still runs; hooks never change a state."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

Hook = Callable[..., Any]

HOOK_KINDS = ("on_completion", "on_failure", "on_cancellation", "on_crashed", "on_running")


def hook_name(hook: Hook) -> str:
    target: Any = hook
    while isinstance(target, functools.partial):
        target = target.func
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(hook)


def _run_coroutine(awaitable: Any) -> None:
    """Await a hook's coroutine from synchronous code, whether or not a loop runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(awaitable)
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(awaitable)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def run_hooks(
    hooks: Sequence[Hook], kind: str, subject: Any, run: Any, state: Any, log: logging.Logger
) -> None:
    for hook in hooks:
        name = hook_name(hook)
        try:
            result = hook(subject, run, state)
            if inspect.isawaitable(result):
                _run_coroutine(result)
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
