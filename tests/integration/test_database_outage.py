"""A PostgreSQL outage under a real server replica: its backends are terminated and the database
refuses new connections. Health says NOT_SERVING within seconds and calls answer UNAVAILABLE,
writing nothing; once the database takes connections again, health says SERVING, writes work,
and everything acknowledged before the outage is there."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.support import (
    ACCEPT,
    ST,
    PostgresDatabases,
    ServerProcess,
    history,
    new_flow_run,
    propose,
    state,
    wait_until,
)
from tests.web.sse import EventStream

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# The loops' intervals, long: no loop writes or reads during a test.
IDLE_LOOPS = {
    f"STATEWARD_{name}_INTERVAL_SECONDS": "3600"
    for name in ("LATE_RUNS", "PAUSE_EXPIRY", "CANCELLING", "CASCADE", "LEASE_CHECK")
}


class Outage:
    """Cuts a database off its clients and brings it back, from an administrator's session."""

    def __init__(self, databases: PostgresDatabases, url: str) -> None:
        self.admin = databases.admin
        self.name = url.partition("?")[0].rsplit("/", 1)[1]

    def begin(self) -> None:
        """Refuse new connections and end the open ones; returns once their backends are gone
        (each has told its client, which may not have read it)."""
        self.admin.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false")
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (self.name,),
        )
        wait_until(self._no_backends, timeout=20, what="the database's backends gone")

    def _no_backends(self) -> bool:
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchone()
        return row is not None and row[0] == 0

    def end(self) -> None:
        self.admin.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")

    @contextmanager
    def cut_off(
        self, server: ServerProcess, seen: Callable[[], bool] | None = None, what: str = ""
    ) -> Iterator[None]:
        """The block runs during an outage, once `seen()` says the server noticed it (by
        default: health says NOT_SERVING); whatever the block does, the outage ends after it,
        and the block's exit waits until health says SERVING again."""
        self.begin()
        try:
            if seen is None:
                seen, what = (lambda: health(server) == NOT_SERVING), "NOT_SERVING"
            wait_until(seen, timeout=20, what=what)
            yield
        finally:
            self.end()
        wait_until(lambda: health(server) == SERVING, timeout=20, what="SERVING again")


