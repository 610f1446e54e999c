"""A failed run's traceback as its user reads it: the frames of the SDK's own code (the engine
calling the task, its interrupts and retries) are left out, so that it shows the user's code and
the exception. Frames of the SDK after the user's last one (the SDK raised, because of how it
was called) stay, and so does every frame of a traceback that has none of the user's. With the
`stateward` logger at DEBUG (STATEWARD_LOGGING_LEVEL=DEBUG) nothing is left out."""

from __future__ import annotations

import os
import traceback

_SDK = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_traceback(error: BaseException) -> str:
    """The traceback of `error` (and of its causes and contexts) as `logging` formats an
    exception, without the SDK's frames before and between the user's."""
    report = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    _trim(report, set())
    return "".join(report.format()).removesuffix("\n")


def _trim(report: traceback.TracebackException, seen: set[int]) -> None:
    if id(report) in seen:
        return
    seen.add(id(report))
    frames = list(report.stack)
    users = [i for i, frame in enumerate(frames) if not frame.filename.startswith(_SDK)]
    if users:
        last = users[-1]
        kept = [f for i, f in enumerate(frames) if i > last or not f.filename.startswith(_SDK)]
        report.stack = traceback.StackSummary.from_list(kept)
    for linked in (report.__cause__, report.__context__, *(report.exceptions or ())):
        if linked is not None:
            _trim(linked, seen)


__all__ = ["user_traceback"]
