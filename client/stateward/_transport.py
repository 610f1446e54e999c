"""Transports: the one place that knows gRPC channels, stubs, metadata and status codes.

A transport makes one call by method name with a request message and returns the response
message, or raises a `stateward.exceptions` error; the clients above know only messages.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from stateward import settings
from stateward.exceptions import InvalidSetting, ServerUnavailable, StatewardError
from stateward.v1 import orchestration_pb2_grpc
from stateward.wire import START_SEQUENCE_KEY, error_for_status

CHANNEL_OPTIONS = [
    # Keep idle streams alive through proxies, and notice a dead server.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Connection:
    """Where the server is and how to reach it: its address, the API key, TLS files."""

    address: str
    api_key: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Wait (within each call's deadline) for an unreachable server instead of failing at once.
    wait_for_ready: bool = False

    @classmethod
    def from_environment(
        cls, address: str | None = None, api_key: str | None = None, wait_for_ready: bool = False
    ) -> Connection:
        """STATEWARD_API_URL, STATEWARD_API_KEY, STATEWARD_TLS_CA / _CERT / _KEY, unless given."""

        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value).expanduser() if value else None

        return cls(
            address=address or settings.api_url() or f"127.0.0.1:{settings.DEFAULT_PORT}",
            api_key=api_key or os.environ.get("STATEWARD_API_KEY") or None,
            tls_ca=path("STATEWARD_TLS_CA"),
            tls_cert=path("STATEWARD_TLS_CERT"),
            tls_key=path("STATEWARD_TLS_KEY"),
            wait_for_ready=wait_for_ready,
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def open(self, flavour: Any) -> Any:
        """A channel to the server from `grpc` or `grpc.aio`, with TLS when configured."""
        credentials = self.credentials()
        if credentials is None:
            return flavour.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return flavour.secure_channel(self.address, credentials, CHANNEL_OPTIONS)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS exactly when a CA is configured (STATEWARD_TLS_CA; for the system's CAs, point it
        at the system bundle); a client certificate (mutual TLS) needs one too. A setting that
        cannot be right raises InvalidSetting."""
        if self.tls_ca is None:
            if self.tls_cert is not None or self.tls_key is not None:
                raise InvalidSetting(
                    "STATEWARD_TLS_CERT/STATEWARD_TLS_KEY need STATEWARD_TLS_CA: without a CA "
                    "the connection is not TLS"
                )
            return None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidSetting("set both STATEWARD_TLS_CERT and STATEWARD_TLS_KEY, or neither")
        return grpc.ssl_channel_credentials(
            root_certificates=_read("STATEWARD_TLS_CA", self.tls_ca),
            private_key=_read("STATEWARD_TLS_KEY", self.tls_key),
            certificate_chain=_read("STATEWARD_TLS_CERT", self.tls_cert),
        )


def _read(setting: str, path: Path | None) -> bytes | None:
    """The contents of the file a TLS setting names; InvalidSetting if it cannot be read."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidSetting(
            f"{setting}={str(path)!r} cannot be read ({error.strerror or error}): "
            "point it at a PEM file"
        ) from None


def translate(error: grpc.RpcError, connection: Connection | None = None) -> StatewardError:
    """The Stateward error for a failed call (over `connection`, when known)."""
    code = error.code()
    details = error.details() or code.name
    if code is grpc.StatusCode.UNAVAILABLE:
        return unreachable(connection, details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        where = f" at {connection.address}" if connection else ""
        details = f"the Stateward server{where} did not answer in time (deadline exceeded)"
    return error_for_status(code.value[0], details)


def unreachable(connection: Connection | None, details: str) -> ServerUnavailable:
    """Why a call found no server, told apart by trying the address ourselves: nothing
    listens there, or something listens but the connection failed (TLS, most often)."""
    if connection is None:
        return ServerUnavailable(f"cannot reach the Stateward server ({details})")
    address = connection.address
    if "shutting down" in details:  # the server itself said so: it was reached
        return ServerUnavailable(f"the Stateward server at {address} said: {details}")
    named = " (STATEWARD_API_URL)" if address == settings.api_url() else ""
    refused = _connect_error(address)
    if refused is not None:
        fix = (
            "correct STATEWARD_API_URL, or unset it to work on this machine's database"
            if named
            else "point STATEWARD_API_URL at one"
        )
        return ServerUnavailable(
            f"cannot reach a Stateward server at {address}{named}: {refused}. "
            f"Start one there with `stateward server start`, or {fix}"
        )
    if connection.tls_ca is not None:
        return ServerUnavailable(
            f"{address}{named} accepts connections, but the TLS connection failed ({details}). "
            "Check that STATEWARD_TLS_CA is the CA that signed the server's certificate and, "
            "if the server requires client certificates, set STATEWARD_TLS_CERT and "
            "STATEWARD_TLS_KEY"
        )
    return ServerUnavailable(
        f"{address}{named} accepts connections, but plaintext gRPC to it failed ({details}). "
        "If the server uses TLS, set STATEWARD_TLS_CA to the CA that signed its certificate"
    )


def _connect_error(address: str) -> str | None:
    """Why a TCP connection to `address` fails (None: it connects)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
            return None
    except OSError as error:
        return (error.strerror or str(error)).lower() or "no answer"
    except ValueError:
        return f"{address!r} is not host:port"


