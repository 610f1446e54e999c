"""The SQL both backends share: runs, states, the cache, concurrency limits and what the loops
look for, written once with `?` placeholders (the PostgreSQL connection translates them). Each
backend adds its connection, its transactions, its log sequence and its few dialect statements.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from itertools import compress
from operator import is_not
from typing import Any

from stateward.runs import ConcurrencyLimit, LogEntry, RunKind, Transition
from stateward.states import TERMINAL_TYPES, State, StateType
from stateward_service.model import RunRecord
from stateward_service.store.interface import LogRow, RunFilter, Savepoint
from stateward_service.store.pages import (
    PAGE_BYTES,
    STATES,
    decode_page_token,
    digest,
    encode_page_token,
    page,
)
from stateward_service.store.rows import (
    EPOCH,
    RUN_COLUMNS,
    STATE_COLUMNS,
    STATE_WIDTH,
    details_json,
    from_us,
    json_list,
    prefixed_state_columns,
    run_from_row,
    run_values,
    state_from_row,
    table,
    to_us,
)

# The log's oldest and newest sequences (0 and 0 when it is empty). Two scalar subqueries, each
# one step down the primary key: SQLite answers `min(x), max(x)` in one SELECT by reading the
# whole table. A SQLite log an older Stateward pruned to nothing starts with a placeholder row
# at the sequence it had last handed out (see its schema's migration 5): that transition is
# gone, so the oldest the log holds is the one after it.
LOG_BOUNDS = """SELECT coalesce((SELECT sequence + CASE WHEN to_state_id = '' THEN 1 ELSE 0 END
                                 FROM transitions
                                 WHERE sequence = (SELECT min(sequence) FROM transitions)), 0),
                       coalesce((SELECT max(sequence) FROM transitions), 0)"""


# The state types the log's index by new state's type leaves out: Pending, Running and
# Completed, which every run that runs goes through (see migrations 6 and 8 of SQLite's schema,
# 4 of PostgreSQL's), and the index's WHERE clause verbatim (SQLite's; PostgreSQL proves its
# NOT IN from it), which a query repeats so that the planner knows the index holds every row
# it wants (SQLite uses a partial index only then). Not NOT IN: SQLite would build a temporary
# table for the list in every statement that writes the log.
TYPES_NOT_INDEXED = frozenset(
    {int(StateType.PENDING), int(StateType.RUNNING), int(StateType.COMPLETED)}
)
INDEXED_TYPES = "to_type <> 2 AND to_type <> 3 AND to_type <> 6"
# Likewise the task runs' index by state type leaves out Completed, the state nearly every task
# run ends in (see migration 7 of each schema): a listing of Completed task runs walks them
# newest first and keeps what matches (most do); each statement that reads the index for the
# other types repeats its WHERE clause, `INDEXED_TASK_RUN_TYPES` with the table's name.
TASK_RUN_TYPES_NOT_INDEXED = frozenset({int(StateType.COMPLETED)})


def indexed_task_run_types(alias: str) -> str:
    """The task runs' index by state type's WHERE clause, verbatim, for the table `alias`."""
    return f"coalesce({alias}.state_type, 0) <> 6"


_INSERT_STATE = f"INSERT INTO states ({STATE_COLUMNS}, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_STATE_WITHOUT_RESULT = """INSERT INTO states
    (id, type, name, timestamp, message, details, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)"""
_INSERT_STATE_WITH_JSON = """INSERT INTO states
    (id, type, name, timestamp, message, details, result_json, run_id)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""


