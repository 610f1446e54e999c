"""The in-process API (`stateward_service.local_api`) against the gRPC API's own methods on one
real SQLite store: the same calls store the same things and refuse the same bad input with the
same message, and what the in-process API hands back is never the orchestrator's own record."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from stateward import wire
from stateward.exceptions import StatusCode
from stateward.ids import new_id
from stateward.runs import (
    CacheEntry,
    FlowRun,
    LogEntry,
    OrchestrationResult,
    RetryPolicy,
    RunKind,
    SetStateStatus,
    TaskRun,
)
from stateward.states import ResultData, State, StateDetails, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward_service.errors import ServiceError
from stateward_service.grpc_api import OrchestrationService
from stateward_service.local_api import LocalService
from stateward_service.orchestrator import Orchestrator
from stateward_service.store.sqlite import Store


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path / "local.db")
    yield opened
    opened.close()


@pytest.fixture
def apis(store):
    orchestrator = Orchestrator(store)
    return LocalService(orchestrator), OrchestrationService(orchestrator, None)  # type: ignore[arg-type]


PARAMETERS = {
    "n": 3,
    "x": 2.0,
    "big": 2**60,
    "nested": {"l": [1, 1.5, None, True, "s"]},
    # Either side of what a double holds exactly, and the scalars taken as they are.
    "below": 2**53 - 1,
    "edge": 2**53,
    "negative_edge": -(2**53),
    "flag": False,
    "none": None,
    "text": "s",
}


def test_a_run_created_in_process_is_stored_as_over_the_wire(apis):
    local, remote = apis
    flow_run = local.create_run(FlowRun(id="", name="", flow_name="f", parameters=PARAMETERS))
    assert isinstance(flow_run, FlowRun) and flow_run.name  # a made-up name
    policy = RetryPolicy(2, (1, 2), 0)
    run = TaskRun(
        id="", name="t-0", task_key="t", flow_run_id=flow_run.id, parameters=PARAMETERS,
        tags=("a", "b", "a"), retry_policy=policy, state=State(StateType.PENDING),
    )  # fmt: skip
    in_process = local.create_run(run)
    over_the_wire = wire.task_run_from_proto(
        remote.CreateTaskRun(wire.create_task_run_request(run)).task_run
    )
    for created in (in_process, over_the_wire):
        assert isinstance(created, TaskRun)
        assert created.tags == ("a", "b")
        assert created.retry_policy == RetryPolicy(2, (1.0, 2.0), 0.0)
        assert created.state is not None and created.state.name == "Pending"
    # The parameters as a Struct carries them: whole numbers below 2**53 are ints.
    assert in_process.parameters == over_the_wire.parameters
    assert in_process.parameters["x"] == 2 and isinstance(in_process.parameters["x"], int)
    assert isinstance(in_process.parameters["big"], float)
    assert in_process.parameters["below"] == 2**53 - 1
    assert isinstance(in_process.parameters["below"], int)
    assert isinstance(in_process.parameters["edge"], float)
    assert isinstance(in_process.parameters["negative_edge"], float)
    assert in_process.parameters["flag"] is False and in_process.parameters["none"] is None
    stored = [
        local.get_run(created.id, RunKind.TASK_RUN) for created in (in_process, over_the_wire)
    ]
    assert stored[0].parameters == stored[1].parameters == in_process.parameters


def test_create_and_start_answers_each_operation(apis):
    local, _ = apis
    flow_run = FlowRun(id=new_id(), name="f-run", flow_name="f")
    created, answer = local.create_and_start([flow_run], State(StateType.RUNNING), 30.0)
    assert isinstance(created[0], FlowRun)
    assert not isinstance(answer, ServiceError) and answer.status is SetStateStatus.ACCEPT
    assert answer.state is not None and answer.state.details.flow_run_id == created[0].id
    # A refused create is answered in place; the proposal for a run that does not exist is
    # refused too, and nothing else changes.
    bad = TaskRun(id=new_id(), name="x" * 201, task_key="t")
    created, answer = local.create_and_start([bad], State(StateType.RUNNING), 0.0)
    assert isinstance(created[0], ServiceError) and "task_run.name" in created[0].message
    assert isinstance(answer, ServiceError)


class _Statements:
    """The store's own connection, noting the statements it runs."""

    def __init__(self, conn):
        self._conn = conn
        self.seen: list[str] = []

    def execute(self, sql, params=()):
        self.seen.append(" ".join(sql.split()))
        return self._conn.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_runs_with_new_ids_are_created_without_looking_for_their_ids(apis, store):
    local, _ = apis
    flow_run = local.create_run(
        FlowRun(id="", name="f-run", flow_name="f", state=State(StateType.RUNNING))
    )
    recorded = store.conn = _Statements(store.conn)
    looks = "SELECT 1 FROM flow_runs WHERE id = ?"

    def start(task_run_id: str, new_ids: bool):
        run = TaskRun(id=task_run_id, name="t-0", task_key="t", flow_run_id=flow_run.id)
        return local.create_and_start([run], State(StateType.RUNNING), 0.0, new_ids=new_ids)

    created, answer = start(new_id(), True)
    assert isinstance(created[0], TaskRun) and not isinstance(answer, ServiceError)
    assert answer.status is SetStateStatus.ACCEPT
    assert not [sql for sql in recorded.seen if sql.startswith(looks)]
    # Without the promise, an id given is looked for, and a taken one refused.
    fresh, _ = start(new_id(), False)
    assert isinstance(fresh[0], TaskRun)
    assert [sql for sql in recorded.seen if sql.startswith(looks)]
    created, answer = start(created[0].id, False)
    assert isinstance(created[0], ServiceError)
    assert created[0].code == StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("state", "field"),
    [
        (State(StateType.RUNNING, name="n" * 201), "state.name"),
        (State(StateType.RUNNING, message="m" * 100_001), "state.message"),
        (State(StateType.RUNNING, details=StateDetails(cache_key="k" * 2_001)), "cache_key"),
        (State(StateType.RUNNING, details=StateDetails(run_input="{}")), "run_input"),
        (State(StateType.COMPLETED, data=ResultData(json="{nope")), "state.result.json"),
        (State(StateType.COMPLETED, data=ResultData(json="NaN")), "state.result.json"),
        (
            State(StateType.SCHEDULED, details=StateDetails(scheduled_time=datetime(2030, 1, 1))),
            "state.details.scheduled_time",
        ),
    ],
)
def test_a_bad_proposal_is_refused_and_changes_nothing(apis, state, field):
    local, remote = apis
    run = local.create_run(TaskRun(id="", name="t-0", task_key="t"))
    with pytest.raises(ServiceError) as refused:
        local.set_state(run.id, state)
    assert refused.value.code == StatusCode.INVALID_ARGUMENT
    assert field in refused.value.message
    if state.details.scheduled_time is None:  # a naive time cannot even be put in a message
        with pytest.raises(ServiceError) as over_the_wire:
            remote.SetState(wire.set_state_request(run.id, state))
        assert over_the_wire.value.message == refused.value.message
    assert local.get_run(run.id, RunKind.TASK_RUN).state is None


