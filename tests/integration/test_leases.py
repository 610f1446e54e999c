"""Heartbeat leases: a run whose process stops renewing is crashed by the server, and watchers
see it; renewing keeps it alive; runs without a lease are never crashed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from stateward.client import Client
from stateward.exceptions import InvalidArgument
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from tests.support import ServerProcess, wait_until


@pytest.fixture(scope="module")
def lease_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("leases") / "leases.db"
    server = ServerProcess(db, args=["--lease-check-interval", "0.1"]).start()
    yield server
    server.stop()


@pytest.fixture
def client(lease_server) -> Iterator[Client]:
    with Client(lease_server.target) as connected:
        yield connected


def wait_for(client: Client, run_id: str, type_: StateType, timeout: float = 10.0) -> State:
    deadline = time.monotonic() + timeout
    while True:
        states = client.list_states(run_id)
        if states and states[-1].type is type_:
            return states[-1]
        assert time.monotonic() < deadline, [s.name for s in states]
        time.sleep(0.05)


def test_a_run_whose_lease_lapses_is_crashed_and_watchers_see_it(client):
    flow_run = client.create_flow_run("leased", state=State(StateType.PENDING))
    task_run = client.create_task_run("t", flow_run_id=flow_run.id)
    # Leases of 2 s: long enough for the calls below to land before they lapse.
    start = client.set_state(flow_run.id, State(StateType.RUNNING), lease_seconds=2)
    assert client.get_flow_run(flow_run.id).lease_expires is not None
    client.set_state(task_run.id, State(StateType.RUNNING), lease_seconds=2)
    watched = client.watch(run_ids=[flow_run.id], state_types=[StateType.CRASHED], after_sequence=0)
    crashed = wait_for(client, flow_run.id, StateType.CRASHED)
    assert "heartbeat lease" in crashed.message
    wait_for(client, task_run.id, StateType.CRASHED)
    seen = next(watched)
    assert seen.to_state.type is StateType.CRASHED and seen.from_state.id == start.state.id
    assert client.get_flow_run(flow_run.id).lease_expires is None


def test_the_unstarted_children_of_a_flow_run_crashed_for_its_lease_are_crashed_too(client):
    # The process that would have started them is gone: a kill -9 during a map left a crashed
    # flow run's Pending task runs Pending for good. Started ones are left to their own lease.
    flow_run = client.create_flow_run("leased-parent", state=State(StateType.PENDING))
    client.set_state(flow_run.id, State(StateType.RUNNING), lease_seconds=1)
    pending = client.create_task_run(
        "pending", flow_run_id=flow_run.id, state=State(StateType.PENDING)
    )
    subflow_task = client.create_task_run(
        "sub", flow_run_id=flow_run.id, state=State(StateType.PENDING)
    )
    client.set_state(subflow_task.id, State(StateType.RUNNING))
    done = client.create_task_run("done", flow_run_id=flow_run.id, state=State(StateType.PENDING))
    client.set_state(done.id, State(StateType.RUNNING))
    client.set_state(done.id, State(StateType.COMPLETED))
    wait_for(client, flow_run.id, StateType.CRASHED)
    crashed = wait_for(client, pending.id, StateType.CRASHED)
    assert "its flow run" in crashed.message and "crashed" in crashed.message
    assert client.list_states(subflow_task.id)[-1].type is StateType.RUNNING  # no lease: kept
    assert client.list_states(done.id)[-1].type is StateType.COMPLETED


def test_the_server_says_which_runs_it_crashed_and_why(client, lease_server):
    run = client.create_flow_run("told", state=State(StateType.PENDING))
    client.set_state(run.id, State(StateType.RUNNING), lease_seconds=0.5)
    wait_for(client, run.id, StateType.CRASHED)
    said = f"flow run {run.name!r} ({run.id})"

    def told() -> list[str]:
        return [line for line in lease_server.output().splitlines() if said in line]

    wait_until(told, what="the server's line about the crashed run")
    line = told()[0]
    assert "lapsed leases: moved 1 run to Crashed because" in line, line
    assert "stopped renewing its heartbeat lease" in line, line


def lease_check_after_this(client: Client, lease_seconds: float) -> Callable[[], bool]:
    """A run leased now and never renewed: once it is crashed, the server has checked leases
    after every lease taken before this call for `lease_seconds` had lapsed."""
    witness = client.create_flow_run("witness", state=State(StateType.PENDING))
    client.set_state(witness.id, State(StateType.RUNNING), lease_seconds=lease_seconds)
    return lambda: client.list_states(witness.id)[-1].type is StateType.CRASHED


def test_renewing_keeps_a_run_alive_and_leaving_running_ends_the_lease(client):
    run = client.create_flow_run("renewed", state=State(StateType.RUNNING))
    # Renewed 10 times a second: only a stall of 2 s between two renewals lets it lapse.
    client.set_state(run.id, State(StateType.RUNNING), lease_seconds=2)
    other = client.create_flow_run("other", state=State(StateType.PENDING))
    first_lease_checked = lease_check_after_this(client, lease_seconds=2)
    deadline = time.monotonic() + 60
    while not first_lease_checked():  # well past the first lease
        assert time.monotonic() < deadline, "no lease check crashed the witness"
        assert client.renew_leases([run.id, other.id], 2) == [run.id]
        time.sleep(0.1)
    assert client.list_states(run.id)[-1].type is StateType.RUNNING
    client.set_state(run.id, State(StateType.COMPLETED))
    assert client.get_flow_run(run.id).lease_expires is None
    assert client.renew_leases([run.id], 1) == []


def test_cancelling_keeps_the_lease_of_the_running_process(client):
    run = client.create_flow_run("cancel-leased", state=State(StateType.PENDING))
    client.set_state(run.id, State(StateType.RUNNING), lease_seconds=2)
    client.set_state(run.id, State(StateType.CANCELLING))  # from another client, no lease
    assert client.get_flow_run(run.id).lease_expires is not None
    wait_for(client, run.id, StateType.CRASHED)  # its process is gone: nobody finishes the cancel


def test_runs_without_a_lease_are_never_crashed(client):
    run = client.create_flow_run("unleased", state=State(StateType.PENDING))
    client.set_state(run.id, State(StateType.RUNNING))
    # A lease check that came after this run was Running, and left it so.
    wait_until(lease_check_after_this(client, 0.2), timeout=30, what="a lease check")
    assert client.list_states(run.id)[-1].type is StateType.RUNNING


def test_bad_leases_are_invalid_argument(lease_server, client):
    run = client.create_flow_run("bad-lease", state=State(StateType.PENDING))
    with pytest.raises(InvalidArgument, match="lease_duration"):
        client.renew_leases([run.id], 0)
    request = pb.SetStateRequest(run_id=run.id)
    request.state.type = StateType.RUNNING  # type: ignore[assignment]
    request.lease_duration.seconds = -5
    with pytest.raises(grpc.RpcError) as caught:
        lease_server.stub().SetState(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("lease_duration")
