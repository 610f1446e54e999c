"""The log follower on a real SQLite file: another connection's commits reach its listeners,
asked by its event loop's timer (the thread sleeps between backstops) or by its thread."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stateward.runs import RunKind, Transition
from stateward.states import State, StateType
from stateward_service.follower import LogFollower
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import PolledChangeSignal, open_database
from stateward_service.store.sqlite import wal_writes
from stateward_service.store.sqlite.leader import DataVersionSignal
from tests.support import wait_until

# Long enough that only the change signal can deliver a commit within a test's wait.
BACKSTOP = 60.0


def flow_run() -> RunRecord:
    return RunRecord(
        kind=RunKind.FLOW_RUN,
        id=str(uuid.uuid4()),
        name="a-run",
        created=datetime.now(UTC),
        flow_name="f",
    )


class Orchestrators:
    """The follower's orchestrator and another one (another process's, as far as the
    database can tell: a connection of its own) on the same file."""

    def __init__(self, path: Path) -> None:
        self.own = Orchestrator(open_database(str(path)))
        self.other = Orchestrator(open_database(str(path)))
        self.heard: list[int] = []

    def follower(self) -> LogFollower:
        follower = LogFollower(self.own, self.own.change_signal(), 0, backstop_seconds=BACKSTOP)
        follower.subscribe(self.listen)
        return follower

    def listen(self, transitions: Sequence[Transition]) -> None:
        self.heard.extend(transition.sequence for transition in transitions)

    def close(self) -> None:
        self.own.close()
        self.other.close()


def voluntary_switches(native_id: int) -> int:
    """How many times a thread of this process went to sleep (Linux)."""
    with open(f"/proc/self/task/{native_id}/status") as status:
        return int(status.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])


def test_a_follower_on_an_event_loop_publishes_another_connections_commits(
    tmp_path: Path,
) -> None:
    both = Orchestrators(tmp_path / "shared.db")

    async def scenario() -> None:
        follower = both.follower()
        follower.start(asyncio.get_running_loop())
        try:
            both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #1
            deadline = time.monotonic() + 20
            while not both.heard:
                assert time.monotonic() < deadline, "the commit was not published"
                await asyncio.sleep(0.01)  # the loop runs the follower's timer meanwhile
            both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #2
            while len(both.heard) < 2:
                assert time.monotonic() < deadline, "the second commit was not published"
                await asyncio.sleep(0.01)
        finally:
            follower.stop()

    try:
        asyncio.run(scenario())
        assert both.heard == [1, 2]
    finally:
        both.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_follower_on_an_event_loop_leaves_its_thread_asleep_while_nothing_is_committed(
    tmp_path: Path,
) -> None:
    """The loop's timer asks the signal every few milliseconds; the thread wakes only when
    there is something to read (it used to wake for every ask: 200 a second)."""
    both = Orchestrators(tmp_path / "shared.db")

    async def scenario() -> tuple[int, int]:
        follower = both.follower()
        follower.start(asyncio.get_running_loop())
        try:
            thread = follower._thread
            assert thread is not None and thread.native_id is not None
            await asyncio.sleep(0.2)  # started, and asleep
            before = voluntary_switches(thread.native_id)
            await asyncio.sleep(0.5)  # about a hundred asks of the signal
            return before, voluntary_switches(thread.native_id)
        finally:
            follower.stop()

    try:
        before, after = asyncio.run(scenario())
        assert after - before <= 2
    finally:
        both.close()


def test_a_follower_without_an_event_loop_asks_the_signal_from_its_thread(
    tmp_path: Path,
) -> None:
    both = Orchestrators(tmp_path / "shared.db")
    follower = both.follower()
    follower.start()
    try:
        both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #1
        wait_until(lambda: both.heard == [1], timeout=20, what="the commit published")
    finally:
        follower.stop()
        both.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and /proc")
def test_a_follower_on_an_event_loop_leaves_the_loop_asleep_while_nothing_is_written(
    tmp_path: Path,
) -> None:
    """With the system's notices of writes, the loop asks the signal only after a write: an
    idle process's loop sleeps (it used to wake 200 times a second to ask), and a commit of
    another connection made while it sleeps is published at once, long before the backstop."""
    both = Orchestrators(tmp_path / "shared.db")
    loop_thread = threading.get_native_id()

    async def scenario() -> tuple[int, int]:
        follower = both.follower()
        follower.start(asyncio.get_running_loop())
        try:
            deadline = time.monotonic() + 20
            while not follower._reading:  # the asks after the start are over
                assert time.monotonic() < deadline, "the loop never waited for a notice"
                await asyncio.sleep(0.01)
            before = voluntary_switches(loop_thread)
            await asyncio.sleep(0.5)  # a hundred asks, on a timer
            after = voluntary_switches(loop_thread)
            both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #1
            while not both.heard:
                assert time.monotonic() < deadline, "the commit was not published"
                await asyncio.sleep(0.01)
            return before, after
        finally:
            follower.stop()

    try:
        before, after = asyncio.run(scenario())
        assert after - before <= 5
        assert both.heard == [1]
    finally:
        both.close()


class WithoutNotices:
    """SQLite's change signal as on a system that tells of no writes (no inotify)."""

    def __init__(self, signal: PolledChangeSignal) -> None:
        self.signal = signal

    def wait(self, timeout: float, seen: Callable[[], int]) -> bool:
        return self.signal.wait(timeout, seen)

    def poll(self, seen: Callable[[], int]) -> bool:
        return self.signal.poll(seen)

    def writes(self) -> None:
        return None

    def close(self) -> None:
        self.signal.close()


