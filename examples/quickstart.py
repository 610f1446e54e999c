"""Quickstart: start a Stateward server, drive a flow run and its task runs through their states
over gRPC, and print each run's state history."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import orchestration_pb2_grpc, runs_pb2, states_pb2

ST = states_pb2


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = home / "server.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stateward",
            "server",
            "start",
            "--port",
            "0",
            "--db",
            str(home / "q.db"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(500):
        found = re.search(r"listening on (\S+)", log.read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.02)
    raise SystemExit(f"the server did not start:\n{log.read_text()}")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        process, address = start_server(Path(folder))
        try:
            stub = orchestration_pb2_grpc.OrchestrationServiceStub(grpc.insecure_channel(address))
            run(stub)
        finally:
            process.terminate()
            process.wait()


def propose(stub, run_id: str, type_: int, **fields) -> pb.SetStateResponse:
    answer = stub.SetState(pb.SetStateRequest(run_id=run_id, state=ST.State(type=type_, **fields)))
    print(f"  propose {ST.StateType.Name(type_):<24} -> "
          f"{pb.SetStateStatus.Name(answer.status):<24} now {answer.state.name}")  # fmt: skip
    return answer


def run(stub) -> None:
    flow_run = stub.CreateFlowRun(
        pb.CreateFlowRunRequest(
            flow_run=runs_pb2.FlowRun(
                flow_name="quickstart", state=ST.State(type=ST.STATE_TYPE_PENDING)
            )
        )
    ).flow_run
    print(f"flow run {flow_run.name}")
    propose(stub, flow_run.id, ST.STATE_TYPE_RUNNING)
    task_run = stub.CreateTaskRun(
        pb.CreateTaskRunRequest(
            task_run=runs_pb2.TaskRun(
                task_key="flaky",
                flow_run_id=flow_run.id,
                retry_policy=runs_pb2.RetryPolicy(retries=1),
                state=ST.State(type=ST.STATE_TYPE_PENDING),
            )
        )
    ).task_run
    print(f"task run {task_run.name} (one retry allowed)")
    propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    propose(stub, task_run.id, ST.STATE_TYPE_FAILED, message="first attempt failed")
    propose(stub, task_run.id, ST.STATE_TYPE_RUNNING)
    propose(stub, task_run.id, ST.STATE_TYPE_COMPLETED)
    propose(stub, flow_run.id, ST.STATE_TYPE_COMPLETED)
    for title, run_id in (("flow run", flow_run.id), ("task run", task_run.id)):
        states = stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states
        print(f"{title} history: {' -> '.join(s.name for s in states)}")


if __name__ == "__main__":
    main()
