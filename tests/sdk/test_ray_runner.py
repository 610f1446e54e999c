"""What is Ray's own in `RayTaskRunner` (the common scenarios run on Ray in
`test_task_runners.py`, a killed worker among them): without an address the runner starts a
local Ray instance for the flow run, with its `init_kwargs`, and stops it after; with an address
it joins a running cluster and leaves it running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray

from stateward import task
from tests.sdk.conftest import python
from tests.support import wait_until

pytestmark = pytest.mark.timeout(300)


@task
def cpus_of_the_cluster() -> float:
    return float(ray.cluster_resources()["CPU"])


def test_without_an_address_ray_runs_for_the_flow_run_with_init_kwargs(sdk_server) -> None:
    """In a script of its own: this test process starts Ray once, for the session's Ray tests
    (a second start in one process after a shutdown timed out in CI)."""
    result = python(
        """
        import json, ray
        from stateward import flow
        from stateward.ray import RayTaskRunner
        from tests.sdk.test_ray_runner import cpus_of_the_cluster

        runner = RayTaskRunner(init_kwargs={"num_cpus": 1, "include_dashboard": False})

        @flow(task_runner=runner)
        def sized():
            return cpus_of_the_cluster.submit().result(), ray.is_initialized()

        before = ray.is_initialized()
        print(json.dumps([before, sized(), ray.is_initialized()]))
        """,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    before, (cpus, during), after = json.loads(result.stdout.splitlines()[-1])
    assert (before, cpus, during, after) == (False, 1.0, True, False)  # stopped with its flow run


def test_with_an_address_the_runner_joins_a_running_ray_cluster(sdk_server, tmp_path) -> None:
    """A Ray head started apart (`ray start --head`); a script's runner joins it by address,
    runs its tasks there, and leaves the cluster running when the flow run ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "head.log").open("w")
    # The head's files (and the address `ray start` leaves there) in a folder of its own: a
    # later `ray.init()` without an address must not find this cluster.
    own_files = Path(tempfile.mkdtemp(prefix="ray-head-", dir="/tmp"))
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--include-dashboard=false"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_TMPDIR": str(own_files)},  # without tokens: see conftest
    )  # fmt: skip
    try:
        # The script joins once the head says it runs: one that asked before gave up at load
        # 15 (the head took 5 s to start, and the script's ray.init failed 16 s after that).
        wait_until(
            lambda: "Ray runtime started" in (tmp_path / "head.log").read_text(),
            timeout=120,
            what="the Ray head to start",
        )
        result = python(
            f"""
            import json, os
            from stateward import flow
            from stateward.ray import RayTaskRunner
            from tests.sdk.test_ray_runner import cpus_of_the_cluster, where

            @flow(task_runner=RayTaskRunner(address="127.0.0.1:{port}"))
            def joined():
                return where.map(range(3)).result(), cpus_of_the_cluster.submit().result()

            print(json.dumps({{"pid": os.getpid(), "ran": joined()}}))
            """,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr + (tmp_path / "head.log").read_text()
        printed = json.loads(result.stdout.splitlines()[-1])
        pids, cpus = printed["ran"]
        assert cpus == 1.0  # the head's, not a local instance of the script's
        assert printed["pid"] not in pids
        assert head.poll() is None  # the runner did not stop a cluster it joined
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
        log.close()
        shutil.rmtree(own_files, ignore_errors=True)


@task
def where(index: int) -> int:
    return os.getpid()
