"""How the log's sequence is assigned on PostgreSQL, measured: transactions shaped like one
SetState's writes (lock and read the run; insert its state, update its row, log the transition
and NOTIFY, COMMIT: two round trips) on 1, 2, 3 and 8 connections at once, each on a run of
its own, with the sequence taken three ways, interleaved:

- counter, last: the one-row counter bumped by the last statement before COMMIT, in the same
  round trip (what the store does): sequences commit in order, and the counter row is held from
  that statement to the end of the commit, its WAL flush included;
- counter, early: the same counter bumped when the transaction starts (held for the whole
  transaction: what the store did before);
- plain SEQUENCE: `nextval()`, which holds nothing, but whose numbers commit out of order. This
  is the ceiling of any transaction-id watermark scheme: such a scheme takes a number like this
  and then pays for the watermark on top (the xid column, and readers that hold back until
  every older transaction ended).

    .venv/bin/python bench/postgres_sequence.py [--seconds 3] [--repeat 3] [--postgres URL]

The URL (default: $STATEWARD_TEST_POSTGRES_URL) must allow CREATE DATABASE; a fresh database is
made and dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import PostgresDatabases

SCHEMA = (
    "CREATE TABLE runs (id TEXT PRIMARY KEY, state_id TEXT, run_count INTEGER NOT NULL)",
    "CREATE TABLE states (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, details TEXT NOT NULL)",
    "CREATE TABLE log (sequence BIGINT PRIMARY KEY, run_id TEXT NOT NULL, state_id TEXT)",
    "CREATE TABLE log_early (LIKE log INCLUDING ALL)",
    "CREATE TABLE log_numbered (LIKE log INCLUDING ALL)",
    "CREATE TABLE counter (last BIGINT NOT NULL)",
    "INSERT INTO counter VALUES (0)",
    "CREATE SEQUENCE numbers",
)

READ = "BEGIN; SELECT * FROM runs WHERE id = %s FOR UPDATE"
WRITE = "INSERT INTO states VALUES (%s, %s, '{}'); UPDATE runs SET state_id = %s, run_count = run_count + 1 WHERE id = %s"  # noqa: E501
LOG_LAST = (
    "WITH c AS (UPDATE counter SET last = last + 1 RETURNING last), "
    "i AS (INSERT INTO log SELECT last, %s, %s FROM c) "
    "SELECT last, pg_notify('bench', last::text) FROM c; COMMIT"
)
READ_EARLY = "BEGIN; UPDATE counter SET last = last + 1 RETURNING last; SELECT * FROM runs WHERE id = %s FOR UPDATE"  # noqa: E501
LOG_EARLY = "INSERT INTO log_early VALUES (%s, %s, %s); SELECT pg_notify('bench', %s::text); COMMIT"
LOG_SEQUENCE = (
    "WITH n AS (SELECT nextval('numbers') AS last), "
    "i AS (INSERT INTO log_numbered SELECT last, %s, %s FROM n) "
    "SELECT last, pg_notify('bench', last::text) FROM n; COMMIT"
)


def counter_last(cursor: psycopg.ClientCursor[tuple[object, ...]], run_id: str) -> None:
    state_id = str(uuid.uuid4())
    cursor.execute(READ, (run_id,))
    cursor.execute(WRITE + "; " + LOG_LAST, (state_id, run_id, state_id, run_id, run_id, state_id))


def counter_early(cursor: psycopg.ClientCursor[tuple[object, ...]], run_id: str) -> None:
    state_id = str(uuid.uuid4())
    cursor.execute(READ_EARLY, (run_id,))
    cursor.nextset()  # past BEGIN, to the counter
    row = cursor.fetchone()
    assert row is not None
    number = row[0]
    cursor.execute(
        WRITE + "; " + LOG_EARLY,
        (state_id, run_id, state_id, run_id, number, run_id, state_id, number),
    )


def plain_sequence(cursor: psycopg.ClientCursor[tuple[object, ...]], run_id: str) -> None:
    state_id = str(uuid.uuid4())
    cursor.execute(READ, (run_id,))
    cursor.execute(
        WRITE + "; " + LOG_SEQUENCE, (state_id, run_id, state_id, run_id, run_id, state_id)
    )


WAYS: dict[str, Callable[[psycopg.ClientCursor[tuple[object, ...]], str], None]] = {
    "counter, last": counter_last,
    "counter, early": counter_early,
    "plain SEQUENCE": plain_sequence,
}


def throughput(url: str, way: str, connections: int, seconds: float) -> float:
    """Transactions per second on `connections` connections at once, each on a run of its own."""
    done = [0] * connections
    failures: list[BaseException] = []
    start = threading.Barrier(connections + 1)
    deadline = [0.0]

    def work(index: int) -> None:
        try:
            transact(index)
        except BaseException as error:
            failures.append(error)
            start.abort()  # the others stop waiting
            raise

    def transact(index: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            run_id = f"run-{index}"
            conn.execute("INSERT INTO runs VALUES (%s, NULL, 0) ON CONFLICT DO NOTHING", (run_id,))
            cursor = psycopg.ClientCursor(conn)
            transaction = WAYS[way]
            start.wait()
            while time.perf_counter() < deadline[0]:
                transaction(cursor, run_id)
                done[index] += 1

    threads = [threading.Thread(target=work, args=(index,)) for index in range(connections)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("STATEWARD_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    if not args.postgres:
        sys.exit("no PostgreSQL: give --postgres URL or set STATEWARD_TEST_POSTGRES_URL")
    databases = PostgresDatabases(args.postgres)
    try:
        url = databases.create()
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in SCHEMA:
                conn.execute(statement.encode())
        print(f"transactions/s, {args.seconds:g} s each, {args.repeat} rounds interleaved")
        for connections in (1, 2, 3, 8):
            results: dict[str, list[float]] = {way: [] for way in WAYS}
            for _ in range(args.repeat):
                for way in WAYS:
                    results[way].append(throughput(url, way, connections, args.seconds))
            base = statistics.median(results["counter, last"])
            for way, values in results.items():
                runs = ", ".join(f"{value:.0f}" for value in values)
                median = statistics.median(values)
                print(
                    f"  {connections} connection(s), {way:<15} median {median:6.0f}"
                    f"  ({median / base:.2f}x counter-last; runs: {runs})",
                    flush=True,
                )
    finally:
        databases.drop_all()


if __name__ == "__main__":
    main()
