"""API key authentication: with a key set, every call but the health check must carry
`authorization: Bearer <key>`; the comparison takes the same time whatever the token."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from stateward_service.interceptors.errors import Handler

HEALTH_PREFIX = "/grpc.health.v1.Health/"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_key: str) -> None:
        self._expected = f"Bearer {api_key}".encode()

    def _refusal(self, metadata: Any) -> str | None:
        """Why a call is refused, or None if its token is right."""
        token = ""
        for key, value in metadata or ():
            if key == "authorization":
                token = value if isinstance(value, str) else value.decode()
        if not token:
            return (
                "this server needs an API key: send metadata `authorization: Bearer <key>` "
                "(the Stateward clients send STATEWARD_API_KEY)"
            )
        if not hmac.compare_digest(token.encode(), self._expected):
            return "the API key is not this server's (check STATEWARD_API_KEY)"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        refusal = self._refusal(handler_call_details.invocation_metadata)
        if refusal is None:
            return handler
        found: Any = handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

        async def refuse_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
            yield  # pragma: no cover - never reached

        async def refuse_bidi(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
            yield  # pragma: no cover - never reached

        serializers = {
            "request_deserializer": found.request_deserializer,
            "response_serializer": found.response_serializer,
        }
        if found.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
        if found.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(refuse_stream, **serializers)
        return grpc.stream_stream_rpc_method_handler(refuse_bidi, **serializers)
