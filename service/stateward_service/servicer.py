"""The gRPC servicer: each unary RPC is the API method of the same name; WatchTransitions
streams from the broadcaster. Refusals raise ServiceError, which the errors interceptor turns
into a status. `add_to_server` registers it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import message_factory

from stateward.v1 import orchestration_pb2
from stateward.v1 import orchestration_pb2 as pb
from stateward.wire import START_SEQUENCE_KEY, StatusCode
from stateward_service import validation as check
from stateward_service.api import OrchestrationApi
from stateward_service.broadcaster import (
    CursorAhead,
    CursorExpired,
    StreamClosed,
    TransitionBroadcaster,
    TransitionFilter,
)
from stateward_service.errors import ServiceError

Context = grpc.aio.ServicerContext[Any, Any]


class OrchestrationServicer:
    def __init__(self, api: OrchestrationApi, broadcaster: TransitionBroadcaster) -> None:
        self.api = api
        self.broadcaster = broadcaster

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

    async def RenewLeases(
        self, request: pb.RenewLeasesRequest, context: Context
    ) -> pb.RenewLeasesResponse:
        return self.api.RenewLeases(request)

    async def ExecuteBatch(
        self, request: pb.ExecuteBatchRequest, context: Context
    ) -> pb.ExecuteBatchResponse:
        return self.api.ExecuteBatch(request)

    async def WatchTransitions(
        self, request: pb.WatchTransitionsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Each message is an encoded WatchTransitionsResponse, made once for all subscribers
        (the method is registered without a response serializer)."""
        where = TransitionFilter(
            run_ids=frozenset(check.run_ids(request.run_ids, "run_ids")),
            flow_run_ids=frozenset(check.run_ids(request.flow_run_ids, "flow_run_ids")),
            state_types=frozenset(check.state_types(request.state_types, "state_types")),
        )
        after = request.after_sequence if request.HasField("after_sequence") else None
        broadcaster = self.broadcaster
        delivered = after if after is not None else broadcaster.last_sequence
        try:
            if after is not None:
                await asyncio.to_thread(broadcaster.check_cursor, after)
            # The stream starts after this sequence: a client that loses the stream before its
            # first message resumes from here without a gap.
            start = broadcaster.last_sequence if after is None else after
            await context.send_initial_metadata(((START_SEQUENCE_KEY, str(start)),))
            # aclosing: the subscription ends the moment this stream does (a client cancel
            # included), not whenever the generator is collected.
            async with aclosing(broadcaster.subscribe(where, start)) as subscription:
                async for sequence, payload in subscription:
                    delivered = sequence
                    yield payload
        except CursorAhead as error:
            raise ServiceError(
                StatusCode.FAILED_PRECONDITION,
                str(error),
                reason="CURSOR_AHEAD",
                metadata={"newest_sequence": str(error.newest)},
            ) from None
        except CursorExpired as error:
            if after is not None and delivered == after:
                raise ServiceError(
                    StatusCode.FAILED_PRECONDITION,
                    str(error),
                    reason="CURSOR_EXPIRED",
                    metadata={"oldest_sequence": str(error.oldest)},
                ) from None
            raise ServiceError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"this subscriber fell behind what the log keeps (it reached sequence "
                f"{delivered}, the oldest kept is {error.oldest}); read faster or keep more",
                reason="SUBSCRIBER_TOO_SLOW",
                metadata={"last_sequence": str(delivered), "oldest_sequence": str(error.oldest)},
            ) from None
        except StreamClosed as error:
            raise ServiceError(
                StatusCode.UNAVAILABLE,
                f"the server is shutting down; reconnect with after_sequence={delivered}",
                reason="SHUTTING_DOWN",
                metadata={"last_sequence": str(delivered), "cursor": str(error.last_sequence)},
            ) from None


# The service as the contract describes it: its name, methods and message types.
SERVICE = orchestration_pb2.DESCRIPTOR.services_by_name["OrchestrationService"]


def add_to_server(servicer: OrchestrationServicer, server: grpc.aio.Server) -> None:
    """Register the servicer's methods, from the service's descriptor. Unary methods use their
    messages' (de)serializers; the streaming method sends bytes already encoded."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=request_type.FromString, response_serializer=None
            )
        else:
            response_type = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
