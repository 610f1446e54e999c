"""`DaskTaskRunner`: a flow run's submitted task runs on a Dask cluster (`pip install
stateward[dask]`).

Either an existing scheduler (`address=`) or a temporary cluster made for the flow run and closed
after it (`cluster_class=`, default `distributed.LocalCluster`, with `cluster_kwargs=` and, for an
adaptive cluster, `adapt_kwargs=`); `client_kwargs=` go to `distributed.Client`. Each task run is
one Dask task that proposes its own states to the Stateward server (see `stateward._worker`).
"""

from __future__ import annotations

import concurrent.futures
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from stateward.task_runners import RemoteCall, WorkerTaskRunner

if TYPE_CHECKING:
    from stateward._worker import TaskRunPayload

__all__ = ["DaskTaskRunner"]


def _distributed() -> Any:
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise ImportError(
            "DaskTaskRunner needs Dask's distributed: pip install 'stateward[dask]'"
        ) from None


def _cluster_class(value: str | Callable[..., Any] | None) -> Callable[..., Any]:
    if value is None:
        cluster: Callable[..., Any] = _distributed().LocalCluster
        return cluster
    if isinstance(value, str):
        module, _, name = value.rpartition(".")
        if not module:
            raise ValueError(f"cluster_class {value!r} must be a dotted path: module.Class")
        found: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return found
    return value


class DaskCall(RemoteCall):
    """A Dask future of the worker function."""

    def __init__(self, future: Any) -> None:
        self.future = future  # a distributed.Future

    def cancel(self) -> bool:
        # Dask cannot say whether the task had started: a task already on a worker runs on,
        # so the flow run also asks the server to cancel it (which its worker obeys).
        self.future.cancel()
        return False

    def when_done(self, callback: Callable[[], None]) -> None:
        self.future.add_done_callback(lambda _: callback())

    def failure(self) -> BaseException | None:
        status = self.future.status
        if status == "finished":
            return None
        if status == "cancelled":
            return concurrent.futures.CancelledError()
        try:
            error = self.future.exception(timeout=10)
        except BaseException as lost:
            return lost
        return error if error is not None else RuntimeError(f"the Dask task is {status}")


class DaskTaskRunner(WorkerTaskRunner):
    """Submitted task runs on Dask.

    `address`: a running scheduler (`tcp://host:8786`); else a temporary cluster of
    `cluster_class` (a class, a callable or a dotted path; default `distributed.LocalCluster`)
    made with `cluster_kwargs`, made adaptive with `adapt_kwargs` (`{"minimum": 1, "maximum":
    10}`); `client_kwargs` go to `distributed.Client`. Raises ValueError for `address` together
    with `cluster_class`, and ImportError (when started) if `distributed` is not installed."""

    def __init__(
        self,
        address: str | None = None,
        cluster_class: str | Callable[..., Any] | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        adapt_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if address is not None and (cluster_class is not None or cluster_kwargs or adapt_kwargs):
            raise ValueError(
                "give either address= (an existing scheduler) or cluster_class=/cluster_kwargs="
                "/adapt_kwargs= (a temporary cluster), not both"
            )
        self.address = address
        self.cluster_class = cluster_class
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.adapt_kwargs = dict(adapt_kwargs or {})
        self.client_kwargs = dict(client_kwargs or {})
        self.client: Any = None  # a distributed.Client once started
        self.cluster: Any = None

    def duplicate(self) -> Self:
        return type(self)(
            address=self.address,
            cluster_class=self.cluster_class,
            cluster_kwargs=self.cluster_kwargs,
            adapt_kwargs=self.adapt_kwargs,
            client_kwargs=self.client_kwargs,
        )

    def start(self) -> None:
        if self.client is not None:
            return
        distributed_module = _distributed()
        if self.address is not None:
            self.client = distributed_module.Client(self.address, **self.client_kwargs)
            return
        self.cluster = _cluster_class(self.cluster_class)(**self.cluster_kwargs)
        try:
            if self.adapt_kwargs:
                self.cluster.adapt(**self.adapt_kwargs)
            self.client = distributed_module.Client(self.cluster, **self.client_kwargs)
        except BaseException:
            self.cluster.close()
            self.cluster = None
            raise

    def send(self, payload: TaskRunPayload) -> RemoteCall:
        from stateward._worker import run_task_run

        if self.client is None:
            raise RuntimeError("the task runner is not started")
        key = f"{payload.task.name}-{payload.task_run.id}"
        return DaskCall(self.client.submit(run_task_run, payload, key=key, pure=False))

    def release(self) -> None:
        client, self.client = self.client, None
        cluster, self.cluster = self.cluster, None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def __repr__(self) -> str:
        where: Any = self.address or self.cluster_class or "LocalCluster"
        return f"DaskTaskRunner({getattr(where, '__name__', where)})"
