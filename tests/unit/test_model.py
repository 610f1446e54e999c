"""The server's run record: `copy` carries every field (it is built field by field, so a new
field must be added to it; this test fails until it is)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from stateward.runs import RetryPolicy, RunKind
from stateward.states import State, StateType
from stateward_service.model import RunRecord

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_copy_carries_every_field_and_is_its_own_record():
    record = RunRecord(
        kind=RunKind.TASK_RUN,
        id="id",
        name="name",
        created=AT,
        flow_name="flow",
        task_key="key",
        flow_run_id="flow-run",
        parent_task_run_id="parent",
        child_flow_run_id="child",
        parameters='{"a":1}',
        tags=("t",),
        retry_policy=RetryPolicy(3),
        state=State(StateType.RUNNING),
        run_count=2,
        start_time=AT,
        end_time=AT,
        total_run_time=1.5,
        expected_start_time=AT,
        next_scheduled_start_time=AT,
        pause_keys=frozenset({"p"}),
        lease_expires=AT,
    )
    blank = RunRecord(kind=RunKind.FLOW_RUN, id="", name="", created=AT)
    for field in dataclasses.fields(RunRecord):
        if field.name != "created":  # every field is set apart from its default above
            assert getattr(record, field.name) != getattr(blank, field.name), field.name
    copy = record.copy()
    assert copy == record and copy is not record
    copy.run_count = 3
    assert record.run_count == 2
