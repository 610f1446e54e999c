"""The SQLite store on real files: migrations, atomic writes, several connections on one file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stateward.runs import LogEntry, RunKind, SetStateStatus, Transition
from stateward.states import ResultData, State, StateDetails, StateType
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import (
    SCHEMA_VERSION,
    DatabaseRefused,
    RunFilter,
    SchemaTooNew,
    Store,
    WouldWait,
    migrate,
    open_database,
)
from stateward_service.store.sqlite.reader import StoreReader
from stateward_service.store.sqlite.store import (
    _CHECKPOINT_FRAMES,
    _CHECKPOINT_LONGEST_SECONDS,
    _CheckpointPace,
)
from tests.support import wait_until, write_lock_held


def flow_run(**fields) -> RunRecord:
    return RunRecord(
        kind=RunKind.FLOW_RUN,
        id=str(uuid.uuid4()),
        name="a-run",
        created=datetime.now(UTC),
        flow_name="f",
        **fields,
    )


def test_a_new_database_gets_the_current_schema(tmp_path):
    store = Store(tmp_path / "new.db")
    assert store.found_schema_version == 0
    version = store.conn.execute("SELECT version FROM schema_version").fetchone()[0]
    assert version == SCHEMA_VERSION
    assert {"flow_runs", "task_runs", "states", "transitions", "cache"} <= table_names(store.conn)
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_an_older_database_is_upgraded_and_keeps_its_data(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=1)
    db.execute(
        "INSERT INTO flow_runs (id, name, flow_name, created, state_type)"
        " VALUES ('r1', 'old', 'f', 0, 3)"
    )
    db.close()

    store = Store(path)
    assert store.found_schema_version == 1
    assert store.conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    run = store.get_run("r1")
    assert run is not None and run.name == "old"
    assert run.pause_keys == frozenset() and run.lease_expires is None  # added by migration 2
    assert "concurrency_limits" in table_names(store.conn)
    store.close()


def test_a_database_made_today_has_the_schema_of_those_made_before(tmp_path):
    # SQLite keeps each table's definition as text: a new database made by the migrations, and
    # one brought up to the same version from an older one, hold the very text the databases
    # made so far hold (written by sqlite_utils, before the migrations were plain SQL).
    made_before = json.loads((Path(__file__).parent / "sqlite_schema_v4.json").read_text())
    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    assert migrate(fresh, target=4) == 0
    upgraded = sqlite3.connect(tmp_path / "upgraded.db", isolation_level=None)
    migrate(upgraded, target=1)
    assert migrate(upgraded, target=4) == 1
    for db in (fresh, upgraded):
        rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
        assert [list(row) for row in rows] == made_before
        db.close()


def test_every_version_is_upgraded_to_the_schema_a_new_database_gets(tmp_path):
    def schema(db: sqlite3.Connection) -> list[list[object]]:
        rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
        return [list(row) for row in rows]

    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    migrate(fresh)
    expected = schema(fresh)
    fresh.close()
    assert "AUTOINCREMENT" not in next(row[3] for row in expected if row[1] == "transitions")
    for version in range(1, SCHEMA_VERSION):
        upgraded = sqlite3.connect(tmp_path / f"from-{version}.db", isolation_level=None)
        migrate(upgraded, target=version)
        assert migrate(upgraded) == version
        assert schema(upgraded) == expected, f"upgraded from version {version}"
        upgraded.close()


def _database_of_version_4(path: Path, source: Path) -> None:
    """A database as Stateward made it at schema version 4 (its log numbered by
    AUTOINCREMENT), holding the rows of `source`: runs, states, a log whose oldest entries
    were pruned, run logs and cache entries."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    migrate(db, target=4)
    db.execute("ATTACH DATABASE ? AS source", (str(source),))
    db.execute("BEGIN")
    for table in ("flow_runs", "task_runs", "states", "transitions", "run_logs", "cache"):
        columns = _V4_COLUMNS.get(table, "*")
        db.execute(f"INSERT INTO main.{table} SELECT {columns} FROM source.{table} ORDER BY rowid")
    db.execute("DELETE FROM transitions WHERE sequence <= 3")  # as its log pruning did
    db.execute("COMMIT")
    db.execute("DETACH DATABASE source")
    assert db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transitions'").fetchone()
    db.close()


# The columns of the tables that migrations since version 4 gave more: the states (9: each its
# transition's sequence) and the cache (10: its state's).
_V4_COLUMNS = {
    "states": "id, run_id, type, name, timestamp, message, details, result_json, result_pickle",
    "cache": "key, state_id, expiration, created",
}


