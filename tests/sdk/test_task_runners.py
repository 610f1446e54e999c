"""Task runners: the same scenarios (a map with a retry, a cache hit, hooks, a failing task, a
cancel, a concurrency limit) on the thread pool, the process pool, Dask (a LocalCluster of worker
processes on loopback) and Ray (a local instance), the clusters shared by the module, each against
the session's real server. Tasks on workers
propose their own states; the tests read the histories the server kept."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest

from stateward import flow, task, task_input_hash
from stateward.client import Client
from stateward.dask import DaskTaskRunner
from stateward.ray import RayTaskRunner
from stateward.states import State, StateType
from stateward.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from tests.sdk.conftest import python_starting_ray
from tests.support import wait_until

# --- tasks (module level: the process pool, Dask and Ray import them by name) --------------------


@task(retries=1)
def square_failing_once(x: int, folder: str) -> tuple[int, int]:
    """Fails the first attempt for x == 7 (a marker file remembers it), then succeeds."""
    marker = Path(folder) / f"attempt-{x}"
    if x == 7 and not marker.exists():
        marker.write_text("1")
        raise RuntimeError("first attempt fails")
    return x * x, os.getpid()


@task(cache_key_fn=task_input_hash)
def counted(token: str, folder: str) -> str:
    calls = Path(folder) / "calls"
    with calls.open("a") as out:
        out.write("called\n")
    return f"value of {token}"


def record_completion(task: Any, task_run: Any, state: State) -> None:
    folder = task_run.parameters["folder"]
    (Path(folder) / f"completed-{task_run.parameters['x']}").write_text(str(os.getpid()))


def record_failure(task: Any, task_run: Any, state: State) -> None:
    folder = task_run.parameters["folder"]
    (Path(folder) / f"failed-{task_run.parameters['x']}").write_text(str(os.getpid()))


@task(on_completion=[record_completion], on_failure=[record_failure])
def hooked(x: int, folder: str) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return os.getpid()


class Unlucky(Exception):
    """The failing task's own exception: it must come back as itself."""


@task
def failing(x: int) -> None:
    raise Unlucky(f"no luck with {x}")


@task
def slow(index: int, folder: str) -> int:
    """Writes `started-<index>` (holding its process id), then works in small steps for an
    hour: every test stops it (or kills its worker), and one that stops within a minute was
    stopped, however slow a loaded machine makes the stop. The file appears whole (renamed into
    place): a test that sees it reads the pid."""
    partial = Path(folder) / f".started-{index}.{os.getpid()}"
    partial.write_text(str(os.getpid()))
    partial.rename(Path(folder) / f"started-{index}")
    for _ in range(72_000):
        time.sleep(0.05)
    return index


@task(tags=["runners-one-at-a-time"])
def one_at_a_time(index: int, folder: str) -> None:
    """Records when it ran, as `<start> <end>` in `span-<index>`."""
    began = time.time()
    time.sleep(0.3)
    (Path(folder) / f"span-{index}").write_text(f"{began} {time.time()}")


@task
def whoami() -> int:
    return os.getpid()


