"""Counts every call and times it, by method and status code (outermost: it sees refusals of
the other interceptors too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from stateward_service.interceptors.errors import Handler, WrappingInterceptor, yields_items
from stateward_service.metrics import ServerMetrics


def _code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # The client went away (or its deadline passed): the stream was cancelled while it
        # waited, or closed where it was suspended.
        return "CANCELLED"
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class MetricsInterceptor(WrappingInterceptor):
    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def _wrap(self, found: Handler, method: str) -> Handler:
        handler: Any = found
        observe = self.metrics.observe_call
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                began, error = time.perf_counter(), None
                try:
                    return await inner(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    observe(method, _code(context, error), time.perf_counter() - began)

            return grpc.unary_unary_rpc_method_handler(unary, **serializers)
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream
            if not yields_items(inner_stream):

                async def writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                    began, error = time.perf_counter(), None
                    try:
                        await inner_stream(request, context)
                    except BaseException as raised:
                        error = raised
                        raise
                    finally:
                        observe(method, _code(context, error), time.perf_counter() - began)

                return grpc.unary_stream_rpc_method_handler(writer, **serializers)

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                began, error = time.perf_counter(), None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    observe(method, _code(context, error), time.perf_counter() - began)

            return grpc.unary_stream_rpc_method_handler(stream, **serializers)
        return found
