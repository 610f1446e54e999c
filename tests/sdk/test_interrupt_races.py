"""The interrupt machinery at its edges, driven directly: an interrupt sent as its region ends,
an interrupt already handled when the code calls the engine, a signal inside the module's own
bookkeeping. Each used to leave a stale entry or deliver twice, or hang."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from stateward import _interrupt as interrupts


@pytest.fixture(autouse=True)
def clean_stacks():
    yield
    assert interrupts._stacks == {}  # nothing left behind on any thread
    assert interrupts._pending_signals == {}


def test_an_interrupt_sent_as_its_region_ends_is_withdrawn():
    region = interrupts.Interruptible()
    locked = threading.Event()

    def send_while_the_region_waits_to_leave() -> None:
        with interrupts._lock:
            locked.set()
            time.sleep(0.1)  # the region's thread now waits for the lock, in its cleanup
            region.received = interrupts.RunTimedOut
            region._sent = True  # as interrupt() does for the innermost region
            interrupts._set_async_exc(region.thread_id, interrupts.RunTimedOut)

    sender = threading.Thread(target=send_while_the_region_waits_to_leave)
    with interrupts.engine_code(), region.running():
        sender.start()
        locked.wait()
    sender.join()
    with interrupts.engine_code():  # later engine work on this thread gets nothing stale
        pass


def test_an_interrupt_being_handled_is_not_raised_again_by_the_engine():
    region = interrupts.Interruptible()
    cleaned = False
    with (
        interrupts.engine_code(),
        pytest.raises(interrupts.RunTimedOut),
        region.running(timeout=0.1),
    ):
        try:
            for _ in range(200):
                time.sleep(0.01)
        finally:
            with interrupts.engine_code():  # a task called in the finally
                pass
            cleaned = True
    assert cleaned


def test_a_signal_inside_the_bookkeeping_waits_instead_of_deadlocking():
    restore = interrupts.crash_on_signals()
    try:
        with interrupts.engine_code():
            with interrupts._lock:  # as if the signal came in the middle of a stack change
                signal.raise_signal(signal.SIGTERM)
            assert isinstance(
                interrupts._pending_signals.get(threading.get_ident()),
                interrupts.TerminationSignal,
            )
            with pytest.raises(interrupts.TerminationSignal), interrupts.engine_waits():
                pass  # the engine's next wait raises it
    finally:
        restore()
