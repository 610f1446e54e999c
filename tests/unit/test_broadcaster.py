"""The broadcaster on a real store, without gRPC: cursors over the ring, catch-up from the log,
bounded memory, and subscriptions freed when their consumer stops."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from contextlib import aclosing
from datetime import UTC, datetime

import pytest

from stateward.runs import RunKind, Transition
from stateward.states import ResultData, State, StateType
from stateward_service.broadcaster import (
    Batch,
    StreamClosed,
    TransitionBroadcaster,
    TransitionFilter,
)
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store.sqlite import Store, StoreReader


def encode(transition) -> bytes:
    return str(transition.sequence).encode()


@pytest.fixture
def world(tmp_path):
    store = Store(tmp_path / "b.db")
    reader = StoreReader(tmp_path / "b.db")
    orchestrator = Orchestrator(store)
    yield store, reader, orchestrator
    reader.close()
    store.close()


def new_run(orchestrator: Orchestrator) -> str:
    run = RunRecord(
        kind=RunKind.FLOW_RUN,
        id=str(uuid.uuid4()),
        name="r",
        created=datetime.now(UTC),
        flow_name="f",
    )
    return orchestrator.create_run(run, State(StateType.RUNNING)).id


async def take(subscription, count: int) -> list[int]:
    found = []
    async with aclosing(subscription):
        async for sequence, payload in subscription:
            assert payload == str(sequence).encode()
            found.append(sequence)
            if len(found) == count:
                break
    return found


def test_a_live_subscriber_gets_every_later_transition_in_order(world):
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(broadcaster.publish)
        run_id = new_run(orchestrator)  # before the subscription: not delivered
        subscription = broadcaster.subscribe(TransitionFilter(), None)
        reading = asyncio.create_task(take(subscription, 5))
        await asyncio.sleep(0)
        for _ in range(5):
            orchestrator.set_state(run_id, State(StateType.RUNNING))
            await asyncio.sleep(0)
        assert await asyncio.wait_for(reading, 5) == [2, 3, 4, 5, 6]
        assert broadcaster.subscribers == 0

    asyncio.run(main())


def test_a_cancelled_consumer_frees_its_subscription(world):
    store, reader, _ = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
        broadcaster.bind(asyncio.get_running_loop())

        async def consume() -> None:
            async for _ in broadcaster.subscribe(TransitionFilter(), None):
                pass

        tasks = [asyncio.create_task(consume()) for _ in range(10)]
        await asyncio.sleep(0.01)
        assert broadcaster.subscribers == 10
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert broadcaster.subscribers == 0

    asyncio.run(main())


def test_subscribers_at_one_cursor_share_their_batches_encoded_once(world):
    """A release finds the subscribers at the head at the same cursor: those with the same
    filter (equal, each its own object, as each stream's request makes) get the same Batch
    (its transitions encoded, matched and framed once for all of them), one with another
    filter a batch of its own, each in order and complete. Once they left, nothing of them
    is kept."""
    _, reader, _ = world
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    encoded: list[int] = []

    def counting(transition: Transition) -> bytes:
        encoded.append(transition.sequence)
        return encode(transition)

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, counting, 0)
        broadcaster.bind(asyncio.get_running_loop())
        filters = [TransitionFilter() for _ in range(20)]
        filters += [TransitionFilter(run_ids=frozenset({run_a})) for _ in range(5)]
        firsts: list[Batch] = []

        async def first_batch(where: TransitionFilter) -> None:
            async with aclosing(broadcaster.subscribe_batches(where, None)) as batches:
                async for batch in batches:
                    firsts.append(batch)
                    return

        readers = [asyncio.create_task(first_batch(where)) for where in filters]
        for _ in range(5):
            await asyncio.sleep(0)  # every reader waits at the head
        assert broadcaster.subscribers == len(filters)
        # One publication of 30, on the loop's thread: one release for everybody.
        broadcaster.publish(
            [synthetic(s, run_a if s % 3 else run_b, StateType.RUNNING) for s in range(1, 31)]
        )
        await asyncio.wait_for(asyncio.gather(*readers), 5)
        everything = list(range(1, 31))
        of_a = [s for s in everything if s % 3]
        by_identity = {id(batch): batch for batch in firsts}
        assert len(by_identity) == 2  # one batch per filter
        for batch in by_identity.values():
            assert [s for s, _ in batch] in (everything, of_a)
            assert all(payload == str(s).encode() for s, payload in batch)
        assert sorted(encoded) == everything  # each transition encoded once
        framed: list[int] = []

        def frame(batch: Batch) -> int:
            framed.append(len(batch))
            return len(batch)

        assert [batch.derived(frame) for batch in firsts].count(30) == 20
        assert sorted(framed) == [20, 30]  # once per batch, not per subscriber
        assert broadcaster.subscribers == 0
        assert not broadcaster._sharings

    asyncio.run(main())


def test_a_subscriber_that_stops_reading_holds_no_round_back(world):
    """A round of live delivery lasts until the subscribers it woke sent and came back; one
    whose consumer stopped taking batches never comes back, and the others still get every
    later transition, in order, round after round."""
    _, reader, _ = world
    run_id = str(uuid.uuid4())

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, 0)
        broadcaster.bind(asyncio.get_running_loop())
        stalled = broadcaster.subscribe_batches(TransitionFilter(), None)
        first = asyncio.ensure_future(anext(stalled))
        reading = asyncio.create_task(take(broadcaster.subscribe(TransitionFilter(), None), 20))
        for _ in range(5):
            await asyncio.sleep(0)  # both wait at the head
        broadcaster.publish([synthetic(1, run_id, StateType.RUNNING)])
        assert [s for s, _ in await asyncio.wait_for(first, 5)] == [1]  # then it stops
        for sequence in range(2, 21):
            await asyncio.sleep(0.01)
            broadcaster.publish([synthetic(sequence, run_id, StateType.RUNNING)])
        assert await asyncio.wait_for(reading, 10) == list(range(1, 21))
        await stalled.aclose()
        assert broadcaster.subscribers == 0

    asyncio.run(main())


def test_a_subscriber_slow_to_send_holds_no_round_of_the_others_back(world):
    """A subscriber whose consumer takes a batch and then does not ask for the next for a
    while (a stream whose client reads slowly: its transport's buffer full, the send not done)
    is woken at the head round after round; once it held one round up to its deadline, the
    others' rounds do not wait for it. (They waited for it, up to the round's deadline, 50 ms
    to 1 s, at every round it was woken in.) It gets every transition all the same, in order,
    once."""
    _, reader, _ = world
    run_id = str(uuid.uuid4())

    async def main() -> tuple[list[float], list[float], list[int]]:
        broadcaster = TransitionBroadcaster(reader, encode, 0)
        broadcaster.bind(asyncio.get_running_loop())
        received: dict[int, float] = {}
        arrived = asyncio.Event()

        async def fast() -> None:
            async with aclosing(broadcaster.subscribe(TransitionFilter(), None)) as items:
                async for sequence, _ in items:
                    received[sequence] = time.perf_counter()
                    arrived.set()

        slow_seen: list[int] = []
        slow_took = asyncio.Event()
        permits = asyncio.Semaphore(0)

        async def slow() -> None:  # takes a batch, then holds it until allowed the next
            batches = broadcaster.subscribe_batches(TransitionFilter(), None)
            async with aclosing(batches):
                async for batch in batches:
                    slow_seen.extend(sequence for sequence, _ in batch)
                    slow_took.set()
                    await permits.acquire()

        tasks = [asyncio.create_task(fast()), asyncio.create_task(slow())]
        for _ in range(5):
            await asyncio.sleep(0)  # both wait at the head

        async def deliver(sequence: int) -> float:
            """Publish, and return how long the fast subscriber took to receive it."""
            arrived.clear()
            sent = time.perf_counter()
            broadcaster.publish([synthetic(sequence, run_id, StateType.RUNNING)])
            while sequence not in received:
                await asyncio.wait_for(arrived.wait(), 10)
                arrived.clear()
            return received[sequence] - sent

        woken_with_the_slow, after_it = [], []
        for pair in range(20):
            first = 2 * pair + 1
            # The slow one is at the head: woken with the fast one, it takes the batch, holds.
            woken_with_the_slow.append(await deliver(first))
            after_it.append(await deliver(first + 1))  # while the slow one still holds
            permits.release()  # it asks for more: the one it missed, then waits at the head
            permits.release()
            while len(slow_seen) < first + 1:
                slow_took.clear()
                await asyncio.wait_for(slow_took.wait(), 10)
            for _ in range(5):
                await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return woken_with_the_slow, after_it, slow_seen

    woken_with_the_slow, after_it, slow_seen = asyncio.run(main())
    assert slow_seen == list(range(1, 41))
    normal = statistics.median(woken_with_the_slow)
    # Generous: 10x the delivery of a round nobody held, and never the round's 50 ms deadline.
    assert statistics.median(after_it) < max(10 * normal, 0.02), (normal, after_it)


def test_the_ring_is_bounded_and_a_subscriber_behind_it_reads_the_log(world):
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(
            reader, encode, store.last_sequence(), capacity=10, catch_up_batch=7
        )
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(broadcaster.publish)
        run_id = new_run(orchestrator)
        for _ in range(99):
            orchestrator.set_state(run_id, State(StateType.RUNNING))
        assert len(broadcaster._ring) == 10
        got = await take(broadcaster.subscribe(TransitionFilter(), 0), 100)
        assert got == list(range(1, 101))  # 90 from the log in batches of 7, 10 from the ring
        assert broadcaster.subscribers == 0

    asyncio.run(main())


def test_the_ring_is_bounded_by_bytes_too(world):
    _store, reader, orchestrator = world
    broadcaster = TransitionBroadcaster(reader, encode, 0, capacity=1000, capacity_bytes=10_000)
    orchestrator.subscribe(broadcaster.publish)
    run_id = new_run(orchestrator)
    big = ResultData(json='"' + "x" * 3000 + '"')
    for _ in range(20):
        orchestrator.set_state(run_id, State(StateType.RUNNING, data=big))
    assert broadcaster._ring_bytes <= 10_000
    assert 1 <= len(broadcaster._ring) <= 3


def test_filters_apply_to_the_log_and_the_ring_alike(world):
    _store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, 0, capacity=3)
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(broadcaster.publish)
        wanted, other = new_run(orchestrator), new_run(orchestrator)
        for _ in range(10):
            orchestrator.set_state(other, State(StateType.RUNNING))
            orchestrator.set_state(wanted, State(StateType.COMPLETED))
        only = TransitionFilter(run_ids=frozenset({wanted}))
        sequences = await take(broadcaster.subscribe(only, 0), 11)
        logged, _oldest, _newest = reader.read_log(0, 100, run_ids=[wanted])
        expected = [t.sequence for t in logged]
        assert sequences == expected

    asyncio.run(main())


def test_close_ends_subscribers_with_their_cursor(world):
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(broadcaster.publish)
        new_run(orchestrator)

        async def consume() -> None:
            async for _ in broadcaster.subscribe(TransitionFilter(), 0):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        await broadcaster.close()
        with pytest.raises(StreamClosed) as closed:
            await task
        assert closed.value.last_sequence == 1

    asyncio.run(main())


def test_a_subscriber_waiting_for_something_rare_survives_log_pruning(world):
    """Transitions it does not want move its cursor on without waking it, so the log's
    retention never leaves it behind."""
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence(), capacity=10)
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(broadcaster.publish)
        run_id = new_run(orchestrator)
        rare = TransitionFilter(state_types=frozenset({int(StateType.CANCELLED)}))
        subscription = broadcaster.subscribe(rare, None)
        reading = asyncio.create_task(take(subscription, 1))
        await asyncio.sleep(0.05)
        for _ in range(100):
            orchestrator.set_state(run_id, State(StateType.RUNNING))
        with store.transaction():
            store.prune_log(5)  # the log forgets everything the subscriber skipped
        orchestrator.set_state(run_id, State(StateType.CANCELLED))
        cancelled = store.last_sequence()
        assert await asyncio.wait_for(reading, 5) == [cancelled]

    asyncio.run(main())


def test_a_transition_never_published_is_read_from_the_log(world):
    """A committed transition missing from the publications (a gap in the sequences) is not
    skipped: the ring is dropped and subscribers read it from the log."""
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
        broadcaster.bind(asyncio.get_running_loop())
        dropped: list[int] = []

        def lossy(transitions) -> None:
            if transitions[0].sequence == 3 and not dropped:
                dropped.append(3)  # as if this publication were lost
                return
            broadcaster.publish(transitions)

        orchestrator.subscribe(lossy)
        run_id = new_run(orchestrator)  # sequence 1, before the subscriber
        reading = asyncio.create_task(take(broadcaster.subscribe(TransitionFilter(), 1), 4))
        await asyncio.sleep(0.05)
        for _ in range(4):
            orchestrator.set_state(run_id, State(StateType.RUNNING))
            await asyncio.sleep(0)
        assert dropped == [3]
        assert await asyncio.wait_for(reading, 5) == [2, 3, 4, 5]

    asyncio.run(main())


def lossy_publisher(broadcaster: TransitionBroadcaster, lost: set[int]):
    """Publishes to the broadcaster, except the publications starting with a sequence in
    `lost` (as if they were lost): each one is dropped once."""

    def publish(transitions) -> None:
        if transitions[0].sequence in lost:
            lost.discard(transitions[0].sequence)
            return
        broadcaster.publish(transitions)

    return publish


def test_a_gap_wakes_a_waiting_subscriber_whose_transition_it_holds(world):
    store, reader, orchestrator = world

    async def main() -> None:
        wanted, other = new_run(orchestrator), new_run(orchestrator)  # sequences 1 and 2
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(lossy_publisher(broadcaster, lost={3}))
        only = TransitionFilter(run_ids=frozenset({wanted}))
        reading = asyncio.create_task(take(broadcaster.subscribe(only, None), 1))
        await asyncio.sleep(0.05)
        orchestrator.set_state(wanted, State(StateType.CANCELLED))  # lost
        cancelled = store.last_sequence()
        orchestrator.set_state(other, State(StateType.RUNNING))  # only the other run after it
        assert await asyncio.wait_for(reading, 5) == [cancelled]

    asyncio.run(main())


def test_after_a_gap_a_rare_subscriber_still_survives_log_pruning(world):
    store, reader, orchestrator = world

    async def main() -> None:
        run_id = new_run(orchestrator)
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence(), capacity=10)
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(lossy_publisher(broadcaster, lost={2}))
        rare = TransitionFilter(state_types=frozenset({int(StateType.CANCELLED)}))
        reading = asyncio.create_task(take(broadcaster.subscribe(rare, None), 1))
        await asyncio.sleep(0.05)
        for _ in range(100):  # the first is lost: a gap
            orchestrator.set_state(run_id, State(StateType.RUNNING))
            await asyncio.sleep(0)
        with store.transaction():
            store.prune_log(5)
        orchestrator.set_state(run_id, State(StateType.CANCELLED))
        cancelled = store.last_sequence()
        assert await asyncio.wait_for(reading, 5) == [cancelled]

    asyncio.run(main())


def test_a_cursor_past_the_last_publication_waits_without_blocking_the_loop(world):
    """Catching up from the log can pass what was published (a transition committed but not
    published yet, or never): the subscriber then waits, it does not spin."""
    store, reader, orchestrator = world

    async def main() -> None:
        broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence(), capacity=1)
        broadcaster.bind(asyncio.get_running_loop())
        orchestrator.subscribe(lossy_publisher(broadcaster, lost={3}))
        run_id = new_run(orchestrator)  # 1
        orchestrator.set_state(run_id, State(StateType.RUNNING))  # 2, the ring holds only it
        orchestrator.set_state(run_id, State(StateType.RUNNING))  # 3, lost
        reading = asyncio.create_task(take(broadcaster.subscribe(TransitionFilter(), 0), 4))
        ticks = 0
        for _ in range(10):  # the loop keeps turning while the subscriber waits at 3
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 10 and not reading.done()
        orchestrator.set_state(run_id, State(StateType.RUNNING))  # 4
        assert await asyncio.wait_for(reading, 5) == [1, 2, 3, 4]

    asyncio.run(main())


def synthetic(sequence: int, run_id: str, state_type: StateType) -> Transition:
    """A transition as the orchestrator publishes it (the broadcaster reads nothing else)."""
    return Transition(
        sequence=sequence,
        run_id=run_id,
        run_kind=RunKind.FLOW_RUN,
        flow_run_id=run_id,
        run_name="r",
        flow_name="f",
        task_key="",
        from_state=None,
        to_state=State(state_type),
    )


def test_publishing_costs_a_writer_the_same_with_thousands_of_subscribers(world):
    """The writer appends and returns; the matching against each subscriber happens later, on
    the event loop. Then each subscriber (all, one run, one state type) gets exactly its own,
    in order."""
    _, reader, _ = world
    runs = [str(uuid.uuid4()) for _ in range(1000)]
    types = (StateType.RUNNING, StateType.COMPLETED)

    published = [synthetic(s, runs[s % 1000], types[s % 2]) for s in range(1, 1001)]

    def publish_all(broadcaster: TransitionBroadcaster, first: int, count: int) -> float:
        """Seconds the writer spends publishing `count` transitions one by one."""
        began = time.perf_counter()
        for transition in published[first - 1 : first - 1 + count]:
            broadcaster.publish([transition])
        return time.perf_counter() - began

    async def main() -> None:
        alone = TransitionBroadcaster(reader, encode, 0)
        alone.bind(asyncio.get_running_loop())
        crowded = TransitionBroadcaster(reader, encode, 0)
        crowded.bind(asyncio.get_running_loop())
        filters = (
            [TransitionFilter()] * 100
            + [TransitionFilter(run_ids=frozenset({run})) for run in runs] * 2
            + [TransitionFilter(state_types=frozenset({int(types[i % 2])})) for i in range(100)]
        )
        received: list[list[int]] = [[] for _ in filters]

        async def follow(index: int) -> None:
            async for sequence, _ in crowded.subscribe(filters[index], None):
                received[index].append(sequence)

        followers = [asyncio.create_task(follow(i)) for i in range(len(filters))]
        for _ in range(5):
            await asyncio.sleep(0.01)  # every follower waits at the head
        assert crowded.subscribers == len(filters)
        # Alternately, on the loop's own thread (as a SetState), so that no dispatch runs
        # in between: the writer's own time.
        times: dict[str, list[float]] = {"alone": [], "crowded": []}
        sequence = 1
        for _ in range(5):
            times["alone"].append(publish_all(alone, sequence, 200))
            times["crowded"].append(publish_all(crowded, sequence, 200))
            sequence += 200
            await asyncio.sleep(0.01)
        ratio = min(times["crowded"]) / min(times["alone"])
        assert ratio < 3, times
        assert sequence - 1 == len(published)
        by_filter: dict[TransitionFilter, list[int]] = {}
        for where in filters:
            if where not in by_filter:
                by_filter[where] = [t.sequence for t in published if where.matches(t)]
        wanted = [by_filter[where] for where in filters]
        for _ in range(600):
            if all(len(got) >= len(want) for got, want in zip(received, wanted, strict=True)):
                break
            await asyncio.sleep(0.05)
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for index, where in enumerate(filters):
            assert received[index] == wanted[index], (index, where)

    asyncio.run(main())


def test_with_no_subscriber_a_writer_wakes_no_event_loop_and_later_ones_miss_nothing(world):
    # A process running flows on the embedded default has no subscriber: its writes must not
    # cost a wake-up of the event loop's thread each. A subscriber that comes later replays
    # from the ring what it asks for, and is woken for what follows.
    store, reader, orchestrator = world
    loop = asyncio.new_event_loop()
    wakes: list[object] = []

    class CountingLoop(type(loop)):  # type: ignore[misc]
        """Notes each dispatch the broadcaster asks of it."""

        def call_soon(self, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            if getattr(callback, "__name__", "") == "_dispatch":
                wakes.append(callback)
            return super().call_soon(callback, *args, **kwargs)

        def call_soon_threadsafe(self, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            if getattr(callback, "__name__", "") == "_dispatch":
                wakes.append(callback)
            return super().call_soon_threadsafe(callback, *args, **kwargs)

    loop.close()
    loop = CountingLoop()
    broadcaster = TransitionBroadcaster(reader, encode, store.last_sequence())
    try:
        broadcaster.bind(loop)
        orchestrator.subscribe(broadcaster.publish)
        run_id = new_run(orchestrator)  # sequence 1
        for _ in range(3):  # sequences 2 to 4
            orchestrator.set_state(run_id, State(StateType.RUNNING))
        assert wakes == []

        async def main() -> list[int]:
            reading = asyncio.create_task(take(broadcaster.subscribe(TransitionFilter(), 2), 4))
            await asyncio.sleep(0.05)  # it read 3 and 4 from the ring, and waits
            await asyncio.to_thread(orchestrator.set_state, run_id, State(StateType.RUNNING))
            await asyncio.to_thread(orchestrator.set_state, run_id, State(StateType.RUNNING))
            return await asyncio.wait_for(reading, 5)

        assert loop.run_until_complete(main()) == [3, 4, 5, 6]
        assert wakes  # a subscriber waits: the writes from other threads wake the loop
    finally:
        loop.close()