def _tables(path: Path) -> dict[str, Any]:
    """Every row of every table (the states' columns as they were at version 4)."""
    db = sqlite3.connect(path)
    tables = [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name != 'schema_version' ORDER BY name"
        )
    ]
    found: dict[str, Any] = {
        table: db.execute(
            f"SELECT {_V4_COLUMNS.get(table, '*')} FROM {table} ORDER BY rowid"
        ).fetchall()
        for table in tables
    }
    db.close()
    return found


def _reads(path: Path, after: int) -> dict[str, Any]:
    """What the store's reads return: the log after `after` (all of it, and each run's),
    the runs, their states (whole and page by page) and their lines."""
    found: dict[str, Any] = {}
    reader = StoreReader(path)
    with reader.snapshot() as snapshot:
        found["log"] = snapshot.read_log(after, 10_000)[0]
        found["last sequence"] = snapshot.last_sequence()
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            runs, _ = snapshot.list_runs(kind, RunFilter(), 1_000, "")
            found[f"runs {kind.name}"] = runs
            for run in runs:
                found[f"log {run.id}"] = snapshot.read_log(after, 10_000, run_ids=[run.id])[0]
                found[f"states {run.id}"] = snapshot.list_states(run.id)
                pages, token = [], ""
                while True:
                    states, token = snapshot.page_of_states(run.id, 1, token)
                    pages.extend(states)
                    if not token:
                        break
                found[f"pages of states {run.id}"] = pages
                found[f"lines {run.id}"] = snapshot.list_logs(kind, run.id, 0, 1_000)
    reader.close()
    store = Store(path)  # the cache is read on the writing connection
    for number in range(3):
        found[f"cached {number}"] = store.cached_state(f"key-{number}", datetime.now(UTC))
    store.close()
    return found


_OPEN_AND_LOG = """
import sys, uuid
from datetime import UTC, datetime, timedelta
from stateward.runs import RunKind
from stateward.states import State, StateType
from stateward_service.model import RunRecord
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import Store
print("opening", flush=True)
store = Store(sys.argv[1])
orchestrator = Orchestrator(store)
published = []
orchestrator.subscribe(published.extend)
run = RunRecord(kind=RunKind.FLOW_RUN, id=str(uuid.uuid4()), name="later",
                created=datetime.now(UTC), flow_name="f")
orchestrator.create_run(run, State(StateType.PENDING))
print(store.found_schema_version, published[-1].sequence, flush=True)
orchestrator.close()
"""


def test_a_database_of_version_4_is_upgraded_in_place_and_reads_back_as_it_was(tmp_path):
    source = tmp_path / "source.db"
    store = Store(source)
    orchestrator = Orchestrator(store)
    flow = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    orchestrator.set_state(flow.id, State(StateType.RUNNING))
    for number in range(3):
        task = orchestrator.create_run(
            RunRecord(
                kind=RunKind.TASK_RUN,
                id=str(uuid.uuid4()),
                name=f"load-{number}",
                created=datetime.now(UTC),
                task_key="load",
                flow_run_id=flow.id,
            ),
            State(StateType.RUNNING),
        )
        orchestrator.set_state(task.id, State(StateType.COMPLETED))
        orchestrator.write_cache_entries([(task.id, f"key-{number}", None)])
        orchestrator.write_logs(
            [LogEntry(flow.id, task.id, datetime.now(UTC), 20, "task", f"line {number}")]
        )
    orchestrator.set_state(flow.id, State(StateType.COMPLETED))
    orchestrator.close()
    path = tmp_path / "made-by-version-4.db"
    _database_of_version_4(path, source)
    before = _tables(path)
    # It reads as the database it was made from, but for the log's three pruned transitions.
    expected = _reads(source, after=3)
    newest = expected["last sequence"]
    assert isinstance(newest, int) and newest > 3
    assert len(expected["log"]) == newest - 3
    assert all(expected[f"cached {number}"] is not None for number in range(3))

    # Two processes open it at once, both waiting for a third's write lock for longer than a
    # write would wait (it may be a process upgrading a large file): one upgrades it, the
    # other finds it upgraded; each logs a transition after the newest it held.
    with write_lock_held(path) as release:
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AND_LOG, str(path)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            for _ in range(2)
        ]
        for opener in openers:
            assert opener.stdout is not None
            assert opener.stdout.readline().strip() == "opening"
        with pytest.raises(subprocess.TimeoutExpired):  # a write gives up after 5 seconds
            openers[0].wait(timeout=7)
        release()
    answers = []
    for opener in openers:
        out, _ = opener.communicate(timeout=60)
        assert opener.returncode == 0
        answers.append(tuple(int(x) for x in out.split()))
    assert sorted(version for version, _ in answers) == [4, SCHEMA_VERSION]
    assert sorted(sequence for _, sequence in answers) == [newest + 1, newest + 2]

    # What was there reads back as it was; the two new runs come on top of it.
    tables = _tables(path)
    for key, value in before.items():
        if key in ("flow_runs", "states", "transitions"):
            assert tables[key][: len(value)] == value
        else:
            assert tables[key] == value, key
    after = _reads(path, after=3)
    assert after["last sequence"] == newest + 2
    for key, value in expected.items():
        if key == "log":
            assert after[key][: len(value)] == value
        elif key == "runs FLOW_RUN":
            assert after[key][2:] == value  # newest first
        elif key != "last sequence":
            assert after[key] == value, key
    reader = StoreReader(path)
    with reader.snapshot() as snapshot:
        assert snapshot.read_log(0, 10_000)[1] == 4  # the oldest the log holds
    reader.close()
    # Migration 9: each logged state carries its transition's sequence; the three whose
    # transitions were pruned come first, below zero, in the order they were written.
    db = sqlite3.connect(path)
    linked = db.execute(
        "SELECT count(*) FROM states s JOIN transitions t ON t.sequence = s.sequence"
        " WHERE t.to_state_id = s.id"
    ).fetchone()[0]
    assert linked == db.execute("SELECT count(*) FROM transitions").fetchone()[0] == newest - 1
    unlogged = db.execute("SELECT id, sequence FROM states WHERE sequence < 0 ORDER BY sequence")
    assert [row[0] for row in unlogged] == [row[0] for row in before["states"][:3]]
    # Migration 10: each cache entry holds its state's sequence.
    cached = db.execute(
        "SELECT count(*) FROM cache c JOIN states s ON s.sequence = c.state_sequence"
        " WHERE s.id = c.state_id"
    ).fetchone()[0]
    assert cached == len(before["cache"]) == 3
    db.close()


