"""The SDK tests: in this process they all talk to one real server (the SDK's client is
process-wide); tests of processes (embedded default, signals, kills) run subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stateward.client import Client
from tests.support import ROOT, ServerProcess, running_server

SDK_SERVER_ARGS = ["--lease-check-interval", "0.2", "--slot-wait", "0.05"]


@pytest.fixture(scope="session")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("sdk"), args=SDK_SERVER_ARGS) as server:
        previous = os.environ.get("STATEWARD_API_URL")
        os.environ["STATEWARD_API_URL"] = server.target
        yield server
        if previous is None:
            os.environ.pop("STATEWARD_API_URL", None)
        else:
            os.environ["STATEWARD_API_URL"] = previous


@pytest.fixture(scope="session", autouse=True)
def ray_temp_dir() -> Iterator[Path]:
    """Ray's environment for this session, in this process and the scripts it starts:
    - its files in a folder of its own (RAY_TMPDIR, short: Ray's socket paths must fit in 107
      bytes). A `ray.init()` without an address joins the cluster whose address it finds in
      `<temp>/ray/ray_current_cluster`, which `ray start` writes and a killed head leaves behind:
      with the machine's /tmp, another test run's cluster would be joined;
    - no token authentication (RAY_AUTH_MODE): Ray 2.5x turns it on for a cluster it starts,
      with one token file per user (~/.ray/auth_token) that every Ray on the machine shares,
      other test runs' too (a joining script was refused with "InvalidAuthToken");
    - longer waits for its start-up (RAY_STARTUP_WAITS)."""
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    settings = {
        "RAY_TMPDIR": str(folder),
        "RAY_AUTH_MODE": "disabled",
        **RAY_STARTUP_WAITS,
    }
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield folder
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)


# A local Ray starts its GCS, then its raylet, which registers with the GCS once Ray's Python
# agents have started. On 2 cores shared with the other pytest-xdist worker and more, those
# imports are slow: Ray's waits for the GCS's port (and for a client of it) are made 120 s
# instead of about 30 s (Ray's variable for both). Its 30 s wait for the raylet cannot be set
# (the start then fails saying RAY_STARTUP_TIMED_OUT, seen once at load 18): such a start is
# tried once more (start_local_ray, python_starting_ray).
RAY_STARTUP_WAITS = {"RAY_gcs_server_port_wait_time_s": "120"}
RAY_STARTUP_TIMED_OUT = "The current node timed out during startup"


def descendants() -> set[int]:
    """The process ids of this process's children, theirs, and so on (as /proc lists them)."""
    found: set[int] = set()
    parents = [os.getpid()]
    while parents:
        for listing in Path(f"/proc/{parents.pop()}/task").glob("*/children"):
            try:
                children = {int(pid) for pid in listing.read_text().split()}
            except OSError:  # the process or thread ended meanwhile
                continue
            parents.extend(children - found)
            found |= children
    return found


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init(**init_kwargs)`, starting a local Ray instance in this process. If Ray's wait
    for its raylet runs out, the processes that start left (this process's new descendants) are
    killed and Ray is started once more; any other failure is raised."""
    import ray

    before = descendants()
    try:
        ray.init(**init_kwargs)
    except Exception as error:
        if RAY_STARTUP_TIMED_OUT not in str(error):
            raise
        warnings.warn(f"Ray is started once more: {error}", stacklevel=2)
        ray.shutdown()
        for pid in descendants() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        ray.init(**init_kwargs)


@pytest.fixture(scope="session")
def ray_instance(sdk_server: ServerProcess) -> Iterator[str]:
    """A local Ray instance (two CPUs, no dashboard) for the session's Ray tests, the only one
    this process starts: Ray's startup (a GCS, a raylet, workers) is slow on a busy machine, and
    a second start in one process after a shutdown once timed out. Its address (its GCS's), by
    which scripts join it."""
    import ray

    # Ray's driver sets SIGTERM and SIGINT handlers of its own (SIGTERM raises SystemExit):
    # left in place they outlive these tests in this worker and change what a signal does in
    # the tests run after them (test_interrupt_races's SIGTERM became SystemExit(15)).
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    start_local_ray(num_cpus=2, include_dashboard=False)
    for number, handler in handlers.items():
        signal.signal(number, handler)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def client(sdk_server: ServerProcess) -> Iterator[Client]:
    with Client(sdk_server.target) as connected:
        yield connected


def python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Python program (dedented) in a subprocess; its stdout and stderr come back."""
    full_env = {**os.environ, **(env or {})}
    for key, value in list(full_env.items()):
        if value == "":
            del full_env[key]  # "" unsets
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or ROOT,
    )


def python_starting_ray(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python`, for a program that starts a local Ray: run a second time if it failed because
    Ray's wait for its raylet ran out (its stderr says RAY_STARTUP_TIMED_OUT). The first run's
    Ray ended with it (Ray's reaper kills what a driver started when the driver exits)."""
    result = python(code, env=env, timeout=timeout)
    if result.returncode != 0 and RAY_STARTUP_TIMED_OUT in result.stderr:
        warnings.warn(f"a program is run once more: {RAY_STARTUP_TIMED_OUT}", stacklevel=2)
        result = python(code, env=env, timeout=timeout)
    return result


def spawn(code: str, *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    for key, value in list(full_env.items()):
        if value == "":
            del full_env[key]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,  # a program can wait for the test's word on it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=ROOT,
    )
