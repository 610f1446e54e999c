"""The in-process API: the calls a flow makes (create runs, create one and start it, propose a
state, read a run, store run logs and held-back cache entries, renew leases) for a caller in
this same process, in the vocabulary
(`stateward.states`, `stateward.runs`): no protobuf message is built, encoded or parsed.

Each call is checked as the gRPC API checks the same request, once, on the vocabulary, and is
refused with the same ServiceError; it decides and writes through the same orchestrator calls,
in the caller's thread. What it hands back is the caller's own: states and runs are fresh
objects, never the orchestrator's cached records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from stateward.ids import new_id
from stateward.runs import CacheEntry, FlowRun, LogEntry, OrchestrationResult, RunKind, TaskRun
from stateward.states import State, maker, new_state, now
from stateward_service import validation as check
from stateward_service.errors import ServiceError
from stateward_service.model import RunRecord
from stateward_service.names import make_run_name
from stateward_service.orchestrator import Orchestrator
from stateward_service.refusals import REFUSALS, raise_refusal, refused_alone, translating

Run = FlowRun | TaskRun


class LocalService:
    """The hot calls of OrchestrationService for a caller in this process (see the module)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    def create_run(self, run: Run, *, new_id: bool = False) -> Run:
        """Create a flow run or a task run from the fields a create takes (id, name, its flow
        name or task key, flow_run_id, parameters, tags, retry_policy, parent_task_run_id, the
        initial state); returns it as stored. `new_id` says the run's id was just made by
        `stateward.ids.new_id` in this process and never offered before, so no run can have
        it and no read looks for one. Raises ServiceError (INVALID_ARGUMENT, NOT_FOUND,
        ALREADY_EXISTS, FAILED_PRECONDITION, UNAVAILABLE) as CreateFlowRun and CreateTaskRun
        do, and TypeError for parameters a Struct cannot hold."""
        return self._create_run(run, new_id, True)

    def _create_run(self, run: Run, new_id: bool, copy: bool) -> Run:
        """`create_run`; without `copy`, inside a batch (the run is read at once, before the
        batch's next write changes it)."""
        record, initial, parameters = _record(run, id_is_new=new_id)
        fresh = new_id or not run.id
        orchestrator = self.orchestrator
        try:  # as `translating` does, without a closure: every task run comes here
            created = orchestrator.create_run(record, initial, new_id=fresh, copy=copy)
        except REFUSALS as error:
            raise_refusal(error, orchestrator.in_batch)
        return _run(created, parameters)

    def create_and_start(
        self, runs: Sequence[Run], state: State, lease_seconds: float, *, new_ids: bool = False
    ) -> tuple[list[Run | ServiceError], OrchestrationResult | ServiceError]:
        """Create `runs` in order, then propose `state` for the last of them, in one
        transaction (as ExecuteBatch does): for each run, the run as stored or the ServiceError
        its create was refused with; then the answer to the proposal, or its refusal. With
        `new_ids`, every run's id is new (see `create_run`). A failure of the database (it
        cannot be reached, takes no writes, or stayed too busy), in any operation or at the
        commit, raises ServiceError (UNAVAILABLE, or RESOURCE_EXHAUSTED for a full disk) and
        nothing is written."""
        created: list[Run | ServiceError] = []
        answer: list[OrchestrationResult | ServiceError] = []

        def batch() -> None:
            with self.orchestrator.batch():
                for run in runs:
                    try:
                        created.append(self._create_run(run, new_ids, False))
                    except ServiceError as error:
                        if not refused_alone(error):
                            raise
                        created.append(error)
                try:
                    run_id = runs[-1].id
                    if not new_ids:  # else made by `new_id`: a UUID as it writes them
                        run_id = check.run_id(run_id, "run_id")
                    answer.append(self._set_state(run_id, state, False, None, lease_seconds))
                except ServiceError as error:
                    if not refused_alone(error):
                        raise
                    answer.append(error)

        # A failure of the database, in an operation or at the commit, fails it all, raised.
        translating(batch)
        return created, answer[0]

    def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool = False,
        expected_state_id: str | None = None,
        lease_seconds: float = 0.0,
    ) -> OrchestrationResult:
        """Propose `state` for a run, as SetState does; the answer. Raises ServiceError as
        SetState does."""
        return self._set_state(
            check.run_id(run_id, "run_id"), state, force, expected_state_id, lease_seconds
        )

    def _set_state(
        self,
        run_id: str,
        state: State,
        force: bool,
        expected_state_id: str | None,
        lease_seconds: float,
    ) -> OrchestrationResult:
        """`set_state` for a run id known to be well formed."""
        check.state_type(state.type, "state.type")
        check.proposed_state(state, "state")
        if expected_state_id:
            expected_state_id = check.uuid_value(expected_state_id, "expected_state_id")
        check.seconds(lease_seconds, "lease_duration", check.MAX_LEASE_SECONDS)
        orchestrator = self.orchestrator
        try:  # as `translating` does, without a closure: every proposal comes here
            return orchestrator.set_state(
                run_id,
                state,
                force=force,
                expected_state_id=expected_state_id,
                lease_seconds=lease_seconds,
                fresh_state=True,  # the caller's own: it may give it a value
            )
        except REFUSALS as error:
            raise_refusal(error, orchestrator.in_batch)

    def get_run(self, run_id: str, kind: RunKind) -> Run:
        """The flow run or task run as it is now; ServiceError NOT_FOUND for an unknown one."""
        run_id = check.run_id(run_id, "id")
        record = translating(lambda: self.orchestrator.get_run(run_id, kind))
        return _run(record, json.loads(record.parameters))

    def write_logs(self, entries: Sequence[LogEntry]) -> int:
        """Store lines runs logged, as WriteLogs does (the same checks, one transaction); how
        many were stored. Raises ServiceError as WriteLogs does: INVALID_ARGUMENT for a
        malformed line, NOT_FOUND (nothing written) for a line of an unknown run."""
        lines = check.log_entry_values(entries, "entries")
        return translating(lambda: self.orchestrator.write_logs(lines))

    def write_cache_entries(self, entries: Sequence[CacheEntry]) -> int:
        """Store completed task runs' states under cache keys, all or none, as
        WriteCacheEntries does; how many. Raises ServiceError as it does: INVALID_ARGUMENT
        for a malformed entry, NOT_FOUND for an unknown task run, FAILED_PRECONDITION for one
        that is not Completed (nothing written)."""
        check.cache_entry_count(len(entries), "entries")
        rows = []
        for index, entry in enumerate(entries):
            field = f"entries[{index}]"
            run_id = check.run_id(entry.task_run_id, f"{field}.task_run_id")
            key = check.message_text(entry.cache_key, f"{field}.cache_key")
            check.text(key, f"{field}.cache_key", check.MAX_CACHE_KEY, required=True)
            check.time_value(entry.cache_expiration, f"{field}.cache_expiration")
            rows.append((run_id, key, entry.cache_expiration))
        return translating(lambda: self.orchestrator.write_cache_entries(rows))

    def renew_leases(self, run_ids: Sequence[str], lease_seconds: float) -> list[str]:
        """Extend by `lease_seconds` the heartbeat leases of those of `run_ids` that hold one,
        as RenewLeases does; the ids of those. Raises ServiceError (INVALID_ARGUMENT) as it
        does."""
        checked = check.run_ids(run_ids, "run_ids")
        seconds = check.lease_duration(lease_seconds, "lease_duration")
        renewed, _ = translating(lambda: self.orchestrator.renew_leases(checked, seconds))
        return renewed


