"""Stopping user code from outside: timeouts, cancels, and the signals that crash a run (those
are caught in `_signals`; this module decides where they may land).

Interrupts reach user code only. Each thread keeps a stack of what it is doing: regions of user
code (a flow's, a task's called inside it...), the engine's own work (talking to the server,
bookkeeping) and the engine's waits (a retry's delay, a WAIT, inputs, hooks). Only the innermost
entry runs. An interrupt that arrives while the engine works or waits is held, and raised in
the region's code once the engine is done; so an interrupt never lands half-way through a write
to the server (on the embedded default, those writes run on the caller's thread).

An interrupt meant for a region whose thread runs regions nested inside it (a task called by the
flow, a subflow) is delivered to the innermost one, and every nested region is marked as stopped
from outside: each ends Cancelled and passes the interrupt on to the run around it. If the
nested code ends before the interrupt reaches it, the interrupt goes on to the region around.

Each interrupt reaches the code once: when it lands, the region is marked told. Code that caught
it has handled it and runs on; only a new cause (a cancel after a timeout, the stop of the run
around it) interrupts it again. An interrupt that lands in a finaliser (`__del__`, a weakref
callback), where Python drops exceptions, is sent again.

SIGTERM and SIGINT (during a flow run on the main thread) crash the run: `_signals` raises them
at once in user code and in the engine's waits, and holds them while the engine works or while
this module changes a stack (`signal_must_wait` tells it which); this module raises a held one
when its thread is back in user code or in a wait.

Synchronous code is interrupted with CPython's asynchronous exceptions, which land between two
bytecodes of the thread; on the main thread a signal also wakes a blocking call so the exception
lands at once. (In other threads a blocking call, such as a long `time.sleep`, finishes first.)
The exceptions derive from BaseException, so a user's `except Exception` does not swallow them.
Asynchronous code is cancelled through its asyncio task instead.

Entering and leaving regions and waits are plain functions with try/finally around the call,
not generator context managers: an asynchronous exception can land as any Python function
starts, and a generator's cleanup would then never run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from stateward._signals import take_pending, wake

T = TypeVar("T")

_ENGINE = object()  # the engine's own work, on a thread's stack
# Reentrant, so that a signal handler can tell whether its thread is inside this module's own
# bookkeeping (the signal then waits).
_lock = threading.RLock()
_stacks: dict[int, list[object]] = {}  # per thread: regions, engine work and waits, innermost last


def _forget_in_child() -> None:
    """In a forked child only the thread that forked lives on: a new lock (another thread may
    have held it at the fork), and the other threads' stacks go (their ids may be reused)."""
    global _lock
    _lock = threading.RLock()
    mine = _stacks.get(threading.get_ident())
    _stacks.clear()
    if mine is not None:
        _stacks[threading.get_ident()] = mine


os.register_at_fork(after_in_child=_forget_in_child)


