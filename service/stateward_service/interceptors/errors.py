"""Turns the service's refusals into gRPC statuses with rich details, and anything unexpected
into INTERNAL with the error logged (a bug of ours, never the client's doing)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from stateward_service.errors import ServiceError

log = logging.getLogger("stateward.server")

DOMAIN = "stateward.v1"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def status_for(error: ServiceError) -> grpc.Status:
    """The gRPC status for a refusal: its code and message, plus an ErrorInfo (reason and
    metadata) and, for a bad field, a BadRequest naming it."""
    details = []
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    details.append(info)
    if error.field:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message
                    )
                ]
            )
        )
        details.append(bad)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.value), message=error.message, details=details
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ServiceError) -> None:
    status = status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler, once (not on every call)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        found = await continuation(handler_call_details)
        if found is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not found:
            cached = (found, self._wrap(found, method))
            self._wrapped[method] = cached
        return cached[1]

    def _wrap(self, found: Handler, method: str) -> Handler:
        raise NotImplementedError


class ErrorsInterceptor(WrappingInterceptor):
    def _wrap(self, found: Handler, method: str) -> Handler:
        handler: Any = found
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await inner(request, context)
                except ServiceError as error:
                    await abort(context, error)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unexpected error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except ServiceError as error:
                    await abort(context, error)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.exception("unexpected error in %s", method)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return found
