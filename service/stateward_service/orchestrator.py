"""The orchestrator: the one path by which a state is proposed, decided and written.

For each proposal it gathers what the rules may read, runs the run's policy, and writes what the
policy decided (the state, the run's bookkeeping, the rules' side effects, the log entry, the
mirror on a subflow's task run) in one transaction; then it publishes the committed transitions.
Each decision is taken inside the write transaction, against the run as the database has it: the
database serialises the processes that share it, and one lock the threads of this process, so
transitions are published in sequence order. SetState, the create calls and the
server's loops all come through here.

It is also the only door to the store: the API, the loops, the broadcaster and the server's
assembly read and write through its methods, never the store itself. Reads that may be long
(listings, state histories, the log, the loops' scans) run on a `StoreReader` snapshot, outside
the write lock, so they never hold up a proposal; reads of single runs go through the lock and
its cache of run records.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from stateward.ids import new_ordered_id
from stateward.runs import (
    ConcurrencyLimit,
    LogEntry,
    OrchestrationResult,
    RunKind,
    SetStateStatus,
    Transition,
)
from stateward.states import State, StateDetails, StateType, maker, new_state, now
from stateward_service import input_schemas
from stateward_service.model import LimitUsage, RunRecord
from stateward_service.rules import bookkeeping
from stateward_service.rules.engine import (
    CacheResult,
    PolicyDecision,
    RememberPauseKey,
    ResetRunCount,
    TakeConcurrencySlots,
    TransitionContext,
    decide,
    decide_by,
)
from stateward_service.rules.policies import Policies
from stateward_service.store import (
    ChangeSignal,
    DatabaseUnavailable,
    LeaderLock,
    LogRow,
    RunFilter,
    RunStore,
    StorageUnavailable,
    WouldWait,
    WriteConflict,
)
from stateward_service.store.rows import STATE_WIDTH
from stateward_service.store.sql import transition_from_row

_ONE_US = timedelta(microseconds=1)
# Members as module globals: a global is read several times quicker than an enum's attribute.
_SCHEDULED, _RUNNING = StateType.SCHEDULED, StateType.RUNNING
_ACCEPT = SetStateStatus.ACCEPT
# The records every proposal makes, made without calling their class.
_new_result = maker(OrchestrationResult)
_new_transition = maker(Transition)
_FLOW_RUN, _TASK_RUN = RunKind.FLOW_RUN, RunKind.TASK_RUN
_IN_BATCH = nullcontext()
_CONFLICT_RETRIES = 6
log = logging.getLogger("stateward.orchestrator")
T = TypeVar("T")
# How a row of `Orchestrator.read_log_rows` is read: the columns of each of its two states, and
# the Transition it stands for.
LOG_ROW_STATE_WIDTH = STATE_WIDTH
transition_from_log_row = transition_from_row


class RunNotFound(LookupError):
    def __init__(self, run_id: str, kind: RunKind | None = None) -> None:
        what = kind.label if kind else "flow run or task run"
        super().__init__(f"no {what} has id {run_id}")


class RunAlreadyExists(Exception):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"a run with id {run_id} already exists; omit the id to get a new one")


class LimitNotFound(LookupError):
    def __init__(self, tag: str) -> None:
        super().__init__(f"no concurrency limit exists for tag {tag!r}")


class LimitAlreadyExists(Exception):
    def __init__(self, tag: str) -> None:
        super().__init__(
            f"a concurrency limit for tag {tag!r} already exists; delete it first to change it"
        )


class NotPaused(Exception):
    """A resume of a flow run that is not PAUSED, or whose process no longer waits for the
    resume (its heartbeat lease lapsed)."""


class RunInputRefused(ValueError):
    """The input of a resume is missing, unexpected, or does not match the pause's schema.
    The message names no field: each door says how to give the input in its own terms
    (`worded`)."""

    def __init__(self, message: str, wanted: str = "") -> None:
        super().__init__(message)
        self.wanted = wanted  # "input": none was given; "none": one was given; "": a mismatch

    def worded(self, field: str) -> str:
        """The message with its remedy, naming `field`: how the caller gives the input (the
        RPC's `run_input`, the web API's body field)."""
        if self.wanted == "input":
            return f"{self}; give it as {field}"
        if self.wanted == "none":
            return f"{self}; resume it without {field}"
        return str(self)


class InitialStateRefused(Exception):
    """The initial state of a new run was not accepted; the run was not created."""


class NotCompleted(Exception):
    """A cache entry for a task run whose current state is not COMPLETED."""


# A transition as written, before the commit numbers it: the run (whose fields a transition
# names never change), the state it left and the state written. Made into a `Transition` once,
# with its sequence, when the transaction committed.
_Logged = tuple[RunRecord, State | None, State]


Publisher = Callable[[Sequence[Transition]], None]


# The run cache's bound in bytes: runs carry their parameters and their state's result.
RUN_CACHE_BYTES = 64 * 1024 * 1024


class _RunCache:
    """The runs read or written lately, so a proposal does not read its run back from the
    database. It stays true because every write of this process goes through the orchestrator,
    a transaction that fails forgets everything (its records were changed in memory), and
    everything is forgotten as soon as the store says another process wrote.

    So every read of it asks the store first: inside a transaction (`_transaction` asks once
    it holds the database's write lock, SQLite's BEGIN IMMEDIATE; PostgreSQL always says yes,
    and the run is read again under its row lock), or right before, outside one (`get_run`,
    `list_states`; a pause is resumed only if it is still the current state, which the resume's
    transaction checks). Two reads skip the question, for facts that never change once a run
    exists (runs are never deleted): whether a run exists (`list_states_page`, `_create`) and a
    task run's flow run (`write_logs`)."""

    def __init__(
        self, store: RunStore, size: int = 10_000, max_bytes: int = RUN_CACHE_BYTES
    ) -> None:
        self.store = store
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0  # what the remembered runs' parameters and results take, about
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._sizes: dict[str, int] = {}
        # The runs created in the open transaction whose rows are not written yet (see
        # `Orchestrator._write_unwritten`): found here whatever the cache forgets.
        self.unwritten: dict[str, RunRecord] = {}

    def get(self, run_id: str, kind: RunKind | None = None) -> RunRecord | None:
        run = self._runs.get(run_id)
        if run is not None:
            # The newest now. Its size is measured again by `remember` when a state is
            # written for it (only a new state changes what it holds).
            self._runs.move_to_end(run_id)
        else:
            run = self.unwritten.get(run_id) or self.store.get_run(run_id)
            if run is None:
                return None
            self.remember(run)
        return run if kind is None or run.kind is kind else None

    def remember(self, run: RunRecord) -> None:
        """Keep `run` as the newest; forget the oldest past `size` runs or `max_bytes`."""
        run_id = run.id
        # About how much memory it holds: its parameters and its state's result (inline: every
        # write comes here).
        size = 1024 + len(run.parameters)
        state = run.state
        data = state.data if state is not None else None
        if data is not None:
            size += len(data.json or "") + len(data.pickle or b"")
        sizes, runs = self._sizes, self._runs
        self.bytes += size - sizes.get(run_id, 0)
        sizes[run_id] = size
        runs[run_id] = run
        runs.move_to_end(run_id)
        if len(runs) > self.size or self.bytes > self.max_bytes:
            while len(runs) > 1 and (len(runs) > self.size or self.bytes > self.max_bytes):
                forgotten, _ = runs.popitem(last=False)
                self.bytes -= sizes.pop(forgotten)

    def cached(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id) or self.unwritten.get(run_id)

    def clear(self) -> None:
        self.unwritten.clear()
        self._runs.clear()
        self._sizes.clear()
        self.bytes = 0


