"""Stopping user code from outside: timeouts, cancels, and the signals that crash a run.

Interrupts reach user code only. Each thread keeps a stack of what it is doing: regions of user
code (a flow's, a task's called inside it...) and, in between, the engine's own work (talking to
the server, bookkeeping). Only the innermost entry runs: a region under engine work is paused,
and an interrupt that arrives meanwhile waits until the engine's work is done. So an interrupt
never lands half-way through a write to the server (in the embedded server, those writes run on
the caller's thread).

An interrupt meant for a region whose thread runs regions nested inside it (a task called by the
flow, a subflow) is delivered to the innermost one, and every nested region is marked as stopped
from outside: each ends Cancelled and passes the interrupt on to the run around it, rather than
taking it for its own.

SIGTERM and SIGINT (during a flow run on the main thread) crash the run: they are raised at once
in user code and while the engine only waits (a retry's delay, a WAIT, inputs, hooks), and held
back, like interrupts, while the engine talks to the server.

Synchronous code is interrupted with CPython's asynchronous exceptions; on the main thread a
signal also wakes a blocking call so the exception lands at once. (In other threads a blocking
call, such as a long `time.sleep`, finishes before the exception lands.) The exceptions derive
from BaseException, so a user's `except Exception` does not swallow them. Asynchronous code is
cancelled through its asyncio task instead.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

# A signal whose only job is to wake the main thread from a blocking call; installed only if
# nobody else handles it.
_WAKE_SIGNAL = signal.SIGUSR2
_wake_installed = False

_ENGINE = object()  # the engine's own work, on a thread's stack
# Reentrant so that a signal handler can tell whether its thread is inside this module's own
# bookkeeping (then the signal waits for the bookkeeping to end).
_lock = threading.RLock()
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
        self._leaving = False  # the region's code is over: a signal now waits

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
                # Every run nested inside this one is stopped with it, from outside.
                for entry in stack[stack.index(self) + 1 :]:
                    if isinstance(entry, Interruptible) and entry.received is None:
                        entry.received, entry.from_outside = error, True
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
        thread_id = self.thread_id
        try:
            with _lock:
                _stacks.setdefault(thread_id, []).append(self)
                pending, self._pending = self._pending, None
                signal_error = _pending_signals.pop(thread_id, None)
            if signal_error is not None:
                raise signal_error  # arrived while the engine worked
            if pending is not None:
                raise pending  # interrupted before its code started
            if timer is not None:
                timer.start()
            yield self
        finally:
            # An interrupt sent just before the code ended may land anywhere until it is
            # withdrawn, even as `_leave` starts: then leave again (the region is over anyway).
            # No call comes before the loop, where nothing would catch it.
            self._leaving = True
            while True:
                try:
                    _leave(thread_id, self)
                    break
                except RunInterrupted:
                    continue
            if timer is not None:
                timer.cancel()


def _leave(thread_id: int, entry: object) -> None:
    """Take `entry` off its thread's stack (if it is still there), withdrawing an interrupt sent
    to it that has not landed yet."""
    with _lock:
        if isinstance(entry, Interruptible) and entry._sent:
            _set_async_exc(thread_id, None)
            entry._sent = False
        _pop(thread_id, entry)


def _pop(thread_id: int, entry: object) -> None:
    """Remove the innermost occurrence of `entry` (entries leave in the order they came)."""
    stack = _stacks.get(thread_id, [])
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is entry:
            del stack[index]
            break
    if not stack:
        _stacks.pop(thread_id, None)


def _being_handled(error: type[RunInterrupted]) -> bool:
    """Whether the code is handling that interrupt now (in an `except` or a `finally`)."""
    current: BaseException | None = sys.exc_info()[1]
    for _ in range(100):  # the chain of exceptions being handled, innermost first
        if current is None:
            break
        if isinstance(current, error):
            return True
        current = current.__context__
    return False


@contextmanager
def engine_code() -> Iterator[None]:
    """Around the engine's own work: the region of user code it runs in (if any) is paused, and
    what interrupts it meanwhile is raised once the work is done."""
    thread_id = threading.get_ident()
    with _lock:
        stack = _stacks.setdefault(thread_id, [])
        region = stack[-1] if stack and isinstance(stack[-1], Interruptible) else None
        if region is not None and region._sent:
            _set_async_exc(thread_id, None)
            region._sent = False
            if not _being_handled(region.received):  # type: ignore[arg-type]
                region._pending = region.received  # not raised yet: hold it back
        stack.append(_ENGINE)
    try:
        yield
    finally:
        _leave(thread_id, _ENGINE)  # nothing lands here: the engine's work is on top
        with _lock:
            pending = None
            if region is not None:
                pending, region._pending = region._pending, None
            outermost = thread_id not in _stacks
            signal_error = _pending_signals.pop(thread_id, None) if region or outermost else None
        if signal_error is not None:
            raise signal_error
        if pending is not None:
            raise pending


class _Waiting:
    """The engine only waiting, or running hooks, on a thread's stack: signals land there,
    interrupts wait."""

    __slots__ = ("_leaving",)

    def __init__(self) -> None:
        self._leaving = False


@contextmanager
def engine_waits() -> Iterator[None]:
    """Around the engine's waits (a retry's delay, a WAIT, inputs) and the hooks it runs: a
    signal stops them at once; timeouts and cancels still wait."""
    thread_id = threading.get_ident()
    waiting = _Waiting()
    try:
        with _lock:
            _stacks.setdefault(thread_id, []).append(waiting)
            signal_error = _pending_signals.pop(thread_id, None)
        if signal_error is not None:
            raise signal_error  # it arrived while the engine worked
        yield
    finally:
        waiting._leaving = True  # a signal now waits for the engine's next wait, or its end
        _leave(thread_id, waiting)


def crash_on_signals() -> Callable[[], None]:
    """On the main thread: SIGTERM and SIGINT stop user code at once (so its run crashes), and
    wait while the engine works. A signal the program ignores or handles itself is left alone.
    Returns the function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    errors: dict[int, Callable[[], BaseException]] = {
        signal.SIGTERM: lambda: TerminationSignal("SIGTERM"),
        signal.SIGINT: KeyboardInterrupt,
    }
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    previous = {
        signum: handler for signum in errors if (handler := signal.getsignal(signum)) in defaults
    }

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # It runs on the main thread between two of its bytecodes: the thread's stack is as
        # that thread left it, unless the thread is inside this module's bookkeeping.
        thread_id = threading.get_ident()
        error = errors[signum]()
        stack = _stacks.get(thread_id)
        top = stack[-1] if stack else None
        if (
            _lock._is_owned()  # type: ignore[attr-defined]
            or top is _ENGINE
            or getattr(top, "_leaving", False)
        ):
            _pending_signals[thread_id] = error  # raised once the engine's work is done
            return
        raise error

    for signum in previous:
        signal.signal(signum, on_signal)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore
