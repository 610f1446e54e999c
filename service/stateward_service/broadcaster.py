"""Fan-out of committed transitions to the subscribers of WatchTransitions.

The orchestrator publishes every committed transition once, in sequence order, into a ring of
recent transitions (bounded by count and by bytes). A subscriber is a cursor: it walks the ring
from its last sequence, so one publication reaches every subscriber without a database read while
it keeps up. A subscriber that falls behind the ring (it reads slowly, or starts from an old
cursor) catches up from the transitions log on a connection of its own, then rejoins the ring;
the hand-over is by sequence, so nothing is skipped or sent twice. Writers never wait for a
subscriber, nor do the matching for them: publishing is an append to the ring and, at most once
per turn of the event loop, a call for the dispatcher, which on the loop wakes the subscribers
waiting at the head that a new transition matches (found through an index by run and flow run,
not by trying every subscriber). Each transition is encoded once, when the first subscriber needs
it, and every subscriber sends the same bytes; the subscribers at the same cursor with the same
filter share their batches too (what a stream makes of one, its messages, it makes once). A round
of delivery lasts until the subscribers it woke sent and came back, and the next rests as long as
it took, so that a thousand subscribers cannot take the whole event loop from the writers. A
subscriber that held a round up to its deadline (its client reads slowly: its transport's buffer
full, its send not done) is not waited for again: it delays the others once, not at every round,
and takes what it missed from the ring, or the log, once its send is done.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import Any, Generic, Protocol, TypeVar, cast

from stateward.runs import Transition
from stateward.states import dataclass

T = TypeVar("T")
P = TypeVar("P")  # what an encoder makes of a transition: bytes, or the transition itself
Encoder = Callable[[Transition], P]
# Makes the bytes the broadcaster's encoder makes of each transition, from the log's rows.
RowsEncoder = Callable[[list[Sequence[Any]]], list[bytes]]


class TransitionLog(Protocol):
    """Where subscribers that fell behind read (the orchestrator; a `StoreReader` in tests)."""

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """Transitions above `after` (at most `limit`) matching the filters, and the log's
        oldest and newest sequences, from one snapshot."""
        ...

    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Sequence[Any]], int, int]:
        """As `read_log`, each transition as its row (sequence first), which a row encoder
        makes into the same bytes as the broadcaster's encoder makes of the transition."""
        ...


class StreamClosed(Exception):
    """The server is shutting down; the subscriber should reconnect from `last_sequence`."""

    def __init__(self, last_sequence: int) -> None:
        super().__init__(f"the server is shutting down; resume after sequence {last_sequence}")
        self.last_sequence = last_sequence


class CursorExpired(Exception):
    """The log no longer holds the transitions after a cursor (retention pruned them)."""

    def __init__(self, cursor: int, oldest: int) -> None:
        super().__init__(
            f"the transitions log no longer holds the transitions after sequence {cursor}: the "
            f"oldest kept is {oldest}. Resume with after_sequence >= {oldest - 1}, or without it "
            "to start live"
        )
        self.cursor = cursor
        self.oldest = oldest


class CursorAhead(Exception):
    """A cursor beyond the newest transition: it belongs to another database."""

    def __init__(self, cursor: int, newest: int) -> None:
        super().__init__(
            f"after_sequence {cursor} is beyond the newest transition ({newest}); the cursor "
            "belongs to another database. Start without after_sequence"
        )
        self.cursor = cursor
        self.newest = newest


@dataclass(frozen=True, slots=True, quick=True)
class TransitionFilter:
    """What a subscriber wants; empty fields match everything."""

    run_ids: frozenset[str] = frozenset()
    flow_run_ids: frozenset[str] = frozenset()
    state_types: frozenset[int] = frozenset()

    def matches(self, transition: Transition) -> bool:
        return (
            (not self.run_ids or transition.run_id in self.run_ids)
            and (not self.flow_run_ids or transition.flow_run_id in self.flow_run_ids)
            and (not self.state_types or int(transition.to_state.type) in self.state_types)
        )


