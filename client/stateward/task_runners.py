"""Task runners: where a flow run's submitted task runs (`.submit()`, `.map()`) execute.

`@flow(task_runner=...)` picks one; each flow run works with its own copy (`duplicate`), started
at the first submit and shut down when the flow run's code is over. Calls (`my_task(x)`) always
run in the flow's own thread.

- `ThreadPoolTaskRunner` (the default): threads of the flow's process.
- `ProcessPoolTaskRunner`: worker processes, spawned (never forked: the flow's process holds gRPC
  channels, which do not survive a fork).
- `stateward.dask.DaskTaskRunner` and `stateward.ray.RayTaskRunner`: a cluster.

Every runner but the thread pool sends a task run to a worker as a `_worker.TaskRunPayload`: the
task, the run record, its inputs (upstream futures resolved first, in the flow's process) and the
server to report to. The worker proposes the run's states itself (see `_worker`); the flow's
process then reads the final state, with its stored result, from the server. A worker that dies
makes the run Crashed; a flow run that stops cancels what has not started and asks the server to
cancel what has.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextvars
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from stateward.settings import results_storage_path
from stateward.states import TERMINAL_TYPES, State, StateType

if TYPE_CHECKING:
    import multiprocessing.context

    from stateward._task_engine import TaskRunEngine
    from stateward._worker import TaskRunPayload
    from stateward.runs import TaskRun

log = logging.getLogger("stateward.task_runs")

__all__ = ["ConcurrentTaskRunner", "ProcessPoolTaskRunner", "TaskRunner", "ThreadPoolTaskRunner"]


class TaskRunner(abc.ABC):
    """Where submitted task runs execute. Subclasses define `duplicate`, `start`, `shutdown`
    and `submit`; the flow run calls them (users only construct runners)."""

    @abc.abstractmethod
    def duplicate(self) -> Self:
        """A new, unstarted runner with the same settings (one per flow run)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Acquire what the runner needs (threads, processes, a cluster client)."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Release it: task runs not started are cancelled; the call returns once the runner's
        own resources are released. With `wait` False (a signal crashed the flow run: the
        process is on its way out), it returns at once and the task runs under way end on
        their own."""

    @abc.abstractmethod
    def submit(self, engine: TaskRunEngine) -> concurrent.futures.Future[State]:
        """Run the (created) task run of `engine`; a future of its final state."""


class ThreadPoolTaskRunner(TaskRunner):
    """Task runs in a pool of at most `max_workers` threads of the flow's process (default:
    `STATEWARD_TASK_RUNNER_MAX_WORKERS`, else the number of CPUs + 4, at most 32). Raises
    ValueError for a `max_workers` below 1."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is None:
            configured = os.environ.get("STATEWARD_TASK_RUNNER_MAX_WORKERS")
            max_workers = int(configured) if configured else min(32, (os.cpu_count() or 1) + 4)
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._executor: _ThreadPool | None = None

    def duplicate(self) -> Self:
        return type(self)(max_workers=self.max_workers)

    def start(self) -> None:
        if self._executor is None:
            self._executor = _ThreadPool(self.max_workers, "stateward-tasks")

    def shutdown(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None

    def submit(self, engine: TaskRunEngine) -> concurrent.futures.Future[State]:
        if self._executor is None:
            raise RuntimeError("the task runner is not started")
        run = contextvars.copy_context().run
        return self._executor.submit(run, engine.run_in_worker)

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"


# The name of Prefect 2's default runner, which Prefect 3 keeps as this same class.
ConcurrentTaskRunner = ThreadPoolTaskRunner


_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class _ThreadPool:
    """A pool of at most `max_workers` daemon threads, started as work comes and no thread is
    idle. Daemon threads, unlike `concurrent.futures.ThreadPoolExecutor`'s, which Python joins
    as the process exits: a flow run waits for its task runs anyway, except when a signal
    crashed it, and then a task's thread blocked in a long call into C (`time.sleep(60)`), which
    Python cannot interrupt, must not keep the process alive after the run is reported."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        # The work not started: (future, function, arguments); None ends a thread.
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # a release per thread waiting for work
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._shut = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """`fn(*args)` in one of the threads; its future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, fn, args))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as error:  # the future carries it, as the stdlib's does
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future, fn, args
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; with `cancel_futures`, the work not started is cancelled; with
        `wait`, returns once the threads ended (each after its work under way)."""
        with self._lock:
            self._shut = True
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class WorkerTaskRunner(TaskRunner):
    """A runner whose task runs execute outside the flow's threads: in other processes, on
    other machines. Subclasses say how a payload is sent (`send`) and how the runner starts and
    stops (`start`, `release`)."""

    def __init__(self) -> None:
        # Waiting for inputs and reading final states happen here, not in the runner's threads.
        self._local: concurrent.futures.ThreadPoolExecutor | None = None
        self._dispatches: set[Dispatch] = set()
        self._lock = threading.Lock()

    @abc.abstractmethod
    def send(self, payload: TaskRunPayload) -> RemoteCall:
        """Start the task run of `payload` on a worker (`_worker.run_task_run(payload)`)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Release the workers (the runner's `shutdown`, after cancelling what is queued)."""

    def local_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._local is None:
                self._local = concurrent.futures.ThreadPoolExecutor(
                    8, thread_name_prefix="stateward-dispatch"
                )
            return self._local

    def submit(self, engine: TaskRunEngine) -> concurrent.futures.Future[State]:
        dispatch = Dispatch(self, engine)
        with self._lock:
            self._dispatches.add(dispatch)
        dispatch.future.add_done_callback(lambda _: self._forget(dispatch))
        engine.remote = dispatch
        if dispatch.needs_waiting():
            self.local_executor().submit(contextvars.copy_context().run, dispatch.go)
        else:
            dispatch.go()
        return dispatch.future

    def _forget(self, dispatch: Dispatch) -> None:
        with self._lock:
            self._dispatches.discard(dispatch)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pending = list(self._dispatches)
        for dispatch in pending:
            dispatch.stop()
        if not wait:
            return
        concurrent.futures.wait([d.future for d in pending])
        try:
            self.release()
        finally:
            with self._lock:
                local, self._local = self._local, None
            if local is not None:
                local.shutdown(wait=True)


class RemoteCall(abc.ABC):
    """A task run sent to a worker, as its runner sees it."""

    @abc.abstractmethod
    def cancel(self) -> bool:
        """Cancel it if it has not started; True when it never will."""

    @abc.abstractmethod
    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from any thread) once the call is over, however it ended."""

    @abc.abstractmethod
    def failure(self) -> BaseException | None:
        """Once done: None if the worker function returned, else what went wrong (the worker
        died, the payload could not be sent; `concurrent.futures.CancelledError` if cancelled)."""


class ConcurrentCall(RemoteCall):
    """A `concurrent.futures.Future` of the worker function's return value."""

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

    def cancel(self) -> bool:
        return self.future.cancel()

    def when_done(self, callback: Callable[[], None]) -> None:
        self.future.add_done_callback(lambda _: callback())

    def failure(self) -> BaseException | None:
        if self.future.cancelled():
            return concurrent.futures.CancelledError()
        return self.future.exception()