def test_a_follower_on_an_event_loop_without_notices_of_writes_asks_on_a_timer(
    tmp_path: Path,
) -> None:
    both = Orchestrators(tmp_path / "shared.db")
    signal = both.own.change_signal()
    assert isinstance(signal, PolledChangeSignal)
    follower = LogFollower(both.own, WithoutNotices(signal), 0, backstop_seconds=BACKSTOP)
    follower.subscribe(both.listen)

    async def scenario() -> None:
        follower.start(asyncio.get_running_loop())
        try:
            deadline = time.monotonic() + 20
            while follower._asks_left > 0:  # the asks after the start are over
                assert time.monotonic() < deadline, "the asks after the start never ended"
                await asyncio.sleep(0.01)
            assert not follower._reading  # only the timer asks
            both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #1
            while not both.heard:
                assert time.monotonic() < deadline, "the commit was not published"
                await asyncio.sleep(0.01)
        finally:
            follower.stop()

    try:
        asyncio.run(scenario())
        assert both.heard == [1]
    finally:
        both.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_a_followers_loop_is_woken_by_the_logs_writes_not_by_other_files_of_the_folder(
    tmp_path: Path,
) -> None:
    """A server's log file beside its database is written at every call it logs: that woke the
    follower's loop each time (it then found the notice was not the log's). Now only the log's
    writes wake it; and its process has one inotify instance on the database, the follower's
    and both stores' checkpointers' alike."""
    server_log = (tmp_path / "server.log").open("a")
    both = Orchestrators(tmp_path / "shared.db")

    async def scenario() -> tuple[int, int]:
        follower = both.follower()
        follower.start(asyncio.get_running_loop())
        try:
            deadline = time.monotonic() + 20
            while not follower._reading:  # the asks after the start are over
                assert time.monotonic() < deadline, "the loop never waited for a notice"
                await asyncio.sleep(0.01)
            # One instance: the follower and the two stores' checkpointers read it.
            shared = wal_writes._watches[(os.getpid(), (tmp_path / "shared.db").resolve())]
            while len(shared.readers) < 3:
                assert time.monotonic() < deadline, "the checkpointers never asked for notices"
                await asyncio.sleep(0.01)
            assert len(shared.readers) == 3
            woken = follower.woken_by_writes
            for number in range(20):
                server_log.write(f"line {number}\n")
                server_log.flush()
            # Two turns of the loop: its selector has looked at the notices' descriptor, and
            # what it found ready has run.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert follower.woken_by_writes == woken
            both.other.create_run(flow_run(), State(StateType.PENDING))  # logs #1
            while not both.heard:
                assert time.monotonic() < deadline, "the commit was not published"
                await asyncio.sleep(0.01)
            return woken, follower.woken_by_writes
        finally:
            follower.stop()

    try:
        before, after = asyncio.run(scenario())
        assert after > before
        assert both.heard == [1]
    finally:
        both.close()
        server_log.close()


def test_a_follower_whose_process_writes_reads_its_looks_instead_of_polling(
    tmp_path: Path,
) -> None:
    """While its own process writes (each transaction looks for other connections' commits on
    the writing connection), the loop's asks read those looks: the follower's connection runs
    fewer statements than one for every five writes (two per ask before: about one for every
    two writes here), and another connection's commit made meanwhile is published all the
    same."""
    both = Orchestrators(tmp_path / "shared.db")
    signal = both.own.change_signal()
    assert isinstance(signal, DataVersionSignal)
    statements: list[str] = []
    signal._conn.set_trace_callback(statements.append)
    follower = LogFollower(both.own, signal, 0, backstop_seconds=BACKSTOP, looks=both.own.looks)
    follower.subscribe(both.listen)
    both.own.subscribe(follower.offer)

    async def scenario() -> int:
        follower.start(asyncio.get_running_loop())
        try:
            writes = 0
            other = 0
            deadline = time.monotonic() + 30
            while writes < 300 or other not in both.heard:
                assert time.monotonic() < deadline, "the other connection's commit was not heard"
                both.own.create_run(flow_run(), State(StateType.PENDING))
                writes += 1
                if writes == 150:
                    both.other.create_run(flow_run(), State(StateType.PENDING))
                    other = both.own.last_sequence()
                await asyncio.sleep(0)  # the loop asks in between, when its timer is due
            return writes
        finally:
            follower.stop()

    try:
        writes = asyncio.run(scenario())
        assert len(statements) < writes / 5, statements
        assert sorted(both.heard) == list(range(1, writes + 2))
    finally:
        both.close()