class SqlReads:
    """The queries that only read: a store runs them on its writing connection, a reader on a
    read-only connection inside a snapshot. `self.conn` is anything with a DB-API
    `execute(sql, params)` taking `?` placeholders."""

    conn: Any
    # The column that orders run listings (newest first) and that page tokens hold.
    LISTING_ORDER = "rowid"
    # The run's JSON list of tags as a table with a `value` column.
    TAG_VALUES = "json_each(r.tags)"
    # The newest sequence ever handed out (0 for a new database): the log's newest, which is
    # never pruned.
    LAST_SEQUENCE = "SELECT coalesce((SELECT max(sequence) FROM transitions), 0)"
    # The column that orders a run's states, oldest first (and that their page tokens hold):
    # on SQLite each state's `sequence`, the sequence of the transition that logged it (its
    # rowid, which the index of states by run ends with). A run's states are written in the
    # order of their timestamps (each after the run's last one), so both orders are one.
    STATE_ORDER = "sequence"
    # Whether a state's `sequence` links it to its transition: then the log of some runs is
    # read through the index of states by run (see `read_log_rows`), not an index of the log.
    STATES_CARRY_SEQUENCE = True
    # How a run's row (r) finds its current state (s), and a cache entry (c) its state: on
    # SQLite, which keeps no index of states by id, the current state is the run's newest (the
    # last entry of the run's in the index of states by run: every state a run gets is
    # written as its current one), and a cache entry holds its state's sequence.
    CURRENT_STATE = "s.sequence = (SELECT max(x.sequence) FROM states x WHERE x.run_id = r.id)"
    CACHED_STATE = "s.sequence = c.state_sequence"

    def get_run(self, run_id: str, kind: RunKind | None = None) -> RunRecord | None:
        """The run with its current state, or None."""
        kinds = (kind,) if kind is not None else (RunKind.FLOW_RUN, RunKind.TASK_RUN)
        for candidate in kinds:
            cursor = self.conn.execute(run_by_id(candidate, self.CURRENT_STATE), (run_id,))
            row = cursor.fetchone()
            if row is not None:
                return run_from_row(candidate, cursor.description, row)
        return None

    def list_runs(
        self,
        kind: RunKind,
        where: RunFilter,
        page_size: int,
        page_token: str,
        budget: int = PAGE_BYTES,
    ) -> tuple[list[RunRecord], str]:
        """A page of runs, newest first, and the token of the next page ("" at the end). The
        page ends after `page_size` runs, or before the run that would take it past `budget`
        bytes (it holds one run at least)."""
        fingerprint = where.fingerprint()
        clauses: list[str] = []
        params: list[Any] = []
        if page_token:
            clauses.append(f"r.{self.LISTING_ORDER} < ?")
            params.append(decode_page_token(page_token, int(kind), fingerprint))
        name_column = "flow_name" if kind is RunKind.FLOW_RUN else "task_key"
        # The filters an index serves, the most selective first: the first one present leads.
        state_types = where.state_types
        if kind is RunKind.TASK_RUN and TASK_RUN_TYPES_NOT_INDEXED.intersection(state_types):
            # No index holds them all: filtered as the listing walks, never leading.
            clauses.append(
                f"{unindexed('r.state_type')} IN ({', '.join('?' for _ in state_types)})"
            )
            params.extend(state_types)
            state_types = ()
        indexed: list[tuple[str, tuple[Any, ...]]] = [
            (column, tuple(values))
            for column, values in (
                ("id", where.ids),
                ("flow_run_id", where.flow_run_ids if kind is RunKind.TASK_RUN else ()),
                (name_column, where.names),
                ("state_type", state_types),
            )
            if values
        ]
        if kind is RunKind.TASK_RUN and indexed and indexed[0][0] == "state_type":
            clauses.append(indexed_task_run_types("r"))  # it leads: it reads that index
        for column, values in indexed[1:]:
            # Only the leading filter picks the index (see `unindexed`).
            clauses.append(f"{unindexed('r.' + column)} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
        if where.tags:
            # One clause for every tag (a clause per tag nests too deep for SQLite's parser at
            # a thousand): the run holds as many of the wanted tags as there are.
            wanted = tuple(dict.fromkeys(where.tags))
            clauses.append(
                f"(SELECT count(DISTINCT value) FROM {self.TAG_VALUES} "
                f"WHERE value IN ({', '.join('?' for _ in wanted)})) = ?"
            )
            params.extend((*wanted, len(wanted)))
        if where.created_after is not None:
            clauses.append("r.created >= ?")
            params.append(to_us(where.created_after))
        if where.created_before is not None:
            clauses.append("r.created < ?")
            params.append(to_us(where.created_before))
        columns = f"r.{self.LISTING_ORDER} AS _order, r.*, {prefixed_state_columns('s')}"
        joined = f"{table(kind)} r LEFT JOIN states s ON {self.CURRENT_STATE}"
        order = f"r.{self.LISTING_ORDER}"
        lead = indexed[0] if indexed else None
        if lead is not None and lead[0] != "id" and 1 < len(lead[1]) <= MERGED_VALUES:
            # One ordered, limited read per value, merged: a page of several flows' runs
            # reads a page of each rather than sorting all their runs.
            sql, params = _merged(
                f"SELECT {order} AS _order FROM {table(kind)} r",
                f"r.{lead[0]}",
                lead[1],
                clauses,
                params,
                f"{order} DESC",
                page_size + 1,
            )
            sql = f"""SELECT {columns} FROM ({sql}) m JOIN {table(kind)} r ON {order} = m._order
                      LEFT JOIN states s ON {self.CURRENT_STATE}
                      ORDER BY m._order DESC LIMIT ?"""
        else:
            if lead is not None:
                clauses.insert(0, f"r.{lead[0]} IN ({', '.join('?' for _ in lead[1])})")
                params[:0] = lead[1]
            sql = f"SELECT {columns} FROM {joined}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            sql += f" ORDER BY {order} DESC LIMIT ?"
        params.append(page_size + 1)
        cursor = self.conn.execute(sql, params)
        description = cursor.description[1:]
        rows, more = page(cursor, page_size, budget)
        runs = [run_from_row(kind, description, row[1:]) for row in rows]
        next_token = encode_page_token(rows[-1][0], int(kind), fingerprint) if more else ""
        return runs, next_token

    def page_of_states(
        self, run_id: str, page_size: int, page_token: str, budget: int = PAGE_BYTES
    ) -> tuple[list[State], str]:
        """A page of a run's states, oldest first, and the token of the next page ("" at the
        end): at most `page_size` states, stopping before the state that would take the page
        past `budget` bytes (one state at least)."""
        # The order is part of the fingerprint: a token holds a position in it, and SQLite's
        # states were ordered by timestamp before schema 9. A token from then is refused (start
        # again without a token) rather than read as a sequence, which would end the listing.
        fingerprint = digest(f"{run_id} by {self.STATE_ORDER}")
        after = decode_page_token(page_token, STATES, fingerprint) if page_token else -(2**63)
        cursor = self.conn.execute(
            f"""SELECT {self.STATE_ORDER}, {STATE_COLUMNS} FROM states
                WHERE run_id = ? AND {self.STATE_ORDER} > ? ORDER BY {self.STATE_ORDER}
                LIMIT ?""",
            (run_id, after, page_size + 1),
        )
        rows, more = page(cursor, page_size, budget)
        states = [state_from_row(row[1:]) for row in rows]
        next_token = encode_page_token(rows[-1][0], STATES, fingerprint) if more else ""
        return states, next_token

    def list_states(self, run_id: str) -> list[State]:
        rows = self.conn.execute(
            f"SELECT {STATE_COLUMNS} FROM states WHERE run_id = ? ORDER BY {self.STATE_ORDER}",
            (run_id,),
        ).fetchall()
        return [state_from_row(row) for row in rows]

    def last_sequence(self) -> int:
        row = self.conn.execute(self.LAST_SEQUENCE).fetchone()
        return int(row[0]) if row else 0

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """Matching transitions above `after` (at most `limit`), with the log's oldest and newest
        sequences (0 and 0 when the log is empty). When fewer than `limit` come back, everything
        up to the newest was read (in a snapshot: see the readers)."""
        rows, oldest, newest = self.read_log_rows(after, limit, run_ids, flow_run_ids, state_types)
        return [transition_from_row(row) for row in rows], oldest, newest

    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[LogRow], int, int]:
        """As `read_log`, with each transition as its row (see `LogRow`), for a reader that
        makes something else of it than a Transition (e.g. its stream message, directly)."""
        oldest, newest = self.conn.execute(LOG_BOUNDS).fetchone()
        rows = read_log_rows(
            self.conn,
            after,
            limit,
            run_ids,
            flow_run_ids,
            state_types,
            by_states=self.STATES_CARRY_SEQUENCE,
        )
        return rows, int(oldest), int(newest)

    # --- what the server's loops look for -------------------------------------------------------

    def runs_in_state(
        self, kind: RunKind, state_type: StateType, name: str | None = None
    ) -> list[tuple[str, State]]:
        """(run id, current state) of the runs whose current state has this type (and name)."""
        sql = f"""SELECT r.id, {prefixed_state_columns("s")} FROM {table(kind)} r
                  JOIN states s ON {self.CURRENT_STATE} WHERE r.state_type = ?"""
        params: list[Any] = [int(state_type)]
        if kind is RunKind.TASK_RUN and int(state_type) not in TASK_RUN_TYPES_NOT_INDEXED:
            sql += f" AND {indexed_task_run_types('r')}"
        if name is not None:
            sql += " AND r.state_name = ?"
            params.append(name)
        return [(row[0], state_from_row(row[1:])) for row in self.conn.execute(sql, params)]

    def unfinished_children(self, flow_run_id: str) -> list[tuple[RunKind, str]]:
        """The task runs and subflows of a flow run that are not in a terminal state."""
        terminal = tuple(int(t) for t in TERMINAL_TYPES)
        marks = ", ".join("?" for _ in terminal)
        rows = self.conn.execute(
            f"""SELECT 2, id FROM task_runs WHERE flow_run_id = ?
                  AND (state_type IS NULL OR state_type NOT IN ({marks}))
                UNION ALL
                SELECT 1, f.id FROM flow_runs f JOIN task_runs t ON t.id = f.parent_task_run_id
                WHERE t.flow_run_id = ?
                  AND (f.state_type IS NULL OR f.state_type NOT IN ({marks}))""",
            (flow_run_id, *terminal, flow_run_id, *terminal),
        ).fetchall()
        return [(RunKind(kind), run_id) for kind, run_id in rows]

    def flow_runs_cancelled_with_unfinished_children(self) -> list[str]:
        """The CANCELLED flow runs that still have a task run or a subflow not in a terminal
        state. It starts from the unfinished runs (few, whatever the history), never from the
        cancelled flow runs (they only grow): `+f.state_type` keeps that column's index out."""
        unfinished = tuple(int(t) for t in StateType if t not in TERMINAL_TYPES)
        marks = ", ".join("?" for _ in unfinished)
        # In each branch of the OR, so that SQLite reads the task runs' partial index for each.
        indexed = indexed_task_run_types("t")
        rows = self.conn.execute(
            f"""SELECT f.id FROM task_runs t JOIN flow_runs f ON f.id = t.flow_run_id
                WHERE ((t.state_type IS NULL AND {indexed})
                       OR (t.state_type IN ({marks}) AND {indexed}))
                  AND +f.state_type = ?
                UNION
                SELECT f.id FROM flow_runs c JOIN task_runs t ON t.id = c.parent_task_run_id
                  JOIN flow_runs f ON f.id = t.flow_run_id
                WHERE (c.state_type IS NULL OR c.state_type IN ({marks}))
                  AND +f.state_type = ?""",
            (*unfinished, int(StateType.CANCELLED), *unfinished, int(StateType.CANCELLED)),
        ).fetchall()
        return [row[0] for row in rows]

    def list_logs(self, kind: RunKind, run_id: str, after_id: int, limit: int) -> list[LogEntry]:
        """A flow run's log lines (its task runs' too) or a task run's, after `after_id`."""
        column = "flow_run_id" if kind is RunKind.FLOW_RUN else "task_run_id"
        rows = self.conn.execute(
            f"""SELECT id, flow_run_id, task_run_id, timestamp, level, logger, message
                FROM run_logs WHERE {column} = ? AND id > ? ORDER BY id LIMIT ?""",
            (run_id, after_id, limit),
        ).fetchall()
        return _log_entries(rows)

    def list_logs_before(
        self, kind: RunKind, run_id: str, before_id: int, limit: int
    ) -> list[LogEntry]:
        """The last `limit` lines of a run (as `list_logs` picks them) before the line
        `before_id` (0: the newest lines), oldest first."""
        column = "flow_run_id" if kind is RunKind.FLOW_RUN else "task_run_id"
        rows = self.conn.execute(
            f"""SELECT id, flow_run_id, task_run_id, timestamp, level, logger, message
                FROM run_logs WHERE {column} = ? AND id < ? ORDER BY id DESC LIMIT ?""",
            (run_id, before_id or _NO_LINE_ID, limit),
        ).fetchall()
        return _log_entries(reversed(rows))

    def runs_with_lapsed_lease(self, before: datetime) -> list[tuple[RunKind, str]]:
        """Runs RUNNING, CANCELLING or PAUSED whose heartbeat lease ended before `before`."""
        found: list[tuple[RunKind, str]] = []
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            indexed = (
                f"AND {indexed_task_run_types(table(kind))}" if kind is RunKind.TASK_RUN else ""
            )
            rows = self.conn.execute(
                f"""SELECT id FROM {table(kind)} WHERE state_type IN (?, ?, ?) {indexed}
                    AND lease_expires IS NOT NULL AND lease_expires < ?""",
                (*_LEASED_TYPES, to_us(before)),
            ).fetchall()
            found.extend((kind, row[0]) for row in rows)
        return found


