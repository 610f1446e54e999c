"""The gRPC servicer: each unary RPC is the API method of the same name; WatchTransitions
streams from the broadcaster. Refusals raise ServiceError, which the errors interceptor turns
into a status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from stateward_service.api import OrchestrationApi

Context = grpc.aio.ServicerContext[Any, Any]


class OrchestrationServicer(orchestration_pb2_grpc.OrchestrationServiceServicer):
    def __init__(self, api: OrchestrationApi) -> None:
        self.api = api

    async def CreateFlowRun(
        self, request: pb.CreateFlowRunRequest, context: Context
    ) -> pb.CreateFlowRunResponse:
        return self.api.CreateFlowRun(request)

    async def GetFlowRun(
        self, request: pb.GetFlowRunRequest, context: Context
    ) -> pb.GetFlowRunResponse:
        return self.api.GetFlowRun(request)

    async def ListFlowRuns(
        self, request: pb.ListFlowRunsRequest, context: Context
    ) -> pb.ListFlowRunsResponse:
        return self.api.ListFlowRuns(request)

    async def CreateTaskRun(
        self, request: pb.CreateTaskRunRequest, context: Context
    ) -> pb.CreateTaskRunResponse:
        return self.api.CreateTaskRun(request)

    async def GetTaskRun(
        self, request: pb.GetTaskRunRequest, context: Context
    ) -> pb.GetTaskRunResponse:
        return self.api.GetTaskRun(request)

    async def ListTaskRuns(
        self, request: pb.ListTaskRunsRequest, context: Context
    ) -> pb.ListTaskRunsResponse:
        return self.api.ListTaskRuns(request)

    async def SetState(self, request: pb.SetStateRequest, context: Context) -> pb.SetStateResponse:
        return self.api.SetState(request)

    async def ListStates(
        self, request: pb.ListStatesRequest, context: Context
    ) -> pb.ListStatesResponse:
        return self.api.ListStates(request)

    async def CreateConcurrencyLimit(
        self, request: pb.CreateConcurrencyLimitRequest, context: Context
    ) -> pb.CreateConcurrencyLimitResponse:
        return self.api.CreateConcurrencyLimit(request)

    async def GetConcurrencyLimit(
        self, request: pb.GetConcurrencyLimitRequest, context: Context
    ) -> pb.GetConcurrencyLimitResponse:
        return self.api.GetConcurrencyLimit(request)

    async def ListConcurrencyLimits(
        self, request: pb.ListConcurrencyLimitsRequest, context: Context
    ) -> pb.ListConcurrencyLimitsResponse:
        return self.api.ListConcurrencyLimits(request)

    async def DeleteConcurrencyLimit(
        self, request: pb.DeleteConcurrencyLimitRequest, context: Context
    ) -> pb.DeleteConcurrencyLimitResponse:
        return self.api.DeleteConcurrencyLimit(request)

    async def WatchTransitions(
        self, request: pb.WatchTransitionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchTransitionsResponse]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "WatchTransitions is not available on this server yet"
        )
        yield pb.WatchTransitionsResponse()
