"""The gRPC API layer's rule for the event loop: long reads run in a worker thread, writes in the
group-commit writer's thread (see the module's docstring)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from stateward_service.group_commit import GroupCommitWriter
from stateward_service.grpc_api import (
    GROUPED,
    OFF_THE_LOOP,
    SERVICE,
    OrchestrationService,
    _unary_handler,
)
from stateward_service.orchestrator import Orchestrator
from stateward_service.store import Store


def test_the_reads_named_off_the_loop_are_unary_methods_of_the_service():
    unary = {method.name for method in SERVICE.methods if not method.server_streaming}
    assert unary >= OFF_THE_LOOP
    assert {
        "ListFlowRuns",
        "ListTaskRuns",
        "ListStates",
        "GetFlowRun",
        "GetTaskRun",
        "ListLogs",
        "WriteLogs",
        "ResumeFlowRun",
    } <= OFF_THE_LOOP
    writes = {"SetState", "CreateFlowRun", "CreateTaskRun", "ExecuteBatch", "RenewLeases"}
    assert not writes & OFF_THE_LOOP
    assert writes <= GROUPED <= unary
    assert not GROUPED & OFF_THE_LOOP
    # Every unary call reads or writes the database: none runs on the loop itself.
    assert unary == OFF_THE_LOOP | GROUPED
    for name in unary:
        assert callable(getattr(OrchestrationService, name))


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_read_runs_in_a_worker_thread_and_a_write_in_the_writer(tmp_path: Path, in_thread: bool):
    """Writes run in groups on the loop (SQLite's quick commits) or in the writer's thread
    (PostgreSQL's slow ones); reads in a worker thread."""
    orchestrator = Orchestrator(Store(tmp_path / "api.db"))
    writer = GroupCommitWriter(orchestrator, in_thread=in_thread)

    def where(request: object) -> int:
        return threading.get_ident()

    async def main() -> tuple[int, int, int, int]:
        off = await _unary_handler(where, "thread", writer)(None, None)  # type: ignore[arg-type]
        grouped = await _unary_handler(where, "group", writer)(None, None)  # type: ignore[arg-type]
        on = await _unary_handler(where, "loop", writer)(None, None)  # type: ignore[arg-type]
        return threading.get_ident(), off, grouped, on

    try:
        loop_thread, read_thread, write_thread, loop_call = asyncio.run(main())
    finally:
        writer.stop()
        orchestrator.close()
    assert read_thread != loop_thread
    if in_thread:
        assert write_thread not in (loop_thread, read_thread)
    else:
        assert write_thread == loop_thread
    assert loop_call == loop_thread
    assert writer.groups == 1


def test_batched_messages_join_encoded_transitions_without_decoding_them():
    from stateward.v1 import orchestration_pb2 as pb
    from stateward_service.grpc_api import batched_messages

    singles = [
        pb.WatchTransitionsResponse(
            transition=pb.Transition(sequence=n, run_id=f"run-{n}", flow_run_id="f")
        )
        for n in range(1, 8)
    ]
    items = [(m.transition.sequence, m.SerializeToString()) for m in singles]
    # Room for about three per message: 7 transitions go out in 3 messages, in order.
    limit = sum(len(payload) for _, payload in items[:3])
    messages = batched_messages(items, max_bytes=limit)
    assert [last for last, _ in messages] == [3, 6, 7]
    decoded = [pb.WatchTransitionsResponse.FromString(data) for _, data in messages]
    assert all(not m.HasField("transition") for m in decoded)
    assert [t for m in decoded for t in m.transitions] == [m.transition for m in singles]
    # A transition larger than the limit goes alone.
    assert [last for last, _ in batched_messages(items, max_bytes=1)] == list(range(1, 8))
