"""`RayTaskRunner`: a flow run's submitted task runs on Ray (`pip install stateward[ray]`).

`address=` joins a running Ray cluster (`ray://host:10001`, or `auto`); without it, Ray starts a
local instance for the flow run and stops it after. `init_kwargs=` go to `ray.init`. Each task
run is one Ray task that proposes its own states to the Stateward server (see
`stateward._worker`).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from stateward.task_runners import ConcurrentCall, RemoteCall, WorkerTaskRunner

if TYPE_CHECKING:
    from stateward._worker import TaskRunPayload

__all__ = ["RayTaskRunner"]


def _keep_grpc_threads_out_of_forked_children() -> None:
    """grpcio's core turns its fork support on by default, and reads the setting once, as gRPC
    is imported: it then starts gRPC's threads again in every child this process forks, even one
    about to exec. A local Ray starts its GCS and raylet with `subprocess` and a `preexec_fn`
    (fork, then exec); such a child closes the file descriptors it inherited while those threads
    poll them, and some abort ("epoll_wait error: Bad file descriptor") before the exec, while
    the flow run's SDK has a call in progress: Ray then waits in vain for its raylet. So
    importing this module turns the support off for the process, unless GRPC_ENABLE_FORK_SUPPORT
    is set (it is then the user's choice) or gRPC was imported first (too late: the setting was
    read; `import ray` loads no gRPC). Only here: with the support off, a forked child cannot use
    gRPC at all, which a process that does not start Ray need not give up."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


_keep_grpc_threads_out_of_forked_children()


def _ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ImportError("RayTaskRunner needs Ray: pip install 'stateward[ray]'") from None


class RayCall(ConcurrentCall):
    """A Ray task: its object reference, seen through a concurrent future."""

    def __init__(self, ray: Any, reference: Any) -> None:
        super().__init__(reference.future())
        self.ray = ray
        self.reference = reference

    def cancel(self) -> bool:
        # Ray cancels a task that has not started; one that runs is asked through the server.
        try:
            self.ray.cancel(self.reference, force=False)
        except Exception:
            return False
        return False

    def when_done(self, callback: Callable[[], None]) -> None:
        self.future.add_done_callback(lambda _: callback())

    def failure(self) -> BaseException | None:
        error = self.future.exception()
        if error is not None and type(error).__name__ == "TaskCancelledError":
            return concurrent.futures.CancelledError()
        return error


class RayTaskRunner(WorkerTaskRunner):
    """Submitted task runs on Ray: `address` of a running cluster (else a local instance just
    for the flow run), `init_kwargs` for `ray.init`. Raises ImportError (when started) if Ray is
    not installed."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self._ray: Any = None
        self._remote: Any = None
        self._started_ray = False

    def duplicate(self) -> Self:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs)

    def start(self) -> None:
        if self._ray is not None:
            return
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, **self.init_kwargs)
            self._started_ray = True
        from stateward._worker import run_task_run

        self._remote = ray.remote(run_task_run).options(max_retries=0)
        self._ray = ray

    def send(self, payload: TaskRunPayload) -> RemoteCall:
        if self._ray is None:
            raise RuntimeError("the task runner is not started")
        return RayCall(self._ray, self._remote.remote(payload))

    def release(self) -> None:
        ray, self._ray = self._ray, None
        if ray is not None and self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __repr__(self) -> str:
        return f"RayTaskRunner(address={self.address!r})"
