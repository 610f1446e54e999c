"""A process using the Ray task runner forks children that exec at once (`subprocess` with a
`preexec_fn`, as Ray starts its GCS and raylet): gRPC's threads must not run in them. With
grpcio's fork support on, its threads start again in each such child, and a child closing the
descriptors it inherited while they poll them aborted before its exec (Ray then waited in vain
for its raylet). A process that does not use the Ray runner keeps gRPC's default."""

from __future__ import annotations

import json
import signal

from tests.sdk.conftest import python

# The deadline of the SDK's calls in the fork test's script (STATEWARD_REQUEST_TIMEOUT): a call
# on a connection that does not work waits that long before it fails.
CALL_WAITS = 600


def test_with_the_ray_runner_a_child_forked_while_the_sdk_streams_runs_no_grpc_thread(sdk_server):
    result = python(
        """
        import json, os, subprocess, threading
        from stateward.client import Client
        from stateward.ray import RayTaskRunner

        client = Client(os.environ["STATEWARD_API_URL"])
        streaming = threading.Event()

        def watch():  # a call in progress in another thread, as the SDK's cancel watcher is
            for _ in client.watch(after_sequence=0, started=lambda _: streaming.set()):
                pass

        threading.Thread(target=watch, daemon=True).start()
        assert streaming.wait(60)
        read, write = os.pipe()

        def count_threads():  # in the child, between its fork and its exec
            os.write(write, str(len(os.listdir("/proc/self/task"))).encode())

        threads, codes = [], []
        for _ in range(20):
            codes.append(subprocess.run(["true"], preexec_fn=count_threads).returncode)
            threads.append(int(os.read(read, 16)))
        print(json.dumps({"threads": threads, "codes": codes}))
        """,
        env={"GRPC_ENABLE_FORK_SUPPORT": ""},  # unset: the SDK's own default, not this test's
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"threads": [1] * 20, "codes": [0] * 20}, result.stderr[-3000:]


def test_a_fork_support_the_user_set_is_left_alone():
    result = python(
        """
        import os
        import stateward.ray
        from stateward.client import Client

        print(os.environ["GRPC_ENABLE_FORK_SUPPORT"])
        """,
        env={"GRPC_ENABLE_FORK_SUPPORT": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


def test_without_the_ray_runner_grpc_keeps_its_fork_support():
    # Off, a forked child cannot use gRPC at all, even on a channel of its own: the SDK must
    # not take that from a process's other gRPC code unless it starts Ray.
    result = python(
        """
        import os
        import stateward
        from stateward import flow, task
        from stateward.client import Client

        print(os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "unset"))
        """,
        env={"GRPC_ENABLE_FORK_SUPPORT": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["unset"]


def test_a_flow_called_in_a_forked_child_says_at_once_that_the_connection_stays_behind(
    sdk_server,
):
    # The child's calls would go to the parent's channel, which does not work after a fork:
    # they waited for their deadline, then again and again (minutes), and failed as if the
    # server were down.
    result = python(
        """
        import json, multiprocessing, time
        from stateward import flow

        @flow
        def inner() -> int:
            return 1

        def in_child(_: int) -> str:
            started = time.monotonic()
            try:
                inner()
            except Exception as error:
                return f"{time.monotonic() - started:.1f} {type(error).__name__}: {error}"
            return "ran"

        @flow
        def outer() -> list[str]:
            with multiprocessing.get_context("fork").Pool(1) as pool:
                return pool.map(in_child, [0])

        print(json.dumps(outer()))
        """,
        env={"STATEWARD_REQUEST_TIMEOUT": str(CALL_WAITS)},
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [said] = json.loads(result.stdout.splitlines()[-1])
    seconds, _, message = said.partition(" ")
    assert message.startswith("StatewardError: this process was forked from process"), said
    assert "'spawn'" in message, said
    # A call sent on the parent's channel would have waited CALL_WAITS seconds: failing in a
    # tenth of that (generous on a loaded machine) means none waited.
    assert float(seconds) < CALL_WAITS / 10, said


def test_a_child_forked_inside_a_flow_is_ended_by_sigterm_as_without_a_flow(sdk_server):
    """A flow's SIGTERM crashes the run on the process's main thread; a child forked from it
    runs no run of its own, so the signal is its own business again there. The child kept the
    flow's handler: a SIGTERM (`Process.terminate()`, as leaving a `multiprocessing` pool sends
    its workers) raised TerminationSignal in whatever the child was doing, a traceback on
    stderr and exit code 1, instead of ending it (-SIGTERM)."""
    result = python(
        """
        import json, multiprocessing, time
        from stateward import flow

        def wait(started) -> None:
            started.set()
            time.sleep(600)

        @flow
        def forks() -> int | None:
            context = multiprocessing.get_context("fork")
            started = context.Event()
            child = context.Process(target=wait, args=(started,))
            child.start()
            assert started.wait(60)
            child.terminate()
            child.join(60)
            return child.exitcode

        print(json.dumps(forks()))
        """,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == -signal.SIGTERM, result.stderr[-3000:]
    assert "TerminationSignal" not in result.stderr, result.stderr[-3000:]
