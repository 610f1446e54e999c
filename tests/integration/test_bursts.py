"""Bursts: thousands of calls arriving at once all reach the service within the documented
limits (none ends CANCELLED or UNAVAILABLE on the way); past the server's limit of calls at
once, RESOURCE_EXHAUSTED. Clients resume a watch on CANCELLED as on UNAVAILABLE."""

from __future__ import annotations

import asyncio
import collections

import grpc
import pytest

from stateward._transport import can_reconnect
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from tests.support import ServerProcess

MISSING = "7d0c3b0e-0000-4000-8000-000000000000"


async def _burst(target: str, calls: int, channels: int) -> collections.Counter[str]:
    # A connection each (channels to one target share one by default), each ready before the
    # burst: a connection's first calls go out before the server's stream limit is known.
    opened = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    for channel in opened:
        await asyncio.wait_for(channel.channel_ready(), 30)
    stubs = [orchestration_pb2_grpc.OrchestrationServiceStub(c) for c in opened]
    codes: collections.Counter[str] = collections.Counter()

    async def one(index: int) -> None:
        try:
            await stubs[index % channels].GetFlowRun(pb.GetFlowRunRequest(id=MISSING), timeout=120)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1

    try:
        await asyncio.gather(*(one(index) for index in range(calls)))
    finally:
        for channel in opened:
            await channel.close()
    return codes


@pytest.mark.parametrize("calls, connections", [(3000, 10), (1000, 1)])
def test_a_burst_within_the_limits_all_reaches_the_service(server, calls, connections):
    """3,000 calls at once over 10 connections, or 1,000 (the limit of one connection) over
    one: gRPC's own limit on calls not yet picked up (1,000) cancelled some of them."""
    codes = asyncio.run(_burst(server.target, calls, connections))
    assert codes == {"NOT_FOUND": calls}  # each was answered by the service itself


def test_past_the_limit_of_calls_at_once_calls_are_resource_exhausted(tmp_path):
    server = ServerProcess(tmp_path / "limited.db", args=["--max-concurrent-calls", "20"]).start()
    channel = grpc.insecure_channel(server.target)
    stub = orchestration_pb2_grpc.OrchestrationServiceStub(channel)
    watches = []
    try:
        for _ in range(20):  # each open watch holds one of the 20
            watch = stub.WatchTransitions(pb.WatchTransitionsRequest(), timeout=60)
            watch.initial_metadata()
            watches.append(watch)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetFlowRun(pb.GetFlowRunRequest(id=MISSING), timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches.pop().cancel()
        with pytest.raises(grpc.RpcError) as answered:  # a slot is free again: it gets in
            _retry_until_admitted(stub)
        assert answered.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for watch in watches:
            watch.cancel()
        channel.close()
        server.stop()


def _retry_until_admitted(stub: orchestration_pb2_grpc.OrchestrationServiceStub) -> None:
    """Call until the call is not refused for the limit (the cancel frees its slot a moment
    after the client sent it)."""
    for _ in range(200):
        try:
            stub.GetFlowRun(pb.GetFlowRunRequest(id=MISSING), timeout=30)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        else:
            return


class _Ended(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(
    "code, resumes",
    [
        (grpc.StatusCode.CANCELLED, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.UNAUTHENTICATED, False),
    ],
)
def test_watch_resumes_on_cancelled_as_on_unavailable(code, resumes):
    assert can_reconnect(_Ended(code)) is resumes
