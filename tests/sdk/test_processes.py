"""The SDK across processes: the embedded default (scripts, the CLI and a server sharing a home),
cache hits in another process, cancellation from another process, signals, a killed process and
a lost server."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from stateward.client import Client
from stateward.exceptions import NotPausedError
from stateward.runs import FlowRun, SetStateStatus
from stateward.states import TERMINAL_TYPES, State, StateType
from tests.sdk.conftest import python, spawn
from tests.support import ROOT, ServerProcess, wait_until

EMBEDDED = {"STATEWARD_API_URL": ""}  # unset: the SDK starts its own server
# What a run that must be stopped from outside would otherwise go on doing (a step's sleep, a
# retry's delay) lasts this long, so that a process ending within STOPPED_WITHIN seconds was
# stopped, however slow a loaded machine makes the stop itself. (A bound of a few seconds
# against a 30 or 60 s sleep, counted from before the CLI's own start, failed at load 20.)
ENDLESS_SECONDS = 3600
STOPPED_WITHIN = 60


def states_in(db: Path, flow_name: str) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [
            row[0]
            for row in conn.execute(
                """SELECT s.name FROM states s JOIN flow_runs f ON f.id = s.run_id
                   WHERE f.flow_name = ? ORDER BY s.timestamp""",
                (flow_name,),
            )
        ]


def test_the_embedded_default_needs_no_server(tmp_path):
    env = {**EMBEDDED, "STATEWARD_HOME": str(tmp_path)}
    result = python(
        """
        from stateward import flow, task

        @task
        def shout(word):
            return word.upper()

        @flow(name="embedded-hello")
        def hello(word="hi"):
            return shout(word)

        print(hello())
        """,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "HI\n"
    assert "Flow run" in result.stderr and "- Completed" in result.stderr  # logging by default
    db = tmp_path / "stateward.db"
    assert states_in(db, "embedded-hello") == ["Pending", "Running", "Completed"]
    assert "Traceback" not in result.stderr  # nothing failed while it stopped
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The table as wide as the flow's name needs, whatever terminal the tests run from (at 80
    # columns it is cut short; under pytest-xdist the width came from no terminal).
    listed = subprocess.run(
        [sys.executable, "-m", "stateward", "flow-run", "ls"],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **env, "COLUMNS": "200"}.items() if v},
        cwd=ROOT,
    )
    assert listed.returncode == 0 and "embedded-hello" in listed.stdout, listed.stdout


WAITING_FLOW = """
import sys
from stateward import flow

@flow(name=%r)
def waiting():
    print("started", flush=True)
    sys.stdin.readline()  # until the test says go on
    return 1

print(waiting(), flush=True)
"""


def test_scripts_the_cli_and_a_server_share_one_home_and_any_may_exit(tmp_path):
    """Two flow scripts, the CLI and a server on one home at once; the first script exits while
    the second runs, then the server stops: everything completes."""
    env = {**EMBEDDED, "STATEWARD_HOME": str(tmp_path)}
    server = ServerProcess(tmp_path / "stateward.db", log_path=tmp_path / "server.log").start()
    first = spawn(WAITING_FLOW % "first-script", env=env)
    second = spawn(WAITING_FLOW % "second-script", env=env)
    try:
        for script in (first, second):
            assert script.stdout is not None and script.stdout.readline() == "started\n"
        listed = subprocess.run(
            [sys.executable, "-m", "stateward", "flow-run", "ls", "--state", "RUNNING"],
            capture_output=True,
            text=True,
            env={k: v for k, v in {**os.environ, **env}.items() if v},
            cwd=ROOT,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert "first-script" in listed.stdout and "second-script" in listed.stdout
        _out, err = first.communicate("go on\n", timeout=30)
        assert first.returncode == 0, err
        assert server.stop() == 0
        _out, err = second.communicate("go on\n", timeout=30)
        assert second.returncode == 0, err
    finally:
        for script in (first, second):
            if script.poll() is None:
                script.kill()
        if server.process is not None and server.process.poll() is None:
            server.stop()
    db = tmp_path / "stateward.db"
    assert states_in(db, "first-script") == ["Pending", "Running", "Completed"]
    assert states_in(db, "second-script") == ["Pending", "Running", "Completed"]


CACHED_PROGRAM = """
from datetime import timedelta
from stateward import flow, task, task_input_hash

