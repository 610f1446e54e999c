"""`stateward server start --workers N`: N server processes on one port and one database.

The parent checks once what every worker would otherwise find wrong at the same moment (the
ports, the TLS files, the database: a damaged file is refused once, a new schema is made once),
then holds the port: a socket bound with SO_REUSEPORT that never listens, so that port 0 is
chosen once for all the workers and no program that does not ask to share the port can take it
while the server runs. Each worker is a whole server (`server.serve`) in a fresh interpreter
(multiprocessing's spawn: gRPC cannot be forked once it runs), listening on the port with
`grpc.so_reuseport` on; Linux spreads new connections across the listening processes. The
workers share the database as replicas do (DESIGN.md, "Many processes, one database"): any
worker answers any call, each streams every transition, the loops run in one at a time under
the leader lock. The web view is the first worker's.

The parent says one ready line once every worker takes calls. SIGINT or SIGTERM has every worker
drain as a lone server does (a second signal ends their grace at once). A worker that dies is
started again, said in one line (after a delay that grows while it keeps dying soon after it
takes calls); when the new one cannot start, the whole server stops and says why (one killed
by a signal before it takes calls is started once more: the OOM killer or an operator, not its
start, may be why). A worker whose parent died stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from stateward_service.replica import check_database
from stateward_service.server import (
    PortUnavailable,
    StatewardServer,
    Stopping,
    _credentials,
    check_ports,
    format_address,
    say,
    serve,
    server_greeting,
)
from stateward_service.settings import ServerSettings
from stateward_service.store import DatabaseRefused, DatabaseUnavailable

_SPAWN = multiprocessing.get_context("spawn")

# What a worker's parent asks of it on their pipe.
STOP = "stop"  # stop gracefully (also what the parent's end closing means)
NOW = "now"  # end the grace at once

# A worker that dies within STEADY_SECONDS of taking calls is started again after a delay,
# doubled from FIRST_DELAY up to LONGEST_DELAY for each such death in a row: a worker that
# crashes as soon as it serves is not started in a loop that takes a core (3 a second here).
STEADY_SECONDS = 10.0
FIRST_DELAY = 1.0
LONGEST_DELAY = 30.0


class WorkerFailed(Exception):
    """A worker could not start (the server stopped); the message says why."""


def refusal(settings: ServerSettings) -> str | None:
    """Why the settings' `workers` cannot be honoured with the rest of them here, or None."""
    if settings.workers == 1:
        return None
    asked = f"--workers {settings.workers}"
    if not sys.platform.startswith("linux"):
        return (
            f"{asked} needs Linux, whose SO_REUSEPORT spreads connections across processes; "
            "run one worker here"
        )
    return None


def serve_workers(settings: ServerSettings) -> None:
    """Run `settings.workers` server processes on one port until SIGINT or SIGTERM (each
    drains; a second signal stops them at once). Raises, before any worker starts,
    PortUnavailable, DatabaseRefused, DatabaseUnavailable and ValueError (a TLS file), as a
    lone server would; WorkerFailed when a worker cannot start (the others are stopped)."""
    problem = refusal(settings)
    if problem is not None:
        raise ValueError(problem)
    check_ports(settings)
    _credentials(settings)  # the TLS files, each named with its flag
    # Held from here on: a server started meanwhile on the port is refused, however long the
    # database's check takes (it may wait for another process's lock, or read a large file).
    holder = _hold_port(settings.host, settings.port)
    metrics = None
    try:
        # Checked (and its schema made or upgraded) once, before the workers open it together.
        check_database(settings)
        metrics = _shared_metrics(settings) if settings.metrics_port else None
        port = holder.getsockname()[1]
        Workers(dataclasses.replace(settings, port=port, quick_check=False)).run()
    finally:
        holder.close()
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)


