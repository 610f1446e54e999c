"""What the orchestrator, the loops and the log follower need of a store, whatever the backend.

A `RunStore` is one connection's worth of reads and writes. Writes happen inside `transaction()`,
which takes the database's write serialisation (SQLite's BEGIN IMMEDIATE, PostgreSQL's row
locks): every decision for a run is taken inside one, against the run as the database has it.
A `StoreReader` reads (the log by sequence, long listings) on connections of its own. Neither
knows gRPC.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from stateward.runs import ConcurrencyLimit, LogEntry, RunKind, Transition
from stateward.states import State, StateType, dataclass
from stateward_service.model import RunRecord
from stateward_service.store.faults import StorageUnavailable
from stateward_service.store.rows import to_us


class DatabaseRefused(Exception):
    """The database cannot be used as it is: it is not a SQLite database, it is damaged, it
    belongs to another application, or a newer Stateward made it. Nothing was written to it;
    the message says what is wrong and what to do."""


class SchemaTooNew(DatabaseRefused):
    """The database was written by a newer Stateward."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"the database has schema version {found}, newer than this Stateward "
            f"({supported}); upgrade Stateward to open it"
        )
        self.found = found
        self.supported = supported


class DatabaseUnavailable(Exception):
    """The database cannot be reached (a PostgreSQL server down, a network cut); nothing was
    written. The caller may try again later."""


class WriteConflict(Exception):
    """The transaction lost a race with another process's (a deadlock, a serialization
    failure, a key taken meanwhile) and was rolled back: deciding again may succeed."""


class WouldWait(Exception):
    """A transaction asked not to wait (`transaction(wait=False)`) found the database's write
    lock held by another process or thread: nothing was done."""


