"""The orchestration policy as a table: every from-type (no state, or one of the nine types with
its default name) against every proposed to-type (default names), for flow runs and for task runs.

The expected answers are derived by hand from the spec ORCHESTRATION.md (sections 2-5), applying the
ordered rules of section 3 (flows) and section 4 (tasks) to these runs:

- no retry policy (retries=0), so RUNNING -> FAILED is never turned into AwaitingRetry;
- the from-state is written with force=True, which skips the policy but keeps the bookkeeping:
  a forced RUNNING is an entry into RUNNING (run_count 1), a forced SCHEDULED without a
  scheduled_time is scheduled "now" (already past when the proposal arrives);
- no transition_id, pause_key, pause timeout, result, cache key or tags anywhere;
- task runs belong to no flow run, so they are exempt from "the flow must be running" (4.4).

Each row is (from, to, expected status, expected type of `response.state` after the call). A
null REJECT, WAIT and ABORT write nothing and return the unchanged current state; ACCEPT writes
the proposal; a REJECT whose resulting type differs from the from-type wrote a replacement.
"NONE" stands for "the run has no state" (then `response.state` is unset).
"""

from __future__ import annotations

import pytest

from stateward.v1 import orchestration_pb2 as pb
from tests.support import (
    ABORT,
    ACCEPT,
    REJECT,
    ST,
    WAIT,
    new_flow_run,
    new_task_run,
    propose,
    status_name,
)

NONE = "NONE"
TYPES = [
    "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING",
    "COMPLETED", "FAILED", "CANCELLED", "CRASHED",
]  # fmt: skip
FROM_STATES = [NONE, *TYPES]


def _type(name: str) -> int:
    return getattr(ST, f"STATE_TYPE_{name}")


# --- flow runs: section 3 -----------------------------------------------------------------------