def _shared_metrics(settings: ServerSettings) -> str:
    """Serve the workers' metrics, added up, on the metrics port: each worker writes its own
    to files in a folder of ours (prometheus_client's multiprocess mode), which it finds in
    PROMETHEUS_MULTIPROC_DIR, set here before any worker starts. Returns the folder."""
    folder = tempfile.mkdtemp(prefix="stateward-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    from stateward_service.metrics import serve_shared

    serve_shared(settings.host, settings.metrics_port)
    return folder


def _hold_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: a free port) that the workers may share and nothing
    else may take (its SO_REUSEPORT lets only sockets that set it too, of this user, bind the
    port); it never listens, so no connection is queued on it. Raises PortUnavailable."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host.strip("[]"), port))
    except OSError as error:
        holder.close()
        raise PortUnavailable(
            f"cannot listen on {format_address(host, port)}: {error.strerror}"
        ) from None
    return holder


@dataclasses.dataclass
class _Worker:
    number: int
    process: Any  # multiprocessing's SpawnProcess
    connection: Connection
    ready: bool = False
    ready_at: float = 0.0  # time.monotonic() when it said so
    failure: str = ""  # what it said when it could not start
    # Started in place of one killed from outside before it took calls: its own such death
    # stops the server (a worker that cannot start is not started in a loop).
    retried: bool = False
    delay: float = 0.0  # what its start waited (see STEADY_SECONDS)


