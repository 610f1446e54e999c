"""Finding a server for the SDK: the one place the SDK touches `stateward_service`.

With STATEWARD_API_URL set, the SDK talks to that server. Without it, the first run in a process
starts an embedded server on `$STATEWARD_HOME/stateward.db`, in a thread of its own, listening on
a loopback port that it writes to `$STATEWARD_HOME/server.json`. The process's own calls reach
it in-process (no sockets: the synchronous methods of the server's gRPC API, which its network
handlers call too); streams, and other processes, use the port. A second process on the same
home finds the database taken and shares that server; if it cannot reach it, it says so.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stateward import settings
from stateward._transport import Connection, GrpcTransport, TransitionStream, server_answers
from stateward.client import Client
from stateward.exceptions import ServerUnavailable
from stateward.wire import error_for_status

if TYPE_CHECKING:
    import typer

    from stateward_service.settings import ServerSettings

log = logging.getLogger("stateward")

_lock = threading.Lock()
_client: Client | None = None
_embedded: EmbeddedServer | None = None


def server_commands() -> typer.Typer:
    """The `stateward server` commands (`start`), which live beside the server they run."""
    from stateward_service.cli import app

    return app


def get_client() -> Client:
    """The process's client: to STATEWARD_API_URL, or to the embedded server (started once)."""
    global _client
    with _lock:
        if _client is None:
            _client = _connect()
        return _client


def _connect() -> Client:
    settings.check()
    address = settings.api_url()
    if address:
        return _remote(address)
    global _embedded
    home = settings.home()
    from stateward_service.store import DatabaseInUse

    try:
        _embedded = EmbeddedServer(home)
    except DatabaseInUse:
        return _share(home)
    return Client(transport=_embedded.transport, timeout=None)


def _remote(address: str) -> Client:
    """A client of the server at STATEWARD_API_URL, once it answers (ServerUnavailable, saying
    what is wrong, within a few seconds if it does not)."""
    client = Client(address, wait_for_ready=True, timeout=settings.request_timeout())
    transport = client.transport
    assert isinstance(transport, GrpcTransport)
    try:
        transport.check_reachable(settings.FIRST_CONTACT_SECONDS)
    except BaseException:
        client.close()
        raise
    return client


def _share(home: Path) -> Client:
    """Another process runs the embedded server on this home: use it, if it answers."""
    info_path = home / "server.json"
    try:
        info = json.loads(info_path.read_text())
        address, pid = info["address"], info["pid"]
    except (OSError, ValueError, KeyError):
        raise ServerUnavailable(
            f"the database in {home} is in use by another process, which did not say where its "
            "server listens; set STATEWARD_API_URL, or give this process its own STATEWARD_HOME"
        ) from None
    if not server_answers(address):
        raise ServerUnavailable(
            f"the database in {home} is in use by process {pid}, but its server at {address} "
            "does not answer; set STATEWARD_API_URL, or give this process its own STATEWARD_HOME"
        )
    log.info("sharing the Stateward server of process %s at %s", pid, address)
    return Client(address, wait_for_ready=True, timeout=settings.request_timeout())


class InProcessTransport:
    """Unary calls go straight to the embedded server's API, in the caller's thread; refusals
    become the same exceptions a gRPC status would. Streams use the server's port."""

    def __init__(self, api: Any, streams: GrpcTransport) -> None:
        self.api = api
        self.streams = streams
        from stateward_service.errors import ServiceError

        self._service_error = ServiceError

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.api, method)(request)
        except self._service_error as error:
            raise error_for_status(error.code, error.message) from None

    def open_stream(self, method: str, request: Any) -> TransitionStream:
        return self.streams.open_stream(method, request)

    def close(self) -> None:
        """The process's client lives as long as the process."""


def home_settings(home: Path, **given: Any) -> ServerSettings:
    """The settings of a server on `home`'s database, for this machine alone: the loops' settings
    from the environment, `given` ones (validated, by setting name) as given; gRPC on a free
    loopback port, no TLS, no metrics endpoint. Raises the settings' SettingError."""
    from stateward_service.settings import ServerSettings

    home.mkdir(parents=True, exist_ok=True)
    return ServerSettings.from_environment(**given).model_copy(
        update={
            "host": "127.0.0.1",
            "port": 0,
            "db": home / "stateward.db",
            "tls_cert": None,
            "tls_key": None,
            "tls_client_ca": None,
            "metrics_port": 0,
        }
    )


def _announce(info_path: Path, address: str) -> None:
    """Tell other processes on this home where its server listens."""
    info_path.write_text(json.dumps({"address": address, "pid": os.getpid()}))


def _forget(info_path: Path) -> None:
    """Withdraw this process's announcement (not another's)."""
    try:
        if json.loads(info_path.read_text()).get("pid") == os.getpid():
            info_path.unlink()
    except (OSError, ValueError):
        pass


def serve_ui(host: str | None, port: int | None) -> None:
    """`stateward ui`: serve the web view of the runs in $STATEWARD_HOME, for a home where no
    server runs, until SIGINT or SIGTERM. It is the home's embedded server, with the web view on
    `host`:`port` (None: the STATEWARD_UI_HOST/_PORT settings, else 127.0.0.1:8471); scripts
    started meanwhile on the same home share it, as they share a script's. Raises
    ServerUnavailable when another process holds the home's database or the port is taken, and
    ValueError for a setting that is not allowed."""
    from stateward_service.server import PortUnavailable, serve
    from stateward_service.store import DatabaseInUse

    home = settings.home()
    server_settings = home_settings(home, ui=True, ui_host=host, ui_port=port)
    info_path = home / "server.json"
    try:
        asyncio.run(serve(server_settings, lambda server: _announce(info_path, server.address)))
    except DatabaseInUse:
        raise ServerUnavailable(
            f"the database in {home} is in use by another process (a script, or a server: "
            "`stateward server start` serves the web view itself, see its output). Start "
            "`stateward ui` before the scripts, or give them STATEWARD_API_URL"
        ) from None
    except PortUnavailable as error:
        raise ServerUnavailable(str(error)) from None
    finally:
        _forget(info_path)


class EmbeddedServer:
    """A Stateward server in a daemon thread of this process, stopped cleanly at exit."""

    def __init__(self, home: Path) -> None:
        from stateward_service.server import StatewardServer

        server_settings = home_settings(home, ui=False)  # `stateward ui` serves the page
        self.server = StatewardServer(server_settings)  # takes the database's lock, or raises
        self.info_path = home / "server.json"
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stateward-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        address = self.server.address
        _announce(self.info_path, address)
        # Plain loopback, with the API key if one is set (the embedded server checks it too).
        streams = GrpcTransport(Connection(address, api_key=os.environ.get("STATEWARD_API_KEY")))
        self.transport = InProcessTransport(self.server.api, streams)
        atexit.register(self.stop)
        log.debug("embedded Stateward server at %s (database %s)", address, server_settings.db)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as error:
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(grace=1.0)

    def stop(self) -> None:
        """Stop serving, let calls in flight finish, close the database."""
        if self._loop is None or self._stop is None or not self._thread.is_alive():
            return
        _forget(self.info_path)
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
