"""The Prometheus endpoint, scraped: calls by method and status, latency, transitions by state
type, subscribers (freed when a client cancels), loop sweeps, database size."""

from __future__ import annotations

import socket
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stateward.client import Client
from stateward.exceptions import NotFound
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from tests.support import ServerProcess, wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counted(port: int, name: str, at_least: float, **labels: str) -> float:
    """The sample once it reaches `at_least` (or what it is after 5 s). The server counts a call
    as its handler unwinds, after the status went out, and a stream's subscription as its first
    read begins, after the headers went out: a client sees either a moment before a scrape does."""
    deadline = time.monotonic() + 5
    while (found := value(scrape(port), name, **labels)) < at_least:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return found


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    server = ServerProcess(
        tmp_path_factory.mktemp("metrics") / "metrics.db",
        args=["--metrics-port", str(port), "--late-runs-interval", "0.1"],
    ).start()
    yield server, port
    server.stop()


def test_metrics_are_off_unless_asked_for(server):
    assert "metrics:" not in server.output()


def test_a_scrape_shows_calls_latency_transitions_loops_and_size(metered):
    server, port = metered
    assert server.says(f"metrics: http://127.0.0.1:{port}/metrics"), server.output()
    with Client(server.target) as client:
        run = client.create_flow_run("metered", state=State(StateType.PENDING))
        client.set_state(run.id, State(StateType.RUNNING))
        client.set_state(run.id, State(StateType.COMPLETED))
        with pytest.raises(NotFound):
            client.get_flow_run("00000000-0000-4000-8000-000000000000")
    # Each count is awaited: the server counts a call after its answer went out.
    assert counted(port, "stateward_rpc_requests_total", 1, method="CreateFlowRun", code="OK") >= 1
    assert counted(port, "stateward_rpc_requests_total", 2, method="SetState", code="OK") >= 2
    not_found = counted(
        port, "stateward_rpc_requests_total", 1, method="GetFlowRun", code="NOT_FOUND"
    )
    assert not_found >= 1
    count = counted(port, "stateward_rpc_duration_seconds_count", 2, method="SetState", code="OK")
    assert count >= 2
    for state_type in ("PENDING", "RUNNING", "COMPLETED"):
        assert counted(port, "stateward_transitions_total", 1, state_type=state_type) >= 1
    assert counted(port, "stateward_loop_runs_total", 2, loop="late_runs") >= 2  # 0.1 s sweeps
    samples = scrape(port)
    buckets = [
        key for key in samples
        if key[0] == "stateward_rpc_duration_seconds_bucket" and ("method", "SetState") in key[1]
    ]  # fmt: skip
    assert buckets
    assert value(samples, "stateward_database_bytes") > 0
    assert ("stateward_stream_subscribers_lagging", ()) in samples


def test_subscribers_are_counted_and_freed_when_the_client_cancels(metered):
    server, port = metered
    before = value(scrape(port), "stateward_stream_subscribers")
    streams = [server.stub().WatchTransitions(pb.WatchTransitionsRequest()) for _ in range(3)]
    for stream in streams:
        stream.initial_metadata()
    assert counted(port, "stateward_stream_subscribers", before + 3) == before + 3
    for stream in streams:
        stream.cancel()
    wait_until(
        lambda: value(scrape(port), "stateward_stream_subscribers") == before,
        5,
        "the cancelled streams to be freed",
    )
    cancelled = counted(
        port, "stateward_rpc_requests_total", 3, method="WatchTransitions", code="CANCELLED"
    )
    assert cancelled >= 3


def test_refused_calls_are_counted_too(tmp_path):
    port = free_port()
    server = ServerProcess(
        tmp_path / "auth-metrics.db",
        args=["--metrics-port", str(port)],
        env={"STATEWARD_API_KEY": "k"},
    ).start()
    try:
        with pytest.raises(grpc.RpcError):
            server.stub().ListFlowRuns(pb.ListFlowRunsRequest())
        refused = counted(
            port, "stateward_rpc_requests_total", 1, method="ListFlowRuns", code="UNAUTHENTICATED"
        )
        assert refused == 1
    finally:
        server.stop()