class Workers:
    """The parent's side: starts the workers, says the ready line, restarts a worker that
    dies, and passes a signal's request to stop on to every worker."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.ui_port = settings.ui_port  # the first worker's, kept across its restarts
        self.ui_url = ""
        self.workers: dict[int, _Worker] = {}
        self.announced = False
        self.signals = 0
        self.failure = ""
        self.due: dict[int, tuple[float, float]] = {}  # number -> (its start's time, delay)

    def run(self) -> None:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous = signal.set_wakeup_fd(wake_write)
        handlers = {
            signum: signal.signal(signum, lambda *_: None)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for number in range(1, self.settings.workers + 1):
                self._start(number)
            self._supervise(wake_read)
        finally:
            signal.set_wakeup_fd(previous)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            os.close(wake_read)
            os.close(wake_write)
        if self.failure:
            raise WorkerFailed(self.failure)
        say("Stateward server stopped.")

    def _start(self, number: int, *, retried: bool = False, delay: float = 0.0) -> None:
        ours, theirs = _SPAWN.Pipe()
        settings = dataclasses.replace(
            self.settings, ui=self.settings.ui and number == 1, ui_port=self.ui_port
        )
        process = _SPAWN.Process(
            target=run_worker,
            args=(settings, number, theirs),
            name=f"stateward-worker-{number}",
        )
        # Started with SIGINT ignored, which its interpreter keeps (Python makes SIGINT a
        # KeyboardInterrupt only when it is not ignored): a Ctrl-C while a worker starts is
        # this parent's to handle, not a traceback in each worker. Blocked here meanwhile, so
        # that one arriving now reaches the handler once it is back.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        theirs.close()
        self.workers[number] = _Worker(number, process, ours, retried=retried, delay=delay)

    def _supervise(self, wake: int) -> None:
        while self.workers or self.due:
            now = time.monotonic()
            for number, (when, delay) in list(self.due.items()):
                if when <= now:
                    del self.due[number]
                    self._start(number, delay=delay)
            soonest = min((when for when, _ in self.due.values()), default=None)
            exits = {worker.process.sentinel: worker for worker in self.workers.values()}
            messages = {
                worker.connection: worker
                for worker in self.workers.values()
                if not worker.connection.closed
            }
            ready = wait(
                [wake, *messages, *exits], None if soonest is None else max(0.0, soonest - now)
            )
            if wake in ready:
                for _ in os.read(wake, 64):
                    self._on_signal()
            for connection, worker in messages.items():
                if connection in ready:
                    self._on_message(worker)
            for sentinel, worker in exits.items():
                if sentinel in ready:
                    self._on_exit(worker)

    def _on_signal(self) -> None:
        self.signals += 1
        if self.signals == 1:
            say("Stateward server shutting down...")
        self._ask_all(STOP if self.signals == 1 else NOW)
        self.due.clear()  # a worker waiting to start again is not started

    def _ask_all(self, request: str) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(OSError):  # it is gone: its exit is noticed
                worker.connection.send(request)

    def _on_message(self, worker: _Worker) -> None:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):
            worker.connection.close()
            return
        if message[0] == "failed":
            worker.failure = message[1]
            return
        _, port, ui_url = message
        worker.ready = True
        worker.ready_at = time.monotonic()
        if ui_url:
            self.ui_url = ui_url
            self.ui_port = int(ui_url.rsplit(":", 1)[1].strip("/"))
        if self.signals:
            return  # stopping: a worker that was starting says nothing (it is asked to stop)
        if self.announced:
            say(
                f"Stateward server: worker {worker.number} (pid {worker.process.pid}) takes "
                "calls again"
            )
        elif not self.due and all(each.ready for each in self.workers.values()):
            self.announced = True
            for line in server_greeting(self.settings, port, self.ui_url, len(self.workers)):
                say(line)

    def _on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        with contextlib.suppress(EOFError, OSError):
            while not worker.connection.closed and worker.connection.poll():
                self._on_message(worker)  # what it said last (why it could not start)
        worker.connection.close()
        del self.workers[worker.number]
        if self.settings.metrics_port:  # its gauges leave the sums; its counts stay in them
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]
        if self.signals or self.failure:
            return
        code = worker.process.exitcode
        ended = _describe_exit(code)
        if not worker.ready:
            # A signal (the OOM killer, an operator) is no fault of the worker's start: the
            # next one may start; a worker that said why it cannot, or exited, will not.
            killed = code is not None and code < 0 and not worker.failure
            if not killed or worker.retried:
                self.failure = worker.failure or (
                    f"worker {worker.number} {ended} before it took calls"
                )
                self.due.clear()
                self._ask_all(STOP)
                return
            ended += " before it took calls"
        elif time.monotonic() - worker.ready_at < STEADY_SECONDS:
            delay = min(max(2 * worker.delay, FIRST_DELAY), LONGEST_DELAY)
            say(
                f"Stateward server: worker {worker.number} (pid {worker.process.pid}) {ended}; "
                f"starting another in {delay:g} s (it took calls for only "
                f"{time.monotonic() - worker.ready_at:.1f} s)"
            )
            self.due[worker.number] = (time.monotonic() + delay, delay)
            return
        say(
            f"Stateward server: worker {worker.number} (pid {worker.process.pid}) {ended}; "
            "starting another"
        )
        # One killed before it took calls keeps the delay its start waited, for the next.
        self._start(
            worker.number, retried=not worker.ready, delay=0.0 if worker.ready else worker.delay
        )


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def run_worker(settings: ServerSettings, number: int, parent: Connection) -> None:
    """A worker's process: a server on the shared port until its parent asks it to stop (or is
    gone), or a signal of its own stops it. Says "ready" with its port and web view address to
    the parent once it takes calls, or "failed" with the one-line reason it cannot."""
    # A Ctrl-C reaches the whole process group: before the server handles it, the parent's
    # request is the one to follow.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker {number} %(name)s: %(message)s",
    )

    def on_started(server: StatewardServer, stopping: Stopping) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: _follow_parent finds it so
            parent.send(("ready", server.port, server.ui_url))
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_follow_parent, args=(parent, loop, stopping), name="parent", daemon=True
        ).start()

    try:
        asyncio.run(serve(settings, on_started, greeting=lambda _: [], name=""))
    except (PortUnavailable, DatabaseRefused, DatabaseUnavailable, ValueError, OSError) as error:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            parent.send(("failed", str(error)))
        sys.exit(1)


def _follow_parent(parent: Connection, loop: asyncio.AbstractEventLoop, stopping: Stopping) -> None:
    """Pass the parent's requests to stop on to the server's loop; a parent gone (its end
    closed) is a request to stop gracefully."""
    while True:
        try:
            now = parent.recv() == NOW
        except (EOFError, OSError):
            now = False
            parent.close()
        try:
            loop.call_soon_threadsafe(functools.partial(stopping.request, now=now))
        except RuntimeError:
            return  # the loop is closed: the server stopped
        if parent.closed:
            return


__all__ = ["WorkerFailed", "refusal", "run_worker", "serve_workers"]