def test_bad_ids_leases_and_parameters_are_refused(apis):
    local, _ = apis
    with pytest.raises(ServiceError, match="run_id: 'nope' is not a UUID"):
        local.set_state("nope", State(StateType.RUNNING))
    run = local.create_run(TaskRun(id="", name="t-0", task_key="t"))
    with pytest.raises(ServiceError, match="lease_duration: must not be negative"):
        local.set_state(run.id, State(StateType.RUNNING), lease_seconds=-1.0)
    with pytest.raises(ServiceError, match=r"task_run.parameters.p\[1\]: is nan"):
        local.create_run(TaskRun(id="", name="", task_key="t", parameters={"p": [1, math.nan]}))
    with pytest.raises(ServiceError, match=r"task_run\.retry_policy\.retries"):
        local.create_run(TaskRun(id="", name="", task_key="t", retry_policy=RetryPolicy(-1)))
    # A value its message field could not hold is a TypeError, as building the message is.
    for policy in (RetryPolicy(True), RetryPolicy(1, ("2",)), RetryPolicy(1, (), None)):  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            local.create_run(TaskRun(id="", name="", task_key="t", retry_policy=policy))
    with pytest.raises(ServiceError, match=r"no task run has id") as unknown:
        local.get_run(run.id.replace(run.id[:8], "00000000"), RunKind.TASK_RUN)
    assert unknown.value.code == StatusCode.NOT_FOUND


def test_what_comes_back_is_the_callers_own(apis):
    local, _ = apis
    run = local.create_run(TaskRun(id="", name="t-0", task_key="t"))
    answer = local.set_state(run.id, State(StateType.RUNNING))
    again = local.get_run(run.id, RunKind.TASK_RUN)
    assert answer.state == again.state and answer.state is not again.state
    kept = local.orchestrator.get_run(run.id)  # the orchestrator's copy of its record
    assert kept.state is not answer.state


