"""The interrupt machinery at its edges, driven directly: an interrupt sent as its region ends,
an interrupt already handled when the code calls the engine, a signal inside the module's own
bookkeeping. Each used to leave a stale entry or deliver twice, or hang."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from stateward import _interrupt as interrupts
from stateward import _signals as signals


@pytest.fixture(autouse=True)
def clean_stacks():
    yield
    assert interrupts._stacks == {}  # nothing left behind on any thread
    assert signals._pending_signals == {}


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

    def code() -> None:
        sender.start()
        locked.wait()

    with interrupts.engine_code():
        region.run(code)
    sender.join()
    with interrupts.engine_code():  # later engine work on this thread gets nothing stale
        pass


def test_an_interrupt_being_handled_is_not_raised_again_by_the_engine():
    region = interrupts.Interruptible()
    cleaned = False

    def code() -> None:
        nonlocal cleaned
        try:
            for _ in range(200):
                time.sleep(0.01)
        finally:
            with interrupts.engine_code():  # a task called in the finally
                pass
            cleaned = True

    with interrupts.engine_code(), pytest.raises(interrupts.RunTimedOut):
        region.run(code, timeout=0.1)
    assert cleaned


def test_a_signal_inside_the_bookkeeping_waits_instead_of_deadlocking():
    restore = signals.crash_on_signals(interrupts.signal_must_wait)
    try:
        with interrupts.engine_code():
            with interrupts._lock:  # as if the signal came in the middle of a stack change
                signal.raise_signal(signal.SIGTERM)
            assert isinstance(
                signals._pending_signals.get(threading.get_ident()),
                signals.TerminationSignal,
            )
            with pytest.raises(signals.TerminationSignal):
                interrupts.waiting(lambda: None)  # the engine's next wait raises it
    finally:
        restore()


def test_a_timeout_sent_as_a_nested_region_ends_goes_on_to_the_region_around():
    """The flow's timer fires while the task the flow called is leaving: the interrupt, meant
    for the flow, must not be lost with the task's region."""
    flow_region, task_region = interrupts.Interruptible(), interrupts.Interruptible()
    locked = threading.Event()
    ran_on = []

    def timer_fires_while_the_task_region_leaves() -> None:
        with interrupts._lock:
            locked.set()
            time.sleep(0.1)  # the task's code is over; its thread waits for the lock to leave
            flow_region.interrupt(interrupts.RunTimedOut)

    timer = threading.Thread(target=timer_fires_while_the_task_region_leaves)

    def task_code() -> None:
        timer.start()
        locked.wait()

    def flow_code() -> None:
        with interrupts.engine_code():  # the engine calling the task
            task_region.run(task_code)
        timer.join()
        for _ in range(50):
            time.sleep(0.01)
        ran_on.append("the flow's code ran past its timeout")

    with interrupts.engine_code(), pytest.raises(interrupts.RunTimedOut):
        flow_region.run(flow_code)
    assert ran_on == []
    assert task_region.from_outside