class Orchestrator:
    """Decides and writes states. Thread-safe: one lock serialises every write."""

    def __init__(
        self,
        store: RunStore,
        policies: Policies | None = None,
        *,
        clock: Callable[[], datetime] = now,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self.policies = policies or Policies.default()
        self.clock = clock
        self.rng = rng
        self._lock = threading.RLock()
        self._reader = store.reader()
        self._publishers: list[Publisher] = []
        self._runs = _RunCache(store)
        # `_transaction(wait)`, made once: by `wait` (False, True).
        self._transactions = (_Transaction(self, False), _Transaction(self, True))
        # Inside `batch()` or `together()`: the transitions written so far, published once the
        # transaction commits.
        self._batch: list[_Logged] | None = None
        # The thread inside `together()` (0: none): a batch there joins the group's transaction.
        self._grouping = 0
        # The thread inside a `batch()` of its own (0: none).
        self._batching = 0
        # How many times the writing connection looked for other connections' commits (at the
        # start of each transaction), and how many of those looks found one: a log follower
        # that polls for such commits need not poll while these looks go on (`looks`).
        self._looks = 0
        self._looks_found = 0

    def subscribe(self, publisher: Publisher) -> None:
        """Call `publisher` with every batch of committed transitions, in sequence order, while
        the write lock is held (so it must be quick and must not block)."""
        self._publishers.append(publisher)

    # --- runs -----------------------------------------------------------------------------------

    def create_run(
        self, run: RunRecord, initial: State | None, *, new_id: bool = False, copy: bool = True
    ) -> RunRecord:
        """Store a new run and orchestrate its initial state, atomically. `new_id` says the id
        was just minted, so it cannot exist yet. Returns a copy of the run as stored; without
        `copy`, inside a batch, the record itself, which the batch's next writes change (for a
        caller that reads it at once)."""

        for tries in range(_CONFLICT_RETRIES):
            try:
                with self._lock:
                    batch = self._batch
                    if batch is not None:  # its transitions are published with the batch
                        self._create(run, initial, new_id, batch)
                        if not copy:
                            return run
                    else:
                        written: list[_Logged] = []
                        with self._transaction():
                            self._create(run, initial, new_id, written)
                        self._publish(written)
                return run.copy()
            except WriteConflict as conflict:
                self._conflicted(conflict, tries)
        raise AssertionError("unreachable")

    def _create(
        self, run: RunRecord, initial: State | None, new_id: bool, written: list[_Logged]
    ) -> None:
        """Inside a transaction: check, decide and write a new run."""
        if not new_id and (self._runs.cached(run.id) or self._store.run_exists(run.id)):
            raise RunAlreadyExists(run.id)
        flow_run_id = run.flow_run_id if run.kind is RunKind.TASK_RUN else ""
        if flow_run_id and self._runs.get(flow_run_id, RunKind.FLOW_RUN) is None:
            raise RunNotFound(flow_run_id, RunKind.FLOW_RUN)
        parent = None
        if run.kind is RunKind.FLOW_RUN and run.parent_task_run_id:
            self._store.lock_runs((run.parent_task_run_id,))
            parent = self._runs.get(run.parent_task_run_id, RunKind.TASK_RUN)
            if parent is None:
                raise RunNotFound(run.parent_task_run_id, RunKind.TASK_RUN)
        decision = None
        moment = run.created
        if initial is not None:
            moment = self.clock()
            decision = self._decide(run, initial, False, moment)
            if decision.state is None:  # nothing to write
                raise InitialStateRefused(
                    f"the initial state {initial.name} was refused "
                    f"({decision.status.name}): {decision.reason}"
                )
        if parent is not None:
            self._store.link_subflow(parent.id, run.id)
            parent.child_flow_run_id = run.id
        self._runs.unwritten[run.id] = run  # its row is inserted once, at the commit
        if decision is not None:
            self._write(run, decision, written, moment)  # which remembers it
        else:
            self._runs.remember(run)

    def get_run(self, run_id: str, kind: RunKind | None = None) -> RunRecord:
        """A copy of the run as it is now (the record itself changes with each write), as
        committed. Raises RunNotFound. While a write holds the lock of this process's writing
        connection (it may be waiting for another process's write lock, for up to the busy
        timeout), the run is read on a snapshot instead of waiting for it."""
        if not self._lock.acquire(blocking=False):
            with self._reader.snapshot() as db:
                found = db.get_run(run_id, kind)
            if found is None:
                raise RunNotFound(run_id, kind)
            return found
        try:
            self._forget_if_changed()
            run = self._runs.get(run_id, kind)
            if run is None:
                raise RunNotFound(run_id, kind)
            return run.copy()
        finally:
            self._lock.release()

    def list_states_page(
        self, run_id: str, page_size: int, page_token: str = ""
    ) -> tuple[list[State], str]:
        """A page of a run's states, oldest first, and the token of the next page ("" after
        the last). Raises RunNotFound, or BadPageToken for a token made for another run. Read
        outside the write lock, on a snapshot."""
        if self._lock.acquire(blocking=False):
            try:
                if self._runs.cached(run_id) is None and not self._store.run_exists(run_id):
                    raise RunNotFound(run_id)
            finally:
                self._lock.release()
        else:  # a write holds the writing connection (see `get_run`)
            self.get_run(run_id)  # raises RunNotFound
        with self._reader.snapshot() as db:
            return db.page_of_states(run_id, page_size, page_token)

    def list_states(self, run_id: str) -> list[State]:
        """The run's states, oldest first (read outside the write lock)."""
        self.get_run(run_id)  # raises RunNotFound
        with self._reader.snapshot() as db:
            return db.list_states(run_id)

    def list_runs(
        self, kind: RunKind, where: RunFilter, page_size: int, page_token: str = ""
    ) -> tuple[list[RunRecord], str]:
        """A page of runs of one kind matching `where`, newest first, and the token of the next
        page ("" after the last); read outside the write lock. Raises BadPageToken for a token
        this store did not make for these filters."""
        with self._reader.snapshot() as db:
            return db.list_runs(kind, where, page_size, page_token)

    # --- what the server's loops look for (read outside the write lock) -------------------------

    def runs_in_state(
        self, kind: RunKind, state_type: StateType, name: str | None = None
    ) -> list[tuple[str, State]]:
        """(run id, current state) of the runs whose current state has this type (and name)."""
        with self._reader.snapshot() as db:
            return db.runs_in_state(kind, state_type, name)

    def unfinished_children_of_cancelled_flow_runs(self) -> list[tuple[str, str]]:
        """(flow run id, child run id) of the task runs and subflows not finished yet of the
        flow runs that are Cancelled."""
        with self._reader.snapshot() as db:
            return [
                (parent, child_id)
                for parent in db.flow_runs_cancelled_with_unfinished_children()
                for _, child_id in db.unfinished_children(parent)
            ]

    def unfinished_children(self, flow_run_id: str) -> list[tuple[RunKind, str]]:
        """(kind, id) of the task runs and subflows of a flow run not in a terminal state."""
        with self._reader.snapshot() as db:
            return db.unfinished_children(flow_run_id)

    def runs_with_lapsed_lease(self, before: datetime) -> list[tuple[RunKind, str]]:
        """Runs RUNNING, CANCELLING or PAUSED whose heartbeat lease ended before `before`."""
        with self._reader.snapshot() as db:
            return db.runs_with_lapsed_lease(before)

    # --- the transitions log --------------------------------------------------------------------

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """Logged transitions above `after` (at most `limit`), filtered, with the log's oldest
        and newest sequences, in one snapshot read outside the write lock."""
        return self._reader.read_log(after, limit, run_ids, flow_run_ids, state_types)

    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[LogRow], int, int]:
        """As `read_log`, each transition as its row (see `LogRow`: `LOG_ROW_STATE_WIDTH`
        columns per state): for a reader that makes its own encoding of it directly (the
        stream's messages); `transition_from_log_row` is the Transition a row stands for."""
        return self._reader.read_log_rows(after, limit, run_ids, flow_run_ids, state_types)

    def last_sequence(self) -> int:
        """The newest sequence ever logged (0 for a new database)."""
        with self._reader.snapshot() as db:
            return db.last_sequence()

    def prune_log(self, keep: int) -> int:
        """Delete all but the newest `keep` transitions, never the newest one (`keep` 0 keeps
        it too, on every store: see `RunStore.prune_log`); returns how many went."""
        with self._lock, self._transaction():
            return self._store.prune_log(keep)

    # --- run logs -------------------------------------------------------------------------------

    def write_logs(self, entries: Sequence[LogEntry]) -> int:
        """Store lines runs logged, in one transaction; a task run's line gets its flow run.
        Raises RunNotFound (nothing written) for a line of a run that does not exist."""
        with self._lock:
            rows = []
            for entry in entries:
                if entry.task_run_id:
                    task_run = self._runs.get(entry.task_run_id, RunKind.TASK_RUN)
                    if task_run is None:
                        raise RunNotFound(entry.task_run_id, RunKind.TASK_RUN)
                    if entry.flow_run_id != task_run.flow_run_id:  # as the SDK names it, mostly
                        entry = replace(entry, flow_run_id=task_run.flow_run_id)
                elif self._runs.get(entry.flow_run_id, RunKind.FLOW_RUN) is None:
                    raise RunNotFound(entry.flow_run_id, RunKind.FLOW_RUN)
                rows.append(entry)
            with self._writing():
                self._store.insert_logs(rows)
        return len(rows)

    def list_logs(self, run_id: str, after_id: int, limit: int) -> list[LogEntry]:
        """A flow run's lines (its task runs' too) or a task run's, oldest first, after the
        line `after_id`; read outside the write lock. Raises RunNotFound for an unknown run."""
        kind = self.get_run(run_id).kind
        with self._reader.snapshot() as db:
            return db.list_logs(kind, run_id, after_id, limit)

    def list_logs_before(self, run_id: str, before_id: int, limit: int) -> list[LogEntry]:
        """The last `limit` lines `list_logs` would give before the line `before_id` (0: the
        newest lines), oldest first; read outside the write lock. Raises RunNotFound."""
        kind = self.get_run(run_id).kind
        with self._reader.snapshot() as db:
            return db.list_logs_before(kind, run_id, before_id, limit)

    def prune_run_logs(self, keep: int) -> int:
        """Delete all but the newest `keep` log lines; returns how many went."""
        with self._lock, self._transaction():
            return self._store.prune_run_logs(keep)

    # --- the database ---------------------------------------------------------------------------

    def release_stale_slots(self) -> int:
        """Free the concurrency slots of runs no longer running (a safety net at startup)."""
        with self._lock, self._transaction():
            return self._store.release_stale_slots()

    def storage_unavailable(self) -> StorageUnavailable | None:
        """Why the database takes no writes, from the last write that failed for a reason
        outside the request (a full disk, a read-only file, another program's lock); None once
        a write succeeded again."""
        return self._store.unavailable

    def probe_storage(self, room: int = 0) -> StorageUnavailable | None:
        """Try a write that changes nothing: None when the database takes writes again (with
        `room` bytes free on its disk), else why not."""
        with self._lock:
            try:
                self._store.probe(room)
            except StorageUnavailable as failure:
                return failure
        return None

    def change_signal(self) -> ChangeSignal:
        """A new wake-up for a log follower: it fires when any process may have committed."""
        return self._store.change_signal()

    def leader_lock(self) -> LeaderLock:
        """A new lock electing the one process that runs the loops (not taken yet)."""
        return self._store.leader_lock()

    def database_answers(self) -> bool:
        """Whether the database answers now (for the health check)."""
        return self._reader.ping()

    def database_bytes(self) -> int:
        return self._reader.size_on_disk()

    def close(self) -> None:
        """Close the readers, then the store (once the write in progress, if any, is done)."""
        self._reader.close()
        with self._lock:
            self._store.close()

    def write_cache_entries(self, entries: Sequence[tuple[str, str, datetime | None]]) -> int:
        """Store each task run's current COMPLETED state under its cache key (entries of
        `(task_run_id, cache_key, expiration)`), all in one transaction; returns how many.
        Raises RunNotFound for an unknown task run and NotCompleted for one that is not
        COMPLETED, and then writes nothing."""

        def attempt() -> int:
            with self._lock, self._writing():
                at = self.clock()
                for run_id, key, expiration in entries:
                    run = self._runs.get(run_id, RunKind.TASK_RUN)
                    if run is None:
                        raise RunNotFound(run_id, RunKind.TASK_RUN)
                    state = run.state
                    if state is None or state.type is not StateType.COMPLETED:
                        raise NotCompleted(
                            f"task run {run_id} is {state.name if state else 'without a state'},"
                            " not COMPLETED: only a completed run's result can be cached"
                        )
                    self._store.cache_state(key, run, expiration, at)
            return len(entries)

        return self._retrying(attempt)

    def renew_leases(self, run_ids: Sequence[str], seconds: float) -> tuple[list[str], datetime]:
        """Extend the leases of those runs that hold one (RUNNING, CANCELLING or PAUSED)."""
        until = self.clock() + timedelta(seconds=seconds)
        with self._lock, self._writing():
            self._write_unwritten()  # the UPDATE below must find the runs of this batch
            renewed = set(self._store.renew_leases(run_ids, until))
            for run_id in renewed:
                cached = self._runs.cached(run_id)
                if cached is not None:
                    cached.lease_expires = until
        return [run_id for run_id in run_ids if run_id in renewed], until

    # --- tag concurrency limits -----------------------------------------------------------------

    def create_limit(self, tag: str, limit: int) -> ConcurrencyLimit:
        with self._lock, self._store.transaction():
            if self._store.get_limits((tag,)):
                raise LimitAlreadyExists(tag)
            self._store.insert_limit(tag, limit, self.clock())
        return self.get_limit(tag)

    def get_limit(self, tag: str) -> ConcurrencyLimit:
        with self._lock:
            found = self._store.get_limits((tag,))
        if not found:
            raise LimitNotFound(tag)
        return found[0]

    def list_limits(self) -> list[ConcurrencyLimit]:
        with self._lock:
            return self._store.get_limits()

    def delete_limit(self, tag: str) -> None:
        """Remove a limit; the runs holding its slots keep running, unlimited."""
        with self._lock, self._store.transaction():
            if not self._store.delete_limit(tag):
                raise LimitNotFound(tag)

    # --- proposals ------------------------------------------------------------------------------

    def set_state(
        self,
        run_id: str,
        proposed: State,
        *,
        force: bool = False,
        expected_state_id: str | None = None,
        lease_seconds: float = 0.0,
        fresh_state: bool = False,
    ) -> OrchestrationResult:
        """Decide a proposed state for a run and write what the policy decided. With a lease, a
        RUNNING or CANCELLING state written starts a heartbeat lease of that many seconds. The
        transitions written are published to the subscribers (see `subscribe`); raises
        RunNotFound for an unknown run. With `fresh_state`, the answer's state is a copy of
        the run's, for a caller in this process to keep (and give a value to)."""

        # The retries and the transaction inline, not through `_retrying` and `_writing`:
        # every proposal comes here.
        for tries in range(_CONFLICT_RETRIES):
            try:
                with self._lock:
                    batch = self._batch
                    if batch is not None:  # its transitions are published with the batch
                        return self._propose(
                            run_id,
                            proposed,
                            force,
                            expected_state_id,
                            lease_seconds,
                            batch,
                            fresh_state,
                        )
                    written: list[_Logged] = []
                    with self._transaction():
                        result = self._propose(
                            run_id,
                            proposed,
                            force,
                            expected_state_id,
                            lease_seconds,
                            written,
                            fresh_state,
                        )
                    self._publish(written)
                    return result
            except WriteConflict as conflict:
                self._conflicted(conflict, tries)
        raise AssertionError("unreachable")

    def _conflicted(self, conflict: WriteConflict, tries: int) -> None:
        """After a decision lost a race with another process's transaction: a short random
        pause before it is taken again; `conflict` raised after the last try, or inside a
        batch (the batch fails instead)."""
        if self._batch is not None or tries == _CONFLICT_RETRIES - 1:
            raise conflict
        time.sleep(random.uniform(0, 0.005 * 2**tries))

    def _propose(
        self,
        run_id: str,
        proposed: State,
        force: bool,
        expected_state_id: str | None,
        lease_seconds: float,
        written: list[_Logged],
        fresh_state: bool = False,
    ) -> OrchestrationResult:
        """Inside a transaction: decide a proposal against the run as stored, and write."""
        self._store.lock_runs((run_id,))
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        current_id = run.state.id if run.state else ""
        if expected_state_id is not None and expected_state_id != current_id:
            return _new_result(
                SetStateStatus.ABORT,
                _copy(run.state) if fresh_state else run.state,
                f"the run's current state is {current_id or 'none'}, "
                f"not the expected {expected_state_id or 'none'}: another client changed it",
            )
        moment = self.clock()
        decision = self._decide(run, proposed, force, moment)
        if decision.state is not None:
            self._write(run, decision, written, moment, lease_seconds)
        return _new_result(
            decision.status,
            _copy(run.state) if fresh_state else run.state,
            decision.reason,
            decision.delay_seconds,
            written=decision.state is not None,
        )

    def crash_if_lease_lapsed(self, run_id: str, crashed: State, before: datetime) -> bool:
        """Force `crashed` on the run if its lease still ended before `before` (a renewal since
        it was found, in any process, keeps it alive). Says whether a state was written."""

        def attempt() -> bool:
            with self._lock:
                written: list[_Logged] = []
                with self._writing():
                    self._store.lock_runs((run_id,))
                    run = self._runs.get(run_id)
                    if run is None or run.lease_expires is None or run.lease_expires >= before:
                        return False
                    current = run.state.id if run.state else ""
                    result = self._propose(run_id, crashed, True, current, 0.0, written)
                self._publish(written)
                return result.written

        return self._retrying(attempt)

    def resume_flow_run(
        self, run_id: str, run_input: str | None = None, message: str = "resumed"
    ) -> OrchestrationResult:
        """Propose RUNNING for a PAUSED flow run in place of the pause it is in, carrying the
        input (JSON text) the pause asked for. The answer is the decision: ACCEPT, REJECT when
        the pause had expired (the run is FAILED), ABORT when another client moved the run
        first. Raises RunNotFound for an unknown flow run, NotPaused when it is not PAUSED (or
        its process is gone: its heartbeat lease lapsed, and nothing would run it), and
        RunInputRefused for an input missing, unexpected, or not matching the pause's JSON
        Schema (nothing is written)."""
        run = self.get_run(run_id, RunKind.FLOW_RUN)
        paused = run.state
        if paused is None or paused.type is not StateType.PAUSED:
            shown = paused.name if paused is not None else "without a state"
            raise NotPaused(f"flow run {run_id} is not paused (it is {shown}); nothing to resume")
        moment = self.clock()
        if run.lease_expires is not None and run.lease_expires < moment:
            lapsed = (moment - run.lease_expires).total_seconds()
            raise NotPaused(
                f"flow run {run_id} is paused, but its process is gone (its heartbeat lease "
                f"lapsed {lapsed:.0f} s ago): nothing would go on after a resume; a server or "
                "`stateward ui` crashes it"
            )
        schema = paused.details.run_input_schema
        if schema and run_input is None:
            raise RunInputRefused(
                f"the pause of flow run {run_id} waits for input matching its schema {schema}",
                wanted="input",
            )
        if not schema and run_input is not None:
            raise RunInputRefused(
                f"the pause of flow run {run_id} waits for no input", wanted="none"
            )
        if schema and run_input is not None:
            from jsonschema.exceptions import best_match  # loaded by the first such resume
            from referencing.exceptions import Unresolvable

            wanted = json.loads(schema)
            validator = input_schemas.validator_for(wanted)

            def problem_of(value: Any) -> Any:
                try:
                    return best_match(validator.iter_errors(value))
                except Unresolvable as error:  # a pause written before its $refs were checked
                    raise RunInputRefused(
                        f"the pause's schema cannot check an input: its $ref {error.ref!r} "
                        "leads nowhere"
                    ) from None
                except input_schemas.UnsafePattern as error:  # written before that check
                    raise RunInputRefused(
                        f"the pause's schema cannot check an input: {error}"
                    ) from None

            given = json.loads(run_input)
            problem, path = problem_of(given), []
            # The reference wraps the input of a built-in type (wait_for_input=int) as
            # {"value": 21}: taken too, where the wrapped form is not an input the schema takes
            # (and the schema is not a model's, with properties, which the reference does not
            # wrap).
            if (
                problem is not None
                and isinstance(given, dict)
                and list(given) == ["value"]
                and not _is_models_schema(wanted)
            ):
                problem, path = problem_of(given["value"]), ["value"]
                if problem is None:
                    run_input = json.dumps(given["value"])
            if problem is not None:
                parts = [*path, *problem.absolute_path]
                where = "/".join(str(part) for part in parts) or "the input"
                raise RunInputRefused(
                    f"the input does not match the pause's schema at {where}: {problem.message}"
                )
        running = State(
            StateType.RUNNING,
            message=message,
            details=StateDetails(run_input=run_input or ""),
        )
        return self.set_state(run_id, running, expected_state_id=paused.id)

    # --- internals ------------------------------------------------------------------------------

    def _decide(
        self, run: RunRecord, proposed: State, force: bool, moment: datetime
    ) -> PolicyDecision:
        """Run the policy over a proposal at `moment` (the time the state is written at)."""
        kind = proposed.type
        if kind is _SCHEDULED and proposed.details.scheduled_time is None:
            proposed = proposed.with_details(scheduled_time=moment)
        current = run.state
        rules = self.policies.for_run(run.kind, force).applicable(
            None if current is None else current.type, kind
        )
        if not rules:
            # No rule covers the transition (a new run's Pending): what `decide` answers with
            # none, without gathering what the rules would read.
            return PolicyDecision(_ACCEPT, proposed)
        if not force and kind is _RUNNING and run.kind is _TASK_RUN:
            ctx = self._with_task_start_facts(run, proposed, moment)
        else:
            ctx = TransitionContext(run, proposed, moment, None, None, (), self.rng())
        return decide_by(rules, ctx)

    def _with_task_start_facts(
        self, run: RunRecord, proposed: State, moment: datetime
    ) -> TransitionContext:
        """The context of a task run proposing RUNNING, with what the task policy reads then,
        and only that: its flow run's state, the cached result under its key, its tags'
        concurrency limits."""
        details = proposed.details
        flow_run_state = None
        if run.flow_run_id:
            flow_run = self._runs.get(run.flow_run_id, RunKind.FLOW_RUN)
            flow_run_state = flow_run.state if flow_run else None
        cached = None
        if details.cache_key and not details.refresh_cache:
            cached = self._store.cached_state(details.cache_key, moment)
        limits: tuple[LimitUsage, ...] = ()
        if run.tags:
            limits = tuple(
                LimitUsage(tag, limit, active, held)
                for tag, limit, active, held in self._store.limit_usage(run.id, run.tags)
            )
        return TransitionContext(run, proposed, moment, flow_run_state, cached, limits, self.rng())

    def together(
        self, operations: Sequence[Callable[[], T]], *, wait: bool = True
    ) -> list[T | Exception]:
        """Group commit: run `operations` (each a call of this orchestrator's writing methods,
        directly or through the API's) in one transaction with one commit, each in a savepoint
        of its own, so that one that raises is undone alone and the others go on. Returns each
        operation's outcome, in order: what it returned, or the exception it raised. When the
        transaction itself fails (the database unreachable or taking no writes, the commit
        refused), nothing was written and that error is the outcome of every operation. An
        operation that lost a race with another process's transaction (WriteConflict) is run
        again in another transaction, a few times. The transitions are published once the
        commit is done, so no caller hears of a write before it is durable. With `wait` false,
        a write lock held by another thread of this process or by another process (SQLite's)
        raises WouldWait before anything ran, instead of being waited for."""
        # The first try, and nearly always the only one: every group comes here.
        try:
            first = self._group(operations, wait)
        except WouldWait:
            raise
        except Exception as error:  # nothing was written
            first = [error] * len(operations)
        pending = [index for index, result in enumerate(first) if isinstance(result, WriteConflict)]
        if not pending:
            return first
        by_index: dict[int, T | Exception] = dict(enumerate(first))
        for tries in range(1, _CONFLICT_RETRIES):
            time.sleep(random.uniform(0, 0.005 * 2 ** (tries - 1)))
            group = [operations[index] for index in pending]
            try:
                results = self._group(group, wait)
            except WouldWait:
                raise
            except Exception as error:  # nothing was written
                results = [error] * len(group)
            for index, result in zip(pending, results, strict=True):
                by_index[index] = result
            pending = [
                index for index, result in zip(pending, results, strict=True)
                if isinstance(result, WriteConflict)
            ]  # fmt: skip
            if not pending:
                break
        return [by_index[index] for index in range(len(operations))]

    def _group(self, group: Sequence[Callable[[], T]], wait: bool) -> list[T | Exception]:
        """One transaction for `group` (see `together`); raises when the transaction failed."""
        if not self._lock.acquire(blocking=wait):
            raise WouldWait("another thread of this process is writing")
        try:
            if self._batch is not None:
                raise RuntimeError("groups do not nest")
            self._batch, self._grouping = [], threading.get_ident()
            try:
                if len(group) == 1:  # no savepoint needed: its failure undoes the transaction
                    try:
                        with self._transaction(wait):
                            results: list[T | Exception] = [group[0]()]
                    except WouldWait:
                        raise
                    except Exception as error:
                        return [error]
                else:
                    with self._transaction(wait):
                        results = [self._in_savepoint(operation) for operation in group]
                written = self._batch
            finally:
                self._batch, self._grouping = None, 0
            self._publish(written)
            return results
        finally:
            self._lock.release()

    def _in_savepoint(self, operation: Callable[[], T]) -> T | Exception:
        """Inside a group's transaction: run `operation`; if it raises, undo its writes (and
        forget the run records it changed in memory) and return the exception. An error of the
        database itself is raised: the whole transaction fails."""
        assert self._batch is not None
        mark = len(self._batch)
        with self._store.savepoint() as savepoint:
            try:
                result = operation()
                # Its new runs' rows go in its own savepoint: an undo of a later operation
                # forgets only that operation's runs.
                self._write_unwritten()
                return result
            except Exception as error:
                if not _undone_alone(error):
                    raise
                try:
                    savepoint.undo()
                except Exception:
                    raise error from None  # the transaction is gone: the group fails with it
                del self._batch[mark:]
                self._runs.clear()
                return error

    @property
    def in_batch(self) -> bool:
        """Whether the calling thread runs inside `batch()` or `together()`: then a failure of
        the database (DatabaseUnavailable, StorageUnavailable, WriteConflict, a driver's
        error) must reach the batch or the group, never be answered as one operation's
        refusal. Read under the write lock, which the batch or group holds: another thread
        always sees False."""
        me = threading.get_ident()
        return self._grouping == me or self._batching == me

    def batch(self) -> _Batch:
        """The operations inside share one transaction; their transitions are published once the
        whole batch committed. An operation that is refused (not found, already exists, an
        initial state refused...) is refused before it writes anything, so the others go on;
        a failure while writing, or of the database (unreachable, taking no writes, a race
        lost to another process), fails the whole batch, which then changes nothing: its
        caller lets such an error out of the block (see `in_batch`). Inside `together()`, the
        batch is part of the group's transaction (and of its savepoint)."""
        return _Batch(self)

    def _writing(self) -> AbstractContextManager[None]:
        """A transaction, or the batch's when inside one (then nothing to enter: each write of
        a batch comes here, so it costs no generator)."""
        return _IN_BATCH if self._batch is not None else self._transaction()

    def _transaction(self, wait: bool = True) -> _Transaction:
        """A store transaction (see `RunStore.transaction` for `wait`); if it fails, the run
        records it changed in memory are forgotten. Entered under the write lock."""
        return self._transactions[wait]

    def _write_unwritten(self) -> None:
        """Insert the rows of the runs created in this transaction, each once, as they are
        now: a run created and started together costs one statement for its row, not two."""
        for run in self._runs.unwritten.values():  # in the order they were created
            self._store.insert_run(run)
        self._runs.unwritten.clear()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run a decision, again (after a short random pause) when it lost a race with another
        process's transaction, up to a few times. Inside a batch, the batch fails instead."""
        for tries in range(_CONFLICT_RETRIES):
            try:
                return attempt()
            except WriteConflict:
                if self._batch is not None or tries == _CONFLICT_RETRIES - 1:
                    raise
            time.sleep(random.uniform(0, 0.005 * 2**tries))
        raise AssertionError("unreachable")

    def _forget_if_changed(self) -> None:
        """Forget the cached runs when another process wrote since we last looked."""
        if self._store.changed_elsewhere():
            self._looks_found += 1
            self._runs.clear()
        self._looks += 1  # after `_looks_found`: see `looks`

    def looks(self) -> tuple[int, int]:
        """(looks, found): how many times this process's writing connection looked for other
        connections' commits, as each of its transactions began, and how many of those looks
        found one (on PostgreSQL every look does). Read without a lock from any thread: a
        caller that sees a look sees what it found."""
        looks = self._looks
        return looks, self._looks_found

    def _write(
        self,
        run: RunRecord,
        decision: PolicyDecision,
        written: list[_Logged],
        moment: datetime,
        lease_seconds: float = 0.0,
    ) -> None:
        """Write the decided state for `run` (inside a transaction), at `moment` (the time of
        the decision: one clock reading per transition)."""
        assert decision.state is not None
        effects = decision.effects
        if effects:
            for effect in effects:
                if isinstance(effect, ResetRunCount):
                    run.run_count = 0
        previous = run.state
        state = self._mint(run, decision.state, moment)
        bookkeeping.record_transition(run, state, lease_seconds)
        store = self._store
        if effects:
            for effect in effects:
                if isinstance(effect, RememberPauseKey):
                    run.pause_keys = run.pause_keys | {effect.key}
        store.insert_state(run.id, state)
        if run.id not in self._runs.unwritten:  # else its row is inserted as it is by then
            store.update_run(run)
        self._runs.remember(run)  # what it holds changed with its state: measured again
        if effects:
            for effect in effects:
                self._apply(run, effect)
        if run.tags and _leaves_running(previous, state):
            store.release_slots(run.id)
        store.append_transition(run, previous, state)
        written.append((run, previous, state))
        if run.parent_task_run_id and run.kind is _FLOW_RUN:
            self._mirror_onto_parent_task(run, state, written)

    def _mint(self, run: RunRecord, state: State, moment: datetime) -> State:
        """The state as written: a fresh id (time-ordered: it joins the index of state ids at
        its right edge), a timestamp (`moment`, or just after the run's last one), its run."""
        last = run.state.timestamp if run.state is not None else None
        if last is not None and moment <= last:
            moment = last + _ONE_US
        return new_state(
            state.type,
            state.name,
            state.message,
            moment,
            new_ordered_id(),
            bookkeeping.own_details(run, state.details),
            state.data,
        )

    def _apply(self, run: RunRecord, effect: object) -> None:
        """Apply a rule's side effect that lives in its own table."""
        if isinstance(effect, CacheResult):
            self._store.cache_state(effect.key, run, effect.expiration, self.clock())
        elif isinstance(effect, TakeConcurrencySlots):
            self._store.take_slots(run.id, effect.tags)

    def _mirror_onto_parent_task(
        self, subflow: RunRecord, state: State, written: list[_Logged]
    ) -> None:
        """A subflow's task run in the parent flow shows the subflow's state."""
        self._store.lock_runs((subflow.parent_task_run_id,))
        task_run = self._runs.get(subflow.parent_task_run_id, RunKind.TASK_RUN)
        if task_run is None:
            return
        mirror = State(
            state.type,
            name=state.name,
            message=state.message,
            details=StateDetails(
                scheduled_time=state.details.scheduled_time,
                child_flow_run_id=subflow.id,
            ),
            data=state.data,
        )
        moment = self.clock()
        context = TransitionContext(run=task_run, proposed=mirror, now=moment)
        decision = decide(self.policies.forced_task, context)
        if decision.state is not None:
            self._write(task_run, decision, written, moment)

    def _publish(self, written: list[_Logged]) -> None:
        """Publish what a transaction wrote, once it committed (inside a batch: once the batch
        commits). The transitions get their sequences here: a store may number them only as
        it commits."""
        if self._batch is not None:
            if written is not self._batch:
                self._batch.extend(written)
            return
        if written:
            transitions = self._sequenced(written)
            for publisher in self._publishers:
                try:
                    publisher(transitions)
                except Exception:  # a bug of ours; the write is committed, its callers say so
                    log.exception(
                        "publishing transitions %d to %d failed (they are committed; a "
                        "subscriber resuming from the log gets them)",
                        transitions[0].sequence,
                        transitions[-1].sequence,
                    )

    def _sequenced(self, written: list[_Logged]) -> list[Transition]:
        """The transitions the last transaction committed, with the sequences it gave them."""
        sequences = self._store.logged_sequences()
        if len(sequences) != len(written):
            raise AssertionError(
                f"the store numbered {len(sequences)} transitions, {len(written)} were logged"
            )
        # By position (sequence, run id, kind, flow run id, run name, flow name, task key,
        # from, to), the run's flow run worked out here: every commit comes here.
        return [
            _new_transition(
                number,
                run.id,
                run.kind,
                run.id if run.kind is _FLOW_RUN else run.flow_run_id,
                run.name,
                run.flow_name,
                run.task_key,
                previous,
                state,
            )
            for (run, previous, state), number in zip(written, sequences, strict=True)
        ]