class _Entry:
    """A published transition and, once a subscriber needed them, its encodings (one per
    encoder: the gRPC stream's, the web view's)."""

    __slots__ = ("_payloads", "size", "transition")

    def __init__(self, transition: Transition) -> None:
        self.transition = transition
        self.size = _size(transition)  # what it counts for in the ring's bound, once
        self._payloads: dict[Encoder[Any], object] = {}

    def payload(self, encode: Encoder[P]) -> P:
        payload = self._payloads.get(encode)
        if payload is None:
            payload = self._payloads[encode] = encode(self.transition)
        return cast(P, payload)


class _Subscription:
    """One subscriber, as the dispatcher sees it: what it wants, how far it got, and, while it
    waits at the head, the future that wakes it."""

    __slots__ = ("cursor", "round", "slow", "waiting", "where", "woken")

    def __init__(self, where: TransitionFilter, cursor: int) -> None:
        self.where = where
        self.cursor = cursor
        # Set at the head, under the lock; while it is set, no dispatched transition after
        # `cursor` matched (the dispatcher wakes it on the first that does).
        self.waiting = False
        self.woken: asyncio.Future[None] | None = None
        # The dispatcher's round that woke it, until it is back at the head (0: none).
        self.round = 0
        # It held a round up to its deadline (its client reads slowly: its transport's buffer
        # full, its sends held up): from then on its rounds do not wait for its sends.
        self.slow = False


class _Subscriptions:
    """The subscriptions, indexed by what they filter on, so that a transition is matched
    against the few that may want it: those of its run, those of its flow run, and those that
    filter on neither (state types only, or nothing)."""

    def __init__(self) -> None:
        self.all: set[_Subscription] = set()
        self.by_run: dict[str, set[_Subscription]] = {}
        self.by_flow_run: dict[str, set[_Subscription]] = {}
        self.others: set[_Subscription] = set()

    def _places(self, me: _Subscription) -> list[set[_Subscription]]:
        if me.where.run_ids:
            return [self.by_run.setdefault(key, set()) for key in me.where.run_ids]
        if me.where.flow_run_ids:
            return [self.by_flow_run.setdefault(key, set()) for key in me.where.flow_run_ids]
        return [self.others]

    def add(self, me: _Subscription) -> None:
        self.all.add(me)
        for place in self._places(me):
            place.add(me)

    def discard(self, me: _Subscription) -> None:
        self.all.discard(me)
        where = me.where
        for key in where.run_ids:
            self._drop(self.by_run, key, me)
        if not where.run_ids:
            for key in where.flow_run_ids:
                self._drop(self.by_flow_run, key, me)
        self.others.discard(me)

    @staticmethod
    def _drop(index: dict[str, set[_Subscription]], key: str, me: _Subscription) -> None:
        place = index.get(key)
        if place is not None:
            place.discard(me)
            if not place:
                del index[key]


class Batch(list[tuple[int, P]]):
    """(sequence, encoded transition) of the matching transitions ready at once for one
    subscriber, in order. The subscribers with the same filter and encoder at the same cursor
    are handed the same Batch (a round of live delivery usually finds most of them there): what
    a caller makes of it, e.g. its stream messages, it makes once for all of them with
    `derived`. Treat it as read-only."""

    __slots__ = ("_derived",)

    def __init__(self, items: Iterable[tuple[int, P]] = ()) -> None:
        super().__init__(items)
        self._derived: dict[Callable[[Batch[P]], object], object] = {}

    def derived(self, make: Callable[[Batch[P]], T]) -> T:
        """`make(self)`, computed by the first caller and remembered for the others."""
        try:
            return cast(T, self._derived[make])
        except KeyError:
            made = self._derived[make] = make(self)
            return made


