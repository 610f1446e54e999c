"""A flow run against a server that stops gracefully and comes back: what the stopping server
refuses (UNAVAILABLE, nothing written) or cancels, the SDK sends again, and the flow run goes on
on the restarted server. The same for the reads and proposals the SDK makes about a run while
the server is away (behind a relay cut while the server is replaced)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import textwrap
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stateward._orchestration import RunOrchestration
from stateward._supervisor import RunSupervisor
from stateward.client import Client
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from tests.integration.test_metrics import counted
from tests.sdk.conftest import spawn
from tests.support import (
    ACCEPT,
    ST,
    Relay,
    ServerProcess,
    new_flow_run,
    new_task_run,
    state,
    wait_until,
    write_lock_held,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def takes_no_new_writes(stub) -> bool:
    """Whether the server refuses writes now (its stop began): a create of a limit that is
    refused either way, before anything is written, says which refusal comes first."""
    try:
        stub.CreateConcurrencyLimit(
            pb.CreateConcurrencyLimitRequest(
                concurrency_limit=runs_pb2.ConcurrencyLimit(tag="probe", limit=-1)
            ),
            timeout=10,
        )
    except grpc.RpcError as error:
        return error.code() is grpc.StatusCode.UNAVAILABLE
    raise AssertionError("a negative limit was taken")


def test_a_task_submitted_while_the_server_stops_is_created_once_it_is_back(tmp_path):
    """The server is stopping (SIGTERM; a write in flight holds its grace open) when the flow
    submits a task: the create is refused with UNAVAILABLE, nothing written, "send it again".
    The SDK sends it again, as it sends a proposal again, and once the server is back the task
    runs and the flow run completes. (The create was sent once: the flow run failed with
    ServerUnavailable.)"""
    database = tmp_path / "stops.db"
    metrics_port = free_port()
    server = ServerProcess(
        database,
        args=["--metrics-port", str(metrics_port)],
        env={"STATEWARD_SHUTDOWN_GRACE_SECONDS": "60"},
    ).start()
    runner = spawn(
        """
        import sys
        from stateward import flow, task

        @task
        def double(x):
            return 2 * x

        @flow(name="submits-while-the-server-stops")
        def submitting():
            print("ready", flush=True)
            sys.stdin.readline()
            return double.submit(21).result()

        print("result", submitting(), flush=True)
        """,
        env={"STATEWARD_API_URL": server.target},
    )
    assert runner.stdin is not None and runner.stdout is not None
    try:
        assert runner.stdout.readline() == "ready\n"
        stub = server.stub()
        health = health_pb2_grpc.HealthStub(server.channel())
        run_id = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING).id
        with write_lock_held(database) as release:
            in_flight = stub.SetState.future(
                pb.SetStateRequest(run_id=run_id, state=state(ST.STATE_TYPE_RUNNING)), timeout=60
            )
            # Answered after the SetState was read: it waits for the write lock in the writer.
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert not in_flight.done()
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: takes_no_new_writes(stub), 30, "the stop to refuse new writes")
            runner.stdin.write("go\n")
            runner.stdin.flush()
            refused = counted(
                metrics_port, "stateward_rpc_requests_total", 1, method="CreateTaskRun",
                code="UNAVAILABLE",
            )  # fmt: skip
            assert refused >= 1
            release()
        assert in_flight.result().status == ACCEPT
        assert server.process.wait(30) == 0
        server.restart()
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
        assert "result 42" in out
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
        server.stop()


class _Said(logging.Handler):
    """Sets `event` once a record containing `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_worker_that_dies_while_the_server_is_away_is_settled_once_it_is_back(tmp_path):
    """A task run's worker process dies while the server is away (its connections cut, the
    server replaced by another on the same database): the flow's process reads the run to
    settle it (did the worker report an end?) and, the server unreachable, reads it again, as
    it sends a proposal again; once the server is back the run is Crashed and the flow run
    completes. (The read was sent once: the task's future failed with ServerUnavailable, the
    run was left Running and the flow run failed.)"""
    database = tmp_path / "away.db"
    server = ServerProcess(database).start()
    standby = ServerProcess(database, log_path=tmp_path / "standby.log").start()
    relay = Relay(server.target)
    marker = tmp_path / "worker"
    # The task in a module of its own: a worker process (spawned) imports it by name.
    (tmp_path / "dying.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            from stateward import task

            @task
            def hangs():
                with open({str(marker)!r} + ".tmp", "w") as out:
                    out.write(str(os.getpid()))
                os.replace({str(marker)!r} + ".tmp", {str(marker)!r})
                while True:
                    time.sleep(0.05)
            """
        )
    )
    runner = spawn(
        """
        from stateward import flow
        from stateward.task_runners import ProcessPoolTaskRunner
        from dying import hangs

        @flow(name="a-worker-dies", task_runner=ProcessPoolTaskRunner(max_workers=1))
        def settles():
            future = hangs.submit()
            future.wait()
            return future.task_run_id

        if __name__ == "__main__":
            print("task run", settles(), flush=True)
        """,
        env={
            "STATEWARD_API_URL": relay.address,
            # A call waits this long for the unreachable server, then is sent again.
            "STATEWARD_REQUEST_TIMEOUT": "2",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        },
    )
    errors: list[str] = []
    assert runner.stderr is not None
    stderr = runner.stderr
    reader = threading.Thread(target=lambda: errors.extend(stderr), daemon=True)
    reader.start()
    try:
        wait_until(marker.exists, 60, "the task to start in a worker process")
        relay.cut()
        server.stop()  # replaced by the standby once the relay is restored
        os.kill(int(marker.read_text()), signal.SIGKILL)
        wait_until(
            lambda: any("cannot be reached while reading its state" in line for line in errors),
            60,
            "the flow's process to read the run again",
        )
        relay.restore(standby.target)
        out, _ = runner.communicate(timeout=60)
        reader.join(10)
        assert runner.returncode == 0, "".join(errors)
        task_run_id = out.split()[-1]
        with Client(standby.target) as client:
            task_run = client.get_task_run(task_run_id)
            assert task_run.state is not None and task_run.state.type is StateType.CRASHED
            flow_run = client.get_flow_run(task_run.flow_run_id)
            assert flow_run.state is not None and flow_run.state.type is StateType.COMPLETED
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
        relay.close()
        server.stop()
        standby.stop()


def test_a_read_back_and_a_proposal_for_another_run_are_sent_again_while_the_server_is_away(
    tmp_path,
):
    """What a run's orchestration reads of the server (a run created by an attempt whose
    answer was lost, read back) and proposes for another run (a queued task run Cancelled by
    its stopped flow run) is sent again while the server is away, and the proposal applies
    once. (Both were sent once: a server restart failed the flow run.)"""
    database = tmp_path / "away.db"
    server = ServerProcess(database).start()
    standby = ServerProcess(database, log_path=tmp_path / "standby.log").start()
    relay = Relay(server.target)
    said = _Said("cannot be reached")
    log = logging.getLogger("tests.away")
    log.addHandler(said)
    try:
        stub = server.stub()
        flow_run = new_flow_run(stub, initial=ST.STATE_TYPE_RUNNING)
        queued = new_task_run(stub, flow_run.id)
        with Client(relay.address) as client:
            orchestration = RunOrchestration(client, RunSupervisor(client, 30.0), flow_run.id, log)

            def away_then_back(call):
                said.event.clear()
                relay.cut()
                outcome: list[object] = []
                caller = threading.Thread(target=lambda: outcome.append(call()))
                caller.start()
                assert said.event.wait(60), "the call was not sent again"
                relay.restore(standby.target)
                caller.join(60)
                assert outcome, "the call failed"
                return outcome[0]

            read = away_then_back(
                lambda: orchestration.read(
                    "reading it back", lambda: client.get_task_run(queued.id)
                )
            )
            assert read.id == queued.id
            server.stop()  # the standby takes over: a restart
            away_then_back(
                lambda: orchestration.propose_for(
                    queued.id, State(StateType.CANCELLED), f"task run {queued.id}"
                )
            )
            names = [s.name for s in client.list_states(queued.id)]
            assert names == ["Pending", "Cancelled"]
    finally:
        log.removeHandler(said)
        relay.close()
        server.stop()
        standby.stop()