def test_the_in_process_calls_make_no_protobuf_message(apis, monkeypatch):
    from stateward.v1 import states_pb2

    made = []
    monkeypatch.setattr(states_pb2, "State", lambda *a, **k: made.append(1))
    monkeypatch.setattr(pb, "SetStateRequest", lambda *a, **k: made.append(1))
    local, _ = apis
    created, answer = local.create_and_start(
        [TaskRun(id=new_id(), name="t-0", task_key="t", state=State(StateType.PENDING))],
        State(StateType.RUNNING),
        30.0,
    )
    assert not isinstance(answer, ServiceError)
    assert local.set_state(created[0].id, State(StateType.COMPLETED)).accepted  # type: ignore[union-attr]
    assert made == []


def test_a_task_run_costs_two_commits_and_fifteen_statements(apis, store):
    """Created Pending and started in one transaction (its row inserted once), completed in a
    second: each commits before its call returns."""
    local, _ = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    local.set_state(flow_run.id, State(StateType.RUNNING))
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    run = TaskRun(
        id=new_id(), name="t-0", task_key="t", flow_run_id=flow_run.id,
        state=State(StateType.PENDING),
    )  # fmt: skip
    local.create_and_start([run], State(StateType.RUNNING), 30.0)
    first = len(statements)
    done = local.set_state(run.id, State(StateType.COMPLETED, data=ResultData(json="1")))
    store.conn.set_trace_callback(None)
    assert done.accepted
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE", "COMMIT",
    ]  # fmt: skip
    assert statements[first - 1] == "COMMIT"  # the start committed before its call returned
    assert len([s for s in statements if s.startswith("INSERT INTO task_runs")]) == 1
    assert len([s for s in statements if s.startswith("UPDATE task_runs")]) == 1
    assert len(statements) == 15, statements


def test_run_logs_written_in_process_are_stored_as_over_the_wire(apis):
    local, remote = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    task_run = local.create_run(TaskRun(id="", name="t-0", task_key="t", flow_run_id=flow_run.id))
    at = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    in_process = [
        LogEntry(flow_run.id, "", at, 20, "stateward.flow_runs", "flow line"),
        # A task run's line names its flow run when stored; any time zone is the same instant.
        LogEntry("", task_run.id, at.astimezone(timezone(timedelta(hours=2))), 30, "t", "é"),
    ]
    assert local.write_logs(in_process) == 2
    assert remote.WriteLogs(wire.write_logs_request(in_process)).written == 2
    listed = remote.ListLogs(pb.ListLogsRequest(run_id=flow_run.id))
    stored = [wire.log_entry_from_proto(entry) for entry in listed.entries]
    assert [(e.flow_run_id, e.task_run_id, e.timestamp, e.level, e.message) for e in stored] == [
        (flow_run.id, "", at, 20, "flow line"),
        (flow_run.id, task_run.id, at, 30, "é"),
    ] * 2


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (LogEntry("", "", datetime.now(UTC), 20, "l", "m"), "entries[0]: names no run"),
        (LogEntry("nope", "", datetime.now(UTC), 20, "l", "m"), "entries[0].flow_run_id"),
        (LogEntry("{run}", "", datetime.now(UTC), 101, "l", "m"), "entries[0].level"),
        (LogEntry("{run}", "", datetime.now(UTC), 20, "l" * 201, "m"), "entries[0].logger"),
        (LogEntry("{run}", "", datetime.now(UTC), 20, "l", "m" * 100_001), "entries[0].message"),
    ],
)
def test_a_bad_log_line_is_refused_as_over_the_wire_and_nothing_is_written(apis, entry, field):
    local, remote = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    if entry.flow_run_id == "{run}":
        entry = LogEntry(flow_run.id, "", entry.timestamp, entry.level, entry.logger, entry.message)
    good = LogEntry(flow_run.id, "", datetime.now(UTC), 20, "l", "kept out")
    with pytest.raises(ServiceError) as refused:
        local.write_logs([entry, good])
    assert refused.value.code == StatusCode.INVALID_ARGUMENT
    assert field in refused.value.message
    with pytest.raises(ServiceError) as over_the_wire:
        remote.WriteLogs(wire.write_logs_request([entry, good]))
    assert over_the_wire.value.message == refused.value.message
    assert not remote.ListLogs(pb.ListLogsRequest(run_id=flow_run.id)).entries


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"level": 20.5}, "entries[0].level"),
        ({"level": True}, "entries[0].level"),
        ({"level": "20"}, "entries[0].level"),
        ({"message": 5}, "entries[0].message"),
        ({"logger": None}, "entries[0].logger"),
    ],
)
def test_a_log_line_the_message_cannot_hold_is_refused_and_its_runs_logs_stay_readable(
    apis, changes, field
):
    """A line whose level is not a whole number, or whose text is not text, cannot be made
    into a WriteLogs request (TypeError): in process it is refused the same way, before
    anything is written. (A float level was stored, and from then on every ListLogs of its
    run failed, in process and over gRPC, on every server of the database.)"""
    local, remote = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    fields = {"flow_run_id": flow_run.id, "task_run_id": "", "timestamp": datetime.now(UTC)}
    fields |= {"level": 20, "logger": "l", "message": "m"} | changes
    entry = LogEntry(**fields)
    with pytest.raises(TypeError):
        wire.write_logs_request([entry])
    with pytest.raises(TypeError, match=re.escape(field)):
        local.write_logs([entry])
    assert not remote.ListLogs(pb.ListLogsRequest(run_id=flow_run.id)).entries