class Dispatch:
    """One task run handed to a `WorkerTaskRunner`, seen from the flow's process: it waits for
    the run's inputs, sends it, and settles its future from the server's final state."""

    def __init__(self, runner: WorkerTaskRunner, engine: TaskRunEngine) -> None:
        self.runner = runner
        self.engine = engine
        self.future: concurrent.futures.Future[State] = concurrent.futures.Future()
        self.future.set_running_or_notify_cancel()
        self.call: RemoteCall | None = None
        self.stopped = False
        self._lock = threading.Lock()

    def needs_waiting(self) -> bool:
        from stateward._worker import holds_futures

        return bool(self.engine.wait_for) or holds_futures(self.engine.parameters)

    def go(self) -> None:
        """Resolve the inputs and send the run; an input that did not complete, or a stop that
        came first, ends the run here (as the local engine ends it)."""
        from stateward._outcomes import resolve
        from stateward._worker import ServerTarget, TaskRunPayload
        from stateward.exceptions import UpstreamTaskError

        try:
            try:
                for upstream in self.engine.wait_for:
                    resolve(upstream)
                parameters = resolve(self.engine.parameters)
            except UpstreamTaskError:
                self._run_here()
                return
            assert self.engine.task_run is not None
            payload = TaskRunPayload(
                task=self.engine.task,
                task_run=self.engine.task_run,
                parameters=parameters,
                target=ServerTarget.here(),
                result_storage=self.engine.inherited_storage or results_storage_path(),
            )
            with self._lock:
                if self.stopped:
                    self._run_here()
                    return
                self.call = self.runner.send(payload)
            self.call.when_done(self._landed)
        except BaseException as error:  # could not send it: the run cannot go on
            self._settle_failure(error)

    def _run_here(self) -> None:
        """End the run in the flow's process (an input failed, or the flow run stopped)."""
        self.engine.remote = None
        self.future.set_result(self.engine.run_in_worker())

    def _landed(self) -> None:
        self.runner.local_executor().submit(self._settle)

    def _settle(self) -> None:
        assert self.call is not None
        failure = self.call.failure()
        try:
            if failure is None:
                run = self._read_run()
                if run.state is not None and run.state.type in TERMINAL_TYPES:
                    self.engine.orchestration.state = run.state
                    self.future.set_result(run.state)
                    return
                state = run.state.name if run.state else "without a state"
                failure = RuntimeError(f"the worker returned before the run ended ({state})")
            self._settle_failure(failure)
        except BaseException as error:
            if not self.future.done():
                self.future.set_exception(error)
        finally:
            self.engine.done()

    def _settle_failure(self, failure: BaseException) -> None:
        """The worker did not bring the run to an end: it is Crashed (Cancelled if it was
        cancelled before it started), unless the worker reported a final state first."""
        engine = self.engine
        try:
            current = self._read_run().state
            if current is not None and current.type in TERMINAL_TYPES:
                engine.orchestration.observe_state(current)
                self.future.set_result(current)
                return
            if (
                self.stopped
                or isinstance(failure, concurrent.futures.CancelledError)
                or self._flow_run_stopping()
            ):
                decision = engine.orchestration.propose(
                    State(StateType.CANCELLED, message="its flow run stopped first")
                )
                assert decision.state is not None
                self.future.set_result(decision.state)
                return
            engine.crash(failure)
            state = engine.orchestration.state
            assert state is not None
            self.future.set_result(state)
        except BaseException as error:
            if not self.future.done():
                self.future.set_exception(error)
        finally:
            engine.done()

    def _read_run(self) -> TaskRun:
        """The run as the server has it, read again while the server cannot be reached."""
        engine = self.engine
        return engine.orchestration.read(
            "reading its state", lambda: engine.client.get_task_run(engine.id)
        )

    def _flow_run_stopping(self) -> bool:
        """Whether the run's flow run is being stopped (the server then refuses to start it)."""
        if not self.engine.flow_run_id:
            return False
        engine = self.engine
        state = engine.orchestration.read(
            "reading its flow run's state", lambda: engine.client.get_flow_run(engine.flow_run_id)
        ).state
        return state is not None and (state.is_final() or state.type is StateType.CANCELLING)

    def stop(self) -> None:
        """The flow run stopped: a run not sent yet or not started never starts; one under way
        is asked to stop (CANCELLING, which its worker obeys)."""
        with self._lock:
            self.stopped = True
            call = self.call
        if call is None or self.future.done():
            return
        if call.cancel():
            return
        try:
            self.engine.orchestration.propose_for(
                self.engine.id,
                State(StateType.CANCELLING, message="its flow run stopped"),
                self.engine.orchestration.label,
            )
        except Exception as error:
            log.warning("could not ask task run %s to stop: %s", self.engine.id, error)


def _spawn_context() -> multiprocessing.context.SpawnContext:
    import multiprocessing  # only a process pool needs it: not at every import

    return multiprocessing.get_context("spawn")


class ProcessPoolTaskRunner(WorkerTaskRunner):
    """Task runs in a pool of at most `max_workers` worker processes (default: the number of
    CPUs), started with `spawn`. The task, its inputs and its hooks must be picklable, defined
    in an importable module (or a script guarded by `if __name__ == "__main__":`). Raises
    ValueError for a `max_workers` below 1."""

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        max_workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def duplicate(self) -> Self:
        return type(self)(max_workers=self.max_workers)

    def start(self) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.max_workers, mp_context=_spawn_context()
            )

    def send(self, payload: TaskRunPayload) -> RemoteCall:
        from stateward._worker import dumps, run_pickled

        if self._pool is None:
            raise RuntimeError("the task runner is not started")
        return ConcurrentCall(self._pool.submit(run_pickled, dumps(payload)))

    def release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __repr__(self) -> str:
        return f"ProcessPoolTaskRunner(max_workers={self.max_workers})"
