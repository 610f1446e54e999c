"""The query plans of the hot statements, on both backends: every statement the store runs for
proposals, run lookups, histories, log replays, listings, limits, the cache, pauses and the loops'
sweeps reads an index, never the whole log or every run, so its cost is the rows it returns
however long the history grows. The statements are the ones the store really ran (recorded on
its connection), explained with their own parameters."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stateward.runs import RunKind
from stateward.states import State, StateDetails, StateType
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import RunFilter, Store
from stateward_service.store.pages import encode_page_token
from tests.support import PostgresDatabases

# The tables that grow with the history: a full read of any of them is what this test refuses.
HOT_TABLES = frozenset({"flow_runs", "task_runs", "states", "transitions", "run_logs", "cache"})
# A filter the statement leaves to an index (`unindexed` spells the others so no index serves).
_INDEXED_FILTER = re.compile(
    r"\b[rtb]\.(flow_name|task_key|state_type|flow_run_id|run_id|to_type) (?:=|IN\b|IS NULL)"
)
# Statements with no plan to check.
_NO_PLAN = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|NOTIFY|SET|SAVEPOINT|RELEASE)\b", re.I)


class RecordingConnection:
    """The store's own connection, noting each statement it runs with its parameters."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements: dict[str, tuple[Any, ...]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.statements.setdefault(sql, tuple(params))
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        rows = list(rows)
        if rows:
            self.statements.setdefault(sql, tuple(rows[0]))
        return self._conn.executemany(sql, rows)

    def send(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """PostgreSQL: a statement queued until the next one whose result is read."""
        self.statements.setdefault(sql, tuple(params))
        return self._conn.send(sql, params)

    def flush(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> Any:
        """PostgreSQL: the queued statements and these, sent in one message."""
        for sql, params in statements:
            self.statements.setdefault(sql, tuple(params))
        return self._conn.flush(statements)

    @property
    def queued(self) -> Any:
        """PostgreSQL: what waits to be sent (the store sets it around each transaction)."""
        return self._conn.queued

    @queued.setter
    def queued(self, value: Any) -> None:
        self._conn.queued = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _run(kind: RunKind, **fields: Any) -> RunRecord:
    defaults: dict[str, Any] = {"flow_name": "etl"} if kind is RunKind.FLOW_RUN else {}
    return RunRecord(
        kind=kind,
        id=str(uuid.uuid4()),
        name="a-run",
        created=datetime.now(UTC),
        **{**defaults, **fields},
    )


def exercise(store: Any) -> None:
    """Every hot path of the store once: the orchestrator's writes (proposals with the cache,
    tag limits, subflows, pauses, leases), then each read the API, the stream and the loops
    make, with each filter and a page token."""
    orchestrator = Orchestrator(store)
    try:
        orchestrator.create_limit("gpu", 2)
        flow = orchestrator.create_run(_run(RunKind.FLOW_RUN), State(StateType.PENDING))
        orchestrator.set_state(flow.id, State(StateType.RUNNING), lease_seconds=30)
        cached = StateDetails(cache_key="k", cache_expiration=datetime.now(UTC) + timedelta(1))
        tasks = []
        for _ in range(2):
            task = orchestrator.create_run(
                _run(RunKind.TASK_RUN, task_key="load", flow_run_id=flow.id, tags=("gpu",)),
                State(StateType.PENDING),
            )
            orchestrator.set_state(task.id, State(StateType.RUNNING, details=cached))
            orchestrator.set_state(task.id, State(StateType.COMPLETED, details=cached))
            tasks.append(task)
        orchestrator.renew_leases([flow.id], 30)
        orchestrator.crash_if_lease_lapsed(
            flow.id, State(StateType.CRASHED), datetime.now(UTC) - timedelta(days=1)
        )
        parent_task = orchestrator.create_run(
            _run(RunKind.TASK_RUN, task_key="sub", flow_run_id=flow.id), None
        )
        sub = orchestrator.create_run(
            _run(RunKind.FLOW_RUN, parent_task_run_id=parent_task.id), State(StateType.PENDING)
        )
        orchestrator.set_state(sub.id, State(StateType.RUNNING))
        schema = json.dumps({"type": "integer"})
        orchestrator.set_state(
            sub.id,
            State(StateType.PAUSED, details=StateDetails(pause_key="p", run_input_schema=schema)),
        )
        orchestrator.resume_flow_run(sub.id, "3")
        orchestrator.set_state(flow.id, State(StateType.CANCELLED), force=True)
        orchestrator.write_logs([])
        orchestrator.prune_log(1_000_000)
        orchestrator.prune_run_logs(1_000_000)
        orchestrator.release_stale_slots()
        orchestrator.delete_limit("gpu")
    finally:
        orchestrator._reader.close()  # the store itself is the caller's

    # The reads, on the store's own connection (the orchestrator makes them on snapshots).
    for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
        store.get_run(flow.id, kind)
    store.run_exists(sub.id)
    types = (int(StateType.COMPLETED), int(StateType.FAILED))
    for kind, name in ((RunKind.FLOW_RUN, "etl"), (RunKind.TASK_RUN, "load")):
        for where in (
            RunFilter(),
            RunFilter(names=(name,)),
            RunFilter(names=(name, "other")),
            RunFilter(state_types=types[:1]),
            RunFilter(state_types=types),
            RunFilter(names=(name,), state_types=types),
            RunFilter(state_types=types, tags=("gpu",)),
            RunFilter(ids=(flow.id, tasks[0].id)),
            RunFilter(flow_run_ids=(flow.id,)),
            RunFilter(flow_run_ids=(flow.id, sub.id), names=(name,)),
        ):
            store.list_runs(kind, where, 1, "")
            token = encode_page_token(1_000, int(kind), where.fingerprint())
            store.list_runs(kind, where, 1, token)
    store.page_of_states(tasks[0].id, 1, "")
    store.list_states(tasks[0].id)
    store.last_sequence()
    # The log's index by new state's type holds none of Pending, Running and Completed.
    rare = (int(StateType.FAILED), int(StateType.CRASHED))
    for run_ids, flow_run_ids, state_types in (
        ((), (), ()),
        ((), (), rare[:1]),
        ((), (), rare),
        ((tasks[0].id,), (), rare),
        ((), (flow.id, sub.id), rare),
        ((tasks[0].id,), (), ()),
        ((tasks[0].id, tasks[1].id), (), types),
        ((), (flow.id,), ()),
        ((), (flow.id, sub.id), types),
        ((), (), types[:1]),
        ((), (), types),
    ):
        store.read_log(0, 500, run_ids, flow_run_ids, state_types)
        store.read_log(3, 500, run_ids, flow_run_ids, state_types)
    store.read_log(0, 0)  # the cursor check
    for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
        for state_type in (StateType.SCHEDULED, StateType.PAUSED, StateType.CANCELLING):
            store.runs_in_state(kind, state_type)
    store.runs_in_state(RunKind.FLOW_RUN, StateType.SCHEDULED, "Scheduled")
    store.unfinished_children(flow.id)
    store.flow_runs_cancelled_with_unfinished_children()
    store.runs_with_lapsed_lease(datetime.now(UTC))
    store.get_limits()
    store.list_logs(RunKind.FLOW_RUN, flow.id, 0, 10)
    store.list_logs(RunKind.TASK_RUN, tasks[0].id, 0, 10)
    for kind, run_id in ((RunKind.FLOW_RUN, flow.id), (RunKind.TASK_RUN, tasks[0].id)):
        store.list_logs_before(kind, run_id, 0, 10)
        store.list_logs_before(kind, run_id, 5, 10)
    store.cached_state("k", datetime.now(UTC))


# --- SQLite: EXPLAIN QUERY PLAN -------------------------------------------------------------------

# What a plan may scan: no table that grows with the history (subqueries, json_each, the limits).
_SQLITE_SCANNABLE = re.compile(
    r"^SCAN (CONSTANT ROW|p\d+|m|json_each.*|l|concurrency_limits|concurrency_slots"
    r"|sqlite_sequence|schema_version)( |$)"
)


def sqlite_plan_problems(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
    """What in the plan of `sql` reads more than its rows: a scan of a table that grows with
    the history, a sort of everything that matched to return the first few, or a filter left
    to an index that no index reads (the log read by sequence alone, say). A listing may
    walk its table in the listing's own order (its LIMIT ends the walk: a tag filter, which no
    index serves, reads until the page is full); a listing by ids sorts only the runs asked
    for, and a merge of limited reads only what they read."""
    lines = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    searched = " ".join(line for line in lines if line.startswith("SEARCH"))
    listing = "ORDER BY r.rowid DESC LIMIT" in " ".join(sql.split())
    bounded_sort = "UNION ALL" in sql or "r.id IN (" in sql
    problems = []
    for line in lines:
        walk_in_order = (
            listing and line == "SCAN r" and not any("TEMP B-TREE FOR ORDER BY" in x for x in lines)
        )
        if line.startswith("SCAN ") and not _SQLITE_SCANNABLE.match(line) and not walk_in_order:
            problems.append(line)
        if line == "USE TEMP B-TREE FOR ORDER BY" and not bounded_sort:
            problems.append(line)
    for column in set(_INDEXED_FILTER.findall(sql)):
        if f"({column}=" not in searched:
            problems.append(f"no index read by {column}")
    return problems


@pytest.fixture
def sqlite_store(tmp_path: Any) -> Iterator[Store]:
    store = Store(tmp_path / "plans.db")
    try:
        yield store
    finally:
        store.close()


def test_each_hot_statement_reads_an_index_on_sqlite(sqlite_store: Store) -> None:
    raw, writes = sqlite_store.conn, sqlite_store.writes
    recording = RecordingConnection(raw)
    # The writer's own cursor too: the INSERTs and UPDATEs of a write go through it.
    sqlite_store.conn = recording  # type: ignore[assignment]
    sqlite_store.writes = RecordingConnection(writes)  # type: ignore[assignment]
    sqlite_store.writes.statements = recording.statements
    exercise(sqlite_store)
    sqlite_store.conn, sqlite_store.writes = raw, writes
    checked = _check(recording.statements, lambda sql, p: sqlite_plan_problems(raw, sql, p))
    assert checked > 40, f"only {checked} statements ran: the workload missed the hot paths"


def test_the_log_bounds_of_a_replay_read_two_rows_not_the_log(sqlite_store: Store) -> None:
    """The statement issue 16 found: `min(sequence), max(sequence)` in one SELECT, which SQLite
    answers by reading every transition."""
    raw = sqlite_store.conn
    whole = "SELECT coalesce(min(sequence), 0), coalesce(max(sequence), 0) FROM transitions"
    assert [line.split(" USING")[0] for line in sqlite_plan_problems(raw, whole, ())] == [
        "SCAN transitions"
    ]
    recording = RecordingConnection(raw)
    sqlite_store.conn = recording  # type: ignore[assignment]
    sqlite_store.read_log(0, 500)
    sqlite_store.conn = raw
    (bounds,) = [sql for sql in recording.statements if "min(sequence)" in sql]
    assert sqlite_plan_problems(raw, bounds, ()) == []


def _check(
    statements: dict[str, tuple[Any, ...]], problems_of: Callable[[str, Sequence[Any]], list[str]]
) -> int:
    failures = []
    checked = 0
    for sql, params in statements.items():
        if _NO_PLAN.match(sql):
            continue
        checked += 1
        problems = problems_of(sql, params)
        if problems:
            failures.append(f"{' '.join(sql.split())[:300]}\n    -> {problems}")
    assert not failures, "statements that read more than their rows:\n" + "\n".join(failures)
    return checked


# --- PostgreSQL: EXPLAIN on tables with enough rows that the planner means it ------------------


def postgres_plan_problems(conn: Any, sql: str, params: Sequence[Any]) -> list[str]:
    """As `sqlite_plan_problems`, for a JSON plan made with sorts and sequential scans off (so
    each appears only where no index serves): a sequential scan of a growing table, an index
    read whole (no condition) other than a listing's walk in its order under its LIMIT, or a
    sort by the log's or a listing's order (a listing by ids sorts only the runs asked for), or
    a filter left to an index that no index condition reads."""
    (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
    problems: list[str] = []
    conditions: list[str] = []

    def walk(node: dict[str, Any], limited: bool) -> None:
        kind = node["Node Type"]
        conditions.extend(node.get(key, "") for key in ("Index Cond", "Recheck Cond"))
        relation = node.get("Relation Name", "")
        if relation in HOT_TABLES:
            if kind == "Seq Scan":
                problems.append(f"Seq Scan on {relation}")
            elif (
                kind in ("Index Scan", "Index Only Scan")
                and "Index Cond" not in node
                and not limited
            ):
                problems.append(f"{kind} of all of {relation} ({node['Index Name']})")
        if kind == "Sort" and "r.id IN (" not in sql:
            keys = " ".join(node.get("Sort Key", []))
            if "position" in keys or "sequence" in keys:
                problems.append(f"Sort by {keys}")
        if kind == "Limit":
            limited = True
        elif kind in ("Sort", "Hash", "Aggregate", "HashAggregate", "Materialize"):
            limited = False
        for child in node.get("Plans", []):
            walk(child, limited)

    walk(plan["Plan"], False)
    searched = " ".join(conditions)
    for column in set(_INDEXED_FILTER.findall(sql)):
        if f"({column} " not in searched:
            problems.append(f"no index read by {column}")
    return problems


# Rows enough that the planner's choices are the ones a real database gets: most runs finished
# (CRASHED: a state no statement here filters on), one in 500 in each other state.
_BULK = """
INSERT INTO flow_runs (id, name, flow_name, created, state_id, state_type, state_name)
    SELECT 'f' || n, 'bulk', 'flow' || (n % 50), n, 's' || n, $TYPE, 'x'
    FROM generate_series(1, 20000) n;
INSERT INTO task_runs (id, name, task_key, flow_run_id, created, state_id, state_type, state_name)
    SELECT 't' || n, 'bulk', 'task' || (n % 50), 'f' || (n % 20000), n, 's' || n, $TYPE, 'x'
    FROM generate_series(1, 40000) n;
INSERT INTO states (id, run_id, type, name, timestamp, message, details)
    SELECT 's' || n, 't' || (n % 40000), 1 + n % 9, 'x', n, '', '{}'
    FROM generate_series(1, 60000) n;
INSERT INTO transitions (sequence, run_kind, run_id, flow_run_id, to_state_id, to_type)
    SELECT 1000000 + n, 2, 't' || (n % 40000), 'f' || (n % 20000), 's' || n, 1 + n % 9
    FROM generate_series(1, 60000) n;
INSERT INTO run_logs (flow_run_id, task_run_id, timestamp, level, logger, message)
    SELECT 'f' || (n % 20000), 't' || (n % 40000), n, 20, 'l', 'm'
    FROM generate_series(1, 20000) n;
INSERT INTO cache (key, state_id, created) SELECT 'c' || n, 's' || n, n
    FROM generate_series(1, 20000) n;
""".replace("$TYPE", "CASE WHEN n % 500 = 0 THEN 1 + (n / 500) % 9 ELSE 9 END")


@pytest.mark.required_in_ci
def test_each_hot_statement_reads_an_index_on_postgres(
    postgres_databases: PostgresDatabases,
) -> None:
    from stateward_service.store.postgres.store import PostgresStore

    store = PostgresStore(postgres_databases.create())
    try:
        raw = store.conn
        for statement in _BULK.split(";"):
            if statement.strip():
                raw.connection().execute(statement.encode())
        raw.execute("ANALYZE")
        recording = RecordingConnection(raw)
        store.conn = recording  # type: ignore[assignment]
        exercise(store)
        store.conn = raw
        # A table scan only where no index serves, a sort only where no index gives the order.
        raw.execute("SET enable_seqscan = off")
        raw.execute("SET enable_sort = off")
        checked = _check(recording.statements, lambda sql, p: postgres_plan_problems(raw, sql, p))
        assert checked > 40, f"only {checked} statements ran: the workload missed the hot paths"
    finally:
        store.close()