class RunInterrupted(BaseException):
    """User code was stopped from outside."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        _landed()  # Python makes the exception object as it reaches the first handler


class RunTimedOut(RunInterrupted):
    """The run exceeded its `timeout_seconds`."""


class RunCancelled(RunInterrupted):
    """The run was cancelled (by another client, or its flow run was)."""


class RunCrashed(RunInterrupted):
    """The flow run around the run was crashed by a signal (SIGINT, SIGTERM) to its process:
    the run stops, and the flow run reports it Crashed (as the reference marks a run that a
    Ctrl-C stopped)."""


def _set_async_exc(thread_id: int, error: type[BaseException] | None) -> None:
    import ctypes  # loaded by the first interrupt: not every process sends one

    target = ctypes.py_object(error) if error is not None else ctypes.c_void_p(0)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


def _send(region: Interruptible, error: type[RunInterrupted]) -> None:
    """Under `_lock`, with `region` innermost on its thread and in its code: raise `error` there."""
    region._sent = True
    _set_async_exc(region.thread_id, error)
    wake(region.thread_id)


def _resend(region: Interruptible) -> None:
    """From another thread: send again an interrupt that Python dropped (see `_dropped`)."""
    with _lock:
        error = region._pending
        stack = _stacks.get(region.thread_id, [])
        if error is None or region.told or region._leaving or not stack or stack[-1] is not region:
            return  # raised meanwhile, held for when the engine is done, or the region is over
        region._pending = None
        _send(region, error)


_previous_unraisablehook = sys.unraisablehook


def _watch_dropped() -> None:
    """Make `_dropped` the hook for exceptions Python drops, in front of whatever hook is set
    now (a test runner may have put its own in place since the last region ran)."""
    global _previous_unraisablehook
    if sys.unraisablehook is not _dropped:
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _dropped


def _dropped(unraisable: sys.UnraisableHookArgs) -> None:
    """Python dropped an exception raised in a finaliser: if it was an interrupt, it did not
    stop the code, so it is due again (sent from another thread once this hook returns)."""
    error = unraisable.exc_type
    if isinstance(error, type) and issubclass(error, RunInterrupted):
        with _lock:
            stack = _stacks.get(threading.get_ident(), [])
            region = stack[-1] if stack else None
            if isinstance(region, Interruptible) and region.told and region.received is error:
                region.told = False
                region._pending = error  # raised after the engine's work if it starts first
                threading.Thread(target=_resend, args=(region,), daemon=True).start()
                return
    _previous_unraisablehook(unraisable)


def _landed() -> None:
    """An interrupt exception was made on this thread: the region it was sent to was told."""
    with _lock:
        for entry in reversed(_stacks.get(threading.get_ident(), ())):
            if isinstance(entry, Interruptible) and entry._sent:
                entry._sent = False
                entry.told = True
                return


class Interruptible:
    """A region of user code, which timers and cancels may interrupt while it runs."""

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.received: type[RunInterrupted] | None = None  # the interrupt that stopped it
        self.from_outside = False  # that interrupt was meant for an enclosing run
        self.told = False  # that interrupt was raised in the region's code
        self._pending: type[RunInterrupted] | None = None  # received, to raise when it runs
        self._sent = False  # an asynchronous exception is on its way to the thread
        self._leaving = False  # the region's code is over: a signal now waits

    def _open(self) -> bool:
        """Whether an interrupt may stop this region: it received none, or its code was told of
        the one it received, handled it and runs on."""
        return self.received is None or (self.told and not self._leaving)

    def interrupt(self, error: type[RunInterrupted], *, from_outside: bool = False) -> bool:
        """Stop this region's code with `error`, now or as soon as its code runs again; False
        if it is being stopped already."""
        with _lock:
            if not self._open():
                return False
            self.received, self.from_outside, self.told = error, from_outside, False
            stack = _stacks.get(self.thread_id, [])
            if self not in stack:
                self._pending = error  # not started yet (or over)
                return True
            innermost = stack[-1]
            if not isinstance(innermost, Interruptible):
                self._pending = error  # the engine works or waits: raised after
                return True
            if innermost is not self:
                if not innermost._open():  # the nested code is being stopped already
                    self._pending = error
                    return True
                # Every run nested inside this one is stopped with it, from outside.
                for entry in stack[stack.index(self) + 1 :]:
                    if isinstance(entry, Interruptible) and entry._open():
                        entry.received, entry.from_outside, entry.told = error, True, False
            if innermost._leaving:
                return True  # its code is over; leaving, it hands the interrupt outward
            _send(innermost, error)
            return True

    def run(
        self,
        code: Callable[[], T],
        timeout: float | None = None,
        on_timeout: Callable[[Interruptible], object] | None = None,
    ) -> T:
        """Run `code` as this region (on the thread that made the region). After `timeout`
        seconds, `on_timeout(region)` is called (by default: interrupt it with RunTimedOut)."""
        timer = None
        if timeout is not None:
            callback = on_timeout or (lambda region: region.interrupt(RunTimedOut))
            timer = threading.Timer(timeout, callback, (self,))
            timer.daemon = True
        thread_id = self.thread_id
        escaping: BaseException | None = None
        try:
            with _lock:
                _watch_dropped()
                _stacks.setdefault(thread_id, []).append(self)
                pending, self._pending = self._pending, None
                self.told = self.told or pending is not None
            signal_error = take_pending(thread_id)
            if signal_error is not None:
                raise signal_error  # arrived while the engine worked
            if pending is not None:
                raise pending  # interrupted before its code started
            if timer is not None:
                timer.start()
            return code()
        except BaseException as error:
            escaping = error
            raise
        finally:
            # An interrupt sent just before the code ended may land anywhere until it is
            # withdrawn, even as `_leave` starts: then leave again (the code is over anyway).
            # Nothing here before the loop calls a function, where it could land uncaught.
            self._leaving = True
            while True:
                try:
                    self._leave(escaping)
                    break
                except RunInterrupted:
                    continue
            if timer is not None:
                timer.cancel()

    def _leave(self, escaping: BaseException | None) -> None:
        """Off the stack (idempotent). An interrupt meant for an enclosing run that did not come
        out of this region's code goes on to the region around it."""
        thread_id = self.thread_id
        with _lock:
            if self._sent:
                _set_async_exc(thread_id, None)  # sent but not landed: withdrawn
                self._sent = False
            stack = _stacks.get(thread_id, [])
            if self not in stack:
                return
            index = stack.index(self)
            if self.from_outside and not isinstance(escaping, RunInterrupted):
                outer = next(
                    (e for e in reversed(stack[:index]) if isinstance(e, Interruptible)), None
                )
                if outer is not None and outer.received is not None and not outer.told:
                    outer._pending = outer._pending or outer.received
            _pop(thread_id, self)


