"""A task run on a worker (another process, another machine): what travels to it, and what the
worker does with it.

The payload carries the task, its run record (created, Pending, by the flow's process), its
resolved inputs and the server to report to (`ServerTarget`: the address, API key and TLS
files' contents; for the embedded default, the Stateward home and the machine it is on). The
worker proposes the run's states itself, runs its hooks and stores its result with its final
state, exactly as a task run in the flow's process does; it returns only the final state's type.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import socket
import sys
import tempfile
import threading
import types
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stateward import settings
from stateward._records import dataclass

if TYPE_CHECKING:
    from stateward.runs import TaskRun
    from stateward.tasks import Task

log = logging.getLogger("stateward.task_runs")

_TLS_VARIABLES = ("STATEWARD_TLS_CA", "STATEWARD_TLS_CERT", "STATEWARD_TLS_KEY")


class WorkerSetupError(RuntimeError):
    """A worker cannot reach the server the flow run reports to."""


@dataclass(frozen=True)
class ServerTarget:
    """The server a flow run reports to, as a worker needs it."""

    api_url: str | None
    home: str
    hostname: str
    api_key: str | None = None
    # The contents of STATEWARD_TLS_CA / _CERT / _KEY: a worker need not have the files.
    tls: tuple[bytes | None, bytes | None, bytes | None] = (None, None, None)

    @classmethod
    def here(cls) -> ServerTarget:
        """The server this process reports to."""

        def read(name: str) -> bytes | None:
            value = os.environ.get(name)
            return Path(value).expanduser().read_bytes() if value else None

        ca, cert, key = (read(name) for name in _TLS_VARIABLES)
        return cls(
            api_url=settings.api_url(),
            home=str(settings.home()),
            hostname=socket.gethostname(),
            api_key=os.environ.get("STATEWARD_API_KEY") or None,
            tls=(ca, cert, key),
        )

    def connect(self) -> None:
        """Make this process report to the target: nothing to do when its own settings name the
        same server; a worker with no settings of its own takes the target's. Raises
        WorkerSetupError when the worker cannot reach that server."""
        from stateward import _embedded

        if self.api_url is None:  # the embedded default: a database on the flow's machine
            if self.hostname != socket.gethostname():
                raise WorkerSetupError(
                    f"the flow run reports to the embedded Stateward database on {self.hostname}, "
                    "which a worker on another machine cannot reach: run `stateward server "
                    "start` and set STATEWARD_API_URL (and STATEWARD_API_KEY/TLS) for the flow"
                )
            if settings.api_url() is None and str(settings.home()) == self.home:
                return
            if _embedded.has_client():
                raise WorkerSetupError(
                    f"this worker reports to another Stateward server; the flow's runs live in "
                    f"STATEWARD_HOME={self.home}: give the worker that setting"
                )
            os.environ.pop("STATEWARD_API_URL", None)
            os.environ["STATEWARD_HOME"] = self.home
            return
        if settings.api_url() == self.api_url:
            return
        if _embedded.has_client():
            raise WorkerSetupError(
                f"this worker reports to another Stateward server than {self.api_url}; "
                "run the flow's task runs on workers of their own"
            )
        os.environ["STATEWARD_API_URL"] = self.api_url
        if self.api_key:
            os.environ["STATEWARD_API_KEY"] = self.api_key
        folder = Path(tempfile.mkdtemp(prefix="stateward-tls-"))
        for name, content in zip(_TLS_VARIABLES, self.tls, strict=True):
            if content is None:
                os.environ.pop(name, None)
                continue
            path = folder / name.lower()
            path.write_bytes(content)
            path.chmod(0o600)
            os.environ[name] = str(path)


@dataclass(frozen=True)
class TaskRunPayload:
    """What a worker needs to run one task run."""

    task: Task[..., Any]
    task_run: TaskRun
    parameters: dict[str, Any]
    target: ServerTarget
    # The result storage of the flow run that sent it (for a task not given its own).
    result_storage: Path | None = None


def run_task_run(payload: TaskRunPayload) -> str:
    """On the worker: run the task run to its final state, proposing each state to the server;
    returns the name of the final state's type. A run that already started elsewhere (its
    worker was lost and the cluster ran it again) is not run twice: it is Crashed. Raises
    WorkerSetupError when the server cannot be reached from here."""
    payload.target.connect()
    from stateward._embedded import get_client
    from stateward._task_engine import TaskRunEngine
    from stateward.states import TERMINAL_TYPES, State, StateType

    current = get_client().get_task_run(payload.task_run.id).state
    if current is not None and current.type in TERMINAL_TYPES:
        return current.type.name
    if current is not None and current.type in (StateType.RUNNING, StateType.SCHEDULED):
        get_client().set_state(
            payload.task_run.id,
            State(
                StateType.CRASHED,
                message="its worker was lost while it ran (the cluster started it again, "
                "which Stateward does not do: retries are the task's own)",
            ),
            force=True,
        )
        return StateType.CRASHED.name
    # In a thread of its own: a worker thread serves one task after another, and the engine
    # stops code by raising in its thread; nothing meant for this run may reach the next one.
    outcome: list[State | BaseException] = []

    def run() -> None:
        try:
            engine = TaskRunEngine.on_worker(
                payload.task, payload.task_run, payload.parameters, payload.result_storage
            )
            outcome.append(engine.run_in_worker())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run, name=f"stateward-task-{payload.task_run.id[:8]}")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    log.debug("task run %s ended %s here", payload.task_run.id, outcome[0].name)
    return outcome[0].type.name


# --- pickling for the process pool ---------------------------------------------------------------
# The standard pickle stores a function by its module and name, but a decorated function's name
# is bound to its Task: a task's function is stored as "the function of the task named so".


def _task_function(module: str, qualname: str) -> Any:
    found: Any = sys.modules.get(module) or __import__(module, fromlist=["_"])
    for part in qualname.split("."):
        found = getattr(found, part)
    return found.fn


class _TaskPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            from stateward._hooks import HookedFunction

            module = sys.modules.get(obj.__module__)
            found: Any = module
            try:
                for part in obj.__qualname__.split("."):
                    found = getattr(found, part)
            except AttributeError:
                return NotImplemented
            if isinstance(found, HookedFunction) and found.fn is obj:
                return _task_function, (obj.__module__, obj.__qualname__)
        return NotImplemented


def dumps(value: Any) -> bytes:
    """Pickle `value`, storing decorated functions by name."""
    buffer = io.BytesIO()
    _TaskPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def run_pickled(blob: bytes) -> str:
    """`run_task_run` of a payload pickled by `dumps` (the process pool's worker function)."""
    payload: TaskRunPayload = pickle.loads(blob)
    return run_task_run(payload)


def holds_futures(value: Any) -> bool:
    """Whether `value` (a task's inputs) holds futures of other task runs anywhere inside."""
    from stateward.futures import StatewardFuture
    from stateward.tasks import unmapped

    if isinstance(value, StatewardFuture):
        return True
    if isinstance(value, unmapped):
        return holds_futures(value.value)
    if isinstance(value, dict):
        return any(holds_futures(item) for item in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        items: Iterable[Any] = value
        return any(holds_futures(item) for item in items)
    return False