# --- the runners --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster(sdk_server: Any) -> Iterator[Any]:
    """Two worker processes on loopback, shared by the module's Dask tests."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=40,
    )
    yield cluster
    cluster.close()


RUNNERS = ["threads", "processes", "dask", "ray"]


@pytest.fixture(params=RUNNERS)
def runner(request: pytest.FixtureRequest, sdk_server: Any) -> TaskRunner:
    if request.param == "threads":
        return ThreadPoolTaskRunner(max_workers=4)
    if request.param == "processes":
        return ProcessPoolTaskRunner(max_workers=2)
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
        return RayTaskRunner()
    cluster = request.getfixturevalue("dask_cluster")
    return DaskTaskRunner(address=cluster.scheduler_address)


def elsewhere(runner: TaskRunner) -> bool:
    return not isinstance(runner, ThreadPoolTaskRunner)


def history(client: Client, run_id: str) -> list[str]:
    return [state.name for state in client.list_states(run_id)]


# --- the scenarios ------------------------------------------------------------------------------


def test_a_map_of_20_with_a_retry_completes_with_every_result(runner, client, tmp_path) -> None:
    @flow(task_runner=runner)
    def squares(folder: str) -> list[tuple[int, int]]:
        return square_failing_once.map(range(20), folder=folder).result()

    state = squares(str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    results = state.result()
    assert [value for value, _ in results] == [x * x for x in range(20)]
    pids = {pid for _, pid in results}
    assert (os.getpid() not in pids) is elsewhere(runner)
    flow_run_id = state.details.flow_run_id
    runs = list(client.list_task_runs(flow_run_ids=[flow_run_id]))
    assert len(runs) == 20 and all(run.state and run.state.is_completed() for run in runs)
    (retried,) = [run for run in runs if run.parameters["x"] == 7]
    assert history(client, retried.id) == ["Pending", "Running", "Retrying", "Completed"]


def test_a_cached_result_is_not_computed_again(runner, client, tmp_path) -> None:
    token = str(uuid.uuid4())

    @flow(task_runner=runner)
    def twice(folder: str) -> list[State]:
        first = counted.submit(token, folder)
        first.wait()
        second = counted.submit(token, folder)
        second.wait()
        return [first.state, second.state]

    first, second = twice(str(tmp_path))
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == f"value of {token}"
    assert (tmp_path / "calls").read_text() == "called\n"


def test_hooks_run_where_the_task_ran(runner, client, tmp_path) -> None:
    @flow(task_runner=runner)
    def with_hooks(folder: str) -> list[State]:
        futures = [hooked.submit(1, folder), hooked.submit(-1, folder)]
        for future in futures:
            future.wait()
        return [future.state for future in futures]

    good, bad = with_hooks(str(tmp_path), return_state=True).result(raise_on_failure=False)
    assert good.is_completed() and bad.is_failed()
    task_pid = good.result()
    assert int((tmp_path / "completed-1").read_text()) == task_pid
    assert (task_pid != os.getpid()) is elsewhere(runner)
    failed_pid = int((tmp_path / "failed--1").read_text())
    assert (failed_pid != os.getpid()) is elsewhere(runner)
    assert not (tmp_path / "failed-1").exists() and not (tmp_path / "completed--1").exists()


def test_a_failing_task_fails_with_its_own_exception(runner, client) -> None:
    @flow(task_runner=runner)
    def fails() -> None:
        failing.submit(3).result()

    with pytest.raises(Unlucky, match="no luck with 3"):
        fails()
    (run,) = list(client.list_task_runs(task_keys=["failing"], limit=1))
    assert run.state is not None and run.state.is_failed()
    assert "no luck with 3" in (run.state.message or "")


def test_a_cancelled_flow_stops_its_running_tasks_and_never_starts_the_queued_ones(
    runner, client, tmp_path
) -> None:
    """Four workers' worth of slow tasks start; the cancel comes while they run."""
    count = 12

    @flow(task_runner=runner)
    def many(folder: str) -> None:
        slow.map(range(count), folder=folder)

    holder: dict[str, State] = {}
    thread = threading.Thread(
        target=lambda: holder.update(state=many(str(tmp_path), return_state=True))
    )
    thread.start()
    wait_until(lambda: any(tmp_path.glob("started-*")), timeout=60, what="a task to start")
    (flow_run,) = list(client.list_flow_runs(flow_names=["many"], state_types=[StateType.RUNNING]))
    wait_until(
        lambda: len(list(client.list_task_runs(flow_run_ids=[flow_run.id]))) == count,
        what="every task run to be submitted",
    )
    started = time.monotonic()
    client.set_state(flow_run.id, State(StateType.CANCELLING), force=True)
    thread.join(60)
    assert not thread.is_alive()
    assert time.monotonic() - started < 60  # stopped, not run to the tasks' hour
    assert holder["state"].type is StateType.CANCELLED
    runs = list(client.list_task_runs(flow_run_ids=[flow_run.id]))
    assert len(runs) == count
    ends = {run.parameters["index"]: run.state.name if run.state else None for run in runs}
    assert set(ends.values()) == {"Cancelled"}, ends
    ran = {int(path.name.split("-")[1]) for path in tmp_path.glob("started-*")}
    reached_running = {
        run.parameters["index"] for run in runs if "Running" in history(client, run.id)
    }
    # Every task whose code started had reached Running; one may reach Running and be
    # cancelled before its code's first line (under load, the cancel lands in between).
    assert ran and ran <= reached_running, (ran, reached_running)
    assert len(reached_running) < count  # the queued ones never started