def _pop(thread_id: int, entry: object) -> None:
    """Remove the innermost occurrence of `entry` (entries leave in the order they came)."""
    stack = _stacks.get(thread_id, [])
    if stack and stack[-1] is entry:  # nearly always: entries leave in the order they came
        stack.pop()
    else:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is entry:
                del stack[index]
                break
    if not stack:
        _stacks.pop(thread_id, None)


def engine_code() -> _EngineWork:
    """Around the engine's own work (`with engine_code(): ...`): the region of user code it
    runs in (if any) is paused, and what interrupts it meanwhile is raised once the work is
    done."""
    return _EngineWork()


class _EngineWork:
    """`engine_code()`: a class, not a generator, as every run enters one. (Either is safe
    here: nothing is sent to the thread while the engine's work is on top.)"""

    __slots__ = ("_region", "_thread_id")

    def __enter__(self) -> None:
        thread_id = self._thread_id = threading.get_ident()
        with _lock:
            stack = _stacks.setdefault(thread_id, [])
            region = stack[-1] if stack and isinstance(stack[-1], Interruptible) else None
            if region is not None and region._sent:  # on its way, not landed: hold it back
                _set_async_exc(thread_id, None)
                region._sent = False
                region._pending = region.received
            stack.append(_ENGINE)
        self._region = region

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        thread_id, region = self._thread_id, self._region
        with _lock:
            # A nested run passed on the interrupt meant for this region: it reaches the code
            # now.
            if (
                region is not None
                and isinstance(error, RunInterrupted)
                and region.received is not None
            ):
                region.told, region._pending = True, None
            _pop(thread_id, _ENGINE)
            pending = None
            if region is not None:
                pending, region._pending = region._pending, None
                region.told = region.told or pending is not None
            outermost = thread_id not in _stacks
        signal_error = None
        if region is not None or outermost:  # back in user code
            signal_error = take_pending(thread_id)
        if signal_error is not None:
            raise signal_error
        if pending is not None:
            raise pending


class _Waiting:
    """The engine waiting, or running hooks, on a thread's stack: signals land there,
    interrupts wait."""

    __slots__ = ("_leaving",)

    def __init__(self) -> None:
        self._leaving = False


def waiting(code: Callable[..., T], *args: object) -> T:
    """Run `code(*args)`, one of the engine's waits or the hooks: a signal stops it at once;
    timeouts and cancels wait until it is done."""
    thread_id = threading.get_ident()
    marker = _Waiting()
    try:
        with _lock:
            _stacks.setdefault(thread_id, []).append(marker)
        signal_error = take_pending(thread_id)
        if signal_error is not None:
            raise signal_error  # arrived while the engine worked
        return code(*args)
    finally:
        marker._leaving = True  # a signal now waits for the engine's next wait, or its end
        with _lock:
            _pop(thread_id, marker)


def sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """The engine's sleeps: a signal ends them at once, and so does `stop()` turning true."""
    waiting(_sleep, seconds, stop)


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while not stop():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def signal_must_wait(thread_id: int) -> bool:
    """Whether a crash signal arriving now on `thread_id` must be held rather than raised: the
    thread is inside this module's bookkeeping, the engine works there, or the thread is leaving
    a region or a wait. (Called by the signal handler, on that thread, between two bytecodes:
    the thread's stack is as the thread left it.)"""
    stack = _stacks.get(thread_id)
    top = stack[-1] if stack else None
    return bool(
        _lock._is_owned()  # type: ignore[attr-defined]
        or top is _ENGINE
        or getattr(top, "_leaving", False)
    )
