"""The stream messages a replay makes straight from the log's rows are the bytes the broadcaster
makes of the transitions those rows stand for, whatever the states carry."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stateward.runs import RunKind
from stateward.states import ResultData, State, StateDetails, StateType
from stateward_service.log_messages import log_row_message, log_row_messages
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.replica import encode_transition
from stateward_service.store.rows import STATE_WIDTH, details_json, to_us
from stateward_service.store.sql import transition_from_row
from stateward_service.store.sqlite import Store, StoreReader

WHEN = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
BEFORE_1970 = datetime(1969, 12, 31, 23, 59, 58, 500001, tzinfo=UTC)

EVERY_DETAIL = StateDetails(
    flow_run_id="f",
    task_run_id="t",
    scheduled_time=WHEN,
    cache_key="key",
    cache_expiration=BEFORE_1970,
    transition_id="tid",
    pause_key="p",
    pause_timeout=WHEN + timedelta(days=400),
    refresh_cache=True,
    unretriable=True,
    child_flow_run_id="c",
    run_input_schema='{"type": "object"}',
    run_input='{"x": 1}',
)


def test_every_row_of_a_real_log_makes_the_transitions_message(tmp_path):
    store = Store(tmp_path / "m.db")
    reader = StoreReader(tmp_path / "m.db")
    try:
        orchestrator = Orchestrator(store)
        flow = orchestrator.create_run(
            RunRecord(
                kind=RunKind.FLOW_RUN,
                id=str(uuid.uuid4()),
                name="a flow run",
                created=WHEN,
                flow_name="the flow",
            ),
            State(StateType.PENDING),
        )
        task = orchestrator.create_run(
            RunRecord(
                kind=RunKind.TASK_RUN,
                id=str(uuid.uuid4()),
                name="a task run",
                created=WHEN,
                task_key="the task",
                flow_run_id=flow.id,
            ),
            None,
        )
        proposals = [
            (flow.id, State(StateType.RUNNING, message="ünïcode ✓")),
            (task.id, State(StateType.PENDING, name="")),
            (task.id, State(StateType.RUNNING, name="Retrying", details=EVERY_DETAIL)),
            (task.id, State(StateType.COMPLETED, data=ResultData(json='{"v": [1, 2]}'))),
            (flow.id, State(StateType.FAILED, data=ResultData(pickle=b"\x80\x04K\x01."))),
            (flow.id, State(StateType.SCHEDULED, details=StateDetails(scheduled_time=WHEN))),
            (flow.id, State(StateType.CANCELLED, data=ResultData(json=""))),
        ]
        for run_id, state in proposals:
            orchestrator.set_state(run_id, state, force=True)
        rows, _, newest = reader.read_log_rows(0, 100)
        transitions, _, _ = reader.read_log(0, 100)
        assert len(rows) == newest == len(transitions) == 1 + len(proposals)
        for row, transition in zip(rows, transitions, strict=True):
            assert transition_from_row(row) == transition
            assert log_row_message(row) == encode_transition(transition)
        assert log_row_messages(rows) == [encode_transition(t) for t in transitions]
    finally:
        reader.close()
        store.close()


texts = st.text(max_size=8)
times = st.none() | st.integers(min_value=-(2**40), max_value=2**52)
details = st.builds(
    StateDetails,
    flow_run_id=texts,
    task_run_id=texts,
    scheduled_time=st.none() | st.datetimes(timezones=st.just(UTC)),
    cache_key=texts,
    cache_expiration=st.none() | st.datetimes(timezones=st.just(UTC)),
    transition_id=texts,
    pause_key=texts,
    refresh_cache=st.booleans(),
    unretriable=st.booleans(),
    run_input=texts,
)


@st.composite
def state_columns(draw: st.DrawFn) -> tuple[object, ...]:
    result = draw(st.sampled_from(["none", "json", "pickle"]))
    return (
        draw(st.uuids().map(str)),
        draw(st.sampled_from([int(t) for t in StateType])),
        draw(texts),
        draw(times),
        draw(texts),
        details_json(draw(details)),
        draw(texts) if result == "json" else None,
        draw(st.binary(max_size=8)) if result == "pickle" else None,
    )


@st.composite
def log_rows(draw: st.DrawFn) -> tuple[object, ...]:
    old = draw(st.none() | state_columns())
    return (
        draw(st.integers(min_value=1, max_value=2**63 - 1)),
        draw(st.sampled_from([int(k) for k in RunKind])),
        draw(st.uuids().map(str)),
        draw(st.uuids().map(str) | st.just("")),
        draw(st.none() | texts),
        draw(texts),
        draw(texts),
        *(old or (None,) * STATE_WIDTH),
        *draw(state_columns()),
    )


@settings(max_examples=150, deadline=None)
@given(log_rows())
def test_any_row_makes_the_message_of_its_transition(row):
    assert log_row_message(row) == encode_transition(transition_from_row(row))


def _with_state(row: tuple[object, ...], type_: int, details_text: str) -> tuple[object, ...]:
    to = list(row[7 + STATE_WIDTH :])
    to[1], to[5] = type_, details_text
    return (*row[: 7 + STATE_WIDTH], *to)


def test_a_row_the_log_cannot_read_is_refused_as_reading_it_refuses():
    row = (
        1, int(RunKind.FLOW_RUN), "r", "r", "n", "f", "",
        *(None,) * STATE_WIDTH,
        "s", int(StateType.RUNNING), "", to_us(WHEN), "", "{}", None, None,
    )  # fmt: skip
    assert log_row_message(row) == encode_transition(transition_from_row(row))
    unknown_detail = _with_state(row, int(StateType.RUNNING), json.dumps({"no_such": 1}))
    for make in (log_row_message, lambda r: encode_transition(transition_from_row(r))):
        with pytest.raises(TypeError):
            make(unknown_detail)
    unknown_type = _with_state(row, 42, "{}")
    for make in (log_row_message, lambda r: encode_transition(transition_from_row(r))):
        with pytest.raises(ValueError):
            make(unknown_type)
