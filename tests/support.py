"""Test support: real Stateward servers in subprocesses, on ephemeral loopback ports, each on its
own database (a SQLite file, or a PostgreSQL database made for the test), and small helpers to
talk to them over real gRPC."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc, runs_pb2, states_pb2

ROOT = Path(__file__).resolve().parent.parent
# The server's ready line, said once it takes calls and handles signals; the space after the
# port means the line is whole (the log may be read while the server writes it).
_LISTENING = re.compile(r"listening on (\S+):(\d+) ")
_WEB_VIEW = re.compile(r"web view: (http://\S+:(\d+)/)")
# How long a server may take to say it is ready, or to exit once signalled. Generous: with the
# machine's two cores shared by other test runs (load 25), a server's start (an interpreter,
# grpc and its modules imported, a database opened) took over 20 s. A server that is ready
# sooner is waited for no longer.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0

ST = states_pb2  # the StateType enum values live on the states module
ACCEPT = pb.SET_STATE_STATUS_ACCEPT
REJECT = pb.SET_STATE_STATUS_REJECT
WAIT = pb.SET_STATE_STATUS_WAIT
ABORT = pb.SET_STATE_STATUS_ABORT


class ServerProcess:
    """`stateward server start` in a subprocess, its output in a log file."""

    def __init__(
        self,
        db: Path | str,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        port: int = 0,
        ui: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.db = db
        self.args = list(args)
        self.env = env or {}
        self.requested_port = port
        # The web view, on a free port when asked for (`ui_url` once started), else off.
        self.ui = ui
        self.requested_ui_port = 0
        self.ui_url = ""
        self.ui_port = 0
        if log_path is None:
            assert isinstance(db, Path), "a server on a PostgreSQL URL needs a log_path"
            log_path = db.with_suffix(".log")
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._channel: grpc.Channel | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the server and wait for its ready line (its port, and the web view's when
        asked for); raises RuntimeError when it exits first, TimeoutError after `timeout`."""
        env = {**os.environ, "STATEWARD_HOME": str(self.log_path.parent), **self.env}
        command = [
            sys.executable, "-m", "stateward", "server", "start",
            "--port", str(self.requested_port), "--db", str(self.db),
            *(["--ui-port", str(self.requested_ui_port)] if self.ui else ["--no-ui"]),
            *self.args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        offset = self.log_path.stat().st_size
        try:
            self.process = subprocess.Popen(
                command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        except BaseException:
            self._log.close()
            raise
        try:
            self.port = self._wait_listening(offset, timeout)
        except BaseException:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self._log.close()
            raise
        return self

    def _wait_listening(self, offset: int, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            found = _LISTENING.search(text)
            web = _WEB_VIEW.search(text)
            if found and (web or not self.ui):
                if web:
                    self.ui_url, self.ui_port = web.group(1), int(web.group(2))
                return int(found.group(2))
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{text}")
            time.sleep(0.02)
        raise TimeoutError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def says(self, text: str, timeout: float = 20.0) -> bool:
        """Whether the server's output holds `text`, waiting for it up to `timeout` seconds:
        the lines after the ready line (clients' address, the security summary, the web view)
        are written a moment after it, and a test reading them at once saw them missing."""
        with suppress(AssertionError):
            wait_until(lambda: text in self.output(), timeout, repr(text))
        return text in self.output()

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return self._channel

    def stub(self) -> orchestration_pb2_grpc.OrchestrationServiceStub:
        return orchestration_pb2_grpc.OrchestrationServiceStub(self.channel())

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `sig` and wait for the process to end; returns its exit code."""
        self._close_channel()
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never leave a server behind
            self.process.wait()
            raise
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        """Stop (if running) and start again on the same database and port."""
        if self.process is not None and not self._log.closed:
            self.stop()
        self.requested_port = self.port
        self.requested_ui_port = self.ui_port
        return self.start()


class Relay:
    """A TCP relay on a loopback port in front of a server at `target` ("host:port"): the
    server as a client sees it across a network. `cut()` ends every connection through it and
    takes new ones only to close them at once (a server that is away, whatever runs behind);
    `restore(target)` relays new connections again, to `target`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._open = True
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._accepting = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._accepting.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._open = False
            connections, self._sockets = self._sockets, set()
        for connection in connections:
            _close(connection)

    def restore(self, target: str) -> None:
        with self._lock:
            self.target = target
            self._open = True

    def close(self) -> None:
        self.cut()
        self._closed = True
        self._accepting.join(10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                target = self.target if self._open else None
            if target is None:
                _close(client)
                continue
            host, _, port = target.rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self._open:
                    _close(client)
                    _close(upstream)
                    continue
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` to `sink` until either end closes; then close both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # cut, or closed by the other pump
    finally:
        _close(source)
        _close(sink)


def _close(connection: socket.socket) -> None:
    with suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)  # wakes a thread reading it
    connection.close()


@contextmanager
def running_server(tmp_path: Path, **kwargs: object) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / f"{uuid.uuid4().hex[:8]}.db", **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and not server._log.closed:
            server.stop()


@contextmanager
def write_lock_held(database: Path) -> Iterator[Callable[[], None]]:
    """Another process's connection holding the SQLite write lock of `database` for the block:
    `release()` commits its (empty) transaction; leaving the block rolls back one still open."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    def release() -> None:
        holder.execute("COMMIT")

    try:
        yield release
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


def wait_until(
    check: Callable[[], bool], timeout: float = 20.0, what: str = "the condition"
) -> None:
    """Poll `check` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- request helpers ----------------------------------------------------------------------------


def state(type_: int, name: str = "", **details: object) -> states_pb2.State:
    msg = states_pb2.State(type=type_, name=name)  # type: ignore[arg-type]
    for key, value in details.items():
        if key == "result_json":
            msg.result.json = str(value)
        elif key == "result_pickle":
            msg.result.pickle = value  # type: ignore[assignment]
        elif key == "message":
            msg.message = str(value)
        else:
            target = getattr(msg.details, key)
            if hasattr(target, "FromDatetime"):
                target.FromDatetime(value)
            else:
                setattr(msg.details, key, value)
    return msg


def new_flow_run(
    stub: orchestration_pb2_grpc.OrchestrationServiceStub,
    initial: int | None = ST.STATE_TYPE_PENDING,
    **fields: object,
) -> runs_pb2.FlowRun:
    fields.setdefault("flow_name", "test-flow")
    run = runs_pb2.FlowRun(**fields)  # type: ignore[arg-type]
    if initial is not None:
        run.state.CopyFrom(state(initial))
    return stub.CreateFlowRun(pb.CreateFlowRunRequest(flow_run=run)).flow_run


def new_task_run(
    stub: orchestration_pb2_grpc.OrchestrationServiceStub,
    flow_run_id: str = "",
    initial: int | None = ST.STATE_TYPE_PENDING,
    **fields: object,
) -> runs_pb2.TaskRun:
    fields.setdefault("task_key", "test-task")
    run = runs_pb2.TaskRun(flow_run_id=flow_run_id, **fields)  # type: ignore[arg-type]
    if initial is not None:
        run.state.CopyFrom(state(initial))
    return stub.CreateTaskRun(pb.CreateTaskRunRequest(task_run=run)).task_run


def propose(
    stub: orchestration_pb2_grpc.OrchestrationServiceStub,
    run_id: str,
    type_or_state: int | states_pb2.State,
    *,
    force: bool = False,
    expected_state_id: str | None = None,
) -> pb.SetStateResponse:
    proposed = (
        type_or_state if isinstance(type_or_state, states_pb2.State) else state(type_or_state)
    )
    request = pb.SetStateRequest(run_id=run_id, state=proposed, force=force)
    if expected_state_id is not None:
        request.expected_state_id = expected_state_id
    return stub.SetState(request)


def write_lines(
    stub: orchestration_pb2_grpc.OrchestrationServiceStub,
    flow_run_id: str,
    messages: Sequence[str],
    *,
    task_run_id: str = "",
    level: int = 20,
    logger: str = "tests",
) -> None:
    """Store `messages` as lines the run logged (WriteLogs, 1,000 a call), in this order."""
    for start in range(0, len(messages), 1000):
        entries = []
        for message in messages[start : start + 1000]:
            entry = runs_pb2.LogEntry(
                flow_run_id=flow_run_id,
                task_run_id=task_run_id,
                level=level,
                logger=logger,
                message=message,
            )
            entry.timestamp.GetCurrentTime()
            entries.append(entry)
        stub.WriteLogs(pb.WriteLogsRequest(entries=entries))


def history(stub: orchestration_pb2_grpc.OrchestrationServiceStub, run_id: str) -> list[str]:
    """The names of a run's states, oldest first."""
    return [s.name for s in stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states]


def status_name(status: int) -> str:
    return pb.SetStateStatus.Name(status).removeprefix("SET_STATE_STATUS_")  # type: ignore[arg-type]


# --- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_URL_VARIABLE = "STATEWARD_TEST_POSTGRES_URL"
# How many connections drop the session's databases at its end (within the server's default
# max_connections of 100, shared with the other test runs on the machine).
_DROPPING_CONNECTIONS = 8


class PostgresDatabases:
    """Makes a fresh database per test on the server that STATEWARD_TEST_POSTGRES_URL names.
    A database given back with `release` is dropped meanwhile, the others at the end of the
    session.

    Each DROP DATABASE waits for a checkpoint: about 0.3 s at load 7 and 3 s at load 25, so the
    drops run on threads of their own while the tests go on, and those left at the end on
    several connections at once (PostgreSQL serves the checkpoints asked for meanwhile with
    one: twelve drops took 40 s one at a time at load 25, 3.5 s on six connections)."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.admin = psycopg.connect(url, autocommit=True)
        self.prefix = f"stateward_test_{uuid.uuid4().hex[:8]}"
        self.made: list[str] = []
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._dropper = ThreadPoolExecutor(1, thread_name_prefix="drop-database")

    def create(self) -> str:
        """A new empty database; returns its URL."""
        name = f"{self.prefix}_{len(self.made)}"
        self.admin.execute(f"CREATE DATABASE {name}")
        self.made.append(name)
        return _with_database(self.url, name)

    def release(self, url: str) -> None:
        """The database at `url` (made here) is no longer used: drop it in the background."""
        name = url.partition("?")[0].rsplit("/", 1)[1]
        assert name in self.made, url
        self._dropper.submit(self._drop, [name])

    def _drop(self, names: list[str]) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            for name in names:
                with self._lock:
                    if name in self._dropped:
                        continue
                    self._dropped.add(name)
                try:
                    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                except psycopg.errors.InsufficientPrivilege:
                    # FORCE may not end a superuser's backend, which an autovacuum worker on
                    # the database is; a plain DROP asks autovacuum to stop, and waits for it.
                    admin.execute(f"DROP DATABASE IF EXISTS {name}")

    def drop_all(self) -> None:
        """Drop every database made and not dropped yet, on several connections at once."""
        self.admin.close()
        with self._lock:
            left = [name for name in self.made if name not in self._dropped]
        shares = [left[i::_DROPPING_CONNECTIONS] for i in range(_DROPPING_CONNECTIONS)]
        with ThreadPoolExecutor(_DROPPING_CONNECTIONS) as pool:
            list(pool.map(self._drop, [share for share in shares if share]))
        self._dropper.shutdown(wait=True)


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}" + (f"?{query}" if query else "")