FLOW_MATRIX: list[tuple[str, str, int, str]] = [
    # from no state
    (NONE, "SCHEDULED", ACCEPT, "SCHEDULED"),
    (NONE, "PENDING", ACCEPT, "PENDING"),
    (NONE, "RUNNING", ACCEPT, "RUNNING"),
    (NONE, "PAUSED", ABORT, NONE),  # 3.7: into PAUSED from no state -> ABORT
    (NONE, "CANCELLING", REJECT, "CANCELLED"),  # 3.4: from no state -> replaced by Cancelled
    (NONE, "COMPLETED", ACCEPT, "COMPLETED"),
    (NONE, "FAILED", ACCEPT, "FAILED"),
    (NONE, "CANCELLED", ACCEPT, "CANCELLED"),
    (NONE, "CRASHED", ACCEPT, "CRASHED"),
    # from SCHEDULED "Scheduled" (scheduled now, so already past)
    ("SCHEDULED", "SCHEDULED", ACCEPT, "SCHEDULED"),  # 3.6 only concerns states named Late
    ("SCHEDULED", "PENDING", ACCEPT, "PENDING"),  # 3.9: Pending inherits scheduled_time
    ("SCHEDULED", "RUNNING", ACCEPT, "RUNNING"),  # 3.10: scheduled_time is not in the future
    ("SCHEDULED", "PAUSED", REJECT, "SCHEDULED"),  # 3.7: not from RUNNING -> null reject
    ("SCHEDULED", "CANCELLING", REJECT, "CANCELLED"),  # 3.4: Scheduled -> replaced by Cancelled
    ("SCHEDULED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("SCHEDULED", "FAILED", ACCEPT, "FAILED"),
    ("SCHEDULED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("SCHEDULED", "CRASHED", ACCEPT, "CRASHED"),
    # from PENDING (no scheduled_time)
    ("PENDING", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("PENDING", "PENDING", ABORT, "PENDING"),  # 3.5: second start; default name -> no exception
    ("PENDING", "RUNNING", ACCEPT, "RUNNING"),  # 3.10: no scheduled_time, nothing to wait for
    ("PENDING", "PAUSED", REJECT, "PENDING"),  # 3.7: not from RUNNING -> null reject
    ("PENDING", "CANCELLING", ACCEPT, "CANCELLING"),  # 3.4: from PENDING it is accepted
    ("PENDING", "COMPLETED", ACCEPT, "COMPLETED"),
    ("PENDING", "FAILED", ACCEPT, "FAILED"),
    ("PENDING", "CANCELLED", ACCEPT, "CANCELLED"),
    ("PENDING", "CRASHED", ACCEPT, "CRASHED"),
    # from RUNNING (run_count 1, retries 0)
    ("RUNNING", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("RUNNING", "PENDING", ABORT, "RUNNING"),  # 3.5: into PENDING from RUNNING -> ABORT
    ("RUNNING", "RUNNING", ACCEPT, "RUNNING"),
    ("RUNNING", "PAUSED", ACCEPT, "PAUSED"),  # 3.7: from RUNNING, no pause_key
    ("RUNNING", "CANCELLING", ACCEPT, "CANCELLING"),  # 3.4: from RUNNING it is accepted
    ("RUNNING", "COMPLETED", ACCEPT, "COMPLETED"),
    ("RUNNING", "FAILED", ACCEPT, "FAILED"),  # 3.11: run_count 1 > retries 0, no retry
    ("RUNNING", "CANCELLED", ACCEPT, "CANCELLED"),
    ("RUNNING", "CRASHED", ACCEPT, "CRASHED"),
    # from PAUSED (no pause timeout)
    ("PAUSED", "SCHEDULED", ACCEPT, "SCHEDULED"),  # 3.8: SCHEDULED is allowed out of PAUSED
    ("PAUSED", "PENDING", REJECT, "PAUSED"),  # 3.8: PENDING not allowed out of PAUSED
    ("PAUSED", "RUNNING", ACCEPT, "RUNNING"),  # 3.8: resume
    ("PAUSED", "PAUSED", REJECT, "PAUSED"),  # 3.7: not from RUNNING -> null reject (3.8 too)
    ("PAUSED", "CANCELLING", ACCEPT, "CANCELLING"),  # 3.4 / 3.8: accepted from PAUSED
    ("PAUSED", "COMPLETED", ACCEPT, "COMPLETED"),  # 3.8: terminal states allowed
    ("PAUSED", "FAILED", ACCEPT, "FAILED"),
    ("PAUSED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("PAUSED", "CRASHED", ACCEPT, "CRASHED"),
    # from CANCELLING
    ("CANCELLING", "SCHEDULED", REJECT, "CANCELLING"),  # 3.3: anything but CANCELLED -> null
    ("CANCELLING", "PENDING", REJECT, "CANCELLING"),  # 3.3 (before 3.5)
    ("CANCELLING", "RUNNING", REJECT, "CANCELLING"),  # 3.3
    ("CANCELLING", "PAUSED", REJECT, "CANCELLING"),  # 3.3
    ("CANCELLING", "CANCELLING", REJECT, "CANCELLING"),  # 3.3 (before 3.4)
    ("CANCELLING", "COMPLETED", REJECT, "CANCELLING"),  # 3.3
    ("CANCELLING", "FAILED", REJECT, "CANCELLING"),  # 3.3
    ("CANCELLING", "CANCELLED", ACCEPT, "CANCELLED"),  # 3.3: the one way out
    ("CANCELLING", "CRASHED", REJECT, "CANCELLING"),  # 3.3
    # from COMPLETED (no stored result: a manual rerun is allowed)
    ("COMPLETED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("COMPLETED", "PENDING", ACCEPT, "PENDING"),  # 3.5 does not list COMPLETED
    ("COMPLETED", "RUNNING", ACCEPT, "RUNNING"),
    ("COMPLETED", "PAUSED", ABORT, "COMPLETED"),  # 3.2: terminal -> PAUSED
    ("COMPLETED", "CANCELLING", ABORT, "COMPLETED"),  # 3.2: terminal -> CANCELLING
    ("COMPLETED", "COMPLETED", ACCEPT, "COMPLETED"),  # 3.2: no result on either side to lose
    ("COMPLETED", "FAILED", ACCEPT, "FAILED"),
    ("COMPLETED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("COMPLETED", "CRASHED", ABORT, "COMPLETED"),  # 3.2: terminal -> CRASHED
    # from FAILED
    ("FAILED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("FAILED", "PENDING", ACCEPT, "PENDING"),  # 3.5 does not list FAILED
    ("FAILED", "RUNNING", ACCEPT, "RUNNING"),
    ("FAILED", "PAUSED", ABORT, "FAILED"),  # 3.2
    ("FAILED", "CANCELLING", ABORT, "FAILED"),  # 3.2
    ("FAILED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("FAILED", "FAILED", ACCEPT, "FAILED"),
    ("FAILED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("FAILED", "CRASHED", ABORT, "FAILED"),  # 3.2
    # from CANCELLED
    ("CANCELLED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("CANCELLED", "PENDING", ABORT, "CANCELLED"),  # 3.5: into PENDING from CANCELLED -> ABORT
    ("CANCELLED", "RUNNING", ACCEPT, "RUNNING"),
    ("CANCELLED", "PAUSED", ABORT, "CANCELLED"),  # 3.2
    ("CANCELLED", "CANCELLING", ABORT, "CANCELLED"),  # 3.2
    ("CANCELLED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("CANCELLED", "FAILED", ACCEPT, "FAILED"),
    ("CANCELLED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("CANCELLED", "CRASHED", ABORT, "CANCELLED"),  # 3.2
    # from CRASHED
    ("CRASHED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("CRASHED", "PENDING", ACCEPT, "PENDING"),  # 3.5 does not list CRASHED
    ("CRASHED", "RUNNING", ACCEPT, "RUNNING"),
    ("CRASHED", "PAUSED", ABORT, "CRASHED"),  # 3.2
    ("CRASHED", "CANCELLING", ABORT, "CRASHED"),  # 3.2
    ("CRASHED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("CRASHED", "FAILED", ACCEPT, "FAILED"),
    ("CRASHED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("CRASHED", "CRASHED", ABORT, "CRASHED"),  # 3.2: terminal -> CRASHED, even CRASHED itself
]

# --- task runs without a flow run: section 4 ----------------------------------------------------
# Without a cache key (4.2, 4.9), a flow run (4.4), tags (4.5) or retries (4.7), only 4.3 can
# refuse; 4.6 (scheduled time) never waits here and 4.8 renames but keeps the type. The flow-only
# rules (CANCELLING in/out, second PENDING, pausing, leaving PAUSED) are not part of section 4.

TASK_MATRIX: list[tuple[str, str, int, str]] = [
    # from no state
    (NONE, "SCHEDULED", ACCEPT, "SCHEDULED"),
    (NONE, "PENDING", ACCEPT, "PENDING"),
    (NONE, "RUNNING", ACCEPT, "RUNNING"),  # 4.4: no flow run, exempt
    (NONE, "PAUSED", ACCEPT, "PAUSED"),
    (NONE, "CANCELLING", ACCEPT, "CANCELLING"),
    (NONE, "COMPLETED", ACCEPT, "COMPLETED"),
    (NONE, "FAILED", ACCEPT, "FAILED"),
    (NONE, "CANCELLED", ACCEPT, "CANCELLED"),
    (NONE, "CRASHED", ACCEPT, "CRASHED"),
    # from SCHEDULED "Scheduled" (scheduled now, so already past)
    ("SCHEDULED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("SCHEDULED", "PENDING", ACCEPT, "PENDING"),  # 4.6 / 3.9: inherits scheduled_time
    ("SCHEDULED", "RUNNING", ACCEPT, "RUNNING"),  # 4.6 / 3.10: not in the future
    ("SCHEDULED", "PAUSED", ACCEPT, "PAUSED"),
    ("SCHEDULED", "CANCELLING", ACCEPT, "CANCELLING"),
    ("SCHEDULED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("SCHEDULED", "FAILED", ACCEPT, "FAILED"),
    ("SCHEDULED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("SCHEDULED", "CRASHED", ACCEPT, "CRASHED"),
    # from PENDING
    ("PENDING", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("PENDING", "PENDING", ACCEPT, "PENDING"),
    ("PENDING", "RUNNING", ACCEPT, "RUNNING"),
    ("PENDING", "PAUSED", ACCEPT, "PAUSED"),
    ("PENDING", "CANCELLING", ACCEPT, "CANCELLING"),
    ("PENDING", "COMPLETED", ACCEPT, "COMPLETED"),
    ("PENDING", "FAILED", ACCEPT, "FAILED"),
    ("PENDING", "CANCELLED", ACCEPT, "CANCELLED"),
    ("PENDING", "CRASHED", ACCEPT, "CRASHED"),
    # from RUNNING (run_count 1, retries 0)
    ("RUNNING", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("RUNNING", "PENDING", ACCEPT, "PENDING"),
    ("RUNNING", "RUNNING", ACCEPT, "RUNNING"),  # 4.8: renamed Rerunning, still RUNNING
    ("RUNNING", "PAUSED", ACCEPT, "PAUSED"),
    ("RUNNING", "CANCELLING", ACCEPT, "CANCELLING"),
    ("RUNNING", "COMPLETED", ACCEPT, "COMPLETED"),
    ("RUNNING", "FAILED", ACCEPT, "FAILED"),  # 4.7: run_count 1 > retries 0, no retry
    ("RUNNING", "CANCELLED", ACCEPT, "CANCELLED"),
    ("RUNNING", "CRASHED", ACCEPT, "CRASHED"),
    # from PAUSED
    ("PAUSED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("PAUSED", "PENDING", ACCEPT, "PENDING"),
    ("PAUSED", "RUNNING", ACCEPT, "RUNNING"),
    ("PAUSED", "PAUSED", ACCEPT, "PAUSED"),
    ("PAUSED", "CANCELLING", ACCEPT, "CANCELLING"),
    ("PAUSED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("PAUSED", "FAILED", ACCEPT, "FAILED"),
    ("PAUSED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("PAUSED", "CRASHED", ACCEPT, "CRASHED"),
    # from CANCELLING
    ("CANCELLING", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("CANCELLING", "PENDING", ACCEPT, "PENDING"),
    ("CANCELLING", "RUNNING", ACCEPT, "RUNNING"),
    ("CANCELLING", "PAUSED", ACCEPT, "PAUSED"),
    ("CANCELLING", "CANCELLING", ACCEPT, "CANCELLING"),
    ("CANCELLING", "COMPLETED", ACCEPT, "COMPLETED"),
    ("CANCELLING", "FAILED", ACCEPT, "FAILED"),
    ("CANCELLING", "CANCELLED", ACCEPT, "CANCELLED"),
    ("CANCELLING", "CRASHED", ACCEPT, "CRASHED"),
    # from COMPLETED (no stored result)
    ("COMPLETED", "SCHEDULED", ACCEPT, "SCHEDULED"),  # 4.3: rerun, run_count reset
    ("COMPLETED", "PENDING", ACCEPT, "PENDING"),
    ("COMPLETED", "RUNNING", ACCEPT, "RUNNING"),
    ("COMPLETED", "PAUSED", ABORT, "COMPLETED"),  # 4.3: terminal -> PAUSED
    ("COMPLETED", "CANCELLING", ABORT, "COMPLETED"),  # 4.3: terminal -> CANCELLING
    ("COMPLETED", "COMPLETED", ACCEPT, "COMPLETED"),  # 4.3: no stored result
    ("COMPLETED", "FAILED", ACCEPT, "FAILED"),
    ("COMPLETED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("COMPLETED", "CRASHED", ABORT, "COMPLETED"),  # 4.3: terminal -> CRASHED
    # from FAILED
    ("FAILED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("FAILED", "PENDING", ACCEPT, "PENDING"),
    ("FAILED", "RUNNING", ACCEPT, "RUNNING"),
    ("FAILED", "PAUSED", ABORT, "FAILED"),  # 4.3
    ("FAILED", "CANCELLING", ABORT, "FAILED"),  # 4.3
    ("FAILED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("FAILED", "FAILED", ACCEPT, "FAILED"),
    ("FAILED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("FAILED", "CRASHED", ABORT, "FAILED"),  # 4.3
    # from CANCELLED
    ("CANCELLED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("CANCELLED", "PENDING", ACCEPT, "PENDING"),  # the flow-only 3.5 does not apply to tasks
    ("CANCELLED", "RUNNING", ACCEPT, "RUNNING"),
    ("CANCELLED", "PAUSED", ABORT, "CANCELLED"),  # 4.3
    ("CANCELLED", "CANCELLING", ABORT, "CANCELLED"),  # 4.3
    ("CANCELLED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("CANCELLED", "FAILED", ACCEPT, "FAILED"),
    ("CANCELLED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("CANCELLED", "CRASHED", ABORT, "CANCELLED"),  # 4.3
    # from CRASHED
    ("CRASHED", "SCHEDULED", ACCEPT, "SCHEDULED"),
    ("CRASHED", "PENDING", ACCEPT, "PENDING"),
    ("CRASHED", "RUNNING", ACCEPT, "RUNNING"),
    ("CRASHED", "PAUSED", ABORT, "CRASHED"),  # 4.3
    ("CRASHED", "CANCELLING", ABORT, "CRASHED"),  # 4.3
    ("CRASHED", "COMPLETED", ACCEPT, "COMPLETED"),
    ("CRASHED", "FAILED", ACCEPT, "FAILED"),
    ("CRASHED", "CANCELLED", ACCEPT, "CANCELLED"),
    ("CRASHED", "CRASHED", ABORT, "CRASHED"),  # 4.3: terminal -> CRASHED, even CRASHED itself
]

# Cases where the server disagrees with the table above (reason per case), kept as strict xfails.
KNOWN_DISAGREEMENTS: dict[tuple[str, str, str], str] = {}


def _cases(kind: str, matrix: list[tuple[str, str, int, str]]) -> list[object]:
    cases = []
    for from_, to, status, result in matrix:
        reason = KNOWN_DISAGREEMENTS.get((kind, from_, to))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(pytest.param(from_, to, status, result, id=f"{from_}->{to}", marks=marks))
    return cases


@pytest.mark.parametrize("matrix", [FLOW_MATRIX, TASK_MATRIX], ids=["flow", "task"])
def test_the_tables_cover_every_pair_once(matrix):
    assert [(row[0], row[1]) for row in matrix] == [(f, t) for f in FROM_STATES for t in TYPES]
    assert all(row[2] in (ACCEPT, REJECT, WAIT, ABORT) for row in matrix)
    assert all(row[3] in FROM_STATES for row in matrix)


def _states(stub, run_id):
    return list(stub.ListStates(pb.ListStatesRequest(run_id=run_id)).states)


def _check(stub, run_id, get_run, from_, to, expected_status, expected_result):
    # Put the run into the from-state (force skips the policy, keeps the bookkeeping).
    if from_ != NONE:
        forced = propose(stub, run_id, _type(from_), force=True)
        assert forced.status == ACCEPT, forced.reason
        assert forced.state.type == _type(from_)
        assert forced.state.name == from_.capitalize()  # the default name
    before = _states(stub, run_id)
    assert len(before) == (0 if from_ == NONE else 1)
    current = get_run(run_id)
    if from_ == "RUNNING":
        assert current.run_count == 1  # a forced RUNNING is an entry into RUNNING

    answer = propose(stub, run_id, _type(to))

    after = _states(stub, run_id)
    result = (
        ST.StateType.Name(answer.state.type).removeprefix("STATE_TYPE_")
        if answer.HasField("state")
        else NONE
    )
    got = (status_name(answer.status), result)
    assert got == (status_name(expected_status), expected_result), answer.reason
    writes = expected_status == ACCEPT or (expected_status == REJECT and expected_result != from_)
    if writes:
        # ACCEPT wrote the proposal; a REJECT with a replacement wrote the replacement.
        assert len(after) == len(before) + 1
        assert after[-1].id == answer.state.id
        assert get_run(run_id).state.id == answer.state.id
    else:
        # null REJECT, WAIT, ABORT: nothing written, the current state comes back unchanged.
        assert len(after) == len(before)
        assert [s.id for s in after] == [s.id for s in before]
        if from_ == NONE:
            assert not answer.HasField("state")
            assert not get_run(run_id).HasField("state")
        else:
            assert answer.state.id == before[-1].id
            assert get_run(run_id).state.id == before[-1].id
    # The contract: `reason` is empty on ACCEPT and says why otherwise.
    assert bool(answer.reason) == (expected_status != ACCEPT), answer.reason
    if expected_status == WAIT:
        assert answer.delay_seconds > 0


@pytest.mark.parametrize(("from_", "to", "status", "result"), _cases("flow", FLOW_MATRIX))
def test_flow_transition(stub, from_, to, status, result):
    run = new_flow_run(stub, initial=None)
    assert not run.HasField("state") and run.retry_policy.retries == 0

    def get_run(run_id):
        return stub.GetFlowRun(pb.GetFlowRunRequest(id=run_id)).flow_run

    _check(stub, run.id, get_run, from_, to, status, result)


@pytest.mark.parametrize(("from_", "to", "status", "result"), _cases("task", TASK_MATRIX))
def test_task_transition(stub, from_, to, status, result):
    run = new_task_run(stub, initial=None)
    assert not run.HasField("state") and not run.flow_run_id and not run.tags
    assert run.retry_policy.retries == 0

    def get_run(run_id):
        return stub.GetTaskRun(pb.GetTaskRunRequest(id=run_id)).task_run

    _check(stub, run.id, get_run, from_, to, status, result)
