"""The client's exception for a call a server (or a proxy in front of it) ends with a status,
over real gRPC: a call the server cancelled is one to send again, as for UNAVAILABLE."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from stateward.client import Client
from stateward.exceptions import NotFound, ServerUnavailable
from stateward.v1 import orchestration_pb2_grpc


class _Ending(orchestration_pb2_grpc.OrchestrationServiceServicer):
    """Ends each GetFlowRun with the status its id names (a server stopping cancels the calls
    that arrive as it closes; a proxy may too)."""

    def GetFlowRun(self, request, context):  # type: ignore[no-untyped-def]
        code = grpc.StatusCode[request.id]
        context.abort(code, f"ended with {code.name}")


@pytest.fixture
def ending_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    orchestration_pb2_grpc.add_OrchestrationServiceServicer_to_server(_Ending(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_a_call_the_server_cancelled_raises_server_unavailable(ending_server):
    """CANCELLED is never this client's own doing (it cancels no call): the server stopped
    under the call, or a proxy ended it. Like UNAVAILABLE it is ServerUnavailable, which the
    SDK sends again (it was a bare RpcError, and a flow run failed on a server restart)."""
    with Client(ending_server, timeout=10) as client:
        with pytest.raises(ServerUnavailable, match="cancelled the call") as cancelled:
            client.get_flow_run("CANCELLED")
        assert ending_server in str(cancelled.value)
        with pytest.raises(NotFound, match="ended with NOT_FOUND"):
            client.get_flow_run("NOT_FOUND")
