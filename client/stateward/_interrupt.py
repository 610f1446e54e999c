"""Stopping user code from outside: timeouts and cancellations.

Synchronous code is interrupted by raising an exception in its thread (CPython's asynchronous
exceptions); on the main thread a signal also wakes a blocking sleep so the exception lands at
once. The exceptions derive from BaseException, so a user's `except Exception` does not swallow
them. Asynchronous code is cancelled through its task instead.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# A signal whose only job is to wake the main thread from a blocking call; installed only if
# nobody else handles it.
_WAKE_SIGNAL = signal.SIGUSR2
_wake_installed = False


class RunInterrupted(BaseException):
    """User code was stopped from outside."""


class RunTimedOut(RunInterrupted):
    """The run exceeded its `timeout_seconds`."""


class RunCancelled(RunInterrupted):
    """The run was cancelled (by another client, or its flow run was)."""


def _wake(signum: int, frame: FrameType | None) -> None:
    """Does nothing: the pending asynchronous exception is raised as this handler runs."""


def install_wake_handler() -> None:
    """On the main thread, once: let interrupts wake blocking calls there."""
    global _wake_installed
    if _wake_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(_WAKE_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(_WAKE_SIGNAL, _wake)
        _wake_installed = True


def _set_async_exc(thread_id: int, error: type[BaseException] | None) -> int:
    target = ctypes.py_object(error) if error is not None else ctypes.c_void_p(0)
    return int(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target))


class Interruptible:
    """A thread running user code, which timers and cancels may interrupt while `active`."""

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self.active = False
        self.raised: type[RunInterrupted] | None = None

    def interrupt(self, error: type[RunInterrupted]) -> bool:
        """Raise `error` in the thread if it still runs user code; True if it was sent."""
        with self._lock:
            if not self.active or self.raised is not None:
                return False
            self.raised = error
            _set_async_exc(self.thread_id, error)
            if self.thread_id == threading.main_thread().ident and _wake_installed:
                signal.pthread_kill(self.thread_id, _WAKE_SIGNAL)
            return True

    @contextmanager
    def running(self, timeout: float | None = None) -> Iterator[Interruptible]:
        """While inside, user code may be interrupted (after `timeout` seconds, at the latest)."""
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self.interrupt, (RunTimedOut,))
            timer.daemon = True
        with self._lock:
            self.active = True
        if timer is not None:
            timer.start()
        try:
            yield self
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self.active = False
                if self.raised is not None:
                    # If the exception was sent but not raised yet, do not let it land later.
                    _set_async_exc(self.thread_id, None)
