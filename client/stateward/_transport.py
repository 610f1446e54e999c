"""Transports: the one place that knows gRPC channels, stubs, metadata and status codes.

A transport makes one call by method name with a request message and returns the response
message, or raises a `stateward.exceptions` error; the clients above know only messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import grpc

from stateward import _forks, settings
from stateward._records import dataclass
from stateward.exceptions import (
    CursorExpired,
    InvalidSetting,
    ServerUnavailable,
    StatewardError,
    error_for_status,
)
from stateward.runs import (
    CacheEntry,
    FlowRun,
    LogEntry,
    OrchestrationResult,
    RunKind,
    TaskRun,
    Transition,
)
from stateward.states import State
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc
from stateward.wire import START_SEQUENCE_KEY

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
    """The Stateward error for a failed call (over `connection`, when known): CursorExpired,
    with the oldest sequence kept, for a watch's cursor the log no longer holds."""
    code = error.code()
    details = error.details() or code.name
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        oldest = _oldest_kept(error)
        if oldest is not None:
            return CursorExpired(details, oldest)
    return translate_code(code, details, connection)


def _oldest_kept(error: grpc.RpcError) -> int | None:
    """The oldest sequence kept, from the server's ErrorInfo of a refused cursor
    (CURSOR_EXPIRED), or None for any other error."""
    from google.rpc import error_details_pb2, status_pb2

    # (key, value) pairs, as a blocking call and an asyncio call give them alike.
    trailing = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in trailing:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        info = error_details_pb2.ErrorInfo()
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Unpack(info) and info.reason == "CURSOR_EXPIRED":
                oldest = info.metadata.get("oldest_sequence", "")
                return int(oldest) if oldest.isdigit() else None
    return None


