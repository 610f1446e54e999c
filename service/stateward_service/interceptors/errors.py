"""Turns the service's refusals into gRPC statuses with rich details, a database that cannot be
reached (or stays too busy) into UNAVAILABLE whichever call met it, and anything unexpected into
INTERNAL with the error logged (a bug of ours, never the client's doing)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from stateward.exceptions import StatusCode
from stateward_service.errors import ServiceError
from stateward_service.store import DatabaseUnavailable, WriteConflict

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
    status = status_pb2.Status(code=error.code.value, message=error.message, details=details)
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


class Undecodable:
    """Stands for a request whose bytes are not a valid message (random bytes, a truncated
    message, a string that is not UTF-8, a Struct nested deeper than the decoder allows). The
    deserializer returns it instead of raising, so that the interceptors run as for any call
    (an API key check answers first) and the errors layer answers INVALID_ARGUMENT."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning an `Undecodable` where it would raise (None stays None)."""
    if deserialize is None:
        return None
    strict = deserialize

    def decode(data: bytes) -> Any:
        try:
            return strict(data)
        except Exception as error:
            return Undecodable(str(error) or type(error).__name__)

    return decode


def undecodable(method: str, request: Undecodable) -> ServiceError:
    return ServiceError(
        StatusCode.INVALID_ARGUMENT,
        f"the request to {method} could not be decoded ({request.reason}): send the method's "
        "request message, serialized as protobuf, with every string valid UTF-8",
        reason="UNDECODABLE_REQUEST",
    )


@asynccontextmanager
async def answering(
    context: grpc.aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[None]:
    """Ends the call with the status of a refusal raised inside, UNAVAILABLE for a database
    that cannot be reached or stayed too busy (the client may try again), or INTERNAL
    (logged) for an unexpected error."""
    try:
        yield
    except ServiceError as error:
        await abort(context, error)
    except DatabaseUnavailable as error:
        await abort(context, ServiceError(StatusCode.UNAVAILABLE, f"{error}; try again"))
    except WriteConflict as error:
        await abort(
            context,
            ServiceError(
                StatusCode.UNAVAILABLE,
                f"the database stayed too busy to decide; try again ({error})",
            ),
        )
    except grpc.aio.AbortError:
        raise
    except NotImplementedError:
        # A generated servicer base's method that nothing overrides.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    except Exception:
        log.exception("unexpected error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def yields_items(behaviour: Any) -> bool:
    """Whether a streaming handler yields its messages (an async generator) rather than writing
    them with `context.write` (a coroutine, like the standard health service's Watch)."""
    return inspect.isasyncgenfunction(behaviour)


class ErrorsInterceptor(WrappingInterceptor):
    def _wrap(self, found: Handler, method: str) -> Handler:
        handler: Any = found
        serializers = {
            "request_deserializer": tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }

        def check(request: Any) -> None:
            if isinstance(request, Undecodable):
                raise undecodable(method, request)

        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with answering(context, method):
                    check(request)
                    return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **serializers)
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream
            if yields_items(inner_stream):

                async def stream(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    async with answering(context, method):
                        check(request)
                        async for item in inner_stream(request, context):
                            yield item

                return grpc.unary_stream_rpc_method_handler(stream, **serializers)

            async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                async with answering(context, method):
                    check(request)
                    await inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(writer, **serializers)
        if handler.stream_stream is not None:
            inner_bidi: Any = handler.stream_stream

            async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    check(request)
                    yield request

            if yields_items(inner_bidi):

                async def bidi(
                    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    async with answering(context, method):
                        async for item in inner_bidi(checked(requests), context):
                            yield item

                return grpc.stream_stream_rpc_method_handler(bidi, **serializers)

            async def bidi_writer(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> None:
                async with answering(context, method):
                    await inner_bidi(checked(requests), context)

            return grpc.stream_stream_rpc_method_handler(bidi_writer, **serializers)
        return found
