"""Finding the orchestrator for the SDK: the one place the SDK touches `stateward_service`.

With STATEWARD_API_URL set, the SDK talks to that server. Without it, the process orchestrates
itself, directly on `$STATEWARD_HOME/stateward.db`: the orchestrator runs in-process, in the
caller's thread, with no sockets. The calls a flow makes (create and start runs, propose states,
read a run, write run logs and held-back cache entries, renew leases) go to
`stateward_service.local_api` in the vocabulary, and `watch` reads the broadcaster's transitions
as they are: no protobuf message, and neither gRPC nor protobuf loaded. The others (listings,
limits, resuming a flow run) go to the synchronous methods of the gRPC API, their messages never
encoded, and load the protocol on the first of them. A thread runs an event loop with the log
follower and the broadcaster (for `watch` and the cancellation supervisor) and, while this
process holds the database's leader lock, the server's loops. Any number of processes (scripts,
the CLI, `watch`, a `stateward server start`) share the file, and any of them may exit at any
time. A process forked from one that orchestrates cannot: its calls raise StatewardError at
once, saying so (see `_forget_in_child`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stateward import settings
from stateward.exceptions import (
    CursorExpired,
    FailedPrecondition,
    ResourceExhausted,
    RpcError,
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

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

    import typer

    from stateward._transport import TransitionStream
    from stateward.client import Client
    from stateward_service.grpc_api import OrchestrationService
    from stateward_service.local_api import LocalService
    from stateward_service.settings import ServerSettings

log = logging.getLogger("stateward")

_lock = threading.Lock()
_client: Client | None = None
_embedded: EmbeddedOrchestrator | None = None
_opening: str | None = None  # the database the embedded orchestrator is being opened on
# In a child forked while its parent opened the embedded orchestrator: why it cannot orchestrate.
_refusal: str | None = None


def server_commands() -> typer.Typer:
    """The `stateward server` commands (`start`), which live beside the server they run."""
    from stateward_service.cli import app

    return app


def get_client(*, sync_client: bool = False, lead_loops: bool = True) -> Client:
    """The process's client: to STATEWARD_API_URL, or to the embedded orchestrator (started
    once). It is the blocking `Client`, used as it is or in a `with` block, and
    `async with get_client() as client:` gives an `AsyncClient` to the same place (opened
    for the block, closed at its end): the reference's two idioms, `async with get_client()`
    and `with get_client(sync_client=True)`, both work (its `sync_client` chooses between its
    two clients; here it changes nothing: the same object serves both). Neither block's end,
    nor `close()`, closes the process's client: this process's flows go on using it.

    `lead_loops` says whether an embedded orchestrator this call starts competes to run
    the server's loops: a process that runs flows does, for as long as it lives; a short command
    of the CLI does not (it would take the leader lock and sweep the database just to exit).
    Raises StatewardError, at once, in a process forked from one that had made its client: the
    connection, or the SQLite database's, stays behind (see `_forget_in_child`)."""
    global _client
    with _lock:
        if _client is None:
            _client = _connect(lead_loops)
        client = _client
    client.transport.check_process()
    return client


def has_client() -> bool:
    """Whether this process has made its client (its server can no longer change)."""
    return _client is not None


def _connect(lead_loops: bool) -> Client:
    from stateward.client import Client  # here: `stateward --help` imports this module

    settings.check()
    address = settings.api_url()
    if address:
        return _remote(address)
    if _refusal is not None:
        raise StatewardError(_refusal)
    global _embedded, _opening
    home = settings.home()
    _opening = str(home / "stateward.db")
    try:
        _embedded = EmbeddedOrchestrator(home, lead_loops=lead_loops)
    finally:
        _opening = None
    return Client(transport=_embedded.transport, timeout=None, lives_with_process=True)


def local_log(
    client: Client,
) -> Callable[[Callable[[Sequence[Transition]], None]], None] | None:
    """For a client of the orchestrator in this process (the embedded default): the function
    that registers a listener of its log (see `InProcessTransport.listen`); None for a client
    of a server, which is heard through WatchTransitions."""
    transport = client.transport
    return transport.listen if isinstance(transport, InProcessTransport) else None