class Blackhole:
    """A TCP relay between a server and PostgreSQL that can turn into a host dropping packets:
    `begin()` ends the connections it relays, and from then on it takes new ones and never says
    a word, so a connection waits for its whole connect timeout (5 s) before it fails, as one to
    a host cut off by a firewall does; `end()` relays new connections again."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        netloc = f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        self.dropping = False
        self.flowing = threading.Event()  # cleared: relayed connections carry nothing
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.relayed: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(client)
                if self.dropping:
                    continue  # held open, never answered
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets.append(upstream)
                self.relayed.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def begin(self) -> None:
        with self.lock:
            self.dropping = True
            ended, self.sockets = self.sockets, []
            self.relayed.clear()
        for end in ended:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def freeze(self) -> None:
        """Drop packets without ending any connection: relayed ones carry nothing (until
        `end()`), new ones are held silent."""
        with self.lock:
            self.dropping = True
            self.flowing.clear()

    def end(self) -> None:
        with self.lock:
            self.dropping = False
            self.flowing.set()
            held = [end for end in self.sockets if end not in self.relayed]
            self.sockets = list(self.relayed)
        for end in held:
            end.close()

    def close(self) -> None:
        self.listener.close()
        self.begin()


def test_during_an_outage_that_drops_packets_reads_do_not_each_wait_a_connect_timeout(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """The database's host drops packets (a connection waits its whole 5 s connect timeout
    before it fails). Once the first direct connection of the outage failed, a read waits at
    most half a second for the one being tried, then fails with the last failure's reason
    and age; each waited for a try to end before (its own, or the health check's): 5 to 10 s
    a read. Once the host answers, reads work again within seconds."""
    blackhole = Blackhole(postgres_databases.create())
    server = ServerProcess(blackhole.url, log_path=tmp_path / "server.log", env=IDLE_LOOPS)
    server.start()
    try:
        stub = server.stub()
        new_flow_run(stub)
        reading = pb.ListFlowRunsRequest()  # read on a snapshot, from the read pool
        blackhole.begin()
        # The first read finds the pool's connections ended, and waits for the first try.
        with pytest.raises(grpc.RpcError) as first:
            stub.ListFlowRuns(reading, timeout=60)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE
        waits, refusals = [], []
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListFlowRuns(reading, timeout=60)
            waits.append(time.monotonic() - started)
            refusals.append((refused.value.code(), refused.value.details()))
        # Each failed at once: a read waiting for a connection waits up to 5 s. (1.5 s: a
        # loaded machine's call; they took 5.0, 10.0, 10.0, 10.0 and 10.0 s before)
        assert max(waits) < 1.5, waits
        for code, said in refusals:
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "the PostgreSQL database is unreachable: connection timeout" in said, said
            assert "as a direct connection found" in said and "s ago" in said, said
        blackhole.end()
        wait_until(
            lambda: _reads(stub, reading), timeout=30, what="reads once the host answers again"
        )
    finally:
        server.stop()
        blackhole.close()


def test_health_says_not_serving_when_a_ping_gets_no_answer_from_a_host_dropping_packets(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """The database's host drops packets without ending any connection: the health check's
    ping, sent on a pooled connection, never gets its answer (TCP gives up after many
    minutes). Health says NOT_SERVING once it has waited 8 s for it, and SERVING again once
    the host answers. (It said SERVING for as long as the ping waited, or, when the ping
    needed a new connection, for 19 s: 10 s for a pooled one, then 5 s for a direct one.)"""
    blackhole = Blackhole(postgres_databases.create())
    server = ServerProcess(blackhole.url, log_path=tmp_path / "server.log", env=IDLE_LOOPS)
    server.start()
    try:
        new_flow_run(server.stub())
        assert health(server) == SERVING
        blackhole.freeze()
        started = time.monotonic()
        wait_until(
            lambda: health(server) == NOT_SERVING, timeout=40, what="health to say NOT_SERVING"
        )
        took = time.monotonic() - started
        assert took < 13, took  # 7 to 9 s here; 19 s or never before
        blackhole.end()
        wait_until(lambda: health(server) == SERVING, timeout=30, what="SERVING again")
    finally:
        blackhole.end()
        server.stop()
        blackhole.close()


def _reads(stub: object, reading: pb.ListFlowRunsRequest) -> bool:
    try:
        stub.ListFlowRuns(reading, timeout=30)  # type: ignore[attr-defined]
    except grpc.RpcError:
        return False
    return True


@pytest.fixture
def replica(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> Iterator[tuple[ServerProcess, Outage]]:
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    server = ServerProcess(url, log_path=tmp_path / "server.log", ui=True).start()
    try:
        yield server, outage
    finally:
        outage.end()
        server.stop()


def health(server: ServerProcess) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=20).status)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()  # type: ignore[operator]
    return failure.value.code()


def test_an_outage_is_not_serving_and_unavailable_then_all_is_back(replica):
    server, outage = replica
    stub = server.stub()
    acknowledged = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING) for _ in range(5)]
    for run in acknowledged:
        assert propose(stub, run.id, ST.STATE_TYPE_COMPLETED).status == ACCEPT
    running = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
    assert health(server) == SERVING

    with outage.cut_off(server):
        # Calls that write, and calls that read, answer UNAVAILABLE; none half-writes.
        completing = pb.SetStateRequest(run_id=running.id)
        completing.state.type = ST.STATE_TYPE_COMPLETED
        assert code_of(lambda: stub.SetState(completing)) == grpc.StatusCode.UNAVAILABLE
        creating = pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="during"))
        assert code_of(lambda: stub.CreateFlowRun(creating)) == grpc.StatusCode.UNAVAILABLE
        reading = pb.GetFlowRunRequest(id=running.id)
        assert code_of(lambda: stub.GetFlowRun(reading)) == grpc.StatusCode.UNAVAILABLE
        # A read on a snapshot fails at once (it does not wait for a pooled connection), with
        # PostgreSQL's reason.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListFlowRuns(pb.ListFlowRunsRequest(), timeout=30)
        assert time.monotonic() - started < 5  # it waited 10 s for the pool before
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "is not currently accepting connections" in refused.value.details()
        # Every call that needs the database says so, the limits' listing and a stream's
        # replay included: UNAVAILABLE (try again), never INTERNAL.
        limits = pb.ListConcurrencyLimitsRequest()
        assert code_of(lambda: stub.ListConcurrencyLimits(limits)) == grpc.StatusCode.UNAVAILABLE
        replay = pb.WatchTransitionsRequest(after_sequence=0)
        assert code_of(lambda: list(stub.WatchTransitions(replay))) == grpc.StatusCode.UNAVAILABLE
        # The web view's API says the same: 503 with what is wrong, not a 500.
        page = httpx.get(f"{server.ui_url}api/flow-runs", timeout=30)
        assert page.status_code == 503
        assert "unreachable" in page.json()["error"]
        assert health(server) == NOT_SERVING
    # Nothing acknowledged was lost, nothing refused was written.
    for run in acknowledged:
        assert history(stub, run.id) == ["Running", "Completed"]
    assert history(stub, running.id) == ["Running"]
    listed = stub.ListFlowRuns(pb.ListFlowRunsRequest()).flow_runs
    assert "during" not in {run.flow_name for run in listed}
    # Writes work again, on the same server process.
    assert propose(stub, running.id, ST.STATE_TYPE_COMPLETED).status == ACCEPT
    assert history(stub, running.id) == ["Running", "Completed"]
    assert new_flow_run(stub).flow_name == "test-flow"


def test_the_first_write_once_health_says_serving_again_is_accepted(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """The writing connection sat idle through the outage (no loop wrote: their intervals are
    long), its session ended by the server: the next write does not go out on it (and fail
    UNAVAILABLE) but on a new one."""
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=IDLE_LOOPS).start()
    try:
        stub = server.stub()
        running = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)  # the writer is connected
        with outage.cut_off(server):
            pass  # the server noticed: the outage can end
        assert propose(stub, running.id, ST.STATE_TYPE_COMPLETED).status == ACCEPT
        assert history(stub, running.id) == ["Running", "Completed"]
        assert new_flow_run(stub).flow_name == "test-flow"
    finally:
        outage.end()
        server.stop()


def test_the_first_reads_after_an_outage_find_no_connection_it_ended(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """The read pool's idle connections sat through the outage, their sessions ended by the
    server, and nothing read meanwhile (no loop runs, health was not asked): the first reads
    once the database is back do not go out on them (and fail UNAVAILABLE)."""
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=IDLE_LOOPS).start()
    try:
        stub = server.stub()
        made = [new_flow_run(stub) for _ in range(3)]
        # Reads at once: the pool keeps several connections.
        with ThreadPoolExecutor(8) as readers:
            list(readers.map(lambda _: stub.ListFlowRuns(pb.ListFlowRunsRequest()), range(64)))
        outage.begin()
        outage.end()
        for run in made:
            assert stub.GetFlowRun(pb.GetFlowRunRequest(id=run.id)).flow_run.id == run.id
        listed = stub.ListFlowRuns(pb.ListFlowRunsRequest()).flow_runs
        assert {run.id for run in listed} == {run.id for run in made}
        # Health pings once a second on its own: a ping that fell in the outage said
        # NOT_SERVING until the next one (the reads above can be done sooner, on a loaded
        # machine they were: 1 of 1,767 tests in a CI run).
        wait_until(lambda: health(server) == SERVING, timeout=10, what="SERVING again")
    finally:
        outage.end()
        server.stop()


def test_the_web_views_event_stream_is_refused_503_during_an_outage_and_logged_in_a_line(
    replica,
):
    server, outage = replica
    stub = server.stub()
    first = new_flow_run(stub)
    events = f"{server.ui_url}api/events"
    with outage.cut_off(server):
        # A page resuming its stream: the cursor's check reads the log, which cannot be read.
        refused = httpx.get(events, params={"after": 0}, timeout=30)
        assert refused.status_code == 503, refused.text
        assert "unreachable" in refused.json()["error"]
        assert "try again" in refused.json()["error"]
        wait_until(
            lambda: "event stream after 0 was refused" in server.output(),
            timeout=10,
            what="the refusal's log line",
        )
    # The page's next try resumes from the same cursor.
    with httpx.stream("GET", events, params={"after": 0}, timeout=30) as resumed:
        stream = EventStream(resumed)
        assert stream.hello().data == {"sequence": 0, "reset": None}
        assert stream.transitions(1)[0].data["run_id"] == first.id
    output = server.output()
    said = [line for line in output.splitlines() if "event stream" in line]
    assert len(said) == 1, said
    # No traceback of the web view's (uvicorn's "Exception in ASGI application" and its frames).
    assert "ASGI" not in output and "stateward_service/web/" not in output, output


def test_the_loops_say_an_outage_in_one_line_each_and_sweep_again_after_it(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    fast = "0.1"
    env = {
        "STATEWARD_LOG_RETENTION": "1000",
        "STATEWARD_LATE_AFTER_SECONDS": "0",
        "STATEWARD_LOG_PRUNE_INTERVAL_SECONDS": fast,
        "STATEWARD_LATE_RUNS_INTERVAL_SECONDS": fast,
        "STATEWARD_PAUSE_EXPIRY_INTERVAL_SECONDS": fast,
        "STATEWARD_CANCELLING_INTERVAL_SECONDS": fast,
        "STATEWARD_CASCADE_INTERVAL_SECONDS": fast,
        "STATEWARD_LEASE_CHECK_INTERVAL_SECONDS": fast,
    }
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=env).start()
    try:
        wait_until(lambda: "this process leads" in server.output(), timeout=20, what="the lead")
        with outage.cut_off(
            server,
            lambda: "loop cannot reach the database" in server.output(),
            "a loop's line on the outage",
        ):
            pass  # a loop has said it: the outage can end
        output = server.output()
        assert "Traceback" not in output, output
        said = [line for line in output.splitlines() if "loop cannot reach" in line]
        assert said and all("WARNING" in line for line in said), said
        # The loops sweep again once the database is back (on this process, or on it again
        # once it takes the lock it lost): a run past its time becomes Late.
        stub = server.stub()
        due = new_flow_run(stub, initial=None)
        past = datetime.now(UTC) - timedelta(seconds=1)
        propose(stub, due.id, state(ST.STATE_TYPE_SCHEDULED, scheduled_time=past))
        wait_until(lambda: history(stub, due.id) == ["Scheduled", "Late"], timeout=20, what="Late")
    finally:
        outage.end()
        server.stop()


def test_an_event_streams_replay_cut_short_by_an_outage_ends_whole_said_in_one_line(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """A page far behind (here more than the ring of 1 transition the server keeps) replays
    from the log, 500 transitions a read; the database goes away after the first read. The
    stream ends as a stream ends (the browser then reconnects with its Last-Event-ID), the
    server says so in one line, and the next stream resumes from the last event sent."""
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    env = {"STATEWARD_STREAM_BUFFER": "1"}
    server = ServerProcess(url, log_path=tmp_path / "server.log", ui=True, env=env).start()
    try:
        stub = server.stub()
        # 40 kB a transition: the first read's 500 (20 MB) are more than the sockets hold, so
        # the server is still sending them when the database goes away.
        pending = state(ST.STATE_TYPE_PENDING, message="x" * 40_000)
        made = [
            stub.CreateFlowRun(
                pb.CreateFlowRunRequest(flow_run=runs_pb2.FlowRun(flow_name="far", state=pending))
            ).flow_run.id
            for _ in range(520)
        ]
        events = f"{server.ui_url}api/events"
        got: list[str] = []
        last_id: str | None = None
        with httpx.stream("GET", events, params={"after": 0}, timeout=60) as replaying:
            stream = EventStream(replaying)
            assert stream.hello().data["sequence"] == 0
            got.append(stream.transitions(1)[0].data["run_id"])
            with outage.cut_off(server):
                # An incomplete response would raise httpx.RemoteProtocolError here.
                while True:
                    try:
                        event = stream.next()
                    except EOFError:
                        break
                    assert event.event == "transition", event
                    got.append(event.data["run_id"])
                    last_id = event.id
        assert 1 < len(got) < len(made)
        assert got == made[: len(got)]
        wait_until(
            lambda: "replay stopped" in server.output(), timeout=10, what="the stop's log line"
        )
        output = server.output()
        said = [line for line in output.splitlines() if "event stream" in line]
        assert len(said) == 1 and f"stopped after {last_id}" in said[0], said
        assert "Traceback" not in output and "ASGI" not in output, output

        resumed_from = {"Last-Event-ID": str(last_id)}
        with httpx.stream("GET", events, headers=resumed_from, timeout=60) as resumed:
            stream = EventStream(resumed)
            assert stream.hello().id == last_id
            rest = [event.data["run_id"] for event in stream.transitions(len(made) - len(got))]
        assert got + rest == made
    finally:
        outage.end()
        server.stop()


def test_reads_kept_busy_past_the_pools_wait_are_not_an_outage(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """Every read connection busy for longer than a read waits for one (reads queued behind an
    administrator's lock) while the database answers: the pool is kept, the server opens no more
    read connections than its pool's 8, the reads beyond them fail as busy (503, saying so, not
    'unreachable'), health stays SERVING, and the reads in flight answer once the lock goes."""
    url = postgres_databases.create()
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=IDLE_LOOPS, ui=True).start()
    locker = psycopg.connect(url)
    try:
        made = new_flow_run(server.stub())
        name = url.partition("?")[0].rsplit("/", 1)[1]
        waiting_for_the_lock = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        )
        locker.execute("LOCK TABLE flow_runs IN ACCESS EXCLUSIVE MODE")
        readers = ThreadPoolExecutor(12)
        pages = [
            readers.submit(httpx.get, f"{server.ui_url}api/flow-runs", timeout=60)
            for _ in range(12)
        ]
        most = 0

        def four_answered() -> bool:
            nonlocal most
            row = postgres_databases.admin.execute(waiting_for_the_lock, (name,)).fetchone()
            most = max(most, row[0] if row else 0)
            return sum(page.done() for page in pages) >= 4

        # 8 reads hold the pool's connections, waiting for the lock; the others wait 10 s
        # for a connection. (Before: the first of them dropped the pool, the 3 others took a
        # new pool's connections and waited for the lock too, 11 read connections and more.)
        wait_until(four_answered, timeout=40, what="the 4 reads beyond the pool answered")
        assert most <= 8
        busy = [page.result() for page in pages if page.done()]
        in_flight = [page for page in pages if not page.done()]
        assert len(busy) >= 4  # more if a loop's first sweep took a connection
        for page in busy:
            assert page.status_code == 503, page.text
            assert "stayed busy" in page.json()["error"], page.text
            assert "unreachable" not in page.json()["error"], page.text
        locker.rollback()
        answered = [page.result() for page in in_flight]
        assert [page.status_code for page in answered] == [200] * len(answered)
        assert all(page.json()["flow_runs"][0]["id"] == made.id for page in answered)
        readers.shutdown()
        assert health(server) == SERVING
        assert "does not answer" not in server.output()
    finally:
        locker.close()
        server.stop()


def test_the_read_pool_size_is_a_setting(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """STATEWARD_READ_POOL_SIZE=2: reads waiting for an administrator's lock hold the
    server's 2 read connections; the others wait 10 s for one and fail as busy, saying 2 (the
    pool had 8 connections whatever the setting, and all four reads waited for the lock)."""
    url = postgres_databases.create()
    env = {**IDLE_LOOPS, "STATEWARD_READ_POOL_SIZE": "2"}
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=env).start()
    locker = psycopg.connect(url)
    try:
        stub = server.stub()
        made = new_flow_run(stub)
        name = url.partition("?")[0].rsplit("/", 1)[1]
        waiting_for_the_lock = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        )
        locker.execute("LOCK TABLE flow_runs IN ACCESS EXCLUSIVE MODE")
        readers = ThreadPoolExecutor(4)

        def read() -> object:
            try:
                return stub.ListFlowRuns(pb.ListFlowRunsRequest(), timeout=60)
            except grpc.RpcError as error:
                return error

        answers = [readers.submit(read) for _ in range(4)]
        most = 0

        def two_answered() -> bool:
            nonlocal most
            row = postgres_databases.admin.execute(waiting_for_the_lock, (name,)).fetchone()
            most = max(most, row[0] if row else 0)
            return sum(answer.done() for answer in answers) >= 2

        wait_until(two_answered, timeout=40, what="the 2 reads beyond the pool answered")
        assert most <= 2
        locker.rollback()
        replies = [answer.result() for answer in answers]
        busy = [reply for reply in replies if isinstance(reply, grpc.RpcError)]
        # 2 at least: more when a loop's first sweep held a read connection.
        assert len(busy) >= 2, replies
        for error in busy:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "all 2 PostgreSQL read connections" in error.details(), error.details()
        for reply in replies:
            if reply not in busy:
                assert reply.flow_runs[0].id == made.id  # type: ignore[attr-defined]
        readers.shutdown()
    finally:
        locker.close()
        server.stop()


def test_health_follows_an_outage_while_reads_fill_the_default_thread_pool(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """Reads held by an administrator's lock fill the server's default thread pool (where
    reads run), its read pool has room; then the database refuses connections and its idle
    sessions end. Health says NOT_SERVING within seconds: its ping waited behind the held
    reads in that pool (until their 30 s statement_timeout) and health said SERVING as long."""
    url = postgres_databases.create()
    outage = Outage(postgres_databases, url)
    threads = min(32, (os.cpu_count() or 1) + 4)  # the default thread pool's, in the server too
    env = {**IDLE_LOOPS, "STATEWARD_READ_POOL_SIZE": str(threads + 4)}
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=env).start()
    locker = psycopg.connect(url)
    readers = ThreadPoolExecutor(threads + 2)
    try:
        stub = server.stub()
        new_flow_run(stub)
        name = url.partition("?")[0].rsplit("/", 1)[1]
        admin = postgres_databases.admin
        locker.execute("LOCK TABLE flow_runs IN ACCESS EXCLUSIVE MODE")
        locker_pid = locker.info.backend_pid

        def read() -> object:
            try:
                return stub.ListFlowRuns(pb.ListFlowRunsRequest(), timeout=90)
            except grpc.RpcError as error:
                return error

        held = [readers.submit(read) for _ in range(threads + 2)]

        def reads_held() -> bool:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                (name,),
            ).fetchone()
            return row is not None and row[0] >= threads

        wait_until(reads_held, timeout=30, what="reads waiting for the lock in every thread")
        assert health(server) == SERVING
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND state = 'idle' AND pid <> %s",
            (name, locker_pid),
        )
        started = time.monotonic()
        wait_until(
            lambda: health(server) == NOT_SERVING, timeout=60, what="health to say NOT_SERVING"
        )
        took = time.monotonic() - started
        assert not all(read.done() for read in held)  # the reads were still held
        assert took < 10, took
    finally:
        outage.end()
        with contextlib.suppress(psycopg.Error):
            locker.rollback()
        locker.close()
        readers.shutdown()
        server.stop()


def test_a_read_the_database_cancelled_says_so_not_unreachable(
    postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    """A read waiting for an administrator's lock, cancelled (as statement_timeout cancels one
    after 30 s, or an administrator): UNAVAILABLE saying the database cancelled the statement,
    not that it is unreachable (it answers: the next read, the lock gone, succeeds)."""
    url = postgres_databases.create()
    server = ServerProcess(url, log_path=tmp_path / "server.log", env=IDLE_LOOPS).start()
    locker = psycopg.connect(url)
    try:
        stub = server.stub()
        made = new_flow_run(stub)
        name = url.partition("?")[0].rsplit("/", 1)[1]
        locker.execute("LOCK TABLE flow_runs IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(1) as reader:
            listing = reader.submit(stub.ListFlowRuns, pb.ListFlowRunsRequest(), timeout=60)

            def cancelled() -> bool:
                # Every read waiting for the lock (a loop's first sweep may be one of them).
                postgres_databases.admin.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND wait_event_type = 'Lock'",
                    (name,),
                )
                return listing.done()

            wait_until(cancelled, timeout=20, what="the listing waiting for the lock, cancelled")
            with pytest.raises(grpc.RpcError) as refused:
                listing.result()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        said = refused.value.details()
        assert "cancelled the statement" in said, said
        assert "canceling statement due to user request" in said, said
        assert "unreachable" not in said, said
        locker.rollback()
        assert [run.id for run in stub.ListFlowRuns(pb.ListFlowRunsRequest()).flow_runs] == [
            made.id
        ]
    finally:
        locker.close()
        server.stop()