def test_a_database_in_a_folder_named_with_uri_characters_is_read_back(tmp_path):
    """The reader opens the file read-only through a SQLite URI, in which `#` starts a fragment,
    `?` the options and `%` an escape: a folder such as `c#` (or a STATEWARD_HOME there) made the
    reader open another file, `c` beside it, created empty and read and written as the database
    (no tables: every read failed), its `mode=ro` lost with the fragment."""
    folder = tmp_path / "c# 1?x=%41"
    folder.mkdir()
    path = folder / "shared.db"
    orchestrator = Orchestrator(open_database(path))
    run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    orchestrator.set_state(run.id, State(StateType.RUNNING))
    written = orchestrator.list_states(run.id)
    orchestrator.close()
    reader = StoreReader(path)
    with reader.snapshot() as snapshot:
        assert snapshot.list_states(run.id) == written
        assert snapshot.get_run(run.id) is not None
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no file made beside


def test_a_log_pruned_to_nothing_before_version_5_goes_on_from_its_last_sequence(tmp_path):
    path = tmp_path / "pruned.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=4)
    for _ in range(7):
        db.execute(
            "INSERT INTO transitions (run_kind, run_id, flow_run_id, to_state_id, to_type)"
            " VALUES (1, 'r', 'r', 's', 2)"
        )
    db.execute("DELETE FROM transitions")  # an older Stateward pruned its log to nothing
    db.close()
    store = Store(path)
    assert store.last_sequence() == 7
    orchestrator = Orchestrator(store)
    published: list[Transition] = []
    orchestrator.subscribe(published.extend)
    run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    assert published[-1].sequence == 8
    assert [t.sequence for t in store.read_log(0, 100)[0]] == [8]  # the placeholder is no entry
    assert [t.run_id for t in store.read_log(0, 100, run_ids=[run.id])[0]] == [run.id]
    assert orchestrator.prune_log(1) == 1  # the placeholder goes as the oldest
    orchestrator.close()


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_opening_a_current_database_takes_no_write_lock(tmp_path):
    """Only an upgrade waits for another process's write lock (for as long as an upgrade may
    take): a database already current opens while another process holds the lock."""
    path = tmp_path / "current.db"
    Store(path).close()
    opened: list[Store] = []
    with write_lock_held(path):
        opener = threading.Thread(target=lambda: opened.append(Store(path)))
        opener.start()
        opener.join(timeout=4)  # a write would wait 5 s for the lock, an upgrade 10 minutes
        assert not opener.is_alive() and len(opened) == 1
    assert opened[0].found_schema_version == SCHEMA_VERSION
    opened[0].close()


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "future.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(DatabaseRefused, match="newer than this Stateward"):
        Store(path)


