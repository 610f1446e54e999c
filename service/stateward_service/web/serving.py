"""Serving the web view: uvicorn on the event loop the gRPC server runs on, as one more task.

The Stateward server owns the process's signals and its shutdown, so uvicorn installs no signal
handlers of its own, and listens on a socket the server bound (so that the server reports a port
in use as it does for gRPC).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the Stateward server handles SIGINT and SIGTERM


class WebServer:
    """The web view's HTTP server: `start()` once the socket is bound, then `stop()`."""

    def __init__(self, app: ASGIApp, listener: socket.socket, *, grace: float) -> None:
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the process's logging, as configured by the server
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(math.ceil(grace), 1),
        )
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving on the running event loop; returns once uvicorn accepts requests."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self.listener]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the web view's server stopped as it started")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop taking requests and wait for the open ones (event streams end when the
        broadcaster closes) within the grace period; then close the socket."""
        if self._task is None:
            self.listener.close()
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self.listener.close()