@dataclass(frozen=True, slots=True, quick=True)
class RunFilter:
    """Filters of a run listing; empty fields match everything."""

    names: tuple[str, ...] = ()  # flow names or task keys
    flow_run_ids: tuple[str, ...] = ()
    state_types: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    # Runs created at or after `created_after` and before `created_before`.
    created_after: datetime | None = None
    created_before: datetime | None = None

    def fingerprint(self) -> str:
        """A short digest of the filters, carried by page tokens (whatever the filters' size)."""
        text = json.dumps(
            [
                self.names,
                self.flow_run_ids,
                self.state_types,
                self.tags,
                self.ids,
                to_us(self.created_after),
                to_us(self.created_before),
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class Savepoint:
    """A savepoint inside a write transaction (see `RunStore.savepoint`)."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo = undo
        self.undone = False

    def undo(self) -> None:
        """Undo the writes made since the savepoint, keeping the transaction's others. Raises
        the database's error when it cannot (the transaction is gone): the whole transaction
        must then fail."""
        self._undo()
        self.undone = True


class LeaderLock(Protocol):
    """Elects the one process that runs the loops among those sharing a database."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it (now or already)."""
        ...

    def held(self) -> bool:
        """Whether the lock is still held (a lost database session loses it)."""
        ...

    def release(self) -> None:
        """Give the lock up (if held): another process may take it as soon as this returns."""
        ...


class ChangeSignal(Protocol):
    """Tells a log follower that the database may hold new transitions: a wake-up only."""

    def wait(self, timeout: float, seen: Callable[[], int]) -> bool:
        """Block for at most `timeout` seconds; True when a transition after sequence `seen()`
        may have been committed. `seen` answers the newest sequence the caller has, read when
        the wait ends: the caller's own commits, published meanwhile, do not count as new."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PolledChangeSignal(ChangeSignal, Protocol):
    """A change signal that is a poll (SQLite's): asking it never blocks and costs a few
    microseconds, so a follower asks it from its event loop's timer, where a busy loop asks it
    between calls it is awake for anyway, instead of from a thread that wakes for every ask."""

    def poll(self, seen: Callable[[], int]) -> bool:
        """At once: True when a transition after sequence `seen()` may have been committed since
        the last ask (`wait` asks the same after its sleep)."""
        ...

    def writes(self) -> WriteNotices | None:
        """What tells when the database may have been written, so that the follower asks `poll`
        after writes only (None: it asks on its timer). It belongs to the signal, which closes
        it."""
        ...


class WriteNotices(Protocol):
    """A file descriptor that the system makes readable when the database may have been written
    (by any process), for an event loop to wait on."""

    def fileno(self) -> int: ...

    def drain(self) -> bool:
        """Read what is waiting, without blocking; True when it may concern the log (False: a
        write elsewhere, e.g. a checkpoint)."""
        ...


# One transition of the log as a reader's `read_log_rows` returns it: sequence, run_kind, run_id,
# flow_run_id, run_name (None for a run that is gone), flow_name, task_key, then the old state's
# columns (`rows.STATE_COLUMNS`; all None when the run had none), then the new state's.
LogRow = Sequence[Any]


class RunReads(Protocol):
    """The queries that only read (a store's own connection, or a reader's snapshot)."""

    def get_run(self, run_id: str, kind: RunKind | None = None) -> RunRecord | None: ...
    def list_runs(
        self, kind: RunKind, where: RunFilter, page_size: int, page_token: str
    ) -> tuple[list[RunRecord], str]: ...
    def page_of_states(
        self, run_id: str, page_size: int, page_token: str
    ) -> tuple[list[State], str]: ...
    def list_states(self, run_id: str) -> list[State]: ...
    def last_sequence(self) -> int: ...
    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]: ...
    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[LogRow], int, int]: ...
    def runs_in_state(
        self, kind: RunKind, state_type: StateType, name: str | None = None
    ) -> list[tuple[str, State]]: ...
    def unfinished_children(self, flow_run_id: str) -> list[tuple[RunKind, str]]: ...
    def flow_runs_cancelled_with_unfinished_children(self) -> list[str]: ...
    def runs_with_lapsed_lease(self, before: datetime) -> list[tuple[RunKind, str]]: ...
    def list_logs(
        self, kind: RunKind, run_id: str, after_id: int, limit: int
    ) -> list[LogEntry]: ...
    def list_logs_before(
        self, kind: RunKind, run_id: str, before_id: int, limit: int
    ) -> list[LogEntry]: ...


class StoreReader(Protocol):
    """Reads beside the writing connection, on connections of its own; any thread may read."""

    def snapshot(self) -> AbstractContextManager[RunReads]:
        """The read queries, all seeing one consistent state of the database. Raises
        DatabaseUnavailable when the database cannot be reached."""
        ...

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """Matching transitions above `after` (at most `limit`), oldest first, with the log's
        oldest and newest sequences (0 and 0 when it is empty), in a snapshot of its own."""
        ...

    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[LogRow], int, int]:
        """As `read_log`, each transition as its row (see `LogRow`)."""
        ...

    def ping(self) -> bool:
        """Whether the database answers now (for the health check)."""
        ...

    def size_on_disk(self) -> int:
        """The database's bytes on disk (for the metrics; any thread may ask)."""
        ...

    def close(self) -> None: ...


class RunStore(RunReads, Protocol):
    """One process's writing connection: runs, states, the log, the cache and the limits."""

    found_schema_version: int
    # Why the database takes no writes, from the last write that failed for a reason outside
    # the request (SQLite: a full disk, a read-only file); None once a write succeeded again.
    unavailable: StorageUnavailable | None

    def probe(self, room: int = 0) -> None:
        """A write that changes nothing: raises StorageUnavailable while the database takes
        no writes (or has less than `room` bytes free)."""

    def close(self) -> None:
        """Release the connection (and, for SQLite, checkpoint the WAL)."""

    def reader(self) -> StoreReader:
        """A new reader of this database."""
        ...

    def transaction(self, *, wait: bool = True) -> AbstractContextManager[None]:
        """A write transaction holding the database's write serialisation: all writes inside
        commit together or none does. Raises DatabaseUnavailable when the database cannot be
        reached, WriteConflict when it lost a race with another process's transaction. With
        `wait` false, a database-wide write lock held elsewhere (SQLite's) raises WouldWait at
        once instead of being waited for; PostgreSQL has no such lock (its row locks are
        waited for in any case)."""
        ...

    def savepoint(self) -> AbstractContextManager[Savepoint]:
        """Inside a transaction: a savepoint, released when the block ends, unless the block
        undid the writes made since with `Savepoint.undo()` (for a group commit: one write
        refused, the others of the transaction kept)."""
        ...

    def changed_elsewhere(self) -> bool:
        """Whether another connection may have written since this one last asked: the caller
        then forgets the rows it keeps in memory. Cheap; called at the start of transactions."""
        ...

    def lock_runs(self, run_ids: Sequence[str]) -> None:
        """Inside a transaction: hold the runs' rows until it ends, taken in a fixed order so
        that two transactions never wait for each other."""

    def change_signal(self) -> ChangeSignal:
        """A new wake-up for a log follower, on a connection of its own."""
        ...

    def leader_lock(self) -> LeaderLock:
        """A new leader lock on this database (not taken yet)."""
        ...

    def run_exists(self, run_id: str) -> bool: ...
    def insert_run(self, run: RunRecord) -> None: ...
    def update_run(self, run: RunRecord) -> None: ...
    def link_subflow(self, task_run_id: str, flow_run_id: str) -> None: ...
    def insert_state(self, run_id: str, state: State) -> None: ...
    def append_transition(self, run: RunRecord, from_state: State | None, to: State) -> None:
        """Inside a transaction: log a written state. Its sequence is given by the time the
        transaction commits (see `logged_sequences`)."""

    def logged_sequences(self) -> list[int]:
        """The sequences of the transitions the last committed transaction logged, in the
        order they were appended (empty when it logged none)."""
        ...

    def prune_log(self, keep: int) -> int:
        """Delete all but the newest `keep` transitions, never the newest one (0 keeps it
        too); returns how many went."""
        ...

    def cached_state(self, key: str, now: datetime) -> State | None: ...
    def cache_state(
        self, key: str, run: RunRecord, expiration: datetime | None, now: datetime
    ) -> None:
        """Inside a transaction: keep the run's current state (`run.state`, written) under
        `key`, replacing what the key held."""
        ...

    def limit_usage(self, run_id: str, tags: Sequence[str]) -> list[tuple[str, int, int, bool]]: ...
    def take_slots(self, run_id: str, tags: Sequence[str]) -> None: ...
    def release_slots(self, run_id: str) -> None: ...
    def release_stale_slots(self) -> int: ...
    def insert_limit(self, tag: str, limit: int, created: datetime) -> None: ...
    def delete_limit(self, tag: str) -> bool: ...
    def get_limits(self, tags: Sequence[str] = ()) -> list[ConcurrencyLimit]: ...
    def renew_leases(self, run_ids: Sequence[str], until: datetime) -> list[str]: ...
    def insert_logs(self, entries: Sequence[LogEntry]) -> None: ...
    def prune_run_logs(self, keep: int) -> int: ...
