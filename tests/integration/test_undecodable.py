"""Bytes that are not a valid request, on every method the server serves: INVALID_ARGUMENT saying
the request could not be decoded (after the API key check when a key is required), never UNKNOWN;
and the standard health service's Watch streams the server's status."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward.v1 import orchestration_pb2 as pb
from tests.raw import SERVICE, call_raw, deep_parameters, every_method, malformed, path
from tests.support import ServerProcess

KEY = "undecodable-test-key"
CREATE_FLOW_RUN = SERVICE.methods_by_name["CreateFlowRun"]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(
        tmp_path_factory.mktemp("undecodable") / "keyed.db", env={"STATEWARD_API_KEY": KEY}
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize("method", every_method(), ids=path)
def test_undecodable_bytes_are_invalid_argument_on_every_method(server, method):
    for what, data in malformed(method):
        code, message = call_raw(server.channel(), method, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, message)
        assert "could not be decoded" in message, (what, message)


def test_a_struct_nested_deeper_than_the_decoder_allows_is_invalid_argument(server):
    code, message = call_raw(server.channel(), CREATE_FLOW_RUN, deep_parameters(200))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "could not be decoded" in message
    listed = server.stub().ListFlowRuns(pb.ListFlowRunsRequest(flow_names=["deep"]))
    assert list(listed.flow_runs) == []  # nothing was written


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=path)
def test_the_api_key_is_checked_before_the_bytes(keyed_server, method):
    channel = keyed_server.channel()
    for what, data in malformed(method):
        code, _ = call_raw(channel, method, data)
        assert code == grpc.StatusCode.UNAUTHENTICATED, what
        keyed = (("authorization", f"Bearer {KEY}"),)
        code, message = call_raw(channel, method, data, metadata=keyed)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, message)


def _watch_statuses(channel: grpc.Channel, service: str, count: int) -> list[int]:
    health = health_pb2_grpc.HealthStub(channel)
    replies = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
    statuses = []
    for reply in replies:
        statuses.append(reply.status)
        if len(statuses) == count:
            break
    replies.cancel()
    return statuses


@pytest.mark.parametrize("service", ["", "stateward.v1.OrchestrationService"])
def test_health_watch_streams_serving(server, service):
    assert _watch_statuses(server.channel(), service, 1) == [health_pb2.HealthCheckResponse.SERVING]


def test_health_watch_says_not_serving_when_the_server_stops(tmp_path):
    process = ServerProcess(tmp_path / "watched.db", env={"STATEWARD_API_KEY": KEY}).start()
    channel = grpc.insecure_channel(process.target)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        replies = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)  # needs no key
        first = next(replies)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        assert process.process is not None
        process.process.terminate()  # graceful: health turns NOT_SERVING first
        second = next(replies)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        channel.close()
        process.stop()


def test_health_list_names_every_service_and_its_status(server):
    health = health_pb2_grpc.HealthStub(server.channel())
    listed = health.List(health_pb2.HealthListRequest(), timeout=20)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": serving,
        "stateward.v1.OrchestrationService": serving,
    }