def can_reconnect(error: grpc.RpcError) -> bool:
    """Whether a broken stream may be resumed from its cursor: the server went away, is
    restarting or cancelled the stream (a proxy or a shutdown past its grace), or it ended a
    subscriber that fell behind or was over its limit of calls."""
    code = error.code()
    return code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


class Transport(Protocol):
    def call(self, method: str, request: Any, timeout: float | None = None) -> Any: ...

    def open_stream(self, method: str, request: Any) -> TransitionStream: ...

    def close(self) -> None: ...


class TransitionStream(Protocol):
    def start_sequence(self) -> int | None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def cancel(self) -> None: ...


class _GrpcStream:
    def __init__(self, call: Any) -> None:
        self._call = call

    def start_sequence(self) -> int | None:
        """The sequence the stream starts after, once the server established it (None from a
        server that does not say). Raises the call's error if it ended before it started."""
        for key, value in self._call.initial_metadata() or ():
            if key == START_SEQUENCE_KEY:
                return int(value)
        if self._call.done() and self._call.code() is not grpc.StatusCode.OK:
            raise self._call  # the call object is its own RpcError
        return None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call)

    def cancel(self) -> None:
        self._call.cancel()


class GrpcTransport:
    """Calls over a gRPC channel (plain or TLS), with the API key as metadata."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel = connection.open(grpc)
        self.stub = orchestration_pb2_grpc.OrchestrationServiceStub(self.channel)
        self._metadata = connection.metadata

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                request,
                timeout=timeout,
                metadata=self._metadata,
                wait_for_ready=self.connection.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise translate(error, self.connection) from None

    def check_reachable(self, within: float) -> None:
        """Return once the server answers its health check; raise ServerUnavailable saying
        what is wrong if it has not within `within` seconds (a server still starting gets
        that long; an address where nothing listens fails as soon as the time is up)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # only for this check

        deadline = time.monotonic() + within
        while True:
            # A fresh channel each time: a channel that failed to connect backs off.
            with self.connection.open(grpc) as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(),
                        timeout=max(0.1, min(2.0, deadline - time.monotonic())),
                    )
                    return
                except grpc.RpcError as error:
                    if error.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        return  # something answered: the calls will say what they meet
                    details = error.details() or error.code().name
            if time.monotonic() + 0.25 >= deadline:
                raise unreachable(self.connection, details)
            time.sleep(0.25)

    def open_stream(self, method: str, request: Any) -> TransitionStream:
        return _GrpcStream(getattr(self.stub, method)(request, metadata=self._metadata))

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport:
    """The asyncio twin of GrpcTransport."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel = connection.open(grpc.aio)
        self.stub = orchestration_pb2_grpc.OrchestrationServiceStub(self.channel)
        self._metadata = connection.metadata

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(
                request,
                timeout=timeout,
                metadata=self._metadata,
                wait_for_ready=self.connection.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise translate(error, self.connection) from None

    def open_stream(self, method: str, request: Any) -> AsyncTransitionStream:
        return AsyncTransitionStream(getattr(self.stub, method)(request, metadata=self._metadata))

    async def close(self) -> None:
        await self.channel.close()


class AsyncTransitionStream:
    def __init__(self, call: Any) -> None:
        self._call = call

    async def start_sequence(self) -> int | None:
        for key, value in await self._call.initial_metadata() or ():
            if key == START_SEQUENCE_KEY:
                return int(value)
        return None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._call.__aiter__()  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()