def test_a_newer_postgres_database_is_refused(postgres_databases):
    url = postgres_databases.create()
    open_database(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(SchemaTooNew, match="newer than this Stateward"):
        open_database(url)


def test_orchestrators_on_two_connections_decide_against_what_the_other_wrote(database):
    one, other = Orchestrator(open_database(database)), Orchestrator(open_database(database))
    run = one.create_run(flow_run(), State(StateType.PENDING))
    pending = other.get_run(run.id).state  # now in the second orchestrator's cache
    assert pending is not None and pending.type is StateType.PENDING
    one.set_state(run.id, State(StateType.RUNNING))
    assert other.get_run(run.id).state.type is StateType.RUNNING
    # A compare-and-set against the state it saw first loses to the other's write.
    outcome = other.set_state(run.id, State(StateType.COMPLETED), expected_state_id=pending.id)
    assert outcome.status is SetStateStatus.ABORT and outcome.state.type is StateType.RUNNING
    # And the sequence of each write follows the other's, in commit order.
    assert other.set_state(run.id, State(StateType.COMPLETED)).written
    assert one.get_run(run.id).state.type is StateType.COMPLETED
    logged, _, newest = one.read_log(0, 10)
    assert [t.sequence for t in logged] == [1, 2, 3] and newest == 3
    one.close()
    other.close()


def test_a_replay_filtered_by_state_type_reads_each_type_with_or_without_its_index(database):
    """The log's index by new state's type leaves out Pending, Running and Completed (the
    types every run that runs goes through): a filter on them reads the log in order, one on
    the other types that index; either way the answer is every matching transition after the
    cursor, oldest first, at most the limit."""
    orchestrator = Orchestrator(open_database(database))
    ends = [StateType.COMPLETED, StateType.FAILED, StateType.COMPLETED, StateType.CRASHED]
    runs = []
    for end in ends:
        run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
        orchestrator.set_state(run.id, State(StateType.RUNNING))
        orchestrator.set_state(run.id, State(end), force=True)
        runs.append(run)
    everything, _, _ = orchestrator.read_log(0, 100)

    def expected(types, after=0, run_ids=()):
        return [
            t.sequence
            for t in everything
            if t.to_state.type in types
            and t.sequence > after
            and (not run_ids or t.run_id in run_ids)
        ]

    for types in (
        (StateType.RUNNING,),
        (StateType.COMPLETED,),
        (StateType.PENDING, StateType.FAILED),
        (StateType.FAILED,),
        (StateType.FAILED, StateType.CRASHED),
    ):
        wanted = [int(t) for t in types]
        for after in (0, 5):
            logged, _, _ = orchestrator.read_log(after, 100, state_types=wanted)
            assert [t.sequence for t in logged] == expected(types, after), (types, after)
        first, _, _ = orchestrator.read_log(0, 1, state_types=wanted)
        assert [t.sequence for t in first] == expected(types)[:1]
        some = [runs[1].id, runs[3].id]
        logged, _, _ = orchestrator.read_log(0, 100, run_ids=some, state_types=wanted)
        assert [t.sequence for t in logged] == expected(types, run_ids=some)
    orchestrator.close()


def test_task_runs_listed_by_state_type_with_or_without_its_index(database):
    """The task runs' index by state type leaves out Completed: a listing of Completed task
    runs walks them newest first, one of the other types reads that index; either way the
    pages hold every matching task run once, newest first, and the sweeps by state find theirs."""
    orchestrator = Orchestrator(open_database(database))
    parent = flow_run()
    orchestrator.create_run(parent, State(StateType.RUNNING))
    ends = [StateType.COMPLETED, StateType.FAILED, StateType.RUNNING, StateType.COMPLETED]
    ends += [StateType.PAUSED, StateType.COMPLETED, StateType.CRASHED]
    ids = []
    for index, end in enumerate(ends):
        run = RunRecord(
            kind=RunKind.TASK_RUN,
            id=str(uuid.uuid4()),
            name=f"task-{index}",
            created=datetime.now(UTC),
            flow_run_id=parent.id,
            task_key="step",
        )
        orchestrator.create_run(run, State(StateType.PENDING))
        lease = 30.0 if end is StateType.RUNNING else 0.0
        orchestrator.set_state(run.id, State(end), force=True, lease_seconds=lease)
        ids.append(run.id)
    newest_first = list(reversed(list(zip(ids, ends, strict=True))))
    for types in (
        (StateType.COMPLETED,),
        (StateType.FAILED,),
        (StateType.COMPLETED, StateType.FAILED),
        (StateType.FAILED, StateType.CRASHED, StateType.RUNNING),
    ):
        wanted = [run_id for run_id, end in newest_first if end in types]
        for where in (
            RunFilter(state_types=tuple(int(t) for t in types)),
            RunFilter(state_types=tuple(int(t) for t in types), names=("step",)),
        ):
            found, token = [], ""
            while True:
                runs, token = orchestrator.list_runs(RunKind.TASK_RUN, where, 1, token)
                found.extend(run.id for run in runs)
                if not token:
                    break
            assert found == wanted, (types, where)
    paused = orchestrator.runs_in_state(RunKind.TASK_RUN, StateType.PAUSED)
    assert [run_id for run_id, _ in paused] == [ids[4]]
    lapsed = orchestrator.runs_with_lapsed_lease(datetime.now(UTC) + timedelta(hours=1))
    assert [run_id for kind, run_id in lapsed if kind is RunKind.TASK_RUN] == [ids[2]]
    orchestrator.close()


def test_one_leader_at_a_time_and_the_next_takes_over(database):
    first, second = open_database(database), open_database(database)
    leader, follower = first.leader_lock(), second.leader_lock()
    assert leader.try_acquire() and leader.held()
    assert not follower.try_acquire()
    leader.release()
    assert follower.try_acquire() and not leader.try_acquire()
    follower.release()
    first.close()
    second.close()


def test_groups_on_the_loop_set_the_busy_timeout_once_and_a_waiting_write_still_waits(tmp_path):
    """A group that must not wait (on the event loop) begins with the busy timeout at 0, and
    leaves it there for the next one: one PRAGMA for a run of groups, not two a group. A write
    that may wait sets it back as it begins, so it still waits for another process's lock."""
    database = tmp_path / "busy.db"
    store = Store(database)
    orchestrator = Orchestrator(store)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)

    def create() -> RunRecord:
        return orchestrator.create_run(flow_run(), State(StateType.PENDING))

    for _ in range(3):
        (created,) = orchestrator.together([create], wait=False)
        assert isinstance(created, RunRecord)
    assert [s for s in statements if "busy_timeout" in s] == ["PRAGMA busy_timeout=0"]
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        with pytest.raises(WouldWait):
            orchestrator.together([create], wait=False)
        releasing = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        releasing.start()
        run = create()  # waits for the lock (it used to, and still does), then commits
        releasing.join()
        assert statements[-1] == "COMMIT"
        assert "PRAGMA busy_timeout=5000" in statements
        assert store.get_run(run.id) is not None
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        orchestrator.close()


