"""Kind 9 of the first day: server reflection serves the protos with their comments (what
`grpcurl describe` shows), and with an API key the README shows how to send it (`-H`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import ROOT, ServerProcess


def _file_of(
    channel: grpc.Channel, symbol: str, metadata: tuple[tuple[str, str], ...] = ()
) -> list[descriptor_pb2.FileDescriptorProto]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    responses: Iterator[reflection_pb2.ServerReflectionResponse] = stub.ServerReflectionInfo(
        iter([request]), metadata=metadata, timeout=10
    )
    (response,) = list(responses)
    assert not response.HasField("error_response"), response.error_response
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def _comments(file: descriptor_pb2.FileDescriptorProto) -> str:
    return " ".join(loc.leading_comments for loc in file.source_code_info.location)


def test_reflection_serves_the_comments_of_the_protos(server: ServerProcess) -> None:
    files = _file_of(server.channel(), "stateward.v1.OrchestrationService")
    (service_file,) = [f for f in files if f.name == "stateward/v1/orchestration.proto"]
    text = _comments(service_file)
    assert "Keeps flow runs and task runs, decides their state changes" in text
    states = _file_of(server.channel(), "stateward.v1.StateType")
    assert "SCHEDULED" in str(states[0].enum_type) and _comments(states[0])
    # The standard services are still there, for `grpcurl list` and health checks.
    health = _file_of(server.channel(), "grpc.health.v1.Health")
    assert [s.name for s in health[0].service] == ["Health"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db: Path = tmp_path_factory.mktemp("keyed") / "keyed.db"
    server = ServerProcess(db, env={"STATEWARD_API_KEY": "k3y"}).start()
    yield server
    server.stop()


def test_with_a_key_reflection_needs_it_and_the_readme_says_how(keyed: ServerProcess) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _file_of(keyed.channel(), "stateward.v1.OrchestrationService")
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    files = _file_of(
        keyed.channel(), "stateward.v1.OrchestrationService", (("authorization", "Bearer k3y"),)
    )
    assert any(f.name == "stateward/v1/orchestration.proto" for f in files)
    readme = (ROOT / "README.md").read_text()
    assert '-H "authorization: Bearer $STATEWARD_API_KEY"' in readme
