"""`stateward server start --workers N`: N server processes on one port and one database, started,
watched and stopped by their parent (real subprocesses, real signals, real connections)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.client import WatchStopper
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from tests.integration.test_metrics import counted, free_port, scrape, value
from tests.integration.test_security import certificates  # noqa: F401 - a fixture
from tests.support import (
    ACCEPT,
    ROOT,
    ST,
    ServerProcess,
    new_flow_run,
    state,
    wait_until,
    write_lock_held,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel of its own: a connection


def workers_of(server: ServerProcess) -> set[int]:
    """The worker processes of the server (its children that run a worker)."""
    assert server.process is not None
    pid = server.process.pid
    found = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(int(child))
    return found


def two_workers(server: ServerProcess) -> set[int]:
    wait_until(lambda: len(workers_of(server)) == 2, what="two worker processes")
    return workers_of(server)


def serving_processes(port: int, pids: set[int]) -> set[int]:
    """Which of `pids` hold an established connection on local port `port` (from /proc)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                sockets.add(f"socket:[{fields[9]}]")
    holding = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in sockets:
                    holding.add(pid)
            except OSError:
                continue
    return holding


def gone(pid: int) -> bool:
    """Whether process `pid` ended (a zombie left to an init that does not reap counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "workers.db", args=["--workers", "2"]).start()
    try:
        yield server
    finally:
        if not server._log.closed:
            server.stop()


@pytest.fixture
def workers_on(tmp_path: Path, database: str) -> Iterator[ServerProcess]:
    """Two workers on a database of each backend."""
    db: Path | str = database if "://" in database else Path(database)
    server = ServerProcess(db, args=["--workers", "2"], log_path=tmp_path / "workers.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_workers_share_the_port_and_the_database_and_each_answers(workers_on):
    workers = workers_on
    output = workers.output()
    assert output.count("Stateward server listening on") == 1
    assert f"listening on {workers.target} with 2 workers (database " in output
    pids = two_workers(workers)
    channels = [grpc.insecure_channel(workers.target, OWN_CONNECTION) for _ in range(24)]
    try:
        made = set()
        for channel in channels:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == SERVING
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            made.add(new_flow_run(stub, flow_name="spread").id)
        # 24 connections spread by the kernel: each worker holds some (all on one: 2^-23).
        assert serving_processes(workers.port, pids) == pids
        for channel in channels[:2]:  # any worker reads what every worker wrote
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            listed = stub.ListFlowRuns(pb.ListFlowRunsRequest(flow_names=["spread"]))
            assert {run.id for run in listed.flow_runs} == made
    finally:
        for channel in channels:
            channel.close()


def test_sigterm_drains_every_worker_and_the_server_exits_cleanly(workers):
    pids = two_workers(workers)
    assert workers.stop(signal.SIGTERM) == 0
    output = workers.output()
    assert output.count("Stateward server shutting down...") == 1
    assert output.rstrip().endswith("Stateward server stopped.")
    assert all(gone(pid) for pid in pids)


def test_a_signal_to_every_process_at_once_is_one_graceful_stop(workers):
    """A Ctrl-C reaches the whole process group, and systemd signals every process of the
    service: each worker hears it and its parent's request, and stops once, gracefully."""
    assert workers.process is not None
    pids = two_workers(workers)
    for pid in (workers.process.pid, *pids):
        os.kill(pid, signal.SIGINT)
    assert workers.process.wait(60) == 0
    output = workers.output()
    assert "stopping now" not in output, output
    assert output.rstrip().endswith("Stateward server stopped.")


