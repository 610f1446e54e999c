"""The options of `@flow` and `@task`: checked, never swallowed.

An unknown option raises TypeError naming it (with the nearest known name), so a typo such as
`retreis=3` cannot silently mean no retries. The options the reference accepts but Stateward
does not act on yet are accepted (code written for the reference runs unchanged) and kept as
attributes; the first time a value asks for what such an option would do, one warning names it.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from stateward._records import dataclass

log = logging.getLogger("stateward")

RetryDelay = float | int | Sequence[float] | Callable[[int], Sequence[float]] | None


def retry_delays(value: RetryDelay, retries: int) -> tuple[float, ...]:
    """The delays before each retry: one number for all, a list (one per retry, the last one
    repeating), or a function of the number of retries returning the list."""
    if value is None:
        return ()
    if callable(value):
        return tuple(float(d) for d in value(retries))
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(d) for d in value)


def check_options(decorator: str, init: Callable[..., Any], options: Iterable[str]) -> None:
    """Raise TypeError for the first of `options` that `init` (a Flow's or Task's __init__)
    does not take, naming it and the known option it most resembles."""
    known = [
        name
        for name, parameter in inspect.signature(init).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for name in options:
        if name not in known:
            import difflib  # only for the message: not at every import

            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{decorator} got an unknown option {name!r}{hint}")


@dataclass(frozen=True)
class NotYetActive:
    """An option Stateward accepts but does not act on yet: why, and which values ask for
    what it would do (by default, any value but None)."""

    why: str
    asks: Callable[[Any], bool] = lambda value: value is not None


NOT_YET_ACTIVE: Mapping[str, NotYetActive] = {
    "result_storage_key": NotYetActive(
        "results are stored on their Completed state, and those over the size limit in a "
        "file of the result storage named by Stateward",
        lambda value: bool(value),
    ),
    "result_serializer": NotYetActive(
        "results are stored as JSON when they can be, pickled otherwise"
    ),
    "cache_result_in_memory": NotYetActive(
        "a result stays in memory in the process that ran it", lambda value: value is False
    ),
    "on_commit": NotYetActive("Stateward has no transactions", lambda value: bool(value)),
    "on_rollback": NotYetActive("Stateward has no transactions", lambda value: bool(value)),
    "viz_return_value": NotYetActive("Stateward has no flow visualisation"),
    "asset_deps": NotYetActive("Stateward does not track assets", lambda value: bool(value)),
}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _new_warned_lock() -> None:
    """In a forked child: another thread may have held the lock at the fork."""
    global _warned_lock
    _warned_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_warned_lock)


def warn_not_yet_active(decorator: str, options: Mapping[str, Any]) -> None:
    """Log one warning per process for each option in `options` that asks for what Stateward
    does not do yet (the first time any flow or task is given it)."""
    for name, value in options.items():
        rule = NOT_YET_ACTIVE.get(name)
        if rule is None or not rule.asks(value):
            continue
        with _warned_lock:
            if name in _warned:
                continue
            _warned.add(name)
        log.warning(
            "%s option %s=%r is accepted but has no effect in Stateward yet: %s",
            decorator,
            name,
            value,
            rule.why,
        )