def _remote(address: str) -> Client:
    """A client of the server at STATEWARD_API_URL, once it answers (ServerUnavailable, saying
    what is wrong, within a few seconds if it does not)."""
    from stateward._transport import GrpcTransport
    from stateward.client import Client

    client = Client(
        address, wait_for_ready=True, timeout=settings.request_timeout(), lives_with_process=True
    )
    transport = client.transport
    assert isinstance(transport, GrpcTransport)
    try:
        transport.check_reachable(settings.FIRST_CONTACT_SECONDS)
    except BaseException:
        transport.close()
        raise
    return client


class InProcessTransport:
    """Unary calls go straight to the API, in the caller's thread; refusals become the same
    exceptions a gRPC status would. Streams subscribe to the process's broadcaster. The calls
    of `local` (those of a flow: runs, states, run logs, cache entries, leases) take no
    message at all; the others
    take the request message and go to the gRPC API's method of the same name, which with the
    protocol is loaded on the first of them. In a process forked from the one that made it,
    every call raises StatewardError saying why (`forked`)."""

    def __init__(self, embedded: EmbeddedOrchestrator) -> None:
        self.embedded = embedded
        from stateward_service.errors import ServiceError

        self._service_error = ServiceError
        self.local = _LocalCalls(embedded)
        self.refusal: str | None = None  # in a forked child: why nothing can be called here

    def forked(self) -> None:
        """In a child forked from the process that made this transport: from now on every call
        raises StatewardError at once (the orchestrator's database connection, its lock, its
        threads are the parent's). The calls of `local` refuse without costing the parent's
        calls a test: their service is replaced."""
        self.refusal = fork_refusal(self.embedded.pid, self.embedded.database)
        self.local.service = _Refused(self.refusal)

    def check_process(self) -> None:
        if self.refusal is not None:
            raise StatewardError(self.refusal)

    @property
    def api(self) -> OrchestrationService:
        return self.embedded.replica.api

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        self.check_process()
        try:
            return getattr(self.api, method)(request)
        except self._service_error as error:
            raise _translate(error) from None

    def listen(self, listener: Callable[[Sequence[Transition]], None]) -> None:
        """Call `listener` with every transition this process learns of (its own and other
        processes' commits), in sequence order, once each, from the moment of this call; in
        the thread that committed or read them, under a lock of the log follower: it must be
        quick and must never block. For the process's own watchers, with no stream."""
        self.check_process()
        self.embedded.replica.follower.subscribe(listener)

    def open_stream(self, method: str, request: Any) -> TransitionStream:
        """A WatchTransitions stream of messages, for a caller that speaks them (the client
        itself takes the transitions as they are: `local.watch`)."""
        if method != "WatchTransitions":
            raise ValueError(f"no stream named {method}")
        self.check_process()
        after = request.after_sequence if request.HasField("after_sequence") else None
        stream = self.local.watch(request.run_ids, request.flow_run_ids, request.state_types, after)
        return _Messages(stream)

    def asynchronous(self) -> AsyncInProcessTransport:
        self.check_process()
        return AsyncInProcessTransport(self)

    def close(self) -> None:
        """The process's client lives as long as the process."""


class AsyncInProcessTransport:
    """An InProcessTransport for an AsyncClient: each call runs in a worker thread, as does
    each wait for a stream's next transition, so that a wait for the database (another
    process's write) never holds the event loop."""

    def __init__(self, transport: InProcessTransport) -> None:
        self._transport = transport

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        import asyncio

        return await asyncio.to_thread(self._transport.call, method, request, timeout)

    def open_stream(self, method: str, request: Any) -> _AsyncMessages:
        return _AsyncMessages(self._transport.open_stream(method, request))

    async def close(self) -> None:
        """The orchestrator lives as long as the process."""


class _AsyncMessages:
    """An in-process stream's messages as an async iterator (see AsyncInProcessTransport)."""

    def __init__(self, stream: TransitionStream) -> None:
        self._stream = stream
        self._messages = iter(stream)

    async def start_sequence(self) -> int | None:
        return self._stream.start_sequence()

    def __aiter__(self) -> _AsyncMessages:
        return self

    async def __anext__(self) -> Any:
        import asyncio

        message = await asyncio.to_thread(next, self._messages, None)
        if message is None:
            raise StopAsyncIteration
        return message

    def cancel(self) -> None:
        self._stream.cancel()  # ends a wait for the next message


