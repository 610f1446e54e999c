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
    """Run a script (see `python`) that starts or joins Ray with its files in `folder`; fail the
    test with the script's output and the Ray logs there when it fails or does not end."""
    try:
        result = python(code, env=env, timeout=240)
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
        assert result.returncode == 0, "\n".join(
            (result.stderr[-5000:], (tmp_path / "head.log").read_text(), ray_logs(own_files))
        )
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