class _Batch:
    """`Orchestrator.batch()`: a class, not a generator (see `_Transaction`)."""

    __slots__ = ("_orchestrator", "_transaction")

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator
        self._transaction: _Transaction | None = None

    def __enter__(self) -> None:
        orchestrator = self._orchestrator
        orchestrator._lock.acquire()
        try:
            if orchestrator._grouping:  # part of the group's transaction
                return
            if orchestrator._batch is not None:
                raise RuntimeError("batches do not nest")
            orchestrator._batch = []
            transaction = orchestrator._transaction()
            try:
                transaction.__enter__()
            except BaseException:
                orchestrator._batch = None
                raise
            self._transaction = transaction
            orchestrator._batching = threading.get_ident()
        except BaseException:
            orchestrator._lock.release()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        orchestrator = self._orchestrator
        try:
            transaction = self._transaction
            if transaction is None:
                return
            written = orchestrator._batch
            try:
                transaction.__exit__(kind, error, traceback)  # the commit, or the rollback
            finally:
                orchestrator._batch, orchestrator._batching = None, 0
            if error is None and written:
                orchestrator._publish(written)
        finally:
            orchestrator._lock.release()


class _Transaction:
    """`Orchestrator._transaction()`: a class, not a generator, as every write enters one.
    Inside the store's transaction: the run cache is checked against other processes' commits
    as it begins, the rows of runs created in it are inserted as it ends, and the cache
    forgets everything when it fails. An orchestrator has one for each `wait`, made once
    (objects made for every write cost as much as their work): each is entered under the
    orchestrator's lock, and transactions do not nest."""

    __slots__ = ("_orchestrator", "_store_transaction", "_wait")

    def __init__(self, orchestrator: Orchestrator, wait: bool) -> None:
        self._orchestrator = orchestrator
        self._wait = wait
        self._store_transaction: AbstractContextManager[None] = nullcontext()

    def __enter__(self) -> None:
        orchestrator = self._orchestrator
        store_transaction = orchestrator._store.transaction(wait=self._wait)
        self._store_transaction = store_transaction
        try:
            store_transaction.__enter__()
        except BaseException:
            orchestrator._runs.clear()
            raise
        try:
            orchestrator._forget_if_changed()
        except BaseException as error:
            self._fail(error)
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            try:
                self._orchestrator._write_unwritten()
            except BaseException as failure:
                self._fail(failure)
                raise
            try:
                self._store_transaction.__exit__(None, None, None)  # the commit
            except BaseException:
                self._orchestrator._runs.clear()
                raise
            return
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        """Roll the store's transaction back for `error` (it may raise what stands for it,
        e.g. StorageUnavailable) and forget the cached runs."""
        try:
            self._store_transaction.__exit__(type(error), error, error.__traceback__)
        finally:
            self._orchestrator._runs.clear()


def _copy(state: State | None) -> State | None:
    """A copy of a state the orchestrator keeps, for a caller to hold (and give a value)."""
    if state is None:
        return None
    return new_state(
        state.type, state.name, state.message, state.timestamp, state.id, state.details, state.data
    )


def _undone_alone(error: Exception) -> bool:
    """Whether a failed operation of a group is undone alone (a refusal, a bad request, a race
    lost to another process) rather than failing the whole transaction (the database
    unreachable or taking no writes)."""
    return not isinstance(error, DatabaseUnavailable | StorageUnavailable)


def _leaves_running(previous: State | None, state: State) -> bool:
    return previous is not None and previous.type is StateType.RUNNING and not state.is_running()


def _is_models_schema(schema: Any) -> bool:
    """Whether a pause's input schema is a model's (an object with properties), itself or as
    the $defs entry its top-level $ref names (a model that refers to itself: pydantic writes
    {"$ref": "#/$defs/Step", "$defs": {"Step": {...}}})."""
    if not isinstance(schema, dict):
        return False
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        defined = schema.get("$defs", {})
        target = defined.get(ref.removeprefix("#/$defs/")) if isinstance(defined, dict) else None
        return isinstance(target, dict) and "properties" in target
    return "properties" in schema