class _LocalCalls:
    """The calls of a flow straight to the orchestrator, in the vocabulary (see
    `stateward._transport.LocalCalls`); refusals become the client's exceptions."""

    def __init__(self, embedded: EmbeddedOrchestrator) -> None:
        from stateward_service.errors import ServiceError
        from stateward_service.local_api import LocalService

        self.embedded = embedded
        # The orchestrator's calls; in a forked child, calls that refuse (see `forked`).
        self.service: LocalService | _Refused = LocalService(embedded.replica.orchestrator)
        self._service_error = ServiceError

    def create_run(self, run: FlowRun | TaskRun) -> FlowRun | TaskRun:
        try:
            return self.service.create_run(run)
        except self._service_error as error:
            raise _translate(error) from None

    def create_and_start(
        self,
        runs: Sequence[FlowRun | TaskRun],
        state: State,
        lease_seconds: float,
        *,
        new_ids: bool = False,
    ) -> tuple[list[FlowRun | TaskRun | StatewardError], OrchestrationResult | StatewardError]:
        try:
            created, answer = self.service.create_and_start(
                runs, state, lease_seconds, new_ids=new_ids
            )
        except self._service_error as error:  # the batch as a whole (the database, say)
            raise _translate(error) from None
        refused = self._service_error
        return (
            [_translate(run) if isinstance(run, refused) else run for run in created],
            _translate(answer) if isinstance(answer, refused) else answer,
        )

    def set_state(
        self,
        run_id: str,
        state: State,
        *,
        force: bool,
        expected_state_id: str | None,
        lease_seconds: float,
    ) -> OrchestrationResult:
        try:
            return self.service.set_state(
                run_id,
                state,
                force=force,
                expected_state_id=expected_state_id,
                lease_seconds=lease_seconds,
            )
        except self._service_error as error:
            raise _translate(error) from None

    def get_run(self, run_id: str, kind: RunKind) -> FlowRun | TaskRun:
        try:
            return self.service.get_run(run_id, kind)
        except self._service_error as error:
            raise _translate(error) from None

    def write_logs(self, entries: Sequence[LogEntry]) -> int:
        try:
            return self.service.write_logs(entries)
        except self._service_error as error:
            raise _translate(error) from None

    def write_cache_entries(self, entries: Sequence[CacheEntry]) -> int:
        try:
            return self.service.write_cache_entries(entries)
        except self._service_error as error:
            raise _translate(error) from None

    def watch(
        self,
        run_ids: Sequence[str],
        flow_run_ids: Sequence[str],
        state_types: Sequence[int],
        after_sequence: int | None,
    ) -> _InProcessStream:
        self.embedded.transport.check_process()
        return _InProcessStream(self.embedded, run_ids, flow_run_ids, state_types, after_sequence)

    def renew_leases(self, run_ids: Sequence[str], lease_seconds: float) -> list[str]:
        try:
            return self.service.renew_leases(run_ids, lease_seconds)
        except self._service_error as error:
            raise _translate(error) from None


def fork_refusal(parent: int, database: str) -> str:
    """Why a child forked from process `parent`, which orchestrates on `database` in-process,
    cannot orchestrate, and what to do instead."""
    return (
        f"this process was forked from process {parent}, which orchestrates in-process on the "
        f"SQLite database {database}: a SQLite connection does not survive a fork, and one "
        "opened in the child would share the parent's locks (its writes could wait for ever, "
        "or go to a log file the parent deletes): start processes that run flows or tasks with "
        "the 'spawn' start method (multiprocessing.get_context('spawn')), or exec a new program"
    )


