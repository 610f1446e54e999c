"""What is Ray's own in `RayTaskRunner` (the common scenarios run on Ray in
`test_task_runners.py`, a killed worker among them): without an address the runner starts a
local Ray instance for the flow run, with its `init_kwargs`, and stops it after; with an address
it joins a running cluster and leaves it running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import ray

from stateward import task
from tests.sdk.conftest import python, python_starting_ray

pytestmark = pytest.mark.timeout(300)


@task
def cpus_of_the_cluster() -> float:
    return float(ray.cluster_resources()["CPU"])


def children_of_this_process() -> str:
    """This process's children as the kernel sees them (pid, state, command line; for one that
    died, the signal that ended it): whether Ray's GCS and raylet were started, and how each
    ended, for a script to say when Ray would not start."""
    lines = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            name, after_name = (
                stat[stat.index("(") + 1 : stat.rindex(")")],
                stat[stat.rindex(")") + 2 :],
            )
            fields = after_name.split()
            state, status = fields[0], int(fields[-1])  # status: as waitpid reports it
            if state == "Z":  # dead, not yet waited for: no command line any more
                how = (
                    f"killed by signal {status & 0x7F}" if status & 0x7F else f"exit {status >> 8}"
                )
                lines.append(f"{pid} [dead: {how}] {name}")
            else:
                lines.append(f"{pid} [{state}] {command.decode(errors='replace')[:160]}")
    return "\n".join(lines) or "(none)"


def ray_logs(folder: Path, lines: int = 30) -> str:
    """The last lines of each log of the Ray sessions under `folder` (a RAY_TMPDIR): what its
    GCS, raylet and driver said, for a test's failure message."""
    shown = []
    for log in sorted(folder.glob("ray/session_*/logs/*")):
        if log.is_file() and log.suffix in (".err", ".out", ".log"):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            shown.append(f"--- {log.relative_to(folder)}\n" + "\n".join(tail))
    return "\n".join(shown) or f"(no Ray logs under {folder})"


def run_with_ray_logs(
    folder: Path, code: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run a script (see `python_starting_ray`) that starts or joins Ray with its files in
    `folder`; fail the test with the script's output and the Ray logs there when it fails or
    does not end."""
    try:
        result = python_starting_ray(code, env=env, timeout=240)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"the script did not end: {timeout}\n{ray_logs(folder)}")
    assert result.returncode == 0, f"{result.stderr[-5000:]}\n{ray_logs(folder)}"
    return result


def test_without_an_address_ray_runs_for_the_flow_run_with_init_kwargs(sdk_server) -> None:
    """In a script of its own: this test process starts Ray once, for the session's Ray tests
    (a second start in one process after a shutdown timed out in CI). Its Ray files in a folder
    of its own, whose logs a failure shows."""
    own_files = Path(tempfile.mkdtemp(prefix="ray-own-", dir="/tmp"))  # short: Ray's sockets
    try:
        result = run_with_ray_logs(
            own_files,
            """
            import json, ray, sys
            from stateward import flow
            from stateward.ray import RayTaskRunner
            from tests.sdk.test_ray_runner import children_of_this_process, cpus_of_the_cluster

            runner = RayTaskRunner(init_kwargs={"num_cpus": 1, "include_dashboard": False})

            @flow(task_runner=runner)
            def sized():
                return cpus_of_the_cluster.submit().result(), ray.is_initialized()

            before = ray.is_initialized()
            try:
                during = sized()
            except BaseException:
                print("the script's children:\\n" + children_of_this_process(), file=sys.stderr)
                raise
            print(json.dumps([before, during, ray.is_initialized()]))
            """,
            # gRPC's fork support unset: the SDK's own default (see test_forks), not the
            # one this process inherited
            env={"RAY_TMPDIR": str(own_files), "GRPC_ENABLE_FORK_SUPPORT": ""},
        )
    finally:
        shutil.rmtree(own_files, ignore_errors=True)
    before, (cpus, during), after = json.loads(result.stdout.splitlines()[-1])
    assert (before, cpus, during, after) == (False, 1.0, True, False)  # stopped with its flow run


def test_with_an_address_the_runner_joins_a_running_ray_cluster(ray_instance: str) -> None:
    """The session's Ray instance, which this test process started, is a running cluster: a
    script's runner given its address joins it, runs its tasks there, and leaves the cluster
    running when the flow run ends."""
    result = python(
        f"""
        import json, os
        from stateward import flow
        from stateward.ray import RayTaskRunner
        from tests.sdk.test_ray_runner import cluster_of_the_task, where

        @flow(task_runner=RayTaskRunner(address={ray_instance!r}))
        def joined():
            return where.map(range(3)).result(), cluster_of_the_task.submit().result()

        print(json.dumps({{"pid": os.getpid(), "ran": joined()}}))
        """,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    printed = json.loads(result.stdout.splitlines()[-1])
    pids, cluster = printed["ran"]
    assert cluster == ray_instance  # the session's cluster, not a local instance of the script's
    assert printed["pid"] not in pids
    # The runner did not stop the cluster it joined: it still runs this process's tasks.
    assert ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=120) != os.getpid()


@task
def cluster_of_the_task() -> str:
    """The address of the Ray cluster this task runs on."""
    return str(ray.get_runtime_context().gcs_address)


@task
def where(index: int) -> int:
    return os.getpid()
