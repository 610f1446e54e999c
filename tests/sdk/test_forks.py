"""A process using the Ray task runner forks children that exec at once (`subprocess` with a
`preexec_fn`, as Ray starts its GCS and raylet): gRPC's threads must not run in them. With
grpcio's fork support on, its threads start again in each such child, and a child closing the
descriptors it inherited while they poll them aborted before its exec (Ray then waited in vain
for its raylet). A process that does not use the Ray runner keeps gRPC's default.

Forked children of a process that runs flows: a flow or task called in one says at once that the
parent's connection (to a server, or to the embedded SQLite database) stays behind, rather than
waiting for ever on it; a child forked before the parent orchestrated runs its flows itself."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

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


def test_children_sigtermed_as_soon_as_forked_inside_a_flow_all_end(sdk_server):
    """Leaving a `with multiprocessing.Pool()` block terminates its workers, one maybe just
    forked. A SIGTERM that reached such a child before its fork hooks gave it back the default
    handler was caught by the flow's handler and lost (or raised TerminationSignal there): the
    worker waited for tasks for ever, and the parent for it. Each child here is terminated at
    once after its start, inside a flow: every one must end by SIGTERM, as without a flow."""
    result = python(
        """
        import json, multiprocessing, time
        from stateward import flow

        @flow
        def forks() -> dict[str, object]:
            context = multiprocessing.get_context("fork")
            children = []
            for _ in range(40):
                child = context.Process(target=time.sleep, args=(600,))
                child.start()
                child.terminate()  # at once: the child may still be in its fork
                children.append(child)
            deadline = time.monotonic() + 60
            for child in children:
                child.join(max(0.0, deadline - time.monotonic()))
            survived = [child for child in children if child.exitcode is None]
            for child in survived:
                child.kill()
                child.join()
            return {"survived": len(survived), "codes": sorted({c.exitcode for c in children})}

        print(json.dumps(forks()))
        """,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"survived": 0, "codes": [-signal.SIGTERM]}, result.stderr[-3000:]
    assert "TerminationSignal" not in result.stderr, result.stderr[-3000:]


EMBEDDED = {"STATEWARD_API_URL": ""}  # unset: the SDK orchestrates in its own process
# How long every forked child together may take to end. A child that waited on a lock a thread
# of its parent held at the fork never ended; a refused one ends in well under a second.
CHILDREN_END_WITHIN = 120


def run_states(db: Path) -> dict[str, list[str]]:
    """Each flow's runs' current state names, by flow name."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            """SELECT f.flow_name, s.name FROM flow_runs f JOIN states s ON s.id = f.state_id"""
        ).fetchall()
    found: dict[str, list[str]] = {}
    for flow_name, state in rows:
        found.setdefault(flow_name, []).append(state)
    return found


def test_embedded_flows_in_children_forked_while_a_thread_writes_refuse_at_once(tmp_path):
    """The breaker's repro: a flow whose thread runs task after task forks 15 children, each
    calling a flow and a task. A child reused the parent's in-process orchestrator: when that
    thread held its lock at the fork (12 children of 15), the child waited for ever on a lock
    no thread of its own would release; the others wrote through the parent's SQLite
    connection, which SQLite forbids across a fork."""
    result = python(
        f"""
        import contextvars, json, multiprocessing, threading, time
        from stateward import flow, task

        @task
        def step(i: int) -> int:
            return i

        @flow
        def inner(n: int) -> int:
            return step(n) + 1

        def in_child(n, answers):
            said = []
            for call in (lambda: inner(n), lambda: step(n)):
                started = time.monotonic()
                try:
                    said.append(("ran", call()))
                except Exception as error:
                    seconds = time.monotonic() - started
                    said.append((f"{{type(error).__name__}}: {{error}}", seconds))
            answers.put(said)

        @flow
        def outer(count: int) -> dict:
            stop, running = threading.Event(), threading.Event()
            context = contextvars.copy_context()  # its task runs are the flow run's

            def busy():
                i = 0
                while not stop.is_set():
                    step(i)
                    i += 1
                    running.set()

            writer = threading.Thread(target=context.run, args=(busy,))
            writer.start()
            # Forked once the thread writes, not while its first task call imports the task
            # engine: a child forked then waits for ever on that module's import lock (Python's
            # own, held by a thread that is not in the child).
            assert running.wait(60)
            forking = multiprocessing.get_context("fork")
            answers = forking.Queue()
            children = [
                forking.Process(target=in_child, args=(n, answers)) for n in range(count)
            ]
            for child in children:
                child.start()
            deadline = time.monotonic() + {CHILDREN_END_WITHIN}
            said = [answers.get(timeout=max(0.1, deadline - time.monotonic())) for _ in children]
            for child in children:
                child.join(max(0.1, deadline - time.monotonic()))
            stop.set()
            writer.join()
            return {{"codes": [child.exitcode for child in children], "said": said}}

        print(json.dumps(outer(15)))
        """,
        env={**EMBEDDED, "STATEWARD_HOME": str(tmp_path)},
        timeout=CHILDREN_END_WITHIN + 120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["codes"] == [0] * 15, result.stderr[-3000:]
    for said in report["said"]:
        for message, seconds in said:
            assert message.startswith("StatewardError: this process was forked from process"), said
            assert str(tmp_path / "stateward.db") in message, said
            assert "'spawn'" in message, said
            assert seconds < CHILDREN_END_WITHIN / 10, said
    # The parent's own runs went on through the forks: its flow run and every task run it made
    # completed, and no child's run is in the database.
    states = run_states(tmp_path / "stateward.db")
    assert set(states) == {"outer"}, states
    assert states["outer"] == ["Completed"], states
    with sqlite3.connect(f"file:{tmp_path / 'stateward.db'}?mode=ro", uri=True) as conn:
        task_states = conn.execute(
            "SELECT s.name, count(*) FROM task_runs t JOIN states s ON s.id = t.state_id "
            "GROUP BY s.name"
        ).fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [name for name, _ in task_states] == ["Completed"], task_states


def test_a_child_forked_after_the_parent_ran_a_flow_refuses_and_exits(tmp_path):
    """Outside any flow: the parent ran a flow (its embedded orchestrator is open), then forks
    with os.fork; the child's flow says why it cannot run, and the child ends through the
    interpreter's exit (its atexit hooks, the parent's among them) at once. A child forked
    before the parent orchestrated has no connection of the parent's: it runs its flow."""
    result = python(
        """
        import json, os, sys, time
        from stateward import flow

        @flow
        def work(n: int) -> int:
            return n

        def fork_and_call(n):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                try:
                    said = f"ran {work(n)}"
                except Exception as error:
                    said = f"{type(error).__name__}: {error}"
                os.write(write, said.encode())
                sys.exit(0)  # through atexit, as a script's end does
            os.close(write)
            with os.fdopen(read) as pipe:
                said = pipe.read()
            started = time.monotonic()
            _, status = os.waitpid(pid, 0)
            return said, os.waitstatus_to_exitcode(status), time.monotonic() - started

        before = fork_and_call(1)
        work(2)
        after = fork_and_call(3)
        work(4)  # the parent's connection still works
        print(json.dumps({"before": before, "after": after}))
        """,
        env={**EMBEDDED, "STATEWARD_HOME": str(tmp_path)},
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    said, code, _ = report["before"]
    assert (said, code) == ("ran 1", 0), report
    said, code, exiting = report["after"]
    assert said.startswith("StatewardError: this process was forked from process"), report
    assert code == 0, report
    assert exiting < 30, report  # after its answer: it waited for no thread of the parent's
    assert sorted(run_states(tmp_path / "stateward.db")["work"]) == ["Completed"] * 3


def test_a_child_forked_while_another_thread_opens_the_embedded_database_refuses(tmp_path):
    """The parent's first flow (in a thread) is opening the database when the main thread
    forks: the child has no client yet, but the parent's SQLite bookkeeping of the file came
    along, so the child must not open it either."""
    result = python(
        """
        import json, os, sys, threading
        import stateward._embedded as embedded
        from stateward import flow

        @flow
        def work(n: int) -> int:
            return n

        opener = threading.Thread(target=work, args=(1,))
        opener.start()
        while embedded._opening is None and embedded._embedded is None:
            pass  # the main thread forks as soon as the opening has begun
        was_opening = embedded._opening is not None
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                said = f"ran {work(2)}"
            except Exception as error:
                said = f"{type(error).__name__}: {error}"
            os.write(write, said.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            said = pipe.read()
        os.waitpid(pid, 0)
        opener.join()
        print(json.dumps({"was_opening": was_opening, "said": said}))
        """,
        env={**EMBEDDED, "STATEWARD_HOME": str(tmp_path)},
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["was_opening"], report  # else the test forked too late to test this
    assert report["said"].startswith("StatewardError: this process was forked from process"), report
    assert run_states(tmp_path / "stateward.db") == {"work": ["Completed"]}
