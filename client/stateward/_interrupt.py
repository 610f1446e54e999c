"""Stopping user code from outside: timeouts, cancels, and the signals that crash a run.

Interrupts reach user code only. Each thread keeps a stack of what it is doing: regions of user
code (a flow's, a task's called inside it...) and, in between, the engine's own work (talking to
the server, bookkeeping, hooks). Only the innermost entry runs: a region under engine work is
paused, and an interrupt that arrives meanwhile waits until the engine's work is done. So an
interrupt never lands half-way through a write to the server (in the embedded server, those
writes run on the caller's thread).

An interrupt meant for a region whose thread runs a region nested inside it (a task called by
the flow) is delivered to the nested code, marked as coming from outside: the task ends
Cancelled and passes the interrupt on to the flow, rather than taking it for its own.

Synchronous code is interrupted with CPython's asynchronous exceptions; on the main thread a
signal also wakes a blocking call so the exception lands at once. (In other threads a blocking
call, such as a long `time.sleep`, finishes before the exception lands.) The exceptions derive
from BaseException, so a user's `except Exception` does not swallow them. Asynchronous code is
cancelled through its asyncio task instead.
"""

from __future__ import annotations

import ctypes
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

# A signal whose only job is to wake the main thread from a blocking call; installed only if
# nobody else handles it.
_WAKE_SIGNAL = signal.SIGUSR2
_wake_installed = False

_ENGINE = object()  # the engine's own work, on a thread's stack
_lock = threading.Lock()
_stacks: dict[int, list[object]] = {}  # per thread: regions and engine work, innermost last
_pending_signals: dict[int, BaseException] = {}  # signals that arrived in engine work


class RunInterrupted(BaseException):
    """User code was stopped from outside."""


class RunTimedOut(RunInterrupted):
    """The run exceeded its `timeout_seconds`."""


class RunCancelled(RunInterrupted):
    """The run was cancelled (by another client, or its flow run was)."""


class TerminationSignal(BaseException):
    """SIGTERM arrived while a flow ran: the run is crashed, then the process goes on exiting."""


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


def _set_async_exc(thread_id: int, error: type[BaseException] | None) -> None:
    target = ctypes.py_object(error) if error is not None else ctypes.c_void_p(0)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


class Interruptible:
    """A region of user code, which timers and cancels may interrupt while it runs."""

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.received: type[RunInterrupted] | None = None  # the interrupt that stopped it
        self.from_outside = False  # that interrupt was meant for an enclosing run
        self._pending: type[RunInterrupted] | None = None  # received, not raised yet
        self._sent = False  # an asynchronous exception may be on its way to the thread

    def interrupt(self, error: type[RunInterrupted], *, from_outside: bool = False) -> bool:
        """Stop this region's code with `error`, now or as soon as its code runs again; False
        if it was stopped already."""
        with _lock:
            if self.received is not None:
                return False
            self.received, self.from_outside = error, from_outside
            stack = _stacks.get(self.thread_id, [])
            innermost = stack[-1] if stack else None
            if self not in stack or not isinstance(innermost, Interruptible):
                self._pending = error  # not started, or the engine works: raised later
                return True
            if innermost is not self:
                if innermost.received is not None:  # the nested code is being stopped already
                    self._pending = error
                    return True
                innermost.received, innermost.from_outside = error, True
            innermost._sent = True
            _set_async_exc(self.thread_id, error)
            if self.thread_id == threading.main_thread().ident and _wake_installed:
                signal.pthread_kill(self.thread_id, _WAKE_SIGNAL)
            return True

    @contextmanager
    def running(
        self, timeout: float | None = None, on_timeout: Callable[[], object] | None = None
    ) -> Iterator[Interruptible]:
        """While inside, the user code runs and may be interrupted; after `timeout` seconds,
        `on_timeout` is called (by default: interrupt it with RunTimedOut)."""
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, on_timeout or (lambda: self.interrupt(RunTimedOut)))
            timer.daemon = True
        with _lock:
            _stacks.setdefault(self.thread_id, []).append(self)
            pending, self._pending = self._pending, None
        try:
            if pending is not None:
                raise pending  # interrupted before its code started
            if timer is not None:
                timer.start()
            yield self
        finally:
            if timer is not None:
                timer.cancel()
            with _lock:
                if self._sent:  # sent but perhaps not raised yet: it must not land later
                    _set_async_exc(self.thread_id, None)
                    self._sent = False
                _pop(self.thread_id, self)


def _pop(thread_id: int, entry: object) -> None:
    """Remove the innermost occurrence of `entry` (entries leave in the order they came)."""
    stack = _stacks[thread_id]
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is entry:
            del stack[index]
            break
    if not stack:
        del _stacks[thread_id]


@contextmanager
def engine_code() -> Iterator[None]:
    """Around the engine's own work: the region of user code it runs in (if any) is paused, and
    what interrupts it meanwhile is raised once the work is done."""
    thread_id = threading.get_ident()
    with _lock:
        stack = _stacks.setdefault(thread_id, [])
        region = stack[-1] if stack and isinstance(stack[-1], Interruptible) else None
        if region is not None and region._sent:  # not raised yet: hold it back
            _set_async_exc(thread_id, None)
            region._sent = False
            region._pending = region.received
        stack.append(_ENGINE)
    try:
        yield
    finally:
        with _lock:
            _pop(thread_id, _ENGINE)
            pending = None
            if region is not None:
                pending, region._pending = region._pending, None
            outermost = thread_id not in _stacks
            signal_error = _pending_signals.pop(thread_id, None) if region or outermost else None
        if signal_error is not None:
            raise signal_error
        if pending is not None:
            raise pending


def crash_on_signals() -> Callable[[], None]:
    """On the main thread: SIGTERM and SIGINT stop user code at once (so its run crashes), and
    wait while the engine works. Returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    errors: dict[int, Callable[[], BaseException]] = {
        signal.SIGTERM: lambda: TerminationSignal("SIGTERM"),
        signal.SIGINT: KeyboardInterrupt,
    }
    previous = {signum: signal.getsignal(signum) for signum in errors}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        thread_id = threading.get_ident()
        error = errors[signum]()
        with _lock:
            stack = _stacks.get(thread_id)
            engine_busy = bool(stack) and stack[-1] is _ENGINE  # type: ignore[index]
            if engine_busy:
                _pending_signals[thread_id] = error
        if not engine_busy:
            raise error

    for signum in errors:
        signal.signal(signum, on_signal)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