class _Refused:
    """The service of `_LocalCalls` in a forked child: every call raises StatewardError."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise StatewardError(self.refusal)

        return refuse


# In a forked child: the embedded orchestrators of the processes it was forked from. Kept for
# as long as the process lives, never used or closed: their SQLite connection is the parent's,
# and closing it here could end the parent's use of the database's files (see `forked`).
_inherited: list[EmbeddedOrchestrator] = []


def _forget_in_child() -> None:
    """In a forked child: a new lock (a thread of the parent may have held the old one at the
    fork, and no thread here will release it); the embedded orchestrator, if any, refuses
    every call (see `InProcessTransport.forked`), and so does the one a thread of the parent
    was opening at the fork (it may have opened the database already)."""
    global _lock, _refusal
    _lock = threading.Lock()
    if _embedded is not None:
        _inherited.append(_embedded)
        _embedded.transport.forked()
        _refusal = _embedded.transport.refusal
    elif _opening is not None:
        _refusal = fork_refusal(os.getppid(), _opening)


os.register_at_fork(after_in_child=_forget_in_child)


def home_settings(home: Path, **given: Any) -> ServerSettings:
    """The settings of a process orchestrating on `home`'s database, for this machine alone: the
    loops' settings from the environment, `given` ones (validated, by setting name) as given;
    no gRPC port of its own (port 0, on loopback: none is opened), no TLS, no metrics endpoint.
    Raises the settings' SettingError."""
    from stateward_service.settings import ServerSettings

    home.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(
        ServerSettings.from_environment(**given),
        host="127.0.0.1",
        port=0,
        db=str(home / "stateward.db"),
        database_url="",
        tls_cert=None,
        tls_key=None,
        tls_client_ca=None,
        metrics_port=0,
    )


def serve_ui(host: str | None, port: int | None) -> None:
    """`stateward ui`: serve the web view of the runs in $STATEWARD_HOME until SIGINT or
    SIGTERM: a server on the home's database (which scripts, the CLI and other servers share),
    with the web view on `host`:`port` (None: the STATEWARD_UI_HOST/_PORT settings, else
    127.0.0.1:8471) and no gRPC port. Raises ServerUnavailable when the port is taken, and
    ValueError for a setting that is not allowed."""
    import asyncio

    from stateward_service.server import (
        PortUnavailable,
        StatewardServer,
        WebViewUnavailable,
        describe_web_view_security,
        serve,
    )

    home = settings.home()
    server_settings = home_settings(home, ui=True, ui_host=host, ui_port=port)

    def greeting(server: StatewardServer) -> list[str]:
        # No gRPC port: scripts and the CLI find the runs through the home's database, and the
        # page works on it directly.
        lines = [
            f"Stateward web view: {server.ui_url} (open it in your browser)",
            f"  it shows the runs in {home} as they happen: scripts and the CLI need no setting",
        ]
        elsewhere = os.environ.get("STATEWARD_API_URL", "").strip()
        if elsewhere:
            lines.append(
                f"  note: STATEWARD_API_URL is set here ({elsewhere}): scripts run with it "
                "send their runs to that server, not to this page; unset it to see them here"
            )
        lines.extend(describe_web_view_security(server_settings))
        lines.append("  Ctrl-C stops it")
        return lines

    try:
        asyncio.run(
            serve(server_settings, greeting=greeting, name="Stateward web view", serve_grpc=False)
        )
    except WebViewUnavailable as error:  # advice naming this command's own flags
        raise ServerUnavailable(error.advice("--host", "--port")) from None
    except PortUnavailable as error:
        raise ServerUnavailable(str(error)) from None


def _translate(error: Any) -> RpcError:
    """A ServiceError as the exception its gRPC status would raise in the client."""
    return error_for_status(error.code, error.message)


_END = object()
_CLOSED = object()  # the process is exiting
_QUEUE_SIZE = 1000  # transitions waiting for a slow reader, before the subscription waits