class _Ready(Generic[P]):
    """What the ring holds for a subscriber at one cursor, up to what was released, made into
    batches as it sends them. When it is shared (`shared`), the subscribers at the same cursor
    with the same filter, encoder and batch size read the same batches, made by the first
    that gets to each; otherwise a batch is forgotten once the next is asked for."""

    __slots__ = (
        "_at",
        "_entries",
        "_first",
        "_made",
        "encode",
        "max_batch",
        "released",
        "shared",
        "where",
    )

    def __init__(
        self,
        entries: list[_Entry],
        released: int,
        where: TransitionFilter,
        encode: Encoder[P],
        max_batch: int,
        shared: bool,
    ) -> None:
        self._entries = entries
        self._at = 0  # the next entry to look at
        self._made: list[tuple[Batch[P], int]] = []  # batches number _first, _first + 1, ...
        self._first = 0
        self.released = released
        self.where = where
        self.encode = encode
        self.max_batch = max_batch
        self.shared = shared

    def batch(self, number: int) -> tuple[Batch[P], int] | None:
        """Batch `number` (from 0) and the cursor a subscriber reaches once it sent it; None
        past the last. A batch may be empty (nothing after the previous one matched): the
        cursor moves all the same."""
        if not self.shared and number > self._first:
            del self._made[: number - self._first]
            self._first = number
        while number - self._first >= len(self._made):
            if not self._make():
                return None
        return self._made[number - self._first]

    def _make(self) -> bool:
        entries, at = self._entries, self._at
        if at >= len(entries):
            return False
        where, encode = self.where, self.encode
        batch: Batch[P] = Batch()
        while at < len(entries):
            entry = entries[at]
            at += 1
            transition = entry.transition
            if where.matches(transition):
                batch.append((transition.sequence, entry.payload(encode)))
                if len(batch) == self.max_batch:
                    break
        self._at = at
        # The cursor reaches the last transition sent or, at the end, all that was released
        # (the transitions after the last match did not match).
        reached = self.released if at >= len(entries) else batch[-1][0]
        self._made.append((batch, reached))
        return True


class _Sharing:
    """Stands for a filter, encoder and batch size while subscribers with them are subscribed
    (compared by identity)."""

    __slots__ = ("subscribers",)

    def __init__(self) -> None:
        self.subscribers = 0


_NOTHING_RELEASED: _Ready[Any] = _Ready([], 0, TransitionFilter(), lambda _: b"", 1, False)

# How long a round waits for the subscribers it woke to be back before the next may start
# without them: at least, and at most.
_SHORTEST_ROUND_WAIT = 0.05
_LONGEST_ROUND_WAIT = 1.0

# Entries held by the shared batches of one release, at most: past that (many subscribers at
# many cursors far behind), a subscriber's batches are its own, as big as it is behind.
_MOST_SHARED = 200_000


@dataclass(frozen=True, slots=True, quick=True)
class _LogBatch(Generic[P]):
    """What one read of the log found for a subscriber."""

    batches: list[Batch[P]]  # the matching (sequence, payload), in order, in batches
    reached: int  # the log was read up to this sequence


# What a subscriber makes of each batch it sends (e.g. its stream messages), by `Batch.derived`.
Prepare = Callable[[Batch[P]], object]


# Transitions published and not yet dispatched, at most: past that (the event loop did not turn
# for that long), the waiting subscribers are all woken, as after a gap.
_MOST_UNDISPATCHED = 100_000


def _itself(transition: Transition) -> Transition:
    """The encoder of subscribers in this process, who take the transitions as they are."""
    return transition


def _size(transition: Transition) -> int:
    """A rough size, to bound the ring's memory by the results its states carry."""
    size = 512
    data = transition.to_state.data
    if data is not None:
        size += len(data.json or "") + len(data.pickle or b"")
    before = transition.from_state
    data = before.data if before is not None else None
    if data is not None:
        size += len(data.json or "") + len(data.pickle or b"")
    return size


