"""A failed run's traceback as its user reads it: the frames of the SDK's own code (the engine
calling the task, its interrupts and retries) are left out, so that it shows the user's code and
the exception. Frames of the SDK after the user's last one (the SDK raised, because of how it
was called) stay, and so does every frame of a traceback that has none of the user's. With the
`stateward` logger at DEBUG (STATEWARD_LOGGING_LEVEL=DEBUG) nothing is left out.

The same rule applies to the traceback Python prints when a run's exception escapes the script
(`sys.excepthook`); the exception itself keeps every frame, for code that catches it, debuggers
and `traceback.print_exc()`."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from types import TracebackType

_SDK = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_traceback(error: BaseException) -> str:
    """The traceback of `error` (and of its causes and contexts) as `logging` formats an
    exception, without the SDK's frames before and between the user's."""
    report = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    _trim(report, set())
    return "".join(report.format()).removesuffix("\n")


def _trim(report: traceback.TracebackException, seen: set[int]) -> bool:
    """Leave the SDK's frames out of `report` and what it links to; True if any were."""
    if id(report) in seen:
        return False
    seen.add(id(report))
    frames = list(report.stack)
    users = [i for i, frame in enumerate(frames) if not frame.filename.startswith(_SDK)]
    trimmed = False
    if users:
        last = users[-1]
        kept = [f for i, f in enumerate(frames) if i > last or not f.filename.startswith(_SDK)]
        trimmed = len(kept) < len(frames)
        report.stack = traceback.StackSummary.from_list(kept)
    for linked in (report.__cause__, report.__context__, *(report.exceptions or ())):
        if linked is not None:
            trimmed = _trim(linked, seen) or trimmed
    return trimmed


def show_escaping_tracebacks_trimmed() -> None:
    """From now on, an exception that escapes the script is printed without the SDK's frames
    before and between the user's, as a failed run's logged traceback is (all of them with the
    `stateward` logger at DEBUG). Done once, at a process's first run; left alone when the
    application (or a tool running it) set a `sys.excepthook` of its own."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _print_escaping


def _print_escaping(
    kind: type[BaseException], error: BaseException, tb: TracebackType | None
) -> None:
    if not logging.getLogger("stateward").isEnabledFor(logging.DEBUG):
        try:
            report = traceback.TracebackException(kind, error, tb, compact=True)
            if _trim(report, set()) and sys.stderr is not None:
                sys.stderr.write("".join(report.format()))
                sys.stderr.flush()
                return
        except Exception:  # printing the traceback must not hide it: Python's own then
            pass
    sys.__excepthook__(kind, error, tb)


__all__ = ["show_escaping_tracebacks_trimmed", "user_traceback"]