def test_a_ctrl_c_while_the_workers_start_is_one_graceful_stop(tmp_path):
    """A Ctrl-C (SIGINT to the process group) while the workers' interpreters still import:
    the server stops as it does once they serve, without a KeyboardInterrupt traceback from
    each worker."""
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stateward", "server", "start", "--port", "0",
             "--db", str(tmp_path / "ctrl-c.db"), "--no-ui", "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "STATEWARD_HOME": str(tmp_path)},
        )  # fmt: skip
    server = ServerProcess(tmp_path / "ctrl-c.db")
    server.process = process
    try:
        wait_until(lambda: len(workers_of(server)) == 2, 30, "two worker processes")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = log_path.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert output.rstrip().endswith("Stateward server stopped."), output


def test_a_second_signal_ends_every_worker_s_grace_at_once(tmp_path):
    """With a grace of 60 s and writes waiting for the SQLite write lock another process holds,
    a second SIGTERM to the parent ends the grace in the workers: the grace is over long before
    the lock is released (a worker told nothing would wait the whole 60 s for it)."""
    database = tmp_path / "grace.db"
    server = ServerProcess(database, args=["--workers", "2", "--shutdown-grace", "60"]).start()
    assert server.process is not None
    channels = [grpc.insecure_channel(server.target, OWN_CONNECTION) for _ in range(8)]
    try:
        stubs = [orchestration_pb2_grpc.OrchestrationServiceStub(c) for c in channels]
        runs = [new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id for stub in stubs]
        assert serving_processes(server.port, two_workers(server)) == workers_of(server)
        with write_lock_held(database) as release:
            calls = [
                stub.SetState.future(
                    pb.SetStateRequest(run_id=run_id, state=state(ST.STATE_TYPE_RUNNING)),
                    timeout=90,
                )
                for stub, run_id in zip(stubs, runs, strict=True)
            ]
            for channel in channels:  # each connection's call reached its worker's writer
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "shutting down" in server.output(), 30, "the shutdown")
            server.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: server.output().count("grace period is over") == 2,
                30,
                "both workers' grace to end",
            )
            release()
        assert server.process.wait(60) == 0
        for call in calls:
            try:
                assert call.result().status == ACCEPT
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels:
            channel.close()
        server.stop()


def test_a_worker_that_dies_is_started_again_and_serves(workers):
    first, second = sorted(two_workers(workers))
    os.kill(first, signal.SIGKILL)
    assert workers.says(f"worker 1 (pid {first}) was killed by SIGKILL; starting another") or (
        workers.says(f"worker 2 (pid {first}) was killed by SIGKILL; starting another")
    )
    assert workers.says("takes calls again")
    pids = two_workers(workers)
    assert second in pids and first not in pids
    channels = [grpc.insecure_channel(workers.target, OWN_CONNECTION) for _ in range(24)]
    try:
        for channel in channels:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == SERVING
        assert serving_processes(workers.port, pids) == pids
    finally:
        for channel in channels:
            channel.close()
    assert workers.stop() == 0


def test_a_worker_that_dies_soon_after_it_takes_calls_waits_longer_each_time(workers):
    """A worker that crashes as soon as it serves is started again after 1 s, then 2 s...
    instead of at once each time (3 restarts a second, most of a core, for as long as it
    crashes); the other worker serves meanwhile."""
    first, second = sorted(two_workers(workers))
    os.kill(first, signal.SIGKILL)
    assert workers.says(f"(pid {first}) was killed by SIGKILL; starting another in 1 s (it took")
    wait_until(lambda: len(workers_of(workers) - {first, second}) == 1, 30, "a new worker")
    (again,) = workers_of(workers) - {first, second}
    assert workers.says(f"(pid {again}) takes calls again")
    os.kill(again, signal.SIGKILL)
    killed = time.monotonic()
    assert workers.says(f"(pid {again}) was killed by SIGKILL; starting another in 2 s")
    wait_until(lambda: len(workers_of(workers) - {first, second, again}) == 1, 30, "another")
    assert time.monotonic() - killed >= 2.0
    assert workers.says("takes calls again")
    with grpc.insecure_channel(workers.target, OWN_CONNECTION) as channel:
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
        assert new_flow_run(stub).id
    assert workers.stop() == 0