def test_the_change_signal_wakes_for_another_connections_commit(database):
    store = open_database(database)
    writer = Orchestrator(open_database(database))  # closed with its readers (a pool)
    signal = store.change_signal()
    try:
        signal.wait(0.001, lambda: 0)  # a first wait may say True (a fresh connection)
        assert not signal.wait(0.01, lambda: 0)
        writer.create_run(flow_run(), State(StateType.PENDING))  # logs #1
        assert signal.wait(2.0, lambda: 0)
        assert not signal.wait(0.01, lambda: 1)
        # A commit of a sequence the caller has (its own process's, published without a read)
        # does not wake it.
        writer.create_run(flow_run(), State(StateType.PENDING))  # logs #2
        assert not signal.wait(0.5, lambda: 2)
        writer.create_run(flow_run(), State(StateType.PENDING))  # logs #3
        assert signal.wait(2.0, lambda: 2)
    finally:
        signal.close()
        store.close()
        writer.close()


def test_the_sqlite_change_signal_asks_what_the_caller_has_when_its_wait_ends(tmp_path):
    """A follower publishes its own process's commits while it waits: `seen` is read after the
    wait, so a commit published meanwhile does not make it read the log (it used to, on nearly
    every wait of a busy process). (PostgreSQL's signal asks when each NOTIFY arrives, which
    races with the publication it would wait for: not tested here.)"""
    database = str(tmp_path / "shared.db")
    store = open_database(database)
    writer = Orchestrator(open_database(database))  # closed with its readers
    signal = store.change_signal()
    signal.wait(0.001, lambda: 0)
    published = [0]
    asked_at: list[int] = []

    def seen() -> int:
        asked_at.append(published[0])
        return published[0]

    def commit_and_publish() -> None:
        writer.create_run(flow_run(), State(StateType.PENDING))  # logs #1
        published[0] = 1  # as LogFollower.offer does after this process's own commit

    committer = threading.Timer(0.05, commit_and_publish)
    committer.start()
    assert not signal.wait(0.5, seen)
    committer.join()
    assert asked_at and all(value == 1 for value in asked_at)
    signal.close()
    store.close()
    writer.close()