def _record(run: Run, *, id_is_new: bool = False) -> tuple[RunRecord, State | None, dict[str, Any]]:
    """The run record a create stores, its initial state and its parameters as stored. With
    `id_is_new`, the run's id is one `stateward.ids.new_id` made (see `LocalService.create_run`):
    canonical already."""
    field = _FLOW_RUN_FIELDS if isinstance(run, FlowRun) else _TASK_RUN_FIELDS
    given_id = run.id if id_is_new and run.id else check.optional_run_id(run.id, field.id)
    parameters, parameters_json = check.parameter_values(run.parameters, field.parameters)
    retry_policy = check.retry_policy_value(run.retry_policy, field.retry_policy)
    record = RunRecord(
        kind=RunKind.FLOW_RUN if isinstance(run, FlowRun) else RunKind.TASK_RUN,
        id=given_id or new_id(),
        name=check.text(run.name, field.name, check.MAX_NAME) or make_run_name(),
        created=now(),
        parameters=parameters_json,
        tags=check.tags(run.tags, field.tags),
        retry_policy=retry_policy,
    )
    if isinstance(run, FlowRun):
        record.flow_name = check.text(
            run.flow_name, "flow_run.flow_name", check.MAX_NAME, required=True
        )
        record.parent_task_run_id = check.optional_run_id(
            run.parent_task_run_id, "flow_run.parent_task_run_id"
        )
    else:
        record.task_key = check.text(
            run.task_key, "task_run.task_key", check.MAX_NAME, required=True
        )
        record.flow_run_id = check.optional_run_id(run.flow_run_id, "task_run.flow_run_id")
    initial = run.state
    if initial is not None:
        check.state_type(initial.type, field.state_type)
        check.proposed_state(initial, field.state)
    return record, initial, parameters


