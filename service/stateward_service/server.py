"""Server assembly: the network around a replica (the orchestrator on its database,
the log follower, the gRPC API, the loops under the leader lock): the standard services (health,
reflection), the interceptors, and a graceful shutdown on SIGINT/SIGTERM.

`StatewardServer` runs inside any asyncio loop (the CLI's, a test's);
`serve()` is the `stateward server start` entry point.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from stateward_service.descriptors import DocumentedReflection
from stateward_service.grpc_api import SERVICE, add_to_server
from stateward_service.health import HealthService
from stateward_service.interceptors.auth import AuthInterceptor
from stateward_service.interceptors.errors import ErrorsInterceptor
from stateward_service.interceptors.metrics import MetricsInterceptor
from stateward_service.metrics import REFRESH_SECONDS, ServerMetrics
from stateward_service.replica import Replica
from stateward_service.settings import ServerSettings
from stateward_service.shutdown import Grace

if TYPE_CHECKING:
    from stateward_service.web import WebServer

log = logging.getLogger("stateward.server")


KEEPALIVE_OPTIONS = [
    # HTTP/2 keepalive: ping idle connections so idle streams survive proxies and dead peers are
    # noticed; accept clients' pings as often as every 10 s, even without calls in flight.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        # Two servers never share a port silently; the workers of one server do (see
        # stateward_service.workers: Linux spreads connections across them).
        ("grpc.so_reuseport", int(settings.workers > 1)),
        *KEEPALIVE_OPTIONS,
        # Larger messages are refused with RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # Calls that arrived but that the server has not picked up yet: gRPC's own limits on
        # them (1,000, and 3,000 at most) cancelled parts of a burst before it reached us. The
        # limit that answers is `max_concurrent_calls` (RESOURCE_EXHAUSTED past it).
        ("grpc.server.max_pending_requests", PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
    ]


PENDING_CALLS = 1_000_000

# Host names that only this machine reaches.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# How long a thread may hold the interpreter's lock while another waits for it. The event loop
# shares it with the threads that read and encode the log for streams catching up: at
# Python's default of 5 ms, a health check during twenty replays waited for it several times
# (30-41 ms at the 99th percentile, against 9-11 ms at this value, the CPU per call unchanged).
SWITCH_INTERVAL_SECONDS = 0.0005

# The collector's thresholds once the server runs: Python's first two, and a full collection only
# after 1,000 collections of the middle generation (Python's default: 10). A thousand live
# streams hold about 100,000 objects of their own (calls, generators, futures) that every full
# collection walks: with 1,000 subscribers and 16 writers, full collections came every 2-3 s and
# held the event loop for 57-73 ms of CPU each, a stall for every stream and call. Garbage that
# lived long waits longer for its collection; young garbage is collected as before.
GC_THRESHOLDS = (700, 10, 1000)

# How often health looks at the database's state, and probes it while it takes no writes.
STORAGE_CHECK_SECONDS = 0.5
# How long health waits for the database's answer to a ping: a ping waits at most 1 s for a
# pooled connection, then 5 s for a direct one (PostgreSQL), and the statement itself is quick.
PING_DEADLINE_SECONDS = 8.0


class PortUnavailable(Exception):
    """The server could not listen on the address it was given."""


class WebViewUnavailable(PortUnavailable):
    """The web view could not listen on its address. `address` is host:port, `reason` says
    why in a few words, and `culprit` is "port" (taken), "host" (not an address of this
    machine) or "" (anything else), so that each command can name its own flags."""

    def __init__(self, address: str, reason: str, culprit: str) -> None:
        self.address, self.reason, self.culprit = address, reason, culprit
        super().__init__(self.advice("--ui-host", "--ui-port") + ", or turn it off with --no-ui")

    def advice(self, host_flag: str, port_flag: str) -> str:
        """The message, with the advice naming `host_flag` or `port_flag`."""
        told = f"cannot serve the web view on {self.address}: {self.reason}"
        if self.culprit == "port":
            return f"{told}. Choose another port with {port_flag} (0 picks a free one)"
        if self.culprit == "host":
            return (
                f"{told}. Give {host_flag} an address of this machine: 127.0.0.1 (this machine "
                "only) or 0.0.0.0 (every interface)"
            )
        return told


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class StatewardServer:
    """One Stateward server: call `start()`, then `stop()`, inside a running event loop. With
    `serve_grpc` False it opens no gRPC port (`stateward ui`: its web view and the loops work on
    the database, and no client is pointed at the port of a process that comes and goes)."""

    def __init__(self, settings: ServerSettings, *, serve_grpc: bool = True) -> None:
        self.settings = settings
        self.serve_grpc = serve_grpc
        self.replica = Replica(settings)
        self.orchestrator = self.replica.orchestrator
        self.broadcaster = self.replica.broadcaster
        self.api = self.replica.api
        self.loops = self.replica.loops
        self.metrics: ServerMetrics | None = None
        if settings.metrics_port:
            self.metrics = ServerMetrics(
                self.orchestrator.database_bytes,
                subscribers=lambda: self.broadcaster.subscribers,
                lagging=lambda: self.broadcaster.catching_up,
                loop_runs=lambda: dict(self.loops.runs),
                shared=settings.workers > 1,  # its parent serves the workers' metrics
            )
            self.orchestrator.subscribe(self.metrics.count_transitions)
            self.api.observe_call = self.metrics.observe_call  # the calls on ExecuteStream
        self.health = HealthService()
        self.port = 0
        self.web: WebServer | None = None
        self._server: grpc.aio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._grace: Grace | None = None  # a stop's, once it began
        self._writes_finished = False  # the writing calls were answered (a stop began)
        self._stopped = asyncio.Event()
        self._storage_watch: asyncio.Task[None] | None = None
        self._metrics_refresh: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return format_address(self.settings.host, self.port)

    @property
    def ui_url(self) -> str:
        """Where the web view is served ("" when it is off)."""
        if self.web is None:
            return ""
        return f"http://{format_address(self.settings.ui_host, self.web.port)}/"

    async def start(self) -> None:
        server = self._grpc_server() if self.serve_grpc else None
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if server is not None:
            self.port = _bind(server, self.settings)
        if self.settings.ui:
            # Imported only when served: the SDK's embedded server does without it.
            from stateward_service.web import WebServer, create_app

            app = create_app(
                self.orchestrator,
                self.broadcaster,
                api_key=self.settings.api_key,
                heartbeat_seconds=self.settings.ui_heartbeat_seconds,
                listen_host=self.settings.ui_host,
                writing=self.api.writing,
            )
            listener = _listen_for_ui(self.settings.ui_host, self.settings.ui_port)
            self.web = WebServer(app, listener, grace=self.settings.shutdown_grace_seconds)
        if self.metrics is not None and not self.metrics.shared:
            self.metrics.serve(self.settings.host, self.settings.metrics_port)
        await self.replica.start()
        if server is not None:
            await server.start()
            self._server = server
        if self.web is not None:
            await self.web.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._storage_watch = asyncio.get_running_loop().create_task(self._follow_storage())
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_database())
        if self.metrics is not None and self.metrics.shared:
            self._metrics_refresh = asyncio.get_running_loop().create_task(
                self._refresh_metrics(self.metrics)
            )

    def _grpc_server(self) -> grpc.aio.Server:
        """The gRPC server, its services added (the API, health, reflection), not yet bound."""
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.metrics is not None:
            interceptors.append(MetricsInterceptor(self.metrics))
        if self.settings.api_key:
            interceptors.append(AuthInterceptor(self.settings.api_key))
        interceptors.append(ErrorsInterceptor())
        server = grpc.aio.server(
            interceptors=interceptors,
            options=server_options(self.settings),
            maximum_concurrent_rpcs=self.settings.max_concurrent_calls,
        )
        add_to_server(self.api, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            DocumentedReflection((SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            server,
        )
        return server

    async def _refresh_metrics(self, metrics: ServerMetrics) -> None:
        """A worker of several: write its gauges for the parent's scrape, every few moments
        (in a thread: the database's size may be a query)."""
        while not self._stopping:
            await asyncio.to_thread(metrics.refresh)
            await asyncio.sleep(REFRESH_SECONDS)

    async def _follow_storage(self) -> None:
        """Health follows the database: NOT_SERVING from a write it could not take (a full
        disk, a read-only file system, another program's lock) until a probe write succeeds."""
        while not self._stopping:
            await asyncio.sleep(STORAGE_CHECK_SECONDS)
            failure = self.orchestrator.storage_unavailable()
            if failure is None:
                continue
            log.warning("the database cannot take writes: %s", failure.message)
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            while not self._stopping:
                if await asyncio.to_thread(self._probe):
                    break
                await asyncio.sleep(STORAGE_CHECK_SECONDS)
            if not self._stopping:
                log.warning("the database takes writes again")
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _probe(self) -> bool:
        """Whether the database takes a write now, with room for the largest message (a small
        write fits where a large one does not)."""
        if self._stopping:
            return False
        return self.orchestrator.probe_storage(room=self.settings.max_message_bytes) is None

    async def _watch_database(self, period: float = 1.0) -> None:
        """Health says NOT_SERVING while the database does not answer, SERVING once it does.
        The ping runs in a thread of its own: in the default thread pool it waited behind the
        reads there (each up to its 30 s statement_timeout, when a lock holds them), and health
        lagged the database by as long. A ping that has not answered in PING_DEADLINE_SECONDS
        (its statement sent to a host that drops packets waits for TCP to give up, many
        minutes) counts as no answer until it ends; no other starts meanwhile."""
        serving = True
        pinger = ThreadPoolExecutor(1, thread_name_prefix="stateward-health")
        loop = asyncio.get_running_loop()
        ping: asyncio.Future[bool] | None = None
        try:
            while True:
                await asyncio.sleep(period)
                if ping is None:
                    ping = loop.run_in_executor(pinger, self.orchestrator.database_answers)
                done, _ = await asyncio.wait({ping}, timeout=PING_DEADLINE_SECONDS)
                answers = False
                if done:
                    answers, ping = ping.result(), None
                if answers != serving and not self._stopping:
                    serving = answers
                    await self._say_database(serving)
        finally:
            pinger.shutdown(wait=False)

    async def _say_database(self, serving: bool) -> None:
        if serving:
            log.warning("the database answers again: serving")
        else:
            log.warning("the database does not answer: NOT_SERVING until it does")
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls (health says NOT_SERVING), let in-flight calls finish within the
        grace period, then close the database cleanly. A call whose write is under way when
        the grace ends is answered with its outcome before anything is cancelled (see
        `stateward_service.shutdown`). Calling it again with a shorter grace hurries a stop
        under way."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._stopping:
            if self._grace is not None:
                self._grace.shorten(grace)
            if self._server is not None and self._writes_finished:
                await self._server.stop(grace)
            return
        self._stopping = True
        self.replica.leadership.competing = False  # it takes no lead while it stops
        self._grace = Grace(grace)
        try:
            if self._storage_watch is not None:
                self._storage_watch.cancel()
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self._metrics_refresh is not None:
                self._metrics_refresh.cancel()
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.replica.close_streams()  # streams end with UNAVAILABLE and their cursor
            await self.api.finish_writes(self._grace)
            self._writes_finished = True
            if self.web is not None:
                await self.web.stop()  # its event streams ended with the broadcaster
            if self._server is not None:
                await self._server.stop(self._grace.remaining())
            await self.replica.stop()
        finally:
            self._stopped.set()  # whatever failed, the server is done

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE.full_name):
            await self.health.set(name, status)


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' files, or None for a plaintext server."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    _check_tls_files(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Raise ValueError naming the file (and its flag) that is unreadable, not PEM, or a key
    that does not match the certificate. gRPC would only fail to listen, naming the port."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not os.access(path, os.R_OK):
            why = "it does not exist" if not path.exists() else "it cannot be read"
            raise ValueError(f"{flag} {path}: {why}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert)
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"--tls-cert {cert}: not a PEM certificate ({error})") from None
    try:
        context.load_cert_chain(cert, key, password="")
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(
            f"--tls-key {key}: not an unencrypted PEM private key for the certificate {cert} "
            f"({error})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(
                f"--tls-client-ca {client_ca}: not PEM CA certificates ({error})"
            ) from None