def test_a_state_its_run_and_its_log_entry_commit_together(tmp_path):
    store = Store(tmp_path / "atomic.db")
    orchestrator = Orchestrator(store)
    run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    # Make SQLite itself fail the log entry, after the state and the run row were written.
    store.conn.execute(
        """CREATE TRIGGER fail_log BEFORE INSERT ON transitions
           BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"""
    )
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        orchestrator.set_state(run.id, State(StateType.RUNNING))
    stored = store.get_run(run.id)
    assert stored is not None and stored.state is not None
    assert stored.state.type is StateType.PENDING
    assert [s.name for s in store.list_states(run.id)] == ["Pending"]
    assert store.conn.execute("SELECT count(*) FROM transitions").fetchone()[0] == 1
    store.conn.execute("DROP TRIGGER fail_log")
    assert orchestrator.set_state(run.id, State(StateType.RUNNING)).state.name == "Running"
    store.close()


def test_a_failed_commit_is_rolled_back_and_the_store_stays_usable(tmp_path):
    store = Store(tmp_path / "commit.db")
    orchestrator = Orchestrator(store)
    run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    # A deferred foreign key is checked only at COMMIT, which then fails.
    store.conn.execute("PRAGMA foreign_keys=ON")
    store.conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store.conn.execute(
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store.transaction():
        store.conn.execute("INSERT INTO child VALUES (42)")
        store.conn.execute("UPDATE flow_runs SET name = 'lost' WHERE id = ?", (run.id,))
    assert not store.conn.in_transaction
    stored = store.get_run(run.id)
    assert stored is not None and stored.name == "a-run"
    assert store.conn.execute("SELECT count(*) FROM child").fetchone()[0] == 0
    assert orchestrator.set_state(run.id, State(StateType.RUNNING)).state.name == "Running"
    store.close()


def test_the_wal_is_copied_into_the_database_off_the_write_path(tmp_path):
    path = tmp_path / "checkpoint.db"
    store = Store(path)
    orchestrator = Orchestrator(store)
    empty = path.stat().st_size
    for _ in range(200):  # a few hundred pages, far below the writer's own checkpoint
        orchestrator.create_run(flow_run(), State(StateType.PENDING))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0
    deadline = time.monotonic() + 5
    while path.stat().st_size == empty and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.stat().st_size > empty  # the checkpointer thread copied the new pages
    store.close()
    assert not wal.exists() or wal.stat().st_size == 0
    reopened = sqlite3.connect(path)
    assert reopened.execute("SELECT count(*) FROM flow_runs").fetchone()[0] == 200
    reopened.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and /proc")
def test_an_idle_checkpointer_sleeps_until_a_commit_and_then_copies_it(tmp_path):
    """With the system's notices of writes to the WAL, the checkpointer does not tick while
    nothing is committed (it woke 20 times a second), and a commit wakes it."""
    path = tmp_path / "idle.db"
    store = Store(path)
    checkpointer = store._checkpointer
    try:
        wait_until(lambda: checkpointer.sleeping, what="the checkpointer asleep")
        native_id = checkpointer._thread.native_id
        with open(f"/proc/self/task/{native_id}/status") as status:
            before = int(status.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])
        time.sleep(0.5)  # ten ticks, were it ticking
        with open(f"/proc/self/task/{native_id}/status") as status:
            after = int(status.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])
        assert after - before <= 2
        empty = path.stat().st_size
        orchestrator = Orchestrator(store)
        for _ in range(50):
            orchestrator.create_run(flow_run(), State(StateType.PENDING))
        wait_until(lambda: path.stat().st_size > empty, what="the commits copied")
    finally:
        store.close()


def test_a_store_closed_twice_is_closed_once(tmp_path):
    store = Store(tmp_path / "twice.db")
    store.close()
    store.close()  # nothing raised: the checkpointer was stopped once
    assert not store.checkpointing


