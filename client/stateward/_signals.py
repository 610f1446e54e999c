"""The process signals a run deals with: SIGTERM and SIGINT crash the flow run executing on the
main thread, and a wake signal gets the main thread out of a blocking call so that an interrupt
sent to it lands at once.

A crash signal is raised at once where the main thread is, unless the thread may not be stopped
there (the engine works, or `_interrupt` changes a thread's stack): then it is held, per thread,
and the interrupt machinery raises it once the thread is back in user code or in one of the
engine's waits (`take_pending`). Which places may not be stopped is the interrupt machinery's
knowledge: `crash_on_signals` is given it as a function.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from types import FrameType


class TerminationSignal(BaseException):
    """SIGTERM arrived while a flow ran: the run is crashed, then the process goes on exiting."""


# --- the wake signal ------------------------------------------------------------------------------

# A signal whose only job is to wake the main thread from a blocking call; installed only if
# nobody else handles it.
_WAKE_SIGNAL = signal.SIGUSR2
_wake_installed = False


def _wake(signum: int, frame: FrameType | None) -> None:
    """On the main thread: the pending asynchronous exception is raised as this handler runs.
    It also gives the signal forwarder its wakeup fd back when it asked (see `_Forwarder`)."""
    forwarder = _forwarder
    if forwarder is not None:
        forwarder.rearm()


def install_wake_handler() -> None:
    """On the main thread, once: let interrupts wake blocking calls there."""
    global _wake_installed
    if _wake_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(_WAKE_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(_WAKE_SIGNAL, _wake)
        _wake_installed = True


# --- a crash signal that another thread received -----------------------------------------------
#
# The system hands a signal sent to the process to any of its threads that does not block it:
# usually the main thread, but at times (seen 2 in 96 at load 20) a worker thread, such as the
# lease renewer or one of grpc's. Python then runs the handler only when the main thread next
# runs bytecode: a main thread in a blocking call (a user's `time.sleep(60)`) went on blocking,
# and the run was crashed a minute late. Python writes each signal's number to the wakeup fd
# whichever thread received it: a thread of ours reads it there and wakes the main thread.
#
# The wakeup fd is one per process, and others take it: an asyncio loop in the flow's code sets
# its own at its first `add_signal_handler`, and unsets it (-1) when it closes, whatever was set
# before. So while attached, the thread checks every `PROBE_SECONDS` that the fd is still its
# own: it sends the wake signal to itself, and Python's handler writes its number to the wakeup
# fd at once. When the number does not come back, the main thread runs `rearm` (the wake
# signal's handler does, as the probe's signal is handled there too; and when the main thread
# is blocked, the thread wakes it): the fd is taken back if nobody's is set, and left to an
# event loop that holds it (its loop, woken by the signal, runs the handlers itself). Finding
# out whose it is means setting ours for a moment (a microsecond a second while a loop holds
# it): a signal in that moment is the forwarder's, not the loop's.

PROBE_SECONDS = 1.0
# How long the main thread has to run `rearm` by itself (it runs bytecode) before it is woken.
_REARM_SECONDS = 0.2


class _Forwarder:
    """Reads the signal numbers Python writes to the wakeup fd (while attached) and wakes the
    main thread for each crash signal among them; takes the wakeup fd back when it was unset
    while attached."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # Python's handler may never block on it
        self._signals: frozenset[int] = frozenset()
        self._main = threading.main_thread().ident or 0
        self._changing = False  # the main thread is in attach or detach
        self._lost = False  # a probe found another wakeup fd, or none
        self._rearmed = threading.Event()  # the main thread has run `rearm` since
        self._thread = threading.Thread(target=self._forward, name="stateward-signals", daemon=True)
        self._thread.start()

    def attach(self, signums: frozenset[int]) -> bool:
        """On the main thread: be the wakeup fd, waking the main thread for `signums`; False
        (nothing changed) when someone else's wakeup fd is set, such as an event loop's."""
        self._changing = True
        try:
            previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
            if previous not in (-1, self._writer.fileno()):
                signal.set_wakeup_fd(previous)
                return False
            self._signals = signums
        finally:
            self._changing = False
        with suppress(OSError):  # the thread probes from now on (0 is no signal's number)
            self._writer.send(b"\0")
        return True

    def detach(self) -> None:
        """On the main thread: no longer the wakeup fd (one set since by someone else stays)."""
        self._changing = True
        try:
            self._signals = frozenset()
            current = signal.set_wakeup_fd(-1)
            if current not in (-1, self._writer.fileno()):
                signal.set_wakeup_fd(current)
        finally:
            self._changing = False

    def rearm(self) -> None:
        """On the main thread, after a probe found the wakeup fd not ours: take it back if
        none is set; an event loop's stays."""
        if not self._lost or self._changing:
            return
        self._lost = False
        if self._signals:
            previous = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
            if previous not in (-1, self._writer.fileno()):
                signal.set_wakeup_fd(previous)
        self._rearmed.set()

    def _forward(self) -> None:
        # The probe signals this thread, which must not block it (threads inherit the mask of
        # the thread that starts them).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {_WAKE_SIGNAL})
        while True:
            self._reader.settimeout(PROBE_SECONDS if self._signals else None)
            try:
                numbers = self._reader.recv(64)
            except TimeoutError:
                self._probe()
                continue
            if not numbers:
                return
            self._relay(numbers)

    def _relay(self, numbers: bytes) -> None:
        if any(number in self._signals for number in numbers):
            with suppress(OSError):  # the main thread has ended: the process exits
                signal.pthread_kill(self._main, _WAKE_SIGNAL)

    def _probe(self) -> None:
        """Whether the wakeup fd is still ours; if not, get the main thread to run `rearm`."""
        if not self._signals or signal.getsignal(_WAKE_SIGNAL) is not _wake:
            return
        # Said before the probe: the main thread may run `_wake` for it at once (it runs
        # bytecode), and then takes the fd back if it is not ours.
        self._rearmed.clear()
        self._lost = True
        # Delivered to this thread before the call returns: Python's handler has written the
        # number to the wakeup fd (and asked the main thread to run `_wake`).
        signal.pthread_kill(threading.get_ident(), _WAKE_SIGNAL)
        self._reader.setblocking(False)
        try:
            numbers = self._reader.recv(64)
        except BlockingIOError:
            numbers = b""
        self._relay(numbers)
        if _WAKE_SIGNAL in numbers:
            self._lost = False
            return
        if not self._rearmed.wait(_REARM_SECONDS) and self._signals:
            # The main thread runs no bytecode (it is blocked): wake it to run `rearm`.
            with suppress(OSError):
                signal.pthread_kill(self._main, _WAKE_SIGNAL)