def _bind(server: grpc.aio.Server, settings: ServerSettings) -> int:
    host, port = settings.host, settings.port
    address = format_address(host, port)
    credentials = _credentials(settings)
    # Asked before gRPC, which logs its own failure first. A worker's port is held for it.
    if port and settings.workers == 1 and _port_taken(host, port):
        raise PortUnavailable(_why_unbindable(host, port, address))
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise PortUnavailable(_why_unbindable(host, port, address))
    return bound


def _listen_for_ui(host: str, port: int) -> socket.socket:
    """A listening socket for the web view, or PortUnavailable saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle's algorithm off only on sockets that say they are
    # TCP (with proto 0, a keep-alive request waited ~40 ms for a delayed ACK).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # A restarted server takes its port back while the old connections linger in TIME_WAIT (a
    # port another process listens on stays refused).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host.strip("[]"), port))
        listener.listen(128)
    except OSError as error:
        listener.close()
        address = format_address(host, port)
        if error.errno == errno.EADDRINUSE:
            reason, culprit = "the port is already in use (another Stateward server?)", "port"
        elif isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
            reason, culprit = f"{host!r} is not an address of this machine", "host"
        else:
            reason, culprit = error.strerror or str(error), ""
        raise WebViewUnavailable(address, reason, culprit) from None
    listener.setblocking(False)
    return listener


def _port_taken(host: str, port: int) -> bool:
    """Whether something listens on `host:port` (a socket in TIME_WAIT does not count: gRPC
    reuses the address, and so does this probe)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as error:
        return error.errno == errno.EADDRINUSE
    return False


