"""Bookkeeping after every written state, forced or not (spec section 5): the run's fields that
follow from its history. Pure: it updates the run record it is given."""

from __future__ import annotations

from datetime import timedelta

from stateward.runs import RunKind
from stateward.states import TERMINAL_TYPES, State, StateDetails, StateType, maker
from stateward_service.model import RunRecord
from stateward_service.rules.starting import is_pause_resume


def own_details(run: RunRecord, details: StateDetails) -> StateDetails:
    """A state's details as written for `run`: they name the run the state belongs to."""
    if run.kind is _FLOW_RUN:
        flow_run_id, task_run_id = run.id, ""
    else:
        flow_run_id, task_run_id = run.flow_run_id, run.id
    if details.flow_run_id == flow_run_id and details.task_run_id == task_run_id:
        return details
    # Built field by field: dataclasses.replace costs several times more, on every write.
    return _new_details(
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        scheduled_time=details.scheduled_time,
        cache_key=details.cache_key,
        cache_expiration=details.cache_expiration,
        transition_id=details.transition_id,
        pause_key=details.pause_key,
        pause_timeout=details.pause_timeout,
        refresh_cache=details.refresh_cache,
        unretriable=details.unretriable,
        child_flow_run_id=details.child_flow_run_id,
        run_input_schema=details.run_input_schema,
        run_input=details.run_input,
    )


_new_details = maker(StateDetails)

# The states whose run a process holds, renewing its heartbeat lease: a paused flow run too
# (its process waits for the resume, and the run carries the lease on into Running), so that a
# paused run whose process died is crashed like a running one, not resumed into a Running that
# nothing runs.
LEASED_TYPES = frozenset({StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED})
# Members as globals: read several times quicker than an enum's attributes, on every write.
_RUNNING, _SCHEDULED = StateType.RUNNING, StateType.SCHEDULED
_FLOW_RUN = RunKind.FLOW_RUN


def record_transition(run: RunRecord, new: State, lease_seconds: float = 0.0) -> None:
    """Update `run` for the written state `new` (which has its id and timestamp). A heartbeat
    lease lives only while the run is RUNNING, CANCELLING or PAUSED: a new one of
    `lease_seconds` starts with the state, or the current one carries on."""
    assert new.timestamp is not None
    old = run.state
    at = new.timestamp
    if old is not None and old.type is _RUNNING:
        run.total_run_time += max((at - old.timestamp).total_seconds(), 0.0) if old.timestamp else 0
    if new.type is _RUNNING:
        entering = old is None or (old.type is not _RUNNING and not is_pause_resume(old))
        # A task retried without delay goes from Running straight to Retrying: a new attempt.
        entering = entering or (old is not None and new.name == "Retrying")
        if entering:
            run.run_count += 1
        if run.start_time is None:
            run.start_time = at
    if new.type in TERMINAL_TYPES:
        run.end_time = at
        if run.start_time is None:
            run.start_time = at
    else:
        run.end_time = None
    if run.expected_start_time is None:
        run.expected_start_time = new.details.scheduled_time or at
    if new.type is _SCHEDULED:
        run.next_scheduled_start_time = new.details.scheduled_time
    else:
        run.next_scheduled_start_time = None
    if new.type not in LEASED_TYPES:
        run.lease_expires = None
    elif lease_seconds > 0:
        run.lease_expires = new.timestamp + timedelta(seconds=lease_seconds)
    run.state = new