class _Fields(NamedTuple):
    """The names a create's refusals give its fields (spelled once, not at every create)."""

    id: str
    parameters: str
    retry_policy: str
    name: str
    tags: str
    state_type: str
    state: str


def _fields(what: str) -> _Fields:
    names = ("id", "parameters", "retry_policy", "name", "tags", "state.type", "state")
    return _Fields(*(f"{what}.{name}" for name in names))


_FLOW_RUN_FIELDS = _fields("flow_run")
_TASK_RUN_FIELDS = _fields("task_run")


def _detached(state: State) -> State:
    """A copy of a state the orchestrator keeps, for the caller to hold (and to give a value)."""
    return new_state(
        state.type,
        state.name,
        state.message,
        state.timestamp,
        state.id,
        state.details,
        state.data,
    )


def _run(record: RunRecord, parameters: dict[str, Any]) -> Run:
    """The vocabulary's run for a record, as a create or get answers it over the wire."""
    state = _detached(record.state) if record.state is not None else None
    total_run_time = record.total_run_time
    # Keywords spelled out rather than a shared dict unpacked: every create comes here.
    elapsed = (
        _NO_TIME
        if not total_run_time
        else timedelta(microseconds=round(total_run_time * 1_000_000))
    )
    if record.kind is _FLOW_RUN:
        return FlowRun(
            id=record.id,
            name=record.name,
            flow_name=record.flow_name,
            parameters=parameters,
            tags=record.tags,
            retry_policy=record.retry_policy,
            state=state,
            run_count=record.run_count,
            start_time=record.start_time,
            end_time=record.end_time,
            total_run_time=elapsed,
            expected_start_time=record.expected_start_time,
            next_scheduled_start_time=record.next_scheduled_start_time,
            parent_task_run_id=record.parent_task_run_id,
            created=record.created,
            lease_expires=record.lease_expires,
        )
    return _new_task_run(
        id=record.id,
        name=record.name,
        task_key=record.task_key,
        flow_run_id=record.flow_run_id,
        parameters=parameters,
        tags=record.tags,
        retry_policy=record.retry_policy,
        state=state,
        run_count=record.run_count,
        start_time=record.start_time,
        end_time=record.end_time,
        total_run_time=elapsed,
        expected_start_time=record.expected_start_time,
        next_scheduled_start_time=record.next_scheduled_start_time,
        child_flow_run_id=record.child_flow_run_id,
        created=record.created,
        lease_expires=record.lease_expires,
    )


_NO_TIME = timedelta(0)
_new_task_run = maker(TaskRun)  # every task run's create makes one
_FLOW_RUN = RunKind.FLOW_RUN


__all__ = ["LocalService"]