class _InProcessStream:
    """Transitions as WatchTransitions would send them, from this process's broadcaster, as
    they are (no message): a task of the embedded event loop subscribes and hands them to the
    reading thread through a bounded queue. Bad filters and cursors are refused as the RPC
    refuses them."""

    def __init__(
        self,
        embedded: EmbeddedOrchestrator,
        run_ids: Sequence[str],
        flow_run_ids: Sequence[str],
        state_types: Sequence[int],
        after: int | None,
    ) -> None:
        from stateward_service import validation as check
        from stateward_service.broadcaster import TransitionFilter
        from stateward_service.errors import ServiceError

        broadcaster = embedded.replica.broadcaster
        try:
            where = TransitionFilter(
                run_ids=frozenset(check.run_ids(run_ids, "run_ids")),
                flow_run_ids=frozenset(check.run_ids(flow_run_ids, "flow_run_ids")),
                state_types=frozenset(check.state_types(state_types, "state_types")),
            )
        except ServiceError as error:
            raise _translate(error) from None
        if after is not None:
            self._check_cursor(broadcaster, after)
        self._start = broadcaster.last_sequence if after is None else after
        import queue

        self._queue: queue.Queue[Any] = queue.Queue()  # bounded below, for data only
        self._future: Future[None] = embedded.submit(self._pump(broadcaster, where))

    @staticmethod
    def _check_cursor(broadcaster: Any, after: int) -> None:
        from stateward_service.broadcaster import CursorAhead
        from stateward_service.broadcaster import CursorExpired as Pruned

        try:
            broadcaster.check_cursor(after)
        except CursorAhead as error:
            raise FailedPrecondition(str(error)) from None
        except Pruned as error:
            raise CursorExpired(str(error), error.oldest) from None

    async def _pump(self, broadcaster: Any, where: Any) -> None:
        import asyncio

        from stateward_service.broadcaster import CursorExpired, StreamClosed

        try:
            batches = broadcaster.transition_batches(where, self._start)
            async with contextlib.aclosing(batches) as stream:
                async for batch in stream:
                    for _, transition in batch:
                        # The reader is a thread: poll for room rather than block the loop.
                        while self._queue.qsize() >= _QUEUE_SIZE:  # noqa: ASYNC110
                            await asyncio.sleep(0.01)
                        self._queue.put_nowait(transition)
        except StreamClosed:
            self._queue.put(_CLOSED)
        except CursorExpired as error:
            self._queue.put(ResourceExhausted(str(error)))
        finally:
            self._queue.put(_END)

    def start_sequence(self) -> int | None:
        return self._start

    def __iter__(self) -> Iterator[Transition]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _CLOSED:
                # Only threads still running at exit read here (daemon threads: a supervisor,
                # a watcher): they wait for the end of the process rather than reconnect.
                threading.Event().wait()
            if isinstance(item, BaseException):
                raise item
            yield _own(item)

    def cancel(self) -> None:
        self._future.cancel()
        self._queue.put(_END)  # a reader waiting ends, even if the pump never started


def _own(transition: Transition) -> Transition:
    """A transition the broadcaster shares, for its reader to keep: its states fresh objects,
    as a stream's reader decodes them (a result read from one is the reader's alone)."""
    from_state = transition.from_state
    return dataclasses.replace(
        transition,
        from_state=None if from_state is None else _own_state(from_state),
        to_state=_own_state(transition.to_state),
    )


def _own_state(state: State) -> State:
    return State(
        state.type, state.name, state.message, state.timestamp, state.id, state.details, state.data
    )


class _Messages:
    """An in-process stream as WatchTransitionsResponse messages, one transition each."""

    def __init__(self, stream: _InProcessStream) -> None:
        self._stream = stream

    def start_sequence(self) -> int | None:
        return self._stream.start_sequence()

    def __iter__(self) -> Iterator[Any]:
        from stateward.wire import watch_response

        for transition in self._stream:
            yield watch_response(transition)

    def cancel(self) -> None:
        self._stream.cancel()


class EmbeddedOrchestrator:
    """This process's replica on the home's database, its event loop in a daemon thread,
    stopped cleanly at exit (the loops, if they ran here, pass to another process). With
    `lead_loops` false it never runs the loops."""

    def __init__(self, home: Path, *, lead_loops: bool = True) -> None:
        from stateward_service.replica import Replica

        home.mkdir(parents=True, exist_ok=True)
        # The loops' settings come from the environment; the database is the home's.
        # `stateward ui` serves the page. (Not a value to validate: given none, the settings
        # are the defaults and the environment's, and pydantic is not imported.)
        replica_settings = dataclasses.replace(home_settings(home), ui=False)
        self.database = replica_settings.db
        self.pid = os.getpid()
        # A script's user has no use for which of the home's processes runs the loops.
        self.replica = Replica(replica_settings, lead_loops=lead_loops, lead_level=logging.DEBUG)
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stateward-embedded", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        self.transport = InProcessTransport(self)
        atexit.register(self.stop)
        log.debug("orchestrating in this process on %s", replica_settings.db)

    def submit(self, coroutine: Any) -> Future[None]:
        """Run a coroutine on the embedded event loop."""
        import asyncio

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _run(self) -> None:
        import asyncio

        asyncio.run(self._serve())

    async def _serve(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.replica.start()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.replica.stop()

    def stop(self) -> None:
        """End the streams, stop the loops and the follower, close the database."""
        if self._loop is None or self._stop is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