def test_the_delay_grows_across_a_worker_killed_before_it_takes_calls(workers):
    """A worker started again after a delay and killed before it takes calls is started once
    more at once; when that one too dies soon after taking calls, the delay goes on doubling
    (it started again from 1 s: every other start killed early kept it at 1 s)."""
    first, second = sorted(two_workers(workers))
    early = kill_while_it_starts_again(workers, first, {first, second})  # after a delay of 1 s
    known = {first, second, early}
    wait_until(lambda: len(workers_of(workers) - known) == 1, 30, "a new worker")
    (again,) = workers_of(workers) - known
    assert workers.says(f"(pid {again}) takes calls again")
    os.kill(again, signal.SIGKILL)
    assert workers.says(f"(pid {again}) was killed by SIGKILL; starting another in 2 s")
    assert workers.says("takes calls again")
    assert workers.stop() == 0


def kill_while_it_starts_again(server: ServerProcess, pid: int, known: set[int]) -> int:
    """SIGKILL worker `pid`, then the worker started in its place (not one of `known`) while
    its interpreter is still importing; returns that one's pid."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: len(workers_of(server) - known) == 1, 30, "a new worker")
    (restarting,) = workers_of(server) - known
    os.kill(restarting, signal.SIGKILL)
    return restarting


def test_a_worker_killed_while_it_starts_again_is_started_once_more(workers):
    """A restarting worker killed from outside before it takes calls (the OOM killer, an
    operator) is no reason to stop the server and the worker still serving: it is started
    once more (a second death before taking calls in a row stops the server, below)."""
    first, second = sorted(two_workers(workers))
    restarting = kill_while_it_starts_again(workers, first, {first, second})
    assert workers.says(f"(pid {restarting}) was killed by SIGKILL before it took calls; starting")
    assert workers.says("takes calls again"), workers.output()
    assert second in two_workers(workers)
    with grpc.insecure_channel(workers.target, OWN_CONNECTION) as channel:
        stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
        assert new_flow_run(stub).id
    assert workers.stop() == 0
    assert "Error" not in workers.output()


def test_a_worker_killed_twice_in_a_row_before_it_takes_calls_stops_the_server(workers):
    first, second = sorted(two_workers(workers))
    restarting = kill_while_it_starts_again(workers, first, {first, second})
    kill_while_it_starts_again(workers, restarting, {first, second, restarting})
    assert workers.process is not None
    assert workers.process.wait(60) == 1
    last = workers.output().rstrip().splitlines()[-1]
    assert last.startswith("Error: worker ") and "killed by SIGKILL before it took calls" in last
    wait_until(lambda: gone(second), 60, "the other worker to stop")


def test_a_stream_broken_by_a_worker_s_death_is_not_called_a_tls_problem(workers):
    """The client whose worker died says its connection broke, and resumes on the other
    worker, instead of "accepts connections, but plaintext gRPC to it failed ... If the server
    uses TLS, set STATEWARD_TLS_CA" (its probe reached the other worker), sending the operator
    to a TLS setting that is not wrong."""
    from stateward import Client

    pids = two_workers(workers)
    started: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    retried: list[str] = []
    stopper = WatchStopper()
    client = Client(workers.target)

    def follow() -> None:
        for _ in client.watch(started=started.put, retrying=lambda e: retried.append(str(e)),
                              stopper=stopper):  # fmt: skip
            pass

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        started.get(timeout=30)
        (serving,) = serving_processes(workers.port, pids)
        os.kill(serving, signal.SIGKILL)
        started.get(timeout=30)  # resumed, on the other worker
    finally:
        stopper.stop()
        follower.join(30)
        client.close()
    assert len(retried) == 1, retried
    assert "broke" in retried[0] and "TLS" not in retried[0], retried[0]


def test_a_worker_that_cannot_start_again_stops_the_server_with_one_line(workers, tmp_path):
    pids = two_workers(workers)
    database = tmp_path / "workers.db"
    database.rename(tmp_path / "kept.db")  # the running workers keep theirs open
    database.write_bytes(b"not a database" * 100)
    os.kill(min(pids), signal.SIGKILL)
    assert workers.process is not None
    assert workers.process.wait(60) == 1
    last = workers.output().rstrip().splitlines()[-1]
    assert last.startswith("Error: ") and str(database) in last, last
    assert all(gone(pid) for pid in pids)


def test_workers_stop_by_themselves_when_their_parent_is_killed(workers):
    pids = two_workers(workers)
    workers.kill()
    wait_until(lambda: all(gone(pid) for pid in pids), 60, "the workers to stop")


def test_workers_stop_gracefully_when_their_parent_is_killed_while_they_start(tmp_path):
    """A parent SIGKILLed before its workers take calls: each worker finds it gone as it says it
    is ready, and stops as when its parent dies later (it crashed on the closed pipe, with two
    tracebacks, its server never stopped)."""
    server = ServerProcess(tmp_path / "orphans.db", args=["--workers", "2"])
    log_path = server.log_path
    with open(log_path, "wb") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "stateward", "server", "start", "--port", "0",
             "--db", str(server.db), "--no-ui", "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "STATEWARD_HOME": str(tmp_path)},
        )  # fmt: skip
    pids: set[int] = set()
    try:
        # Both held still while they start (their interpreters take a while to import).
        wait_until(lambda: len(workers_of(server)) == 2, 30, "two worker processes")
        pids = workers_of(server)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # Killed once it waits on its workers (it has written what each needs to start: killed
        # before, a worker fails in multiprocessing's own code, unpickling half a message).
        parent = server.process.pid
        wait_until(lambda: "poll" in Path(f"/proc/{parent}/wchan").read_text(), 30, "the wait")
        server.process.kill()
        server.process.wait()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: all(gone(pid) for pid in pids), 60, "the workers to stop")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    output = log_path.read_text()
    assert "Traceback" not in output, output


def test_the_port_is_held_while_the_database_is_checked(tmp_path):
    """Two servers started together on one port: the one still checking its database (here a
    new file waiting for another process's write lock) already holds the port, so the other
    is refused, instead of both taking it once the check ends, each with its own database and
    the kernel splitting the clients between them."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def taken() -> bool:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return True
            return False

    def start(database: Path) -> list[str]:
        return [sys.executable, "-m", "stateward", "server", "start", "--port", str(port),
                "--db", str(database), "--no-ui", "--workers", "2"]  # fmt: skip

    environment = {**os.environ, "STATEWARD_HOME": str(tmp_path)}
    slow = tmp_path / "slow.db"
    with contextlib.closing(sqlite3.connect(slow)) as new_file:  # as the server makes it
        new_file.execute("PRAGMA journal_mode=WAL")
    with write_lock_held(slow), open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(
            start(slow), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment
        )
        try:
            wait_until(taken, 30, "the first server to hold its port")
            second = subprocess.run(
                start(tmp_path / "other.db"), capture_output=True, text=True, cwd=ROOT,
                env=environment, timeout=60,
            )  # fmt: skip
        finally:
            first.send_signal(signal.SIGTERM)
    first.wait(60)  # stopped by the signal while it checks the database
    assert second.returncode == 1, second.stdout + second.stderr
    assert "the port is already in use" in second.stderr


def test_every_worker_takes_the_api_key_and_tls(tmp_path, certificates):  # noqa: F811
    server = ServerProcess(
        tmp_path / "secure.db",
        args=[
            "--workers", "2",
            "--tls-cert", str(certificates["server_cert"]),
            "--tls-key", str(certificates["server_key"]),
        ],
        env={"STATEWARD_API_KEY": "the-key"},
    ).start()  # fmt: skip
    try:
        pids = two_workers(server)
        credentials = grpc.ssl_channel_credentials(certificates["ca"].read_bytes())
        channels = [
            grpc.secure_channel(server.target, credentials, OWN_CONNECTION) for _ in range(24)
        ]
        try:
            for channel in channels:
                stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
                request = pb.GetFlowRunRequest(id="00000000-0000-0000-0000-000000000000")
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GetFlowRun(request)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                keyed = (("authorization", "Bearer the-key"),)
                with pytest.raises(grpc.RpcError) as unknown:
                    stub.GetFlowRun(request, metadata=keyed)
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert serving_processes(server.port, pids) == pids
        finally:
            for channel in channels:
                channel.close()
    finally:
        server.stop()


def test_a_server_stopping_before_every_worker_took_calls_never_says_it_listens(tmp_path):
    """A signal while a worker is still starting: the workers that took calls stop, and the
    last one, ready after them, does not make the parent say "listening on" (the ready line a
    supervisor or a test waits for) after "shutting down...", nor with a count of workers."""
    with socket.socket() as probe:  # a free port, for a health check while no line says it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stateward", "server", "start", "--port", str(port),
             "--db", str(tmp_path / "early.db"), "--no-ui", "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "STATEWARD_HOME": str(tmp_path)},
        )  # fmt: skip
    server = ServerProcess(tmp_path / "early.db")
    server.process = process
    held = 0
    try:
        # One worker held still while it starts (its interpreter takes a while to import).
        wait_until(lambda: len(workers_of(server)) == 2, 30, "two worker processes")
        held = min(workers_of(server))
        os.kill(held, signal.SIGSTOP)
        (running,) = workers_of(server) - {held}

        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{port}", OWN_CONNECTION) as channel:
                try:
                    health = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                except grpc.RpcError:
                    return False
                return health.status == SERVING

        wait_until(serving, 60, "the running worker to take calls")
        assert "listening on" not in log_path.read_text()  # the held one is not ready
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: gone(running), 60, "the running worker to stop")
        os.kill(held, signal.SIGCONT)
        assert process.wait(60) == 0
    finally:
        if held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(held, signal.SIGCONT)
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert "listening on" not in output, output
    assert output.count("Stateward server shutting down...") == 1, output
    assert output.rstrip().endswith("Stateward server stopped."), output