def _why_unbindable(host: str, port: int, address: str) -> str:
    """A message saying why `address` cannot be listened on, found by trying it ourselves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((host.strip("[]"), port))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return (
                f"cannot listen on {address}: the port is already in use (another Stateward "
                "server?). Stop it, or choose another port with --port"
            )
        return f"cannot listen on {address}: {error.strerror}"
    finally:
        probe.close()
    return f"cannot listen on {address}"


def _without_password(database: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", database)


def _reachable(host: str, port: int) -> str:
    """The address other machines use: this host's name when listening on every interface."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.gethostname()
    return format_address(host, port)


def describe_security(settings: ServerSettings) -> list[str]:
    """What the startup says about who may call the server."""
    lines = []
    tls = "TLS with client certificates" if settings.tls_client_ca else "TLS"
    lines.append(f"  transport: {tls if settings.tls_cert else 'plaintext (no TLS)'}")
    if settings.api_key:
        lines.append("  authentication: an API key is required (authorization: Bearer <key>)")
    elif settings.host in LOOPBACK:
        lines.append(
            "  authentication: none (no API key) - listening on loopback only; set "
            "STATEWARD_API_KEY before opening it to other hosts"
        )
    else:
        lines.append(
            f"  WARNING: no API key, and listening on {settings.host}: anyone who can reach "
            "this address can read and change every run. Set STATEWARD_API_KEY"
        )
    if settings.metrics_port:
        lines.append(
            f"  metrics: http://{format_address(settings.host, settings.metrics_port)}/metrics"
        )
    return lines + describe_web_view_security(settings)


