"""A failed run's traceback as its user reads it: the frames of the SDK's own code (the engine
calling the task, its interrupts and retries) and of the standard library (asyncio's runners,
threads, concurrent.futures) are left out, so that it shows the user's code and the exception.
Such frames after the user's last one stay (a library function raised, because of how it was
called: `json.loads` raising from its decoder), but not for the SDK's own exceptions
(`StatewardError`: a cancelled run, a pause timing out, an unreachable server), a
KeyboardInterrupt or a SIGTERM's TerminationSignal: their message says what happened, the
user's last frame where. Every frame of a traceback that has none of the user's stays. With
the `stateward` logger at DEBUG (STATEWARD_LOGGING_LEVEL=DEBUG) nothing is left out.

The same rule applies to the traceback Python prints when a run's exception escapes the script
(`sys.excepthook`); the exception itself keeps every frame, for code that catches it, debuggers
and `traceback.print_exc()`."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import traceback
from types import TracebackType

from stateward._signals import TerminationSignal
from stateward.exceptions import StatewardError

_SDK = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB = tuple(
    {os.path.join(sysconfig.get_paths()[name], "") for name in ("stdlib", "platstdlib")}
)
_SITE = tuple({os.path.join(sysconfig.get_paths()[name], "") for name in ("purelib", "platlib")})


_PACKAGES = ("site-packages", "dist-packages")


def _internal(filename: str) -> bool:
    """A frame of the SDK's or of the standard library (not of an installed package: those of
    this environment's site-packages, and of any site-packages or dist-packages folder in the
    standard library's, such as the base Python's that a venv made with
    --system-site-packages sees)."""
    if filename.startswith(_SDK) or filename.startswith("<frozen "):
        return True
    if filename.startswith(_SITE):
        return False
    for folder in _STDLIB:
        if filename.startswith(folder):
            return filename[len(folder) :].split(os.sep, 1)[0] not in _PACKAGES
    return False


def user_traceback(error: BaseException) -> str:
    """The traceback of `error` (and of its causes and contexts) as `logging` formats an
    exception, without the SDK's frames before and between the user's."""
    report = traceback.TracebackException(type(error), error, error.__traceback__, compact=True)
    _trim(report, error, set())
    return "".join(report.format()).removesuffix("\n")


def _trim(report: traceback.TracebackException, error: BaseException, seen: set[int]) -> bool:
    """Leave the SDK's and the standard library's frames out of `report` (the report of
    `error`) and of what it links to; True if any were."""
    if id(report) in seen:
        return False
    seen.add(id(report))
    frames = list(report.stack)
    users = [i for i, frame in enumerate(frames) if not _internal(frame.filename)]
    trimmed = False
    if users:
        # Internal frames after the user's last one say where a library raised; the SDK's own
        # exceptions say all there is in their message.
        ours = isinstance(error, StatewardError | KeyboardInterrupt | TerminationSignal)
        after = len(frames) if ours else users[-1]
        kept = [f for i, f in enumerate(frames) if i > after or not _internal(f.filename)]
        trimmed = len(kept) < len(frames)
        report.stack = traceback.StackSummary.from_list(kept)
    linked = [(report.__cause__, error.__cause__), (report.__context__, error.__context__)]
    if isinstance(error, BaseExceptionGroup) and report.exceptions:
        linked += zip(report.exceptions, error.exceptions, strict=False)
    for linked_report, linked_error in linked:
        if linked_report is not None and linked_error is not None:
            trimmed = _trim(linked_report, linked_error, seen) or trimmed
    return trimmed


def show_escaping_tracebacks_trimmed() -> None:
    """From now on, an exception that escapes the script is printed without the SDK's and the
    standard library's frames, by the rule of a failed run's logged traceback (all of them with the
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
            if _trim(report, error, set()) and sys.stderr is not None:
                sys.stderr.write("".join(report.format()))
                sys.stderr.flush()
                return
        except Exception:  # printing the traceback must not hide it: Python's own then
            pass
    sys.__excepthook__(kind, error, tb)


__all__ = ["show_escaping_tracebacks_trimmed", "user_traceback"]