_forwarder: _Forwarder | None = None


def _forget_forwarder() -> None:
    """In a forked child: its thread did not come along, and its socket is the parent's."""
    global _forwarder
    if _forwarder is not None:
        with suppress(ValueError):
            _forwarder.detach()
        _forwarder = None


os.register_at_fork(after_in_child=_forget_forwarder)


def _forward_to_main_thread(signums: frozenset[int]) -> Callable[[], None]:
    """On the main thread, with the wake handler installed: `signums` wake the main thread
    whichever thread receives them. Returns the function that undoes it."""
    global _forwarder
    if not _wake_installed or not signums:
        return lambda: None
    if _forwarder is None:
        _forwarder = _Forwarder()
    forwarder = _forwarder
    if not forwarder.attach(signums):
        return lambda: None

    def detach() -> None:
        if threading.current_thread() is threading.main_thread() and forwarder is _forwarder:
            forwarder.detach()

    return detach


def wake(thread_id: int) -> None:
    """If `thread_id` is the main thread (and the wake handler is installed), interrupt the
    blocking call it may be in, so that an asynchronous exception sent to it lands now."""
    if thread_id == threading.main_thread().ident and _wake_installed:
        signal.pthread_kill(thread_id, _WAKE_SIGNAL)


# --- crash signals --------------------------------------------------------------------------------

_pending_signals: dict[int, BaseException] = {}  # per thread: signals held while the engine worked
# The crash handlers installed: signal number -> (ours, the handler it replaced). A forked child
# runs no run of its own: it gets the replaced handlers back (see `_forget_crash_handlers`).
_crash_handlers: dict[int, tuple[Callable[[int, FrameType | None], None], object]] = {}


def _forget_crash_handlers() -> None:
    """In a forked child (a `multiprocessing` worker, say): the signals are the child's own
    business again, so that SIGTERM ends it as it would without a flow, and a flow it runs
    installs handlers of its own."""
    for signum, (ours, replaced) in list(_crash_handlers.items()):
        if signal.getsignal(signum) is ours:
            with suppress(ValueError, OSError):
                signal.signal(signum, replaced)  # type: ignore[arg-type]
    _crash_handlers.clear()
    _pending_signals.clear()


os.register_at_fork(after_in_child=_forget_crash_handlers)


def take_pending(thread_id: int) -> BaseException | None:
    """The crash signal held for `thread_id`, if any (it is then no longer held)."""
    return _pending_signals.pop(thread_id, None)


def crash_on_signals(must_wait: Callable[[int], bool]) -> Callable[[], None]:
    """On the main thread: SIGTERM and SIGINT stop user code at once (so its run crashes), and
    wait while `must_wait(thread_id)` says the thread may not be stopped where it is. A signal
    the program ignores or handles itself is left alone. Returns the function that puts the
    previous handlers back."""
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
        # that thread left it, unless the thread is inside the interrupt machinery's bookkeeping.
        thread_id = threading.get_ident()
        error = errors[signum]()
        if must_wait(thread_id):
            _pending_signals.setdefault(thread_id, error)  # raised once the engine is done
            return
        raise error

    for signum, handler in previous.items():
        signal.signal(signum, on_signal)
        _crash_handlers[signum] = (on_signal, handler)
    stop_forwarding = _forward_to_main_thread(frozenset(previous))

    def restore() -> None:
        stop_forwarding()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
            if _crash_handlers.get(signum, (None,))[0] is on_signal:
                del _crash_handlers[signum]

    return restore