def test_the_checkpointer_copies_when_enough_may_wait_and_never_when_nothing_was_committed():
    pace = _CheckpointPace()
    assert pace.due(version=1, now=0.0)  # a first look: whatever the WAL holds
    pace.checkpointed(1, 0.0, frames=100, copied_all=True)
    assert not pace.due(1, 60.0)  # nothing committed since: nothing to copy, however long
    # Committed since, slowly: once the longest wait passed, not before.
    assert not pace.due(2, _CHECKPOINT_LONGEST_SECONDS / 2)
    assert pace.due(2, _CHECKPOINT_LONGEST_SECONDS)
    pace.checkpointed(2, 1.0, frames=100 + _CHECKPOINT_FRAMES, copied_all=True)
    # The WAL grew _CHECKPOINT_FRAMES in that second: about as many wait again a second later.
    assert not pace.due(3, 1.0 + _CHECKPOINT_LONGEST_SECONDS / 2)
    pace.checkpointed(3, 1.1, frames=10 * _CHECKPOINT_FRAMES, copied_all=True)  # far faster
    assert pace.due(4, 1.1 + 0.2 / 9)
    # A checkpoint a reader kept from copying everything: the next tick tries again.
    pace.checkpointed(4, 2.0, frames=50, copied_all=False)  # the WAL started over
    assert pace.due(4, 2.05)


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_sequences_are_never_reused_after_the_log_is_pruned(database, keep):
    # The same on both stores: the newest transition stays, `keep` 0 included.
    store = open_database(database)
    orchestrator = Orchestrator(store)
    published: list[Transition] = []
    orchestrator.subscribe(published.extend)
    run = orchestrator.create_run(flow_run(), State(StateType.PENDING))
    orchestrator.set_state(run.id, State(StateType.RUNNING))
    newest = published[-1].sequence
    assert orchestrator.prune_log(keep) == newest - max(keep, 1)
    assert store.last_sequence() == newest  # the newest stays, whatever `keep` says
    orchestrator.set_state(run.id, State(StateType.COMPLETED))
    assert published[-1].sequence == newest + 1
    orchestrator.close()
    # Another connection (a process opening the database later) goes on from there too.
    store = open_database(database)
    orchestrator = Orchestrator(store)
    orchestrator.subscribe(published.extend)
    orchestrator.prune_log(keep)
    orchestrator.set_state(run.id, State(StateType.RUNNING), force=True)
    assert published[-1].sequence == newest + 2
    orchestrator.close()


def test_one_process_checkpoints_the_shared_file_and_another_takes_over(tmp_path):
    path = tmp_path / "shared.db"
    stores = [Store(path) for _ in range(3)]
    wait_until(lambda: sum(store.checkpointing for store in stores) == 1, what="a checkpointer")
    time.sleep(0.3)  # several ticks: still one
    assert sum(store.checkpointing for store in stores) == 1
    active = next(store for store in stores if store.checkpointing)
    stores.remove(active)
    active.close()
    wait_until(lambda: sum(store.checkpointing for store in stores) == 1, what="a new one")
    for store in stores:
        store.close()


def test_the_size_metric_never_runs_on_the_writing_connection(database):
    """The metrics thread asks for the database's size at any time: on PostgreSQL, a statement
    on the writing connection would have sent (and could have dropped) the statements another
    thread's open transaction had queued there."""
    store = open_database(database)
    orchestrator = Orchestrator(store)
    orchestrator.create_run(flow_run(), State(StateType.PENDING))
    with store.transaction():
        queued = getattr(store.conn, "queued", None)  # PostgreSQL's statements not yet sent
        before = list(queued) if queued is not None else None
        sizes: list[int] = []
        asking = threading.Thread(target=lambda: sizes.append(orchestrator.database_bytes()))
        asking.start()
        asking.join(10)
        assert sizes and sizes[0] > 0
        if before is not None:
            assert store.conn.queued == before
    orchestrator.close()


def test_a_published_transition_is_the_one_read_back_from_the_log(database):
    """The orchestrator numbers the transitions it publishes field by field (for speed): a
    field of Transition it did not copy would reach live subscribers empty, while a replay
    from the log carries it."""
    orchestrator = Orchestrator(open_database(database))
    published: list[Transition] = []
    orchestrator.subscribe(published.extend)
    parent = flow_run()
    orchestrator.create_run(parent, State(StateType.RUNNING))
    child = RunRecord(
        kind=RunKind.TASK_RUN,
        id=str(uuid.uuid4()),
        name="a-task-run",
        created=datetime.now(UTC),
        flow_run_id=parent.id,
        task_key="a-task-key",
    )
    orchestrator.create_run(child, State(StateType.PENDING))
    orchestrator.set_state(child.id, State(StateType.RUNNING))
    logged, _, _ = orchestrator.read_log(0, 100)
    assert len(published) == 3
    assert published == logged
    assert {t.task_key for t in published[1:]} == {"a-task-key"}
    orchestrator.close()


def test_details_that_json_must_escape_are_read_back_as_written(database):
    """A state's details are written as JSON text made field by field (for speed): quotes,
    backslashes, control characters and text beyond ASCII in them come back unchanged."""
    orchestrator = Orchestrator(open_database(database))
    run = flow_run()
    odd = 'a "quoted" \\ back\\slash, tab\t, newline\n, nul\x00, é, 中, \u2028 and 🎈'
    written = State(
        StateType.RUNNING,
        details=StateDetails(cache_key=odd, pause_key=odd[::-1], transition_id=str(uuid.uuid4())),
    )
    orchestrator.create_run(run, written)
    (stored,) = orchestrator.list_states(run.id)
    assert stored.details.cache_key == odd
    assert stored.details.pause_key == odd[::-1]
    assert stored.details.transition_id == written.details.transition_id
    orchestrator.close()