@task(cache_key_fn=task_input_hash, cache_expiration=timedelta(hours=1))
def compute(x):
    print("computed", flush=True)
    return {"answer": x * 6, "in": "%s"}

@flow(name="cross-process-cache")
def run():
    return compute(7)

print(run())
"""


def test_a_cache_hit_in_another_process_returns_the_stored_value(sdk_server, client):
    marker = os.urandom(4).hex()
    first = python(CACHED_PROGRAM % marker)
    second = python(CACHED_PROGRAM % marker)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    expected = f"{{'answer': 42, 'in': '{marker}'}}\n"
    assert first.stdout == "computed\n" + expected
    assert second.stdout == expected  # not computed again
    latest = next(client.list_task_runs(task_keys=["compute"], limit=1))
    assert latest.state.name == "Cached"


def test_cancelling_from_another_process_stops_the_run(sdk_server, client):
    marker = os.urandom(4).hex()
    runner = spawn(
        f"""
        import time
        from stateward import flow, task, CancelledRun

        def on_cancel(flow, flow_run, state):
            print("on_cancellation", state.name, flush=True)

        @task
        def slow_step():
            time.sleep({ENDLESS_SECONDS})

        @flow(name="cancel-me-{marker}", on_cancellation=[on_cancel])
        def long_running():
            print("running", flush=True)
            slow_step()
            print("not cancelled!", flush=True)

        try:
            long_running()
        except CancelledRun as error:
            print("raised", type(error).__name__, flush=True)
        """
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        run = next(client.list_flow_runs(flow_names=[f"cancel-me-{marker}"], limit=1))
        wait_until(
            lambda: any(
                t.state and t.state.is_running()
                for t in client.list_task_runs(flow_run_ids=[run.id])
            ),
            what="the task to start",
        )
        cancel = subprocess.run(
            [sys.executable, "-m", "stateward", "flow-run", "cancel", run.id],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert cancel.returncode == 0, cancel.stderr
        assert "Cancelling" in cancel.stdout
        out, err = runner.communicate(timeout=STOPPED_WITHIN)  # the step would go on for hours
    finally:
        runner.kill()
        runner.wait()
    assert out.splitlines() == ["on_cancellation Cancelled", "raised CancelledRun"], err
    assert [s.name for s in client.list_states(run.id)] == [
        "Pending", "Running", "Cancelling", "Cancelled",
    ]  # fmt: skip
    (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
    assert task_run.state.type is StateType.CANCELLED


def test_on_the_embedded_default_a_cancel_from_another_process_stops_the_run(tmp_path):
    # No server: the script hears of the cancel, written by the CLI in its own process on the
    # same home, through its own feed of the shared log.
    env = {**EMBEDDED, "STATEWARD_HOME": str(tmp_path)}
    runner = spawn(
        f"""
        import time
        from stateward import flow, task, CancelledRun
        from stateward.context import get_run_context

        @task
        def slow_step():
            time.sleep({ENDLESS_SECONDS})

        @flow(name="cancel-me-here")
        def long_running():
            print(get_run_context().flow_run.id, flush=True)
            slow_step()
            print("not cancelled!", flush=True)

        try:
            long_running()
        except CancelledRun as error:
            print("raised", type(error).__name__, flush=True)
        """,
        env=env,
    )
    try:
        assert runner.stdout is not None
        run_id = runner.stdout.readline().strip()
        db = tmp_path / "stateward.db"
        wait_until(lambda: "Running" in states_in(db, "cancel-me-here"), what="the flow to run")
        cancel = subprocess.run(
            [sys.executable, "-m", "stateward", "flow-run", "cancel", run_id],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={key: value for key, value in {**os.environ, **env}.items() if value},
        )
        assert cancel.returncode == 0, cancel.stderr
        out, err = runner.communicate(timeout=STOPPED_WITHIN)  # the step would go on for hours
    finally:
        runner.kill()
        runner.wait()
    assert out.splitlines() == ["raised CancelledRun"], err
    assert states_in(db, "cancel-me-here") == ["Pending", "Running", "Cancelling", "Cancelled"]


def crash_a_waiting_flow(
    client: Client, name: str, signum: int, first: str, before: str = ""
) -> FlowRun:
    """Run a script whose flow `name` (with an on_crashed hook that prints the state's name)
    runs the statements `first`, says "running" and sleeps for an hour; send it `signum` once
    it runs, and check that it crashed at once: the script exits, failing, within
    STOPPED_WITHIN seconds, its hook having run, and the run went Pending, Running, Crashed.
    The statements `before` run before the flow is called. Returns the run as the server has
    it. A script still running after STOPPED_WITHIN seconds fails the test with the stacks of
    its threads (faulthandler's, on SIGABRT)."""
    body = textwrap.indent(textwrap.dedent(first).strip(), " " * 4)
    runner = spawn(
        "import asyncio, signal, time\n"
        f"{textwrap.dedent(before).strip()}\n"
        "from stateward import flow\n\n"
        "def on_crashed(flow, flow_run, state):\n"
        '    print("on_crashed", state.name, flush=True)\n\n'
        f'@flow(name="{name}", on_crashed=[on_crashed])\n'
        "def waiting():\n"
        f"{body}\n"
        '    print("running", flush=True)\n'
        f"    time.sleep({ENDLESS_SECONDS})\n\n"
        "waiting()\n",
        env={"PYTHONFAULTHANDLER": "1"},
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        runner.send_signal(signum)
        try:
            out, err = runner.communicate(timeout=STOPPED_WITHIN)  # the sleep lasts an hour
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGABRT)
            out, err = runner.communicate(timeout=STOPPED_WITHIN)
            pytest.fail(f"still running {STOPPED_WITHIN} s after the signal; out {out!r}\n{err}")
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode != 0
    assert out == "on_crashed Crashed\n", err
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    assert [s.name for s in client.list_states(run.id)] == ["Pending", "Running", "Crashed"]
    return run


@pytest.mark.parametrize("receiver", ["any thread", "not the main thread"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_crashes_the_run_and_runs_on_crashed(sdk_server, client, signum, receiver):
    """The system hands a signal sent to the process to any thread that does not block it:
    mostly the main thread, at times another (the lease renewer, grpc's), whence Python runs
    its handler only when the main thread next runs bytecode. The run must crash at once all
    the same, its main thread sleeping for an hour; blocking the signal on the main thread
    makes another thread the receiver every time."""
    name = f"signalled-{signum}-{os.urandom(3).hex()}"
    block = f"signal.pthread_sigmask(signal.SIG_BLOCK, {{{int(signum)}}})"
    first = block if receiver == "not the main thread" else "pass"
    run = crash_a_waiting_flow(client, name, signum, first)
    assert run.state.message in ("TerminationSignal: SIGTERM", "KeyboardInterrupt")


def test_a_signal_during_a_retry_delay_crashes_the_run_at_once(sdk_server, client):
    name = f"signalled-waiting-{os.urandom(3).hex()}"
    runner = spawn(
        f"""
        import time
        from stateward import flow

        attempts = []

        @flow(name="{name}", retries=1, retry_delay_seconds={ENDLESS_SECONDS})
        def flaky():
            attempts.append(1)
            print("attempt", len(attempts), flush=True)
            raise ValueError("fails")

        try:
            flaky()
        finally:
            print("attempts", len(attempts), flush=True)
        """
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "attempt 1\n"
        run = next(client.list_flow_runs(flow_names=[name], limit=1))
        wait_until(lambda: client.get_flow_run(run.id).state.name == "AwaitingRetry", what="retry")
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=STOPPED_WITHIN)  # the delay would last hours
    finally:
        runner.kill()
        runner.wait()
    assert out == "attempts 1\n", err
    assert "KeyboardInterrupt" in err
    assert client.get_flow_run(run.id).state.name == "Crashed"


def test_a_signal_while_a_task_waits_for_a_concurrency_slot_crashes_at_once(tmp_path):
    server = ServerProcess(tmp_path / "slots.db").start()  # WAIT answers of the default 1 s
    client = Client(server.target)
    tag = "one-slot"
    client.create_concurrency_limit(tag, 1)
    holder = client.create_task_run("holds-the-slot", tags=[tag], state=State(StateType.PENDING))
    assert client.set_state(holder.id, State(StateType.RUNNING)).status is SetStateStatus.ACCEPT
    name = f"signalled-in-slot-wait-{os.urandom(3).hex()}"
    runner = spawn(
        f"""
        from stateward import flow, task

        @task(name="waits-for-the-slot", tags=["{tag}"])
        def waiter():
            return "ran"

        @flow(name="{name}")
        def outer():
            print("running", flush=True)
            return waiter()

        outer()
        """,
        env={"STATEWARD_API_URL": server.target, "STATEWARD_LOGGING_LEVEL": "DEBUG"},
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        run = next(client.list_flow_runs(flow_names=[name], limit=1))
        wait_until(lambda: list(client.list_task_runs(flow_run_ids=[run.id])), what="task run")
        (waiting,) = client.list_task_runs(flow_run_ids=[run.id])

        def waits() -> bool:
            return any(
                "waiting for a concurrency slot" in line.message
                for line in client.list_logs(waiting.id)
            )

        # It waits for the slot (its first WAIT logs a line, which the run's log shipper sends
        # to the server; it then proposes Running again and waits for a release).
        wait_until(waits, timeout=60, what="the task's wait for a slot")
        runner.send_signal(signal.SIGINT)
        # The slot is never freed: a process that waited for it would never end.
        _, err = runner.communicate(timeout=STOPPED_WITHIN)
        assert "KeyboardInterrupt" in err
        assert client.get_flow_run(run.id).state.name == "Crashed"
        (task_run,) = client.list_task_runs(flow_run_ids=[run.id])
        assert task_run.state.name == "Crashed"
    finally:
        runner.kill()
        client.close()
        server.stop()


def test_a_signal_the_program_ignores_stays_ignored(sdk_server):
    result = python(
        """
        import os, signal, threading, time
        from stateward import flow

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup

        @flow
        def steady():
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(1)
            return "finished"

        print(steady())
        print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["finished", "True"]


def test_a_killed_process_leaves_a_crashed_run_that_watchers_see(sdk_server, client):
    name = f"killed-{os.urandom(3).hex()}"
    runner = spawn(
        f"""
        import time
        from stateward import flow, task

        @task
        def forever():
            time.sleep(600)

        @flow(name="{name}")
        def doomed():
            print("running", flush=True)
            forever()

        doomed()
        """,
        env={"STATEWARD_LEASE_SECONDS": "1"},
    )
    assert runner.stdout is not None and runner.stdout.readline() == "running\n"
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    start = client.list_states(run.id)[-1]
    watcher = client.watch(run_ids=[run.id], state_types=[StateType.CRASHED], after_sequence=0)
    runner.kill()
    runner.wait()
    crashed = next(watcher)
    assert crashed.from_state.id == start.id
    assert "heartbeat lease" in crashed.to_state.message
    wait_until(
        lambda: all(t.state.is_crashed() for t in client.list_task_runs(flow_run_ids=[run.id])),
        what="the task run to crash",
    )


def test_a_lost_server_makes_the_run_crashed(tmp_path):
    server = ServerProcess(tmp_path / "lost.db", args=["--lease-check-interval", "0.2"]).start()
    runner = spawn(
        """
        import sys
        from stateward import flow

        @flow(name="lost-server")
        def stranded():
            print("running", flush=True)
            sys.stdin.readline()  # until the test has killed the server
            return 1

        stranded()
        """,
        env={
            "STATEWARD_API_URL": server.target,
            "STATEWARD_LEASE_SECONDS": "1",
            "STATEWARD_REQUEST_TIMEOUT": "0.5",
        },
    )
    assert runner.stdout is not None and runner.stdout.readline() == "running\n"
    # The flow ends once the server is gone (it slept 2 s: at load 20 the kill came later, and
    # the run completed on a live server).
    server.kill()
    _out, err = runner.communicate("go on\n", timeout=60)
    assert runner.returncode != 0
    assert "lost the Stateward server while proposing Completed" in err
    server.restart()  # the run's lease lapsed meanwhile: the server crashes it
    try:
        with Client(server.target) as client:
            run = next(client.list_flow_runs(flow_names=["lost-server"], limit=1))
            wait_until(lambda: client.get_flow_run(run.id).state.is_crashed(), what="Crashed")
    finally:
        server.stop()


def test_a_signal_another_thread_receives_after_an_event_loop_closed_crashes_the_run(
    sdk_server, client
):
    """An event loop that handles a signal takes Python's wakeup fd (asyncio's
    `add_signal_handler`), and closing it unsets the fd: the SDK's forwarder, which wakes the
    main thread for a crash signal another thread received, takes it back. The flow's main
    thread blocks SIGTERM, so another thread receives it, and sleeps for an hour."""
    name = f"signalled-after-a-loop-{os.urandom(3).hex()}"
    run = crash_a_waiting_flow(
        client,
        name,
        signal.SIGTERM,
        """
        loop = asyncio.new_event_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        """,
    )
    assert run.state.message == "TerminationSignal: SIGTERM"


def test_a_signal_another_thread_receives_crashes_the_run_whatever_the_default_socket_timeout(
    sdk_server, client
):
    """A socket timeout set for the whole process (`socket.setdefaulttimeout`) before the first
    flow does not stop the SDK's forwarder, which waits on a socket of its own for as long as
    no signal comes: a SIGTERM another thread receives after that timeout still crashes the
    run at once (it landed only when the main thread's sleep ended)."""
    name = f"signalled-after-a-socket-timeout-{os.urandom(3).hex()}"
    run = crash_a_waiting_flow(
        client,
        name,
        signal.SIGTERM,
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        time.sleep(1)  # five times the socket timeout
        """,
        before="import socket; socket.setdefaulttimeout(0.2)",
    )
    assert run.state.message == "TerminationSignal: SIGTERM"


def test_an_event_loop_in_a_flow_keeps_its_signals_while_the_flow_runs_tasks(sdk_server, client):
    """While a flow's event loop holds the wakeup fd, the SDK leaves it there (it used to set
    its own for a moment every second to see whose it was): a signal the loop handles, sent
    after the flow ran tasks, reaches the loop's handler."""
    name = f"loop-keeps-its-signals-{os.urandom(3).hex()}"
    runner = spawn(
        f"""
        import asyncio, os, signal
        from stateward import flow, task

        @task
        def step(n):
            return n

        @flow(name="{name}")
        def handling():
            loop = asyncio.new_event_loop()
            handled = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, handled.set_result, "handled")
            assert [step(n) for n in range(5)] == list(range(5))

            async def main():
                os.kill(os.getpid(), signal.SIGUSR1)
                return await asyncio.wait_for(handled, 30)

            try:
                print(loop.run_until_complete(main()), flush=True)
            finally:
                loop.close()

        handling()
        """
    )
    try:
        out, err = runner.communicate(timeout=STOPPED_WITHIN)
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode == 0, err
    assert out == "handled\n", err
    run = next(client.list_flow_runs(flow_names=[name], limit=1))
    assert run.state.type is StateType.COMPLETED


def test_sigterm_after_an_event_loop_that_handled_it_closed_crashes_the_run(sdk_server, client):
    """An event loop that handles SIGTERM takes it from the SDK, and closing it puts the
    default back, which ended the process with the run left Running: the SDK's next step (here
    a task) takes it back, and the signal crashes the run, its hooks run."""
    name = f"signalled-after-its-loop-{os.urandom(3).hex()}"
    run = crash_a_waiting_flow(
        client,
        name,
        signal.SIGTERM,
        """
        from stateward import task

        @task
        def step():
            return 1

        loop = asyncio.new_event_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: None)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        step()
        """,
    )
    assert run.state.message == "TerminationSignal: SIGTERM"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_crashes_the_task_runs_in_the_thread_pool_and_the_process_exits(tmp_path, signum):
    """Ctrl-C (or SIGTERM) while a flow waits for task runs in its default thread pool: the
    task runs are stopped and end Crashed, the flow run ends Crashed, and the process exits,
    without waiting for the tasks' code to end (it never would: one sleeps in C for an hour,
    the others loop for an hour). The reference marks a run that a Ctrl-C stopped Crashed."""
    env = {**EMBEDDED, "STATEWARD_HOME": str(tmp_path), "PYTHONFAULTHANDLER": "1"}
    runner = spawn(
        f"""
        import signal, threading, time
        from stateward import flow, task

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
        started = threading.Barrier(4)

        @task
        def slow(i):
            started.wait()
            if i == 0:  # in C for an hour: Python cannot stop it
                time.sleep({ENDLESS_SECONDS})
            deadline = time.monotonic() + {ENDLESS_SECONDS}
            while time.monotonic() < deadline:  # stopped when its next bytecode runs
                time.sleep(0.05)

        @flow(name="signalled-pool")
        def fan_out():
            futures = slow.map(range(3))
            started.wait()
            print("running", flush=True)
            return [future.result() for future in futures]

        fan_out()
        """,
        env=env,
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        runner.send_signal(signum)
        try:
            out, err = runner.communicate(timeout=STOPPED_WITHIN)  # the tasks loop for an hour
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGABRT)
            out, err = runner.communicate(timeout=STOPPED_WITHIN)
            pytest.fail(f"still running {STOPPED_WITHIN} s after the signal; out {out!r}\n{err}")
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode != 0
    db = tmp_path / "stateward.db"
    assert states_in(db, "signalled-pool") == ["Pending", "Running", "Crashed"], err
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        task_states = [row[0] for row in conn.execute("SELECT state_name FROM task_runs")]
    assert task_states == ["Crashed"] * 3, err


def test_a_task_run_queued_behind_a_crashed_one_is_cancelled_not_started(tmp_path):
    """Ctrl-C with one worker thread: the task run under way is crashed, and the one queued
    behind it is cancelled, never started. Before, the crashed run's thread took the queued
    one from the pool's queue while the flow reported the crash (the pool was shut down
    after it), so it ran unasked: Running under a Crashed flow run, looping on, and holding
    the process's exit."""
    env = {**EMBEDDED, "STATEWARD_HOME": str(tmp_path), "PYTHONFAULTHANDLER": "1"}
    runner = spawn(
        f"""
        import signal, threading, time
        from stateward import flow, task
        from stateward.task_runners import ThreadPoolTaskRunner

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal
        started = threading.Event()

        @task
        def busy(i):
            started.set()
            deadline = time.monotonic() + {ENDLESS_SECONDS}
            while time.monotonic() < deadline:
                time.sleep(0.0005)

        @flow(name="signalled-queue", task_runner=ThreadPoolTaskRunner(max_workers=1))
        def fan_out():
            first, second = busy.submit(0), busy.submit(1)
            started.wait()
            print("running", flush=True)
            return [first.result(), second.result()]

        fan_out()
        """,
        env=env,
    )
    try:
        assert runner.stdout is not None and runner.stdout.readline() == "running\n"
        runner.send_signal(signal.SIGINT)
        try:
            out, err = runner.communicate(timeout=STOPPED_WITHIN)
        except subprocess.TimeoutExpired:
            runner.send_signal(signal.SIGABRT)
            out, err = runner.communicate(timeout=STOPPED_WITHIN)
            pytest.fail(f"still running {STOPPED_WITHIN} s after the signal; out {out!r}\n{err}")
    finally:
        runner.kill()
        runner.wait()
    db = tmp_path / "stateward.db"
    assert states_in(db, "signalled-queue") == ["Pending", "Running", "Crashed"], err
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        task_states = sorted(row[0] for row in conn.execute("SELECT state_name FROM task_runs"))
    assert task_states == ["Cancelled", "Crashed"], err


def test_a_signal_while_a_task_run_reports_its_outcome_ends_it_once(sdk_server, client):
    """Ctrl-C while a task run's code has returned and its engine encodes the result: the flow
    run crashes it, and the task run does not report its outcome after that (the server would
    take Completed after Crashed as a rerun: two final states). The result's pickling sends
    the signal and waits until the task run is Crashed."""
    name = f"signalled-report-{uuid.uuid4().hex[:6]}"
    runner = spawn(
        f"""
        import os, signal, time
        from stateward import flow, task
        from stateward.client import Client
        from stateward.runtime import task_run
        from stateward.states import StateType

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal

        class Encoded:
            def __reduce__(self):
                run_id = task_run.id
                os.kill(os.getpid(), signal.SIGINT)
                with Client(os.environ["STATEWARD_API_URL"]) as client:
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        if client.get_task_run(run_id).state.type is StateType.CRASHED:
                            break
                        time.sleep(0.01)
                return (dict, ())

        @task(persist_result=True)
        def returns():
            return Encoded()

        @flow(name="{name}")
        def one():
            returns.submit()
            while True:
                time.sleep(0.001)

        one()
        """
    )
    try:
        _, err = runner.communicate(timeout=STOPPED_WITHIN)
    finally:
        runner.kill()
        runner.wait()
    (flow_run,) = client.list_flow_runs(flow_names=[name])
    assert flow_run.state.type is StateType.CRASHED, err
    (task_run,) = client.list_task_runs(flow_run_ids=[flow_run.id])
    ends = [s.type for s in client.list_states(task_run.id) if s.type in TERMINAL_TYPES]
    assert ends == [StateType.CRASHED], err


def test_a_paused_run_whose_process_was_killed_is_crashed_not_resumed_into_running(
    sdk_server, client
):
    """A paused flow run's process waits for the resume and renews the run's heartbeat lease
    meanwhile: killed (kill -9) while paused, the run is crashed by the lease sweep like a
    running one. Before, the pause held no lease: the run could be resumed, answered "is
    Running", and stayed Running for ever with no process to run it."""
    name = f"paused-killed-{os.urandom(3).hex()}"
    runner = spawn(
        f"""
        from stateward import flow, pause_flow_run

        @flow(name="{name}")
        def waits():
            pause_flow_run(timeout=3600)

        waits()
        """,
        env={"STATEWARD_LEASE_SECONDS": "1"},
    )

    def paused() -> FlowRun | None:
        found = next(client.list_flow_runs(flow_names=[name], limit=1), None)
        return found if found is not None and found.state.type is StateType.PAUSED else None

    try:
        wait_until(lambda: paused() is not None, what="the flow run to pause")
    finally:
        runner.kill()  # SIGKILL: the process is gone, its lease no longer renewed
        runner.wait()
    run = paused()
    assert run is not None
    with contextlib.suppress(NotPausedError):  # crashed already: nothing to resume
        client.resume_flow_run(run.id)
    wait_until(lambda: client.get_flow_run(run.id).state.is_crashed(), what="the flow run to crash")
    assert "heartbeat lease" in client.get_flow_run(run.id).state.message