class TransitionBroadcaster:
    """Publishes transitions to every matching subscriber, in sequence order."""

    def __init__(
        self,
        log: TransitionLog,
        encode: Encoder[bytes],
        last_sequence: int,
        *,
        capacity: int = 10_000,
        capacity_bytes: int = 64 * 1024 * 1024,
        catch_up_batch: int = 500,
        encode_rows: RowsEncoder | None = None,
    ) -> None:
        self.log = log
        self.encode = encode
        # A subscriber behind the ring, with the broadcaster's encoder, reads the log's rows and
        # has them encoded directly (a replay at half the CPU: the transitions are not made).
        self.encode_rows = encode_rows
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.catch_up_batch = catch_up_batch
        self._ring: deque[_Entry] = deque()
        self._ring_bytes = 0
        self._last = last_sequence  # the newest sequence published (or logged before start)
        self._lock = threading.Lock()  # the ring is appended from the writer's thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._closed = False
        # Published, not yet dispatched to the waiting subscribers (the dispatcher runs on
        # the event loop, once for whatever was published since it last ran); `_gap` says a
        # publication did not follow the one before it.
        self._undispatched: list[Transition] = []
        self._gap = False
        self._dispatch_due = False
        # Subscribers at the head read the ring only up to what the dispatcher released, so
        # that all live delivery goes in the dispatcher's rounds. A round lasts until every
        # subscriber it woke has sent and is back at the head (or left), so it counts the
        # completion of the sends too, but for a subscriber marked slow (one that held a round
        # up to its deadline), which counts once it handed its batch over. One that took t of
        # the loop thread's CPU makes the next wait t after it. When writers and a thousand
        # subscribers both want the whole loop, the subscribers get at most about half of it
        # (the writers' work during a round counts in t) and bigger batches, fewer messages;
        # a round for a few subscribers costs them a fraction of a millisecond. A subscriber
        # that does not come back (its client reads slowly, or stopped reading) holds no round
        # back past `_round_deadline`, and is marked slow.
        self._released = last_sequence
        self._rest_until = 0.0
        self._round = 0  # the number of the last round
        self._round_pending = 0  # subscribers it woke that are not back at the head
        self._round_began = 0.0  # the loop thread's CPU clock when it began
        self._round_started = 0.0  # the loop's clock when it began
        self._round_deadline = 0.0
        self._round_seconds = 0.0  # how long the last round that ended in full lasted
        self._dispatch_timer: asyncio.TimerHandle | None = None
        # The log reads of subscribers behind the ring, one at a time on a thread of their
        # own: twenty streams resuming at once hold the interpreter's lock from one thread,
        # not from six, so the event loop (health checks, writes) waits for it briefly.
        self._catch_up = ThreadPoolExecutor(1, thread_name_prefix="stateward-catch-up")
        # The batches made since the last release, by (filter, encoder, most per batch,
        # cursor) (their `_Sharing` stands for the first three): the subscribers that share
        # these get the same batches, matched and encoded once. Only the event loop's thread
        # touches them.
        self._shared: dict[tuple[_Sharing, int], _Ready[Any]] = {}
        # What the subscribers with one filter, encoder and batch size have in common: one
        # object for all of them while any is subscribed (with how many are), so that the
        # batches above are found by identity, not by comparing filters at every send.
        self._sharings: dict[tuple[TransitionFilter, Encoder[Any], int], _Sharing] = {}
        self._shared_released = last_sequence
        self._shared_size = 0  # the entries they hold
        # The current subscriptions; only the event loop's thread touches them.
        self._subscriptions = _Subscriptions()
        self.subscribers = 0
        self.catching_up = 0  # subscribers reading from the log, not the ring

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tie to the event loop the subscribers run on."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @property
    def last_sequence(self) -> int:
        return self._last

    # --- the writer's side ----------------------------------------------------------------------

    def publish(self, transitions: Sequence[Transition]) -> None:
        """Called by the orchestrator, in sequence order, once the transitions committed. The
        writer only appends them to the ring and, unless one is due already, asks the event
        loop for a dispatch: the matching against each subscriber happens there, never on
        the writer's back."""
        if not transitions:
            return
        with self._lock:
            contiguous = transitions[0].sequence == self._last + 1
            if not contiguous:
                # A committed transition was never published: forget what the ring holds, so
                # that subscribers read the gap from the log rather than skip it.
                self._ring.clear()
                self._ring_bytes = 0
                self._gap = True
            ring = self._ring
            for transition in transitions:
                entry = _Entry(transition)
                ring.append(entry)
                self._ring_bytes += entry.size
            self._last = transitions[-1].sequence
            while self._ring and (
                len(self._ring) > self.capacity or self._ring_bytes > self.capacity_bytes
            ):
                self._ring_bytes -= self._ring.popleft().size
            loop = self._loop
            if loop is None or not self.subscribers:
                # No subscriber: nothing to dispatch, and no event loop to wake (a process
                # running flows on the embedded default writes with none). One that subscribes
                # from now on reads the ring up to here; one that counted itself in before this
                # check is dispatched to as usual.
                self._released = self._last
                return
            if len(self._undispatched) + len(transitions) > _MOST_UNDISPATCHED:
                # The loop has not dispatched for this long: let every waiting subscriber
                # look for itself, as after a gap, rather than hold the list without bound.
                self._undispatched.clear()
                self._gap = True
            else:
                self._undispatched.extend(transitions)
            if self._dispatch_due:
                return
            self._dispatch_due = True
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(self._dispatch)
        else:
            loop.call_soon_threadsafe(self._dispatch)

    def _dispatch(self) -> None:
        """On the event loop: release what was published since the last round, and wake each
        subscriber waiting at the head that one of those transitions matches (after a gap,
        every one). Not while the last round is still sending, nor before the rest it
        earned."""
        loop = self._loop
        assert loop is not None
        self._dispatch_timer = None
        if not self._dispatch_due:
            return
        now = loop.time()
        if self._round_pending:
            if now < self._round_deadline:
                self._dispatch_at(self._round_deadline)  # or sooner, when the round ends
                return
            # Those not back yet (slow or stopped readers) hold the others back no longer,
            # nor any later round.
            for me in self._subscriptions.all:
                if me.round == self._round:
                    me.slow = True
            self._round_pending = 0
        if now < self._rest_until:
            self._dispatch_at(self._rest_until)
            return
        with self._lock:
            self._dispatch_due = False
            published, self._undispatched = self._undispatched, []
            gap, self._gap = self._gap, False
            self._released = self._last
        self._round += 1
        subscriptions = self._subscriptions
        if gap:
            for me in list(subscriptions.all):
                self._wake(me)
        # Those that filter on neither run nor flow run: each looks for its first match.
        for me in [s for s in subscriptions.others if s.waiting]:
            for transition in published:
                if transition.sequence > me.cursor and me.where.matches(transition):
                    self._wake(me, transition.sequence)
                    break
        # The others, found by the transition's run and flow run.
        for transition in published:
            for index, key in (
                (subscriptions.by_run, transition.run_id),
                (subscriptions.by_flow_run, transition.flow_run_id),
            ):
                place = index.get(key)
                if not place:
                    continue
                for me in [s for s in place if s.waiting]:
                    if transition.sequence > me.cursor and me.where.matches(transition):
                        self._wake(me, transition.sequence)
        if self._round_pending:
            # The CPU clock is read only for a round that woke someone (a system call, and on
            # these virtual machines a preemption point: most dispatches wake nobody).
            self._round_began = time.thread_time()
            self._round_started = now
            # A round may last a few times the last one, and at least a little while, before
            # its stragglers are left behind.
            self._round_deadline = now + min(
                _LONGEST_ROUND_WAIT, max(_SHORTEST_ROUND_WAIT, 4 * self._round_seconds)
            )

    def _dispatch_at(self, when: float) -> None:
        loop = self._loop
        assert loop is not None
        if self._dispatch_timer is not None:
            self._dispatch_timer.cancel()
        self._dispatch_timer = loop.call_at(when, self._dispatch)

    def _wake(self, me: _Subscription, first_match: int = 0) -> None:
        """Wake `me` if it waits, in this round. With `first_match`: nothing between its
        cursor and that sequence matched it, so it need not walk (nor read from the log) what
        lies between."""
        if me.waiting:
            if first_match:
                me.cursor = max(me.cursor, first_match - 1)
            me.round = self._round
            self._round_pending += 1
        me.waiting = False
        if me.woken is not None and not me.woken.done():
            me.woken.set_result(None)

    def _back(self, me: _Subscription) -> None:
        """`me` sent what its round released and is back at the head, or left: once all are,
        the round is over, and the next rests as long as it took of the loop thread's CPU
        (the CPU clock, not the wall's, so that a machine busy with other processes does not
        make it look long)."""
        if me.round == self._round and self._round_pending:
            self._round_pending -= 1
            if not self._round_pending:
                loop = self._loop
                assert loop is not None
                now = loop.time()
                self._round_seconds = now - self._round_started
                self._rest_until = now + (time.thread_time() - self._round_began)
                if self._dispatch_due:
                    self._dispatch_at(self._rest_until)
        me.round = 0

    async def close(self) -> None:
        """End every subscription with StreamClosed (the server is shutting down)."""
        self._closed = True
        for me in list(self._subscriptions.all):
            self._wake(me)
        await asyncio.sleep(0)
        self._catch_up.shutdown(wait=False)

    # --- the subscribers' side ------------------------------------------------------------------

    def _ready(
        self,
        where: TransitionFilter,
        cursor: int,
        encode: Encoder[P],
        max_batch: int,
        sharing: _Sharing,
    ) -> _Ready[P] | None:
        """What the ring holds for a subscriber at `cursor` up to what was released (no batch
        when nothing was), or None when the ring no longer reaches back to it (the subscriber
        must read the log). The same for every subscriber at that cursor with the same filter,
        encoder and batch size (the same `sharing`), while no more is released."""
        with self._lock:
            released = self._released
            if cursor >= released:
                return _NOTHING_RELEASED  # the next round releases more
            if released != self._shared_released:
                self._shared.clear()
                self._shared_size = 0
                self._shared_released = released
            key = (sharing, cursor)
            ready: _Ready[P] | None = self._shared.get(key)
            if ready is not None:
                return ready
            ring = self._ring
            if not ring or ring[-1].transition.sequence <= cursor:
                return None
            if ring[0].transition.sequence > cursor + 1:
                return None
            newer: list[_Entry] = []
            for entry in reversed(ring):
                sequence = entry.transition.sequence
                if sequence <= cursor:
                    break
                if sequence <= released:
                    newer.append(entry)
        newer.reverse()
        shared = self._shared_size + len(newer) <= _MOST_SHARED
        ready = _Ready(newer, released, where, encode, max_batch, shared)
        if shared:
            self._shared[key] = ready
            self._shared_size += len(newer)
        return ready

    async def subscribe(
        self, where: TransitionFilter, after: int | None, encode: Encoder[bytes] | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Yield (sequence, encoded transition) of every matching transition after `after` (or
        from now, when None), in order, until the subscriber stops or the server closes
        (StreamClosed). Each is encoded by `encode`, by default the broadcaster's own (a
        WatchTransitionsResponse). Raises CursorExpired if it falls behind what the log keeps."""
        async with aclosing(self.subscribe_batches(where, after, encode)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item

    def subscribe_batches(
        self,
        where: TransitionFilter,
        after: int | None,
        encode: Encoder[bytes] | None = None,
        max_batch: int = 500,
        prepare: Prepare[bytes] | None = None,
    ) -> AsyncGenerator[Batch[bytes], None]:
        """As `subscribe`, but yields what is ready at once as one Batch of at most
        `max_batch` (sequence, encoded transition), in order: one item when the subscriber
        keeps up, more when it is behind (replaying, or slower than the writers). With
        `prepare`, what the subscriber makes of each batch (`batch.derived(prepare)`) is made
        off the event loop, on the thread that reads them, for the batches read from the log
        (a replay's)."""
        return self._batches(where, after, encode or self.encode, max_batch, prepare)

    def transition_batches(
        self, where: TransitionFilter, after: int | None, max_batch: int = 500
    ) -> AsyncGenerator[Batch[Transition], None]:
        """As `subscribe_batches`, for a subscriber in this process: the transitions
        themselves, encoded by nothing (they are shared: do not change them)."""
        return self._batches(where, after, _itself, max_batch)

    async def _batches(
        self,
        where: TransitionFilter,
        after: int | None,
        encode: Encoder[P],
        max_batch: int,
        prepare: Prepare[P] | None = None,
    ) -> AsyncGenerator[Batch[P], None]:
        max_batch = max(1, max_batch)
        me = _Subscription(where, self._last if after is None else after)
        self.subscribers += 1
        self._subscriptions.add(me)
        common: tuple[TransitionFilter, Encoder[Any], int] = (where, encode, max_batch)
        with self._lock:
            sharing = self._sharings.get(common)
            if sharing is None:
                sharing = self._sharings[common] = _Sharing()
            sharing.subscribers += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._closed:
                    raise StreamClosed(me.cursor)
                # Read without the lock: if it is stale, the wait below looks again under it.
                ready: _Ready[P] | None = _NOTHING_RELEASED
                if me.cursor < self._released:
                    ready = self._ready(where, me.cursor, encode, max_batch, sharing)
                if ready is None:
                    self._back(me)  # a read of the log holds no round back
                    logged = await self._read_log(where, me.cursor, encode, max_batch, prepare)
                    for batch in logged.batches:
                        yield batch
                    me.cursor = logged.reached
                elif ready is _NOTHING_RELEASED:
                    with self._lock:
                        if me.cursor < self._released:
                            continue  # released meanwhile: read it
                        # Any later publication is dispatched after this: it wakes me.
                        self._back(me)
                        me.waiting = True
                        me.woken = woken = loop.create_future()
                    try:
                        await woken
                    finally:
                        me.waiting = False
                        me.woken = None
                else:
                    number = 0
                    while (made := ready.batch(number)) is not None:
                        batch, me.cursor = made
                        if batch:
                            if me.slow:  # its round does not wait for the send
                                self._back(me)
                            yield batch
                        number += 1
        finally:
            self.subscribers -= 1
            self._subscriptions.discard(me)
            with self._lock:
                sharing.subscribers -= 1
                if not sharing.subscribers:
                    del self._sharings[common]
            self._back(me)

    async def _read_log(
        self,
        where: TransitionFilter,
        cursor: int,
        encode: Encoder[P],
        max_batch: int,
        prepare: Prepare[P] | None,
    ) -> _LogBatch[P]:
        """The next matching transitions from the log, read, encoded and batched (and each
        batch prepared) off the event loop."""
        self.catching_up += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._catch_up, self._read_log_now, where, cursor, encode, max_batch, prepare
            )
        finally:
            self.catching_up -= 1

    def _read_log_now(
        self,
        where: TransitionFilter,
        cursor: int,
        encode: Encoder[P],
        max_batch: int,
        prepare: Prepare[P] | None,
    ) -> _LogBatch[P]:
        filters = sorted(where.run_ids), sorted(where.flow_run_ids), sorted(where.state_types)
        items: list[tuple[int, P]]
        if self.encode_rows is not None and encode is cast(Encoder[Any], self.encode):
            rows, oldest, newest = self.log.read_log_rows(cursor, self.catch_up_batch, *filters)
            if oldest and cursor < oldest - 1:
                raise CursorExpired(cursor, oldest)
            payloads = self.encode_rows(rows)
            items = [
                (row[0], cast(P, payload)) for row, payload in zip(rows, payloads, strict=True)
            ]
            last = rows[-1][0] if rows else 0
        else:
            transitions, oldest, newest = self.log.read_log(cursor, self.catch_up_batch, *filters)
            if oldest and cursor < oldest - 1:
                raise CursorExpired(cursor, oldest)
            items = [(row.sequence, encode(row)) for row in transitions]
            last = transitions[-1].sequence if transitions else 0
        batches = [Batch(items[at : at + max_batch]) for at in range(0, len(items), max_batch)]
        if prepare is not None:
            for batch in batches:
                batch.derived(prepare)
        if len(items) == self.catch_up_batch:
            return _LogBatch(batches, last)
        # Everything up to the snapshot's newest was read; non-matching rows are passed too.
        return _LogBatch(batches, max(newest, cursor))

    def check_cursor(self, after: int) -> None:
        """Refuse a cursor the log cannot resume from, before the stream starts. It reads the
        log: call it off the event loop."""
        if after > max(self._last, 0) + 2**32 or after >= 2**63:  # far beyond: not read at all
            raise CursorAhead(after, self._last)
        _, oldest, newest = self.log.read_log(after, 0)
        last = max(newest, self._last)
        if after > last:
            raise CursorAhead(after, last)
        if oldest and after < oldest - 1:
            raise CursorExpired(after, oldest)


__all__ = [
    "Batch",
    "CursorAhead",
    "CursorExpired",
    "StreamClosed",
    "TransitionBroadcaster",
    "TransitionFilter",
    "TransitionLog",
]