def test_a_concurrency_limit_holds_across_workers(runner, client, tmp_path) -> None:
    tag = "runners-one-at-a-time"
    if all(limit.tag != tag for limit in client.list_concurrency_limits()):
        client.create_concurrency_limit(tag, 1)

    @flow(task_runner=runner)
    def limited(folder: str) -> None:
        one_at_a_time.map(range(3), folder=folder).result()

    limited(str(tmp_path))
    spans = sorted(
        tuple(float(t) for t in (tmp_path / f"span-{i}").read_text().split()) for i in range(3)
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans  # one slot: never two at once
    assert client.get_concurrency_limit(tag).active_slots == ()


# --- Dask specifics -----------------------------------------------------------------------------


def test_dask_in_the_flows_process_without_worker_processes(sdk_server, client, tmp_path) -> None:
    runner = DaskTaskRunner(
        cluster_kwargs={"processes": False, "n_workers": 1, "dashboard_address": ":0"}
    )

    @flow(task_runner=runner)
    def in_process(folder: str) -> list[tuple[int, int]]:
        return square_failing_once.map(range(8), folder=folder).result()

    results = in_process(str(tmp_path))
    assert [value for value, _ in results] == [x * x for x in range(8)]
    assert {pid for _, pid in results} == {os.getpid()}


def test_a_timed_out_flow_stops_its_tasks_on_dask(dask_cluster, client, tmp_path) -> None:
    @flow(task_runner=DaskTaskRunner(address=dask_cluster.scheduler_address), timeout_seconds=4)
    def late(folder: str) -> None:
        slow.map(range(8), folder=folder).wait()

    started = time.monotonic()
    state = late(str(tmp_path), return_state=True)
    assert time.monotonic() - started < 60  # stopped, not run to the tasks' hour
    assert state.name == "TimedOut"
    runs = list(client.list_task_runs(flow_run_ids=[state.details.flow_run_id]))
    assert {run.state.name for run in runs if run.state} == {"Cancelled"}


@pytest.mark.parametrize("runner", ["dask", "ray"], indirect=True)
def test_a_killed_cluster_worker_leaves_its_task_run_crashed(runner, client, tmp_path) -> None:
    """A worker process killed while it runs a task: the run is Crashed, and the cluster's
    own retry (Dask and Ray both start a task again elsewhere) runs nothing a second time."""

    @flow(task_runner=runner)
    def doomed(folder: str) -> str:
        future = slow.submit(99, folder)
        future.wait()
        return future.task_run_id

    holder: dict[str, str] = {}
    thread = threading.Thread(target=lambda: holder.update(id=doomed(str(tmp_path))))
    thread.start()
    marker = tmp_path / "started-99"
    wait_until(marker.exists, timeout=60, what="the task to start on a worker")
    worker_pid = int(marker.read_text())
    assert worker_pid != os.getpid()
    os.kill(worker_pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    state = client.get_task_run(holder["id"]).state
    assert state is not None and state.type is StateType.CRASHED, state
    assert history(client, holder["id"])[-2:] == ["Running", "Crashed"]  # not run again
    assert marker.read_text() == str(worker_pid)  # no second attempt started anywhere


def test_a_dead_process_pool_worker_leaves_its_task_run_crashed(sdk_server, client, tmp_path):
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    def doomed(folder: str) -> str:
        future = slow.submit(98, folder)
        future.wait()
        return future.task_run_id

    holder: dict[str, str] = {}
    thread = threading.Thread(target=lambda: holder.update(id=doomed(str(tmp_path))))
    thread.start()
    marker = tmp_path / "started-98"
    wait_until(marker.exists, timeout=60, what="the task to start in a worker process")
    os.kill(int(marker.read_text()), signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    state = client.get_task_run(holder["id"]).state
    assert state is not None and state.type is StateType.CRASHED, state
    assert "terminated abruptly" in (state.message or "")


def test_dask_runner_options_are_checked() -> None:
    with pytest.raises(ValueError, match="not both"):
        DaskTaskRunner(address="tcp://127.0.0.1:8786", cluster_kwargs={"n_workers": 1})
    with pytest.raises(ValueError, match="at least 1"):
        ProcessPoolTaskRunner(max_workers=0)
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPoolTaskRunner(max_workers=0)


def test_the_thread_pool_is_bounded_by_max_workers(sdk_server, client) -> None:
    running = []
    peak = []
    lock = threading.Lock()

    @task
    def counted_concurrency(i: int) -> None:
        with lock:
            running.append(i)
            peak.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(i)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def bounded() -> None:
        counted_concurrency.map(range(10)).wait()

    bounded()
    assert max(peak) == 2


def test_inline_calls_stay_in_the_flows_process(sdk_server, dask_cluster) -> None:
    @flow(task_runner=DaskTaskRunner(address=dask_cluster.scheduler_address))
    def inline() -> tuple[int, int]:
        return whoami(), whoami.submit().result()

    here, there = inline()
    assert here == os.getpid() and there != os.getpid()


# --- the embedded default -----------------------------------------------------------------------

EMBEDDED_RUNNERS = {
    "processes": "ProcessPoolTaskRunner(max_workers=2)",
    "dask": "DaskTaskRunner(cluster_kwargs={'n_workers': 2, 'dashboard_address': ':0'})",
    "ray": "RayTaskRunner(init_kwargs={'num_cpus': 2, 'include_dashboard': False})",
}


@pytest.mark.parametrize("kind", sorted(EMBEDDED_RUNNERS))
def test_workers_of_a_script_on_the_embedded_default_report_to_its_home(kind, tmp_path) -> None:
    """A script with no server (the embedded default) maps tasks onto worker processes: each
    worker opens the script's Stateward home and proposes its own states there."""
    home, folder = tmp_path / "home", tmp_path / "markers"
    folder.mkdir()
    result = python_starting_ray(
        f"""
        import json, os
        from stateward import flow
        from stateward.dask import DaskTaskRunner
        from stateward.ray import RayTaskRunner
        from stateward.task_runners import ProcessPoolTaskRunner
        from tests.sdk.test_task_runners import square_failing_once

        @flow(name="embedded-on-{kind}", task_runner={EMBEDDED_RUNNERS[kind]})
        def squares(folder):
            return square_failing_once.map(range(10), folder=folder).result()

        print(json.dumps({{"pid": os.getpid(), "results": squares({str(folder)!r})}}))
        """,
        env={"STATEWARD_API_URL": "", "STATEWARD_HOME": str(home)},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.splitlines()[-1])
    assert [value for value, _ in printed["results"]] == [x * x for x in range(10)]
    assert printed["pid"] not in {pid for _, pid in printed["results"]}
    with sqlite3.connect(f"file:{home / 'stateward.db'}?mode=ro", uri=True) as conn:
        ends = dict(
            conn.execute(
                """SELECT json_extract(t.parameters, '$.x'), t.state_name FROM task_runs t
                   JOIN flow_runs f ON f.id = t.flow_run_id WHERE f.flow_name = ?""",
                (f"embedded-on-{kind}",),
            ).fetchall()
        )
        retried = [
            row[0]
            for row in conn.execute(
                """SELECT s.name FROM states s JOIN task_runs t ON t.id = s.run_id
                   WHERE json_extract(t.parameters, '$.x') = 7 ORDER BY s.timestamp"""
            )
        ]
    assert ends == {x: "Completed" for x in range(10)}
    assert retried == ["Pending", "Running", "Retrying", "Completed"]