def describe_web_view_security(settings: ServerSettings) -> list[str]:
    """What the startup says about who may use the web view: a warning when anyone who can
    reach it can, else nothing."""
    if settings.ui and settings.ui_host not in LOOPBACK and not settings.api_key:
        return [
            f"  WARNING: the web view listens on {settings.ui_host} without an API key: "
            "anyone who can reach it can read and cancel every run. Set STATEWARD_API_KEY"
        ]
    return []


def say(line: str) -> None:
    """Print a line on stderr for the person running the server. A stderr nobody reads any
    more (a pipe into `head` that ended) must not stop the server, nor its signal handling:
    the line is dropped, and so is everything written to stderr from then on."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass


def check_ports(settings: ServerSettings, *, serve_grpc: bool = True, metrics: bool = True) -> None:
    """Raise PortUnavailable (WebViewUnavailable for the web view's) when a port the server
    would listen on is taken, before anything is opened: a refusal writes nothing. The gRPC
    port is checked when `serve_grpc`, the metrics port when `metrics` (and set)."""
    if serve_grpc and settings.port and _port_taken(settings.host, settings.port):
        address = format_address(settings.host, settings.port)
        raise PortUnavailable(_why_unbindable(settings.host, settings.port, address))
    if settings.ui and settings.ui_port:
        _listen_for_ui(settings.ui_host, settings.ui_port).close()  # WebViewUnavailable
    if metrics and settings.metrics_port and _port_taken(settings.host, settings.metrics_port):
        address = format_address(settings.host, settings.metrics_port)
        raise PortUnavailable(
            f"cannot serve metrics on {address}: the port is already in use. Choose another "
            "port with --metrics-port"
        )


class Stopping:
    """Stops a running server as it is asked to: the first request lets the calls in flight
    finish within the grace period, a later one (`now`) ends the grace at once. `name` is what
    the line saying it began calls the server ("": nothing said)."""

    def __init__(self, server: StatewardServer, name: str) -> None:
        self.server = server
        self.name = name
        self.tasks: list[asyncio.Task[None]] = []
        self._signalled = False
        self._loop = asyncio.get_running_loop()

    def request(self, *, now: bool = False) -> None:
        """Begin stopping (gracefully), or with `now` end the grace of a stop under way; a
        graceful request once stopping does nothing. Call it on the server's loop."""
        if self.tasks and not now:
            return
        first = not self.tasks
        # The stop is scheduled before anything is said: saying may fail.
        self.tasks.append(self._loop.create_task(self.server.stop(grace=0 if now else None)))
        if first and self.name:
            say(f"{self.name} shutting down...")

    def on_signal(self, signum: int) -> None:
        """SIGINT or SIGTERM: the first stops gracefully, a second at once. (A worker's
        parent asks too, for the same signal: its request does not count as one.)"""
        if self._signalled:
            self.request(now=True)
            log.warning("second %s: stopping now", signal.Signals(signum).name)
        else:
            self._signalled = True
            self.request()


async def serve(
    settings: ServerSettings,
    on_started: Callable[[StatewardServer, Stopping], None] | None = None,
    *,
    greeting: Callable[[StatewardServer], list[str]] | None = None,
    name: str = "Stateward server",
    serve_grpc: bool = True,
) -> None:
    """Run a server until SIGINT or SIGTERM; a second signal stops it without waiting.
    `on_started` is called once it takes calls, with what stops it (a worker's parent asks it
    too). `greeting` gives the lines said once it does (None: where clients find it and who
    may call it); `name` is what the lines on stopping call it ("": none said); `serve_grpc`
    False opens no gRPC port (see StatewardServer). Raises DatabaseRefused, PortUnavailable."""
    # A worker's parent checked every port, holds the gRPC port for it and serves the metrics.
    worker = settings.workers > 1
    check_ports(settings, serve_grpc=serve_grpc and not worker, metrics=not worker)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    server = StatewardServer(settings, serve_grpc=serve_grpc)
    await server.start()
    # What the server made to start (~53,000 objects: modules, descriptors, settings, the rules)
    # lives as long as the process: frozen, a full collection no longer walks it. Measured
    # during 20 concurrent replays at 1M transitions (bench/resume.py), a full collection held
    # the event loop for 32-38 ms of CPU time, and 1.0-1.3 ms frozen.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    stopping = Stopping(server, name)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.on_signal, signum)
    if on_started is not None:
        on_started(server, stopping)
    # Said once the signals are handled: whoever reads this may send one at once.
    for line in (greeting or _server_greeting)(server):
        say(line)
    await server.wait_stopped()
    await asyncio.gather(*stopping.tasks)
    if name:
        say(f"{name} stopped.")


def _server_greeting(server: StatewardServer) -> list[str]:
    return server_greeting(server.settings, server.port, server.ui_url)


def server_greeting(
    settings: ServerSettings, port: int, ui_url: str, workers: int = 1
) -> list[str]:
    """What `server start` says once it takes calls on `port`: where clients find it (and with
    how many `workers`), who may call it, the web view's `ui_url` ("": none)."""
    address = format_address(settings.host, port)
    processes = f" with {workers} workers" if workers > 1 else ""
    lines = [
        f"Stateward server listening on {address}{processes} "
        f"(database {_without_password(settings.database)})"
    ]
    if settings.host in LOOPBACK:
        lines.append(f"  for clients on this machine: export STATEWARD_API_URL={address}")
    else:
        lines.append(
            "  for clients on other machines: export "
            f"STATEWARD_API_URL={_reachable(settings.host, port)}"
        )
    lines.extend(describe_security(settings))
    if ui_url:
        lines.append(f"  web view: {ui_url}")
    return lines