def translate_code(
    code: grpc.StatusCode,
    details: str,
    connection: Connection | None = None,
    *,
    reached: bool = False,
) -> StatewardError:
    """The Stateward error for a call that failed with `code` and `details`; `reached` says the
    server itself answered with them (an UNAVAILABLE then needs no diagnosis)."""
    if code is grpc.StatusCode.CANCELLED:
        # Never this client's doing (its calls are not cancelled, an interrupted caller
        # raises what interrupted it): the server cancelled the call as it stopped (past its
        # grace, or a call that arrived as it closed), or a proxy did. As for UNAVAILABLE,
        # the caller may send it again (a proposal with the same transition id applies once).
        where = f" at {connection.address}" if connection is not None else ""
        return ServerUnavailable(
            f"the Stateward server{where} cancelled the call (it was stopping, or a proxy "
            f"ended the call): {details}"
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        if reached and connection is not None:
            return ServerUnavailable(
                f"the Stateward server at {connection.address} said: {details}"
            )
        return unreachable(connection, details)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        where = f" at {connection.address}" if connection else ""
        details = f"the Stateward server{where} did not answer in time (deadline exceeded)"
    return error_for_status(code.value[0], details)


# gRPC's status codes by number (an error answered on the calls stream carries the number).
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


# gRPC's words (and ours) for a call whose connection was made and then went away under it (the
# process serving it stopped), as opposed to one never made ("failed to connect to all addresses").
_BROKE = ("Stream removed", "the connection broke")


def unreachable(connection: Connection | None, details: str) -> ServerUnavailable:
    """Why a call found no server, told apart by trying the address ourselves: nothing
    listens there, the connection broke under the call while something still listens (a
    worker of several, or the server, restarting), or something listens but the connection
    failed (TLS, most often)."""
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
    if any(words in details for words in _BROKE):
        return ServerUnavailable(
            f"the connection to the Stateward server at {address}{named} broke ({details}): "
            "the process serving it stopped (a worker of `server start --workers`, or the "
            "server, restarting)"
        )
    if connection.tls_ca is not None:
        return ServerUnavailable(
            f"{address}{named} accepts connections, but the TLS connection failed ({details}). "
            "Check that STATEWARD_TLS_CA is the CA that signed the server's certificate and, "
            "if the server requires client certificates, set STATEWARD_TLS_CERT and "
            "STATEWARD_TLS_KEY"
        )
    if "http1.x server" in details:  # gRPC's words for an answer in HTTP/1.x
        return ServerUnavailable(
            f"{address}{named} answers HTTP/1.x, not gRPC: a web server (perhaps the web view's "
            f"port of `stateward server start`). Give the server's gRPC port (by default "
            f"{settings.DEFAULT_PORT}){' in STATEWARD_API_URL' if named else ''}"
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

    def check_process(self) -> None:
        """Raise StatewardError, at once and saying what to do, if this transport was made in
        a process this one was forked from (its connection does not work here)."""

    def asynchronous(self) -> AsyncTransport:
        """A new asyncio transport to the same place, for an AsyncClient (its caller closes
        it)."""
        ...

    def close(self) -> None: ...


class AsyncTransport(Protocol):
    """The asyncio twin of Transport, bound to the event loop it is first used in."""

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any: ...

    def open_stream(self, method: str, request: Any) -> AsyncStream: ...

    async def close(self) -> None: ...


class AsyncStream(Protocol):
    async def start_sequence(self) -> int | None: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None: ...


class LocalCalls(Protocol):
    """The calls, in the vocabulary, of a transport whose orchestrator runs in this process
    (the embedded default): those a flow makes (runs, states, run logs, held-back cache
    entries, leases); no message is built or parsed, nor the protocol's modules loaded. Each
    raises the `stateward.exceptions` error the same call over gRPC would; `create_and_start`
    answers each operation's refusal in place (see `stateward.client.Started`)."""

    def create_run(self, run: FlowRun | TaskRun) -> FlowRun | TaskRun: ...

    def create_and_start(
        self,
        runs: Sequence[FlowRun | TaskRun],
        state: State,
        lease_seconds: float,
        *,
        new_ids: bool = False,
    ) -> tuple[list[FlowRun | TaskRun | StatewardError], OrchestrationResult | StatewardError]: ...

    def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool,
        expected_state_id: str | None,
        lease_seconds: float,
    ) -> OrchestrationResult: ...

    def get_run(self, run_id: str, kind: RunKind) -> FlowRun | TaskRun: ...

    def write_logs(self, entries: Sequence[LogEntry]) -> int: ...

    def write_cache_entries(self, entries: Sequence[CacheEntry]) -> int: ...

    def renew_leases(self, run_ids: Sequence[str], lease_seconds: float) -> list[str]: ...

    def watch(
        self,
        run_ids: Sequence[str],
        flow_run_ids: Sequence[str],
        state_types: Sequence[int],
        after_sequence: int | None,
    ) -> LocalTransitions: ...


class LocalTransitions(Protocol):
    """A WatchTransitions stream of an orchestrator in this process: the transitions as they
    are (see `stateward.client.Client.watch`); it never needs to reconnect."""

    def start_sequence(self) -> int | None: ...

    def __iter__(self) -> Iterator[Transition]: ...

    def cancel(self) -> None: ...


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


# The calls that ride the ExecuteStream (its `call` field for each method), when the server has it.
STREAMED = {"SetState": "set_state", "ExecuteBatch": "execute_batch"}
# A larger call goes as its own RPC: one the server refuses as too large (RESOURCE_EXHAUSTED,
# past its 4 MiB by default) then fails alone, instead of ending the stream and with it every
# call in flight on it.
STREAM_MAX_BYTES = 1024 * 1024


def rides_stream(method: str, request: Any) -> bool:
    """Whether a call of `method` with `request` goes on the calls stream."""
    return method in STREAMED and request.ByteSize() <= STREAM_MAX_BYTES


_END = None  # ends a stream's requests


class _Waiter:
    """Where one call waits for its answer: a lock held from the start, released by the
    reader thread once the answer (or the error that ended the stream) is in. Lighter than a
    Future, whose Condition makes a lock of its own at every wait."""

    __slots__ = ("_ready", "answer", "error")

    def __init__(self) -> None:
        self._ready = threading.Lock()
        self._ready.acquire()
        self.answer: pb.ExecuteStreamResponse | None = None
        self.error: BaseException | None = None

    def set_result(self, answer: pb.ExecuteStreamResponse) -> None:
        """Once, from the reader thread (the one that took the waiter out of `pending`)."""
        self.answer = answer
        self._ready.release()

    def set_exception(self, error: BaseException) -> None:
        """Once, in place of `set_result`."""
        self.error = error
        self._ready.release()

    def wait(self, timeout: float | None) -> bool:
        """Whether the answer or error came within `timeout` seconds (None: no limit)."""
        return self._ready.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class _OpenStream:
    """One ExecuteStream call: the requests queue it reads, and the calls awaiting an answer."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue[pb.ExecuteStreamRequest | None] = queue.SimpleQueue()
        self.pending: dict[int, _Waiter] = {}
        self.broken: BaseException | None = None


class StreamUnsupported(Exception):
    """The server has no ExecuteStream (an older server): use the unary RPCs."""


def stream_request(call_id: int, method: str, request: Any) -> pb.ExecuteStreamRequest:
    """The ExecuteStream message carrying `request`, a call of `method` (a key of STREAMED)."""
    message = pb.ExecuteStreamRequest(call_id=call_id)
    getattr(message, STREAMED[method]).CopyFrom(request)
    return message


def stream_answer(answer: pb.ExecuteStreamResponse, connection: Connection) -> Any:
    """The response an answer on ExecuteStream carries; raises the Stateward error the RPC
    would have failed with when it carries one."""
    kind = answer.WhichOneof("result")
    if kind == "error":
        raise translate_code(
            _GRPC_CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN),
            answer.error.message,
            connection,
            reached=True,
        )
    if kind is None:
        raise translate_code(
            grpc.StatusCode.UNKNOWN, "the server answered the call with nothing", reached=True
        )
    return getattr(answer, kind)


def deadline_exceeded(connection: Connection) -> StatewardError:
    return translate_code(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", connection)


def stream_ended(connection: Connection) -> StatewardError:
    """The error of the calls without an answer when the server ended the stream."""
    return ServerUnavailable(f"the Stateward server at {connection.address} ended the calls stream")


def stream_broken(failure: grpc.RpcError, connection: Connection) -> BaseException:
    """The error of the calls without an answer when the stream failed: StreamUnsupported from
    a server without ExecuteStream, else the Stateward error of the status (UNAVAILABLE when
    the server went away: the caller sends them again)."""
    if failure.code() is grpc.StatusCode.UNIMPLEMENTED:
        return StreamUnsupported(failure.details() or "")
    if failure.code() is grpc.StatusCode.INTERNAL and failure.details() == _CORE_FAILURE:
        # Not a status any server sent: gRPC's own, when the connection under a stream that
        # is still being written to goes away (a server killed mid-stream, seen on asyncio
        # channels). The calls' fate is unknown, as for UNAVAILABLE: send them again.
        return unreachable(connection, "the connection broke under the calls stream")
    return translate(failure, connection)


_CORE_FAILURE = "Internal error from Core"


class CallStream:
    """SetState and ExecuteBatch calls on one long-lived ExecuteStream, shared by every thread
    of the client: each call is sent with an id and waits for the answer with that id; a reader
    thread hands the answers out. The stream is opened by the first call and again by the first
    call after it broke. A stream that breaks fails the calls awaiting an answer with
    ServerUnavailable, as a unary call to a server gone away fails: the caller sends them again
    (a proposal with the same transition id applies once)."""

    def __init__(self, connection: Connection, stub: Any) -> None:
        self.connection = connection
        self._stub = stub
        self._lock = threading.Lock()
        self._open: _OpenStream | None = None
        self._ids = itertools.count(1)
        self.opened = 0  # how many streams were opened (for tests)

    def call(self, method: str, request: Any, timeout: float | None) -> Any:
        """The response of `method` (a key of STREAMED) to `request`, or the Stateward error
        the RPC would raise. Raises StreamUnsupported when the server has no ExecuteStream."""
        waiter = _Waiter()
        with self._lock:
            stream = self._open
            if stream is None:
                stream = self._open = self._start()
            call_id = next(self._ids)
            stream.pending[call_id] = waiter
        stream.requests.put(stream_request(call_id, method, request))
        if not waiter.wait(timeout):
            with self._lock:
                taken = stream.pending.pop(call_id, None) is None
            # Taken meanwhile by the reader: its answer or error is in, or about to be.
            if not (taken and waiter.wait(None)):
                raise deadline_exceeded(self.connection)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return stream_answer(waiter.answer, self.connection)

    def _start(self) -> _OpenStream:
        """Open a stream (under the lock) and its reader thread."""
        stream = _OpenStream()
        responses = self._stub.ExecuteStream(
            iter(stream.requests.get, _END),
            metadata=self.connection.metadata,
            wait_for_ready=self.connection.wait_for_ready,
        )
        self.opened += 1
        threading.Thread(
            target=self._read, args=(stream, responses), name="stateward-calls", daemon=True
        ).start()
        return stream

    def _read(self, stream: _OpenStream, responses: Any) -> None:
        error: BaseException
        try:
            for answer in responses:
                with self._lock:
                    waiter = stream.pending.pop(answer.call_id, None)
                if waiter is not None:
                    waiter.set_result(answer)
            error = stream_ended(self.connection)
        except grpc.RpcError as failure:
            error = stream_broken(failure, self.connection)
        except BaseException as failure:  # handed to the callers
            error = failure
        with self._lock:
            if self._open is stream:
                self._open = None  # the next call opens a new stream
            failed, stream.pending = stream.pending, {}
            stream.broken = error
        stream.requests.put(_END)
        for waiter in failed.values():
            waiter.set_exception(error)

    def close(self) -> None:
        with self._lock:
            stream, self._open = self._open, None
        if stream is not None:
            stream.requests.put(_END)


class GrpcTransport:
    """Calls over a gRPC channel (plain or TLS), with the API key as metadata. SetState and
    ExecuteBatch ride one long-lived ExecuteStream (see `CallStream`) when the server has it,
    unless larger than STREAM_MAX_BYTES."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel = connection.open(grpc)
        self.stub = orchestration_pb2_grpc.OrchestrationServiceStub(self.channel)
        self._metadata = connection.metadata
        self.calls_stream: CallStream | None = CallStream(connection, self.stub)
        self._pid = os.getpid()
        self._forks = _forks.count  # the forks this process came out of when the channel was made

    def check_process(self) -> None:
        """A channel does not cross a fork: in a forked child its calls wait until their
        deadline (and, with gRPC's fork support off, as `import stateward.ray` sets it with
        GRPC_ENABLE_FORK_SUPPORT=0, so do a new channel's). Raises StatewardError saying so, at
        once."""
        if _forks.count != self._forks:
            raise StatewardError(
                f"this process was forked from process {self._pid}, whose connection to the "
                f"Stateward server at {self.connection.address} does not work here: start "
                "processes that run flows or tasks with the 'spawn' start method "
                "(multiprocessing.get_context('spawn')), or exec a new program"
            )

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        self.check_process()
        stream = self.calls_stream
        if stream is not None and rides_stream(method, request):
            try:
                return stream.call(method, request, timeout)
            except StreamUnsupported:
                self.calls_stream = None  # an older server: the unary RPCs from now on
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
        self.check_process()
        return _GrpcStream(getattr(self.stub, method)(request, metadata=self._metadata))

    def asynchronous(self) -> AsyncGrpcTransport:
        """A new asyncio channel to the same server, with the same key, TLS and waiting."""
        self.check_process()
        return AsyncGrpcTransport(self.connection)

    def close(self) -> None:
        if self.calls_stream is not None:
            self.calls_stream.close()
        self.channel.close()


class _AsyncOpenStream:
    """One ExecuteStream call of an AsyncCallStream: the requests queue its request iterator
    reads, and the calls awaiting an answer."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[pb.ExecuteStreamRequest | None] = asyncio.Queue()
        self.pending: dict[int, asyncio.Future[pb.ExecuteStreamResponse]] = {}
        self.reader: asyncio.Task[None] | None = None

    async def iterate(self) -> AsyncIterator[pb.ExecuteStreamRequest]:
        while (request := await self.requests.get()) is not None:
            yield request


class _Expired(Exception):
    """A call's deadline passed before its answer came."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class AsyncCallStream:
    """The asyncio twin of CallStream: SetState and ExecuteBatch calls of every task of the
    client on one long-lived ExecuteStream, each sent with an id and answered by a reader task.
    The same rules: opened by the first call and again by the first after it broke; a stream
    that breaks fails the calls awaiting an answer with ServerUnavailable (send them again: a
    proposal with the same transition id applies once)."""

    def __init__(self, connection: Connection, stub: Any) -> None:
        self.connection = connection
        self._stub = stub
        self._open: _AsyncOpenStream | None = None
        self._ids = itertools.count(1)
        self.opened = 0  # how many streams were opened (for tests)

    async def call(self, method: str, request: Any, timeout: float | None) -> Any:
        """The response of `method` (a key of STREAMED) to `request`, or the Stateward error
        the RPC would raise. Raises StreamUnsupported when the server has no ExecuteStream."""
        stream = self._open
        if stream is None:
            stream = self._open = self._start()
        call_id = next(self._ids)
        future: asyncio.Future[pb.ExecuteStreamResponse] = (
            asyncio.get_running_loop().create_future()
        )
        stream.pending[call_id] = future
        stream.requests.put_nowait(stream_request(call_id, method, request))
        # A timer, not asyncio.wait_for: no task or waiter of its own per call.
        timer = None if timeout is None else future.get_loop().call_later(timeout, _expire, future)
        try:
            answer = await future
        except _Expired:
            raise deadline_exceeded(self.connection) from None
        finally:
            if timer is not None:
                timer.cancel()
            stream.pending.pop(call_id, None)  # (answered, timed out, or the caller cancelled)
        return stream_answer(answer, self.connection)

    def _start(self) -> _AsyncOpenStream:
        stream = _AsyncOpenStream()
        responses = self._stub.ExecuteStream(
            stream.iterate(),
            metadata=self.connection.metadata,
            wait_for_ready=self.connection.wait_for_ready,
        )
        self.opened += 1
        stream.reader = asyncio.get_running_loop().create_task(self._read(stream, responses))
        return stream

    async def _read(self, stream: _AsyncOpenStream, responses: Any) -> None:
        error: BaseException
        try:
            async for answer in responses:
                future = stream.pending.pop(answer.call_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)
            error = stream_ended(self.connection)
        except grpc.RpcError as failure:
            error = stream_broken(failure, self.connection)
        except asyncio.CancelledError:
            error = stream_ended(self.connection)
            responses.cancel()
        except Exception as failure:  # handed to the callers
            error = failure
        if self._open is stream:
            self._open = None  # the next call opens a new stream
        failed, stream.pending = stream.pending, {}
        stream.requests.put_nowait(None)
        for future in failed.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        stream, self._open = self._open, None
        if stream is not None:
            stream.requests.put_nowait(None)
            if stream.reader is not None:
                stream.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.reader


class AsyncGrpcTransport:
    """The asyncio twin of GrpcTransport (SetState and ExecuteBatch on one AsyncCallStream,
    when the server has ExecuteStream). Bound to the event loop it is first used in, as its
    gRPC channel is."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.channel = connection.open(grpc.aio)
        self.stub = orchestration_pb2_grpc.OrchestrationServiceStub(self.channel)
        self._metadata = connection.metadata
        self.calls_stream: AsyncCallStream | None = AsyncCallStream(connection, self.stub)

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        stream = self.calls_stream
        if stream is not None and rides_stream(method, request):
            try:
                return await stream.call(method, request, timeout)
            except StreamUnsupported:
                self.calls_stream = None  # an older server: the unary RPCs from now on
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
        if self.calls_stream is not None:
            await self.calls_stream.close()
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