def test_a_postgres_commit_of_a_transaction_in_error_raises_and_writes_nothing(
    postgres_databases,
):
    from stateward_service.store.postgres import PostgresStore

    store = PostgresStore(postgres_databases.create())
    lost, kept = flow_run(), flow_run()
    try:
        # A statement fails and its error is swallowed inside the block: PostgreSQL answers the
        # COMMIT at its end with a ROLLBACK, which must not pass for a commit.
        with (
            pytest.raises(psycopg.errors.InFailedSqlTransaction, match="rolled back"),
            store.transaction(),
        ):
            store.insert_run(lost)
            with pytest.raises(psycopg.errors.DivisionByZero):
                store.conn.execute("SELECT 1 / 0")
        assert store.get_run(lost.id) is None
        # The store goes on: the next transaction commits.
        with store.transaction():
            store.insert_run(kept)
        assert store.get_run(kept.id) is not None
    finally:
        store.close()


def test_a_task_runs_writes_bind_no_null_and_read_back_as_written(database):
    """The hot writes leave their NULLs in the statements' text (a run's empty columns, its
    first state's missing predecessor, a result held as JSON alone): on SQLite no statement of
    a task run's life binds a None, and on each backend another connection reads the run, its
    history and its log back as they were decided."""
    store = open_database(database)
    orchestrator = Orchestrator(store)
    bound: list[tuple[str, tuple[Any, ...]]] = []
    if isinstance(store, Store):
        writes = store.writes

        class Recording:
            def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
                bound.append((sql, tuple(params)))
                return writes.execute(sql, params)

        store.writes = Recording()  # type: ignore[assignment]
    parent = orchestrator.create_run(flow_run(), State(StateType.RUNNING))
    task = RunRecord(
        kind=RunKind.TASK_RUN,
        id=str(uuid.uuid4()),
        name="a-task",
        created=datetime.now(UTC),
        task_key="a-task-key",
        flow_run_id=parent.id,
    )
    orchestrator.create_run(task, State(StateType.PENDING))
    orchestrator.set_state(task.id, State(StateType.RUNNING), lease_seconds=30)
    result = ResultData(json='{"value": 1}')
    done = orchestrator.set_state(task.id, State(StateType.COMPLETED, data=result))
    assert done.status is SetStateStatus.ACCEPT
    if isinstance(store, Store):
        assert len(bound) > 8
        assert [(sql, params) for sql, params in bound if None in params] == []
    reader = Orchestrator(open_database(database))
    again = reader.get_run(task.id, RunKind.TASK_RUN)
    assert again.state is not None and again.state.data == result
    assert again.flow_run_id == parent.id and again.child_flow_run_id == ""
    assert again.start_time is not None and again.end_time is not None
    assert again.expected_start_time is not None and again.lease_expires is None
    history = reader.list_states(task.id)
    assert [(s.type, s.data) for s in history] == [
        (StateType.PENDING, None),
        (StateType.RUNNING, None),
        (StateType.COMPLETED, result),
    ]
    logged, _, _ = reader.read_log(0, 10, run_ids=[task.id])
    assert [(t.from_state.id if t.from_state else None, t.to_state.id) for t in logged] == [
        (None, history[0].id),
        (history[0].id, history[1].id),
        (history[1].id, history[2].id),
    ]
    orchestrator.close()
    reader.close()


def test_one_transaction_object_serves_every_write_and_a_failed_one_leaves_the_next_whole(
    tmp_path: Path,
) -> None:
    """The store's transaction and the orchestrator's around it are made once per `wait` (a
    write makes none), and one that failed leaves nothing behind for the next."""
    store = Store(tmp_path / "t.db")
    orchestrator = Orchestrator(store)
    try:
        assert store.transaction() is store.transaction(wait=True)
        assert store.transaction(wait=False) is not store.transaction()
        assert orchestrator._transaction() is orchestrator._transaction(True)
        run = RunRecord(
            kind=RunKind.FLOW_RUN, id=str(uuid.uuid4()), name="r", created=datetime.now(UTC),
            flow_name="f",
        )  # fmt: skip
        with pytest.raises(RuntimeError), orchestrator._lock, orchestrator._transaction():
            store.insert_run(run)
            raise RuntimeError("the block fails: nothing it wrote stays")
        assert not store.run_exists(run.id)
        orchestrator.create_run(run, State(StateType.PENDING))
        assert orchestrator.get_run(run.id).state.type is StateType.PENDING  # type: ignore[union-attr]
    finally:
        orchestrator.close()