def test_a_log_lines_texts_are_taken_in_process_as_a_message_takes_them(apis):
    """A message's string field takes UTF-8 bytes as their text and refuses bytes that are
    not UTF-8: so does WriteLogs in process, by the rule its cache keys follow. (It refused
    any bytes with TypeError, where the message, and WriteCacheEntries in process, took
    them.)"""
    local, remote = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    now = datetime.now(UTC)
    line = LogEntry(flow_run.id.encode(), "", now, 20, b"a-logger", "caf\u00e9".encode())  # type: ignore[arg-type]
    request = wire.write_logs_request([line])  # the message takes it
    assert (request.entries[0].logger, request.entries[0].message) == ("a-logger", "caf\u00e9")
    assert local.write_logs([line]) == 1
    (stored,) = remote.ListLogs(pb.ListLogsRequest(run_id=flow_run.id)).entries
    assert (stored.flow_run_id, stored.logger, stored.message) == (
        flow_run.id,
        "a-logger",
        "caf\u00e9",
    )
    bad = LogEntry(flow_run.id, "", now, 20, "l", b"\xff")  # type: ignore[arg-type]
    with pytest.raises(UnicodeDecodeError):
        wire.write_logs_request([bad])
    with pytest.raises(UnicodeDecodeError):
        local.write_logs([line, bad])
    assert len(remote.ListLogs(pb.ListLogsRequest(run_id=flow_run.id)).entries) == 1


def test_a_log_line_of_an_unknown_run_or_without_a_time_zone_is_refused(apis):
    local, _ = apis
    flow_run = local.create_run(FlowRun(id="", name="f-run", flow_name="f"))
    with pytest.raises(ServiceError, match="no flow run has id") as unknown:
        local.write_logs([LogEntry(new_id(), "", datetime.now(UTC), 20, "l", "m")])
    assert unknown.value.code == StatusCode.NOT_FOUND
    naive = LogEntry(flow_run.id, "", datetime(2026, 1, 1), 20, "l", "m")
    with pytest.raises(ServiceError, match=r"entries\[0\]\.timestamp: has no time zone"):
        local.write_logs([naive])


def _completed(local) -> TaskRun:
    run = local.create_run(TaskRun(id="", name="t-0", task_key="t"))
    local.set_state(run.id, State(StateType.RUNNING))
    local.set_state(run.id, State(StateType.COMPLETED, data=ResultData(json="42")))
    return run


def _lookup(local, key: str) -> OrchestrationResult:
    """What a new task run proposing RUNNING with `key` is answered."""
    run = local.create_run(TaskRun(id="", name="t-1", task_key="t"))
    return local.set_state(run.id, State(StateType.RUNNING, details=StateDetails(cache_key=key)))


def test_cache_entries_written_in_process_serve_runs_with_their_key(apis):
    local, _ = apis
    run, later = _completed(local), datetime.now(UTC) + timedelta(hours=1)
    assert _lookup(local, "held").status is SetStateStatus.ACCEPT  # nothing under it yet
    entries = [CacheEntry(run.id, "held", later), CacheEntry(run.id, "gone", datetime.now(UTC))]
    assert local.write_cache_entries(entries) == 2
    hit = _lookup(local, "held")
    assert hit.status is SetStateStatus.REJECT and hit.state is not None
    assert hit.state.name == "Cached" and hit.state.data == ResultData(json="42")
    assert _lookup(local, "gone").status is SetStateStatus.ACCEPT  # expired