def test_the_metrics_add_up_every_worker_s_and_outlive_a_worker(tmp_path):
    port = free_port()
    server = ServerProcess(
        tmp_path / "metered.db", args=["--workers", "2", "--metrics-port", str(port)]
    ).start()
    channels = [grpc.insecure_channel(server.target, OWN_CONNECTION) for _ in range(24)]
    streams = []
    try:
        assert server.says(f"metrics: http://127.0.0.1:{port}/metrics")
        pids = two_workers(server)
        for channel in channels:
            new_flow_run(orchestration_pb2_grpc.OrchestrationServiceStub(channel))
        assert serving_processes(server.port, pids) == pids  # both workers counted some
        assert (
            counted(port, "stateward_rpc_requests_total", 24, method="CreateFlowRun", code="OK")
            == 24
        )
        for channel in channels[:6]:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
            streams.append(stub.WatchTransitions(pb.WatchTransitionsRequest()))
        for stream in streams:
            stream.initial_metadata()
        wait_until(
            lambda: value(scrape(port), "stateward_stream_subscribers") == 6,
            what="the six streams counted",
        )
        for stream in streams:
            stream.cancel()
        os.kill(min(pids), signal.SIGKILL)
        assert server.says("takes calls again")
        wait_until(
            lambda: value(scrape(port), "stateward_stream_subscribers") == 0,
            what="the streams' end counted, the dead worker's gauge gone",
        )
        samples = scrape(port)  # a dead worker's calls stay counted
        assert (
            value(samples, "stateward_rpc_requests_total", method="CreateFlowRun", code="OK") == 24
        )
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()
        assert server.stop() == 0
