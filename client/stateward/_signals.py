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

import _signal  # type: ignore[import-not-found]  # signal's C half: no stub
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
    """On the main thread: the pending asynchronous exception is raised as this handler runs."""


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
# its own at its first `add_signal_handler` (the loop, woken by a signal, runs the handlers
# itself), and gives it up (-1) when it closes, whatever was set before. So while attached, the
# forwarder is `signal.set_wakeup_fd`: an fd given up is the forwarder's again at once, any
# other is set as asked and left alone. The forwarder never sets the fd while someone else's
# is set, so such a loop gets every signal. Code that calls Python's function through a
# reference bound before the run is not seen: an fd it gives up stays unset until the next run.
# (uvloop holds such a reference, but puts back the fd it found when each of its runs ends.)

_set_wakeup_fd = signal.set_wakeup_fd  # Python's own


class _Forwarder:
    """Reads the signal numbers Python writes to the wakeup fd and, while attached, wakes the
    main thread for each crash signal among them."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)  # Python's handler may never block on it
        # The thread waits for as long as no signal comes, whatever `socket.setdefaulttimeout`
        # said before (a timeout ended the thread, and a signal another thread got then landed
        # only when the main thread's blocking call ended).
        self._reader.setblocking(True)
        self._signals: frozenset[int] = frozenset()
        self._main = threading.main_thread().ident or 0
        self._thread = threading.Thread(target=self._forward, name="stateward-signals", daemon=True)
        self._thread.start()

    def attach(self, signums: frozenset[int]) -> None:
        """On the main thread: wake the main thread for `signums`, from the wakeup fd: now,
        unless someone else's (an event loop's) is set, else once it is given up."""
        self._signals = signums
        previous = _set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        if previous not in (-1, self._writer.fileno()):
            _set_wakeup_fd(previous)
        signal.set_wakeup_fd = self._set_wakeup_fd

    def detach(self) -> None:
        """On the main thread: no longer the wakeup fd (one set since by someone else stays)."""
        self._signals = frozenset()
        if signal.set_wakeup_fd == self._set_wakeup_fd:
            signal.set_wakeup_fd = _set_wakeup_fd
        current = _set_wakeup_fd(-1)
        if current not in (-1, self._writer.fileno()):
            _set_wakeup_fd(current)

    def _set_wakeup_fd(self, fd: int, /, *, warn_on_full_buffer: bool = True) -> int:
        """`signal.set_wakeup_fd` while attached: an fd given up (-1) is the forwarder's
        again. Returns the fd set before, as Python's does."""
        if fd == -1 and self._signals:
            return _set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return _set_wakeup_fd(fd, warn_on_full_buffer=warn_on_full_buffer)

    def _forward(self) -> None:
        while numbers := self._reader.recv(64):
            if any(number in self._signals for number in numbers):
                with suppress(OSError):  # the main thread has ended: the process exits
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


def _forward_to_main_thread(signums: frozenset[int]) -> _Forwarder | None:
    """On the main thread, with the wake handler installed: `signums` wake the main thread
    whichever thread receives them. Returns the forwarder (`detach` undoes it), if any."""
    global _forwarder
    if not _wake_installed or not signums:
        return None
    if _forwarder is None:
        _forwarder = _Forwarder()
    _forwarder.attach(signums)
    return _forwarder


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
# While a run crashes on signals: what puts back its handlers where the run's code undid them
# (see `crash_on_signals`).
_resume: Callable[[], None] | None = None


# A crash signal sent to a child just forked (`Pool.terminate()` as a `with Pool()` block ends,
# while a worker started late is still in its fork) reached it with the parent's handler still
# set, before `_forget_crash_handlers` below: Python dropped it (CPython clears the signals
# caught before its own after-fork work, and one caught after, when its handler is the default
# again by the time the main thread looks), or the child raised TerminationSignal. A worker then
# waited for tasks for ever, and the parent waited for it (seen 3 in 31 pools with a server; 34
# of 40 children SIGTERMed as soon as started). So the forking thread blocks the crash signals
# across the fork: the child takes them only once the handlers it gets back are in place.
_fork_mask = threading.local()  # per forking thread: the signal mask before the fork


def _block_crash_signals() -> None:
    """Before a fork, while crash handlers are installed: block them in the forking thread."""
    if _crash_handlers:
        _fork_mask.previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(_crash_handlers))


def _unblock_crash_signals() -> None:
    """After a fork, in the parent (and in the child once its handlers are back): the forking
    thread's signal mask as before the fork; a signal that came meanwhile is taken now."""
    previous: set[signal.Signals] | None = getattr(_fork_mask, "previous", None)
    if previous is not None:
        _fork_mask.previous = None
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _forget_crash_handlers() -> None:
    """In a forked child (a `multiprocessing` worker, say): the signals are the child's own
    business again, so that SIGTERM ends it as it would without a flow, and a flow it runs
    installs handlers of its own. A crash signal sent meanwhile is taken as the last step."""
    global _resume
    _resume = None  # the parent's run
    for signum, (ours, replaced) in list(_crash_handlers.items()):
        if signal.getsignal(signum) is ours:
            with suppress(ValueError, OSError):
                signal.signal(signum, replaced)  # type: ignore[arg-type]
    _crash_handlers.clear()
    _pending_signals.clear()
    _unblock_crash_signals()


os.register_at_fork(
    before=_block_crash_signals,
    after_in_parent=_unblock_crash_signals,
    after_in_child=_forget_crash_handlers,
)


def take_pending(thread_id: int) -> BaseException | None:
    """The crash signal held for `thread_id`, if any (it is then no longer held). Called at
    each step of the engine on the thread: on the main thread, it first puts back the run's
    crash handling that the run's code undid since."""
    resume = _resume
    if resume is not None and threading.get_ident() == threading.main_thread().ident:
        resume()
    return _pending_signals.pop(thread_id, None)


def crash_on_signals(must_wait: Callable[[int], bool]) -> Callable[[], None]:
    """On the main thread: SIGTERM and SIGINT stop user code at once (so its run crashes), and
    wait while `must_wait(thread_id)` says the thread may not be stopped where it is. A signal
    the program ignores or handles itself is left alone; one whose handler the run's code puts
    back to the default (an event loop that handled it, closed) is the run's again at the
    engine's next step. Returns the function that puts the previous handlers back (where the
    run's code set none of its own)."""
    global _resume
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
    forwarder = _forward_to_main_thread(frozenset(previous))

    def resume() -> None:
        # At every step of the engine: `_signal.getsignal`, not `signal.getsignal`, which turns
        # a handler into its Handlers enum by raising and catching a ValueError for any Python
        # function (about 25K instructions a signal, the engine's steps 4% of a task run's).
        for signum in previous:
            handler: object = _signal.getsignal(signum)
            if handler is not on_signal and handler in defaults:
                signal.signal(signum, on_signal)

    outer, _resume = _resume, (resume if previous else None)

    def restore() -> None:
        global _resume
        _resume = outer
        if forwarder is not None and forwarder is _forwarder:
            forwarder.detach()
        for signum, handler in previous.items():
            if signal.getsignal(signum) is on_signal:
                signal.signal(signum, handler)
            if _crash_handlers.get(signum, (None,))[0] is on_signal:
                del _crash_handlers[signum]

    return restore