class SnapshotReader(ABC):
    """A backend's reader, beside the writing connection: `snapshot()` is its own; the log
    reads below each run in a snapshot of their own."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[SqlReads]:
        """The read queries, all seeing one consistent state of the database (see each
        backend's for what it raises when the database cannot be read)."""

    def read_log(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[Transition], int, int]:
        """`SqlReads.read_log` in a snapshot of its own."""
        with self.snapshot() as db:
            return db.read_log(after, limit, run_ids, flow_run_ids, state_types)

    def read_log_rows(
        self,
        after: int,
        limit: int,
        run_ids: Sequence[str] = (),
        flow_run_ids: Sequence[str] = (),
        state_types: Sequence[int] = (),
    ) -> tuple[list[LogRow], int, int]:
        """`SqlReads.read_log_rows` in a snapshot of its own."""
        with self.snapshot() as db:
            return db.read_log_rows(after, limit, run_ids, flow_run_ids, state_types)


class SqlStore(SqlReads):
    """The writing statements common to the backends, and the reads on the same connection."""

    def _send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result nobody reads: a backend may send it together with the next
        statement whose result is read, or with the commit (one round trip for several).

        The hot writes leave NULLs out of `params` (a run's first state, a result held as JSON
        alone, a run's empty columns): SQLite's module looks for an adapter for every None it
        binds, a failed attribute lookup that costs about as much as binding ten strings, and
        a task run's writes held seven."""
        self.conn.execute(sql, params)

    # What the open transaction logged so far, as each backend keeps it (SQLite: the sequences
    # given; PostgreSQL: the transitions to number at the commit): a savepoint undone forgets
    # its part.
    _pending_log: list[Any]

    @contextmanager
    def savepoint(self) -> Iterator[Savepoint]:
        """Inside a transaction: a savepoint (see `RunStore.savepoint`). Starting and releasing
        it read nothing: they go with the next statement sent."""
        self._send("SAVEPOINT grouped")
        mark = len(self._pending_log)

        def undo() -> None:
            self.conn.execute("ROLLBACK TO SAVEPOINT grouped")
            self.conn.execute("RELEASE SAVEPOINT grouped")
            del self._pending_log[mark:]

        point = Savepoint(undo)
        yield point  # raised through: the transaction fails, and its rollback ends the savepoint
        if not point.undone:
            self._send("RELEASE SAVEPOINT grouped")

    def lock_limits(self, tags: Sequence[str]) -> None:
        """Inside a transaction: hold the limits on `tags` until it ends (no-op where the
        transaction holds the whole database)."""

    # --- runs -----------------------------------------------------------------------------------

    def run_exists(self, run_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM flow_runs WHERE id = ? UNION ALL SELECT 1 FROM task_runs WHERE id = ?",
            (run_id, run_id),
        ).fetchone()
        return row is not None

    def insert_run(self, run: RunRecord) -> None:
        # The columns without a value are left out (their default is NULL; see `_send`): one
        # text per kind and set of columns with a value, made once.
        values = run_values(run)
        bound = tuple(map(is_not, values, _NONES))
        self._send(_insert_run_sql(run.kind, bound), tuple(compress(values, bound)))

    def update_run(self, run: RunRecord) -> None:
        """Write the run's mutable fields (state, bookkeeping, pause keys, lease)."""
        state = run.state
        values: tuple[object, ...] = (
            state.id if state else None,
            int(state.type) if state else None,
            state.name if state else None,
            run.run_count,
            to_us(run.start_time),
            to_us(run.end_time),
            run.total_run_time,
            to_us(run.expected_start_time),
            to_us(run.next_scheduled_start_time),
            to_us(run.lease_expires),
        )
        if run.kind is RunKind.FLOW_RUN:
            values += (json_list(sorted(run.pause_keys)),)
        # The NULLs are written in the statement's text (see `_send`): one text per kind and
        # set of columns with a value, made once.
        bound = tuple(map(is_not, values, _NONES))
        self._send(_update_run_sql(run.kind, bound), (*compress(values, bound), run.id))

    def link_subflow(self, task_run_id: str, flow_run_id: str) -> None:
        """Record on a task run that it stands for the subflow `flow_run_id`."""
        self._send(
            "UPDATE task_runs SET child_flow_run_id = ? WHERE id = ?", (flow_run_id, task_run_id)
        )

    # --- states and transitions -----------------------------------------------------------------

    # The INSERTs of a state, with and without its result (`run_id` last).
    INSERT_STATE = _INSERT_STATE
    INSERT_STATE_WITHOUT_RESULT = _INSERT_STATE_WITHOUT_RESULT
    INSERT_STATE_WITH_JSON = _INSERT_STATE_WITH_JSON  # a result as JSON, none pickled

    def _insert_state_row(self, sql: str, params: Sequence[Any]) -> None:
        """Run a state's INSERT (a backend may note what it gave the row)."""
        self._send(sql, params)

    def insert_state(self, run_id: str, state: State) -> None:
        data = state.data
        columns = (
            state.id,
            int(state.type),
            state.name,
            to_us(state.timestamp),
            state.message,
            details_json(state.details),
        )
        # No NULL bound for an empty result column (see `_send`): most states carry no result,
        # and most results are held as JSON alone.
        if data is None:
            self._insert_state_row(self.INSERT_STATE_WITHOUT_RESULT, (*columns, run_id))
        elif data.pickle is None and data.json is not None:
            self._insert_state_row(self.INSERT_STATE_WITH_JSON, (*columns, data.json, run_id))
        else:
            self._insert_state_row(self.INSERT_STATE, (*columns, data.json, data.pickle, run_id))

    def prune_log(self, keep: int) -> int:
        """Delete all but the newest `keep` transitions from the log, never the newest one (0
        keeps it too); returns how many went. On every backend the log so always holds the
        last sequence handed out: the cursors before it are told apart from a cursor of
        another database, and on SQLite, where the next sequence follows the newest row, no
        sequence is handed out twice."""
        cursor = self.conn.execute(
            "DELETE FROM transitions WHERE sequence <= (SELECT max(sequence) FROM transitions) - ?",
            (max(keep, 1),),
        )
        return int(cursor.rowcount)

    # --- run logs -------------------------------------------------------------------------------

    def insert_logs(self, entries: Sequence[LogEntry]) -> None:
        self.conn.executemany(
            """INSERT INTO run_logs (flow_run_id, task_run_id, timestamp, level, logger, message)
                VALUES (?, ?, ?, ?, ?, ?)""",
            [
                (e.flow_run_id, e.task_run_id, to_us(e.timestamp), e.level, e.logger, e.message)
                for e in entries
            ],
        )

    def prune_run_logs(self, keep: int) -> int:
        """Delete all but the newest `keep` log lines; returns how many went."""
        cursor = self.conn.execute(
            "DELETE FROM run_logs WHERE id <= (SELECT max(id) FROM run_logs) - ?", (keep,)
        )
        return int(cursor.rowcount)

    # --- cache ----------------------------------------------------------------------------------

    def cached_state(self, key: str, now: datetime) -> State | None:
        row = self.conn.execute(
            f"""SELECT {prefixed_state_columns("s")}, c.expiration FROM cache c
                JOIN states s ON {self.CACHED_STATE}
                WHERE c.key = ? AND (c.expiration IS NULL OR c.expiration > ?)""",
            (key, to_us(now)),
        ).fetchone()
        if row is None:
            return None
        state = state_from_row(row[:-1])
        return state.with_details(cache_expiration=from_us(row[-1]))

    # --- tag concurrency limits -----------------------------------------------------------------

    def limit_usage(self, run_id: str, tags: Sequence[str]) -> list[tuple[str, int, int, bool]]:
        """For each limit on one of `tags`: (tag, limit, slots taken, whether the run holds one)."""
        self.lock_limits(tags)
        marks = ", ".join("?" for _ in tags)
        rows = self.conn.execute(
            f"""SELECT l.tag, l.lim,
                  (SELECT count(*) FROM concurrency_slots s WHERE s.tag = l.tag),
                  EXISTS (SELECT 1 FROM concurrency_slots s WHERE s.tag = l.tag AND s.run_id = ?)
                FROM concurrency_limits l WHERE l.tag IN ({marks}) ORDER BY l.tag""",
            (run_id, *tags),
        ).fetchall()
        return [(tag, limit, active, bool(held)) for tag, limit, active, held in rows]

    def release_slots(self, run_id: str) -> None:
        self._send("DELETE FROM concurrency_slots WHERE run_id = ?", (run_id,))

    def release_stale_slots(self) -> int:
        """Free the slots of runs that are not RUNNING (none should exist; a safety net)."""
        cursor = self.conn.execute(
            """DELETE FROM concurrency_slots WHERE run_id NOT IN
               (SELECT id FROM task_runs r WHERE r.state_type = ? AND {indexed})""".format(
                indexed=indexed_task_run_types("r")
            ),
            (int(StateType.RUNNING),),
        )
        return int(cursor.rowcount)

    def insert_limit(self, tag: str, limit: int, created: datetime) -> None:
        self.conn.execute(
            "INSERT INTO concurrency_limits (tag, lim, created) VALUES (?, ?, ?)",
            (tag, limit, to_us(created)),
        )

    def delete_limit(self, tag: str) -> bool:
        self.conn.execute("DELETE FROM concurrency_slots WHERE tag = ?", (tag,))
        return (
            int(self.conn.execute("DELETE FROM concurrency_limits WHERE tag = ?", (tag,)).rowcount)
            > 0
        )

    def get_limits(self, tags: Sequence[str] = ()) -> list[ConcurrencyLimit]:
        """The limits on `tags` (all limits when empty), by tag, with their holders."""
        sql = "SELECT tag, lim, created FROM concurrency_limits"
        if tags:
            sql += f" WHERE tag IN ({', '.join('?' for _ in tags)})"
        rows = self.conn.execute(sql + " ORDER BY tag", tuple(tags)).fetchall()
        limits = []
        for tag, limit, created in rows:
            holders = self.conn.execute(
                "SELECT run_id FROM concurrency_slots WHERE tag = ? ORDER BY run_id", (tag,)
            ).fetchall()
            limits.append(
                ConcurrencyLimit(
                    tag=tag,
                    limit=limit,
                    active_slots=tuple(row[0] for row in holders),
                    created=from_us(created) or EPOCH,
                )
            )
        return limits

    # --- leases -----------------------------------------------------------------------------------

    def renew_leases(self, run_ids: Sequence[str], until: datetime) -> list[str]:
        """Move the lease end of those runs that are RUNNING, CANCELLING or PAUSED; returns
        their ids."""
        renewed: list[str] = []
        marks = ", ".join("?" for _ in run_ids)
        for kind in (RunKind.FLOW_RUN, RunKind.TASK_RUN):
            rows = self.conn.execute(
                f"""UPDATE {table(kind)} SET lease_expires = ?
                    WHERE id IN ({marks}) AND state_type IN (?, ?, ?) RETURNING id""",
                (to_us(until), *run_ids, *_LEASED_TYPES),
            ).fetchall()
            renewed.extend(row[0] for row in rows)
        return renewed


# The state types whose run holds a heartbeat lease (rules.bookkeeping.LEASED_TYPES: a paused
# flow run's process waits for its resume).
_LEASED_TYPES = (int(StateType.RUNNING), int(StateType.CANCELLING), int(StateType.PAUSED))

# The most values of one filter read as a merge of one ordered read per value (a compound
# SELECT of SQLite holds at most 500 parts); more are read with IN and a sort.
MERGED_VALUES = 100


# The columns that hold integers (the others hold text), for `unindexed`.
_INTEGER_COLUMNS = frozenset({"state_type", "to_type"})


_NO_LINE_ID = 2**63 - 1  # above every line's id (a BIGINT)


def _log_entries(rows: Iterable[Sequence[Any]]) -> list[LogEntry]:
    return [
        LogEntry(
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            timestamp=from_us(timestamp) or EPOCH,
            level=level,
            logger=logger,
            message=message,
            id=entry_id,
        )
        for entry_id, flow_run_id, task_run_id, timestamp, level, logger, message in rows
    ]


def unindexed(column: str) -> str:
    """`column` as an expression no index serves, for a filter that must not lead: without
    statistics, SQLite picks among equal-looking indexes by chance, and a replay of one run
    that only COMPLETED transitions' index serves reads the whole log. Text columns get
    `|| ''`, integer columns a unary plus; both backends read them alike."""
    if column.rsplit(".", 1)[-1] in _INTEGER_COLUMNS:
        return f"(+{column})"
    return f"({column} || '')"


def _merged(
    select: str,
    column: str,
    values: Sequence[Any],
    clauses: Sequence[str],
    params: Sequence[Any],
    order: str,
    limit: int,
) -> tuple[str, list[Any]]:
    """A UNION ALL of `select` once per value of `column`, each part with `clauses`, ordered by
    `order` and limited to `limit` rows: the first `limit` rows of the whole in that order are
    among them, and each part reads its index in order and stops (no part sorts)."""
    where = "".join(f" AND {clause}" for clause in clauses)
    parts: list[str] = []
    merged_params: list[Any] = []
    for index, value in enumerate(values):
        parts.append(
            f"SELECT * FROM ({select} WHERE {column} = ?{where} ORDER BY {order} LIMIT ?) p{index}"
        )
        merged_params.extend((value, *params, limit))
    return " UNION ALL ".join(parts), merged_params


# The columns `update_run` writes, in its order (a flow run's `pause_keys` last).
# A None for each column of a run's row: `map(is_not, values, _NONES)` marks those with a value.
_NONES = (None,) * max(len(columns) for columns in RUN_COLUMNS.values())
_UPDATED_COLUMNS = (
    "state_id",
    "state_type",
    "state_name",
    "run_count",
    "start_time",
    "end_time",
    "total_run_time",
    "expected_start_time",
    "next_scheduled_start_time",
    "lease_expires",
    "pause_keys",
)


@functools.cache
def _update_run_sql(kind: RunKind, bound: tuple[bool, ...]) -> str:
    """The UPDATE of a run's mutable columns by id, those `bound` marks bound in order, the
    others set to NULL in the text (one flag per value `update_run` writes)."""
    sets = ", ".join(
        f"{column} = ?" if given else f"{column} = NULL"
        for column, given in zip(_UPDATED_COLUMNS, bound, strict=False)
    )
    return f"UPDATE {table(kind)} SET {sets} WHERE id = ?"


@functools.cache
def _insert_run_sql(kind: RunKind, bound: tuple[bool, ...]) -> str:
    """The INSERT of a run's row with the columns `bound` marks (one flag per column of
    `RUN_COLUMNS[kind]`); the others take their default, NULL."""
    columns = tuple(compress(RUN_COLUMNS[kind], bound))
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table(kind)} ({', '.join(columns)}) VALUES ({marks})"


def run_by_id(kind: RunKind, current_state: str) -> str:
    """The query of one run of `kind` with its current state, by id (one `?`), the state
    found as `current_state` says (see `SqlReads.CURRENT_STATE`)."""
    return f"""SELECT r.*, {prefixed_state_columns("s")} FROM {table(kind)} r
               LEFT JOIN states s ON {current_state} WHERE r.id = ?"""


def read_log_rows(
    conn: Any,
    after: int,
    limit: int,
    run_ids: Sequence[str],
    flow_run_ids: Sequence[str],
    state_types: Sequence[int],
    *,
    by_states: bool = False,
) -> list[LogRow]:
    """The rows (see `LogRow`) of the matching transitions above `after`, at most `limit`,
    oldest first. A filter by a type the index by new state's type leaves out
    (`TYPES_NOT_INDEXED`) filters the rows another filter's index reads, or reads the log in
    order: those types are the common ones, each about one transition in three of a log of
    runs that ran. With `by_states` (each state's `sequence` is its transition's, see
    `SqlReads.STATES_CARRY_SEQUENCE`), a filter by run reads the runs' states in order by the
    index of states by run, each joined to its transition by sequence; the log has no index
    by run of its own then."""
    if TYPES_NOT_INDEXED.intersection(state_types):
        # Filtered as it is read: by another filter's index, or along the log.
        type_filter: list[tuple[str, tuple[Any, ...]]] = []
        unindexed_types: tuple[int, ...] = tuple(state_types)
    else:
        type_filter = [("t.to_type", tuple(state_types))] if state_types else []
        unindexed_types = ()
    # Through the states by run (aliased b: the new state's columns are theirs), or the log.
    via_states = by_states and bool(run_ids)
    order = "b.sequence" if via_states else "t.sequence"
    filters = [
        (f"{'b' if via_states else 't'}.run_id", tuple(run_ids)),
        ("t.flow_run_id", tuple(flow_run_ids)),
    ]
    filters = [(column, values) for column, values in filters if values] + type_filter
    clauses = [f"{order} > ?"]
    params: list[Any] = [after]
    if filters and filters[0][0] == "t.to_type":
        clauses.append(INDEXED_TYPES.replace("to_type", "t.to_type"))  # it reads that index
    if unindexed_types:
        clauses.append(f"{unindexed('t.to_type')} IN ({', '.join('?' for _ in unindexed_types)})")
        params.extend(unindexed_types)
    # The first filter present reads its index (in sequence order); the others only filter.
    lead = filters[0] if filters and 1 < len(filters[0][1]) <= MERGED_VALUES else None
    for index, (column, values) in enumerate(filters):
        if lead is not None and index == 0:
            continue  # merged below
        marks = ", ".join("?" for _ in values)
        clauses.append(f"{column if index == 0 else unindexed(column)} IN ({marks})")
        params.extend(values)
    # The new state by its sequence where it carries one (one step down its primary key), else
    # by its id.
    new_state = "b.sequence = t.sequence" if by_states else "b.id = t.to_state_id"
    # The state it left: the run's newest before it where states carry no index by id (see
    # `SqlReads.CURRENT_STATE`), else by its id.
    from_state = _STATE_BEFORE if by_states else "a.id = t.from_state_id"
    logged = "states b JOIN transitions t ON t.sequence = b.sequence"
    source = logged if via_states else f"transitions t JOIN states b ON {new_state}"
    if lead is not None:
        # One ordered, limited read per value, merged: a replay of several runs reads the next
        # `limit` of each rather than sorting all their transitions after the cursor.
        merged, merged_params = _merged(
            f"SELECT {order} AS sequence FROM {logged if via_states else 'transitions t'}",
            lead[0],
            lead[1],
            clauses,
            params,
            order,
            limit,
        )
        source = (
            f"({merged}) m JOIN transitions t ON t.sequence = m.sequence JOIN states b"
            f" ON {new_state}"
        )
        clauses, params = [], merged_params
        order = "t.sequence"
    params.append(limit)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows: list[LogRow] = conn.execute(
        f"""SELECT t.sequence, t.run_kind, t.run_id, t.flow_run_id,
                   coalesce(f.name, tr.name), coalesce(f.flow_name, ''),
                   coalesce(tr.task_key, ''),
                   {prefixed_state_columns("a")}, {prefixed_state_columns("b")}
            FROM {source}
            LEFT JOIN flow_runs f ON t.run_kind = 1 AND f.id = t.run_id
            LEFT JOIN task_runs tr ON t.run_kind = 2 AND tr.id = t.run_id
            LEFT JOIN states a ON {from_state}
            {where} ORDER BY {order} LIMIT ?""",
        params,
    ).fetchall()
    return rows


_STATE_BEFORE = """a.sequence = (SELECT max(x.sequence) FROM states x
                                  WHERE x.run_id = t.run_id AND x.sequence < t.sequence)"""


def transition_from_row(row: LogRow) -> Transition:
    """The Transition a log row (see `LogRow`) stands for."""
    width = STATE_WIDTH
    from_row = row[7 : 7 + width]
    return Transition(
        sequence=row[0],
        run_kind=RunKind(row[1]),
        run_id=row[2],
        flow_run_id=row[3],
        run_name=row[4] or "",
        flow_name=row[5],
        task_key=row[6],
        from_state=state_from_row(from_row) if from_row[0] is not None else None,
        to_state=state_from_row(row[7 + width :]),
    )


__all__ = [
    "INDEXED_TYPES",
    "TASK_RUN_TYPES_NOT_INDEXED",
    "TYPES_NOT_INDEXED",
    "LogRow",
    "SqlReads",
    "SqlStore",
    "indexed_task_run_types",
    "read_log_rows",
    "run_by_id",
    "transition_from_row",
]
