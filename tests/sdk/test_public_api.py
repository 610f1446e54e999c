"""`stateward/__init__.py` is the whole public API: this test pins it, so a change to it is a
decision, not an accident."""

from __future__ import annotations

import stateward

PUBLIC = {
    "AsyncClient", "AwaitingRetry", "Cancelled", "CancelledRun", "Cancelling", "Client",
    "Completed", "Crashed", "CrashedRun", "Failed", "FailedRun", "Flow", "FlowRun", "Late",
    "OrchestrationAborted", "Paused", "Pending", "ResultTooLarge", "Retrying", "Running",
    "Scheduled", "State", "StateType", "StatewardError", "StatewardFuture", "StatewardFutureList",
    "Task", "TaskRun", "Transition", "allow_failure", "cache_policies", "exponential_backoff",
    "flow", "get_client", "get_run_context", "get_run_logger", "pause_flow_run", "quote",
    "resume_flow_run", "runtime", "tags", "task", "task_input_hash", "unmapped", "wait",
}  # fmt: skip


def test_the_public_api_is_pinned():
    assert set(stateward.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(stateward, name) is not None


def test_code_written_for_the_reference_imports_the_same_names():
    from stateward import flow, task  # the seed's `from prefect import flow, task`
    from stateward.tasks import exponential_backoff, task_input_hash

    assert callable(flow) and callable(task)
    assert stateward.exponential_backoff is exponential_backoff
    assert stateward.task_input_hash is task_input_hash