@pytest.mark.parametrize(
    ("problem", "code", "words"),
    [
        ("unknown run", StatusCode.NOT_FOUND, "no task run has id"),
        ("running run", StatusCode.FAILED_PRECONDITION, "not COMPLETED"),
        ("no key", StatusCode.INVALID_ARGUMENT, "entries[1].cache_key"),
        ("bad id", StatusCode.INVALID_ARGUMENT, "entries[1].task_run_id"),
        ("naive time", StatusCode.INVALID_ARGUMENT, "entries[1].cache_expiration: has no time"),
        ("too many", StatusCode.INVALID_ARGUMENT, "entries: has 1001; at most 1000 per call"),
    ],
)
def test_a_bad_cache_entry_is_refused_as_over_the_wire_and_nothing_is_written(
    apis, problem, code, words
):
    local, remote = apis
    good = _completed(local)
    bad = {
        "unknown run": CacheEntry(new_id(), "bad"),
        "running run": CacheEntry(local.create_run(TaskRun(id="", name="r", task_key="t")).id, "b"),
        "no key": CacheEntry(good.id, ""),
        "bad id": CacheEntry("not-a-uuid", "bad"),
        "naive time": CacheEntry(good.id, "bad", datetime(2030, 1, 1)),
        "too many": CacheEntry(good.id, "bad"),
    }[problem]
    if problem == "running run":
        local.set_state(bad.task_run_id, State(StateType.RUNNING))
    entries = [CacheEntry(good.id, "good"), *[bad] * (1000 if problem == "too many" else 1)]
    with pytest.raises(ServiceError) as refused:
        local.write_cache_entries(entries)
    assert refused.value.code == code and words in refused.value.message
    if problem != "naive time":  # a naive time cannot even be put in a message
        with pytest.raises(ServiceError) as over_the_wire:
            remote.WriteCacheEntries(wire.write_cache_entries_request(entries))
        assert over_the_wire.value.message == refused.value.message
    assert _lookup(local, "good").status is SetStateStatus.ACCEPT  # nothing was written


def test_a_cache_key_is_taken_in_process_as_a_message_takes_it(apis):
    """A message's string field takes UTF-8 bytes as their text and refuses other types: so
    does the in-process call (bytes stored as they came never matched a lookup's text)."""
    local, _ = apis
    run, later = _completed(local), datetime.now(UTC) + timedelta(hours=1)
    assert local.write_cache_entries([CacheEntry(run.id, b"as-bytes", later)]) == 1  # type: ignore[arg-type]
    assert _lookup(local, "as-bytes").status is SetStateStatus.REJECT  # a cache hit
    for bad, error in ((5, TypeError), (b"\xff", UnicodeDecodeError)):
        entries = [CacheEntry(run.id, "good", later), CacheEntry(run.id, bad, later)]  # type: ignore[arg-type]
        with pytest.raises(error):
            wire.write_cache_entries_request(entries)
        with pytest.raises(error):
            local.write_cache_entries(entries)
        assert _lookup(local, "good").status is SetStateStatus.ACCEPT  # nothing was written


def test_leases_renewed_in_process_are_those_of_running_runs(apis):
    local, remote = apis
    running = local.create_run(TaskRun(id="", name="t-0", task_key="t"))
    started = local.set_state(running.id, State(StateType.RUNNING), lease_seconds=5.0)
    idle = local.create_run(TaskRun(id="", name="t-1", task_key="t"))
    assert started.state is not None
    before = local.get_run(running.id, RunKind.TASK_RUN).lease_expires
    assert local.renew_leases([running.id, idle.id], 600.0) == [running.id]
    after = local.get_run(running.id, RunKind.TASK_RUN).lease_expires
    assert before is not None and after is not None and after - before > timedelta(minutes=9)
    for seconds, words in ((0.0, "above zero"), (-1.0, "must not be negative")):
        with pytest.raises(ServiceError, match=f"lease_duration: .*{words}") as refused:
            local.renew_leases([running.id], seconds)
        with pytest.raises(ServiceError) as over_the_wire:
            remote.RenewLeases(wire.renew_leases_request([running.id], seconds))
        assert over_the_wire.value.message == refused.value.message
    with pytest.raises(ServiceError, match=r"run_ids\[0\]: 'nope' is not a UUID"):
        local.renew_leases(["nope"], 5.0)
