"""Each orchestration rule alone, and the engine that orders them: pure, no server, no I/O."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from stateward.runs import RetryPolicy, RunKind, SetStateStatus
from stateward.states import ResultData, State, StateDetails, StateType
from stateward_service.model import LimitUsage, RunRecord
from stateward_service.rules.bookkeeping import own_details
from stateward_service.rules.caching import CacheCompletedResults, RetrieveCachedResults
from stateward_service.rules.cancellation import (
    CancelRunsNoProcessOwns,
    OnlyCancelledAfterCancelling,
)
from stateward_service.rules.concurrency import LimitTagConcurrency
from stateward_service.rules.engine import (
    Abort,
    CacheResult,
    Proceed,
    Reject,
    RememberPauseKey,
    ResetRunCount,
    Rule,
    TakeConcurrencySlots,
    TransitionContext,
    Wait,
    decide,
)
from stateward_service.rules.guards import (
    KeepCompletedResults,
    KeepFinishedRunsFinished,
    PreventDuplicateTransitions,
    PreventForcedResultLoss,
    ResetRunCountOnTaskRerun,
)
from stateward_service.rules.pausing import PauseOnlyRunningRuns, ResumeOnlyBeforePauseTimeout
from stateward_service.rules.policies import Policies
from stateward_service.rules.retries import RetryFailedRuns
from stateward_service.rules.starting import (
    CopyScheduledTime,
    OnlyScheduledRunsBecomeLate,
    PreventSecondStart,
    RenameReruns,
    RunTasksOnlyInRunningFlows,
    WaitForScheduledTime,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = StateType
RESULT = ResultData(json="1")
RUN_FIELDS = ("run_count", "retry_policy", "pause_keys", "flow_run_id", "tags")


def s(type_: StateType, name: str = "", **kw: object) -> State:
    details = {k: kw.pop(k) for k in list(kw) if k in StateDetails.__slots__}
    return State(type_, name=name, details=StateDetails(**details), **kw)  # type: ignore[arg-type]


def ctx(
    initial: State | None,
    proposed: State,
    *,
    kind: RunKind = RunKind.FLOW_RUN,
    **kw: object,
) -> TransitionContext:
    run_fields = {k: kw.pop(k) for k in list(kw) if k in RUN_FIELDS}
    run = RunRecord(kind=kind, id="r", name="n", created=NOW, state=initial, **run_fields)  # type: ignore[arg-type]
    return TransitionContext(run=run, proposed=proposed, now=NOW, **kw)  # type: ignore[arg-type]


def outcome(rule: Rule, context: TransitionContext):
    """The rule's outcome, or "skip" when its FROM/TO types do not cover the transition."""
    if not rule.applies(context):
        return "skip"
    return rule.decide(context)


def is_null_reject(result: object) -> bool:
    return isinstance(result, Reject) and result.replacement is None


# --- guards --------------------------------------------------------------------------------------


def test_duplicate_transition_is_null_rejected():
    rule = PreventDuplicateTransitions()
    seen = s(T.RUNNING, transition_id="t1")
    assert is_null_reject(outcome(rule, ctx(seen, s(T.COMPLETED, transition_id="t1"))))
    assert outcome(rule, ctx(seen, s(T.COMPLETED, transition_id="t2"))) is None
    assert outcome(rule, ctx(s(T.RUNNING), s(T.COMPLETED))) is None  # no ids: not a duplicate
    assert outcome(rule, ctx(None, s(T.PENDING, transition_id="t1"))) == "skip"


@pytest.mark.parametrize("terminal", [T.COMPLETED, T.FAILED, T.CANCELLED, T.CRASHED])
def test_finished_runs_abort_cancelling_pausing_and_crashing(terminal):
    rule = KeepFinishedRunsFinished()
    for target in (T.CANCELLING, T.PAUSED, T.CRASHED):
        assert isinstance(outcome(rule, ctx(s(terminal), s(target))), Abort)
    for target in (T.SCHEDULED, T.PENDING, T.RUNNING, T.COMPLETED, T.FAILED):
        assert outcome(rule, ctx(s(terminal), s(target))) == "skip"


def test_forced_result_loss_guard():
    rule = PreventForcedResultLoss()
    done = s(T.COMPLETED, data=RESULT)
    for target in (T.SCHEDULED, T.PENDING, T.RUNNING, T.PAUSED, T.CANCELLING):
        assert is_null_reject(outcome(rule, ctx(done, s(target))))
    assert is_null_reject(outcome(rule, ctx(done, s(T.COMPLETED))))
    assert outcome(rule, ctx(done, s(T.COMPLETED, data=RESULT))) is None
    assert outcome(rule, ctx(done, s(T.FAILED))) is None
    assert outcome(rule, ctx(s(T.COMPLETED), s(T.RUNNING))) is None  # nothing to lose


@pytest.mark.parametrize("kind", list(RunKind))
def test_completed_results_are_kept_from_every_proposal(kind):
    rule = KeepCompletedResults()
    done = s(T.COMPLETED, data=RESULT)
    for target in T:
        assert is_null_reject(outcome(rule, ctx(done, s(target), kind=kind)))
    assert outcome(rule, ctx(s(T.COMPLETED), s(T.RUNNING), kind=kind)) is None


@pytest.mark.parametrize("target", [T.CANCELLED, T.FAILED, T.COMPLETED])
def test_the_flow_policy_keeps_a_completed_result_unless_forced(target):
    policies = Policies.default()
    done = s(T.COMPLETED, data=RESULT)
    proposal = s(target, data=RESULT)
    refused = decide(policies.for_run(RunKind.FLOW_RUN, False), ctx(done, proposal))
    assert refused.status is SetStateStatus.REJECT and refused.state is None
    forced = decide(policies.for_run(RunKind.FLOW_RUN, True), ctx(done, proposal))
    assert forced.status is SetStateStatus.ACCEPT


def test_task_rerun_resets_run_count():
    rule = ResetRunCountOnTaskRerun()
    result = outcome(rule, ctx(s(T.FAILED), s(T.PENDING), kind=RunKind.TASK_RUN))
    assert isinstance(result, Proceed) and result.effects == (ResetRunCount(),)
    assert outcome(rule, ctx(s(T.FAILED), s(T.COMPLETED), kind=RunKind.TASK_RUN)) == "skip"
    assert outcome(rule, ctx(s(T.RUNNING), s(T.PENDING), kind=RunKind.TASK_RUN)) == "skip"


# --- cancellation --------------------------------------------------------------------------------


def test_only_cancelled_follows_cancelling():
    rule = OnlyCancelledAfterCancelling()
    for target in set(T) - {T.CANCELLED}:
        assert is_null_reject(outcome(rule, ctx(s(T.CANCELLING), s(target))))
    assert outcome(rule, ctx(s(T.CANCELLING), s(T.CANCELLED))) == "skip"


def test_cancelling_a_run_no_process_owns_cancels_it_at_once():
    rule = CancelRunsNoProcessOwns()
    for initial in (None, s(T.SCHEDULED), s(T.SCHEDULED, "Late")):
        result = outcome(rule, ctx(initial, s(T.CANCELLING, message="stop")))
        assert isinstance(result, Reject) and result.replacement is not None
        assert result.replacement.type is T.CANCELLED and result.replacement.message == "stop"
    assert outcome(rule, ctx(s(T.SCHEDULED, "AwaitingRetry"), s(T.CANCELLING))) is None
    for initial in (T.PENDING, T.RUNNING, T.PAUSED):
        assert outcome(rule, ctx(s(initial), s(T.CANCELLING))) == "skip"


# --- starting ------------------------------------------------------------------------------------


def test_second_start_is_aborted_except_a_pending_rename():
    rule = PreventSecondStart()
    for initial in (T.PENDING, T.RUNNING, T.CANCELLING, T.CANCELLED):
        assert isinstance(outcome(rule, ctx(s(initial), s(T.PENDING))), Abort)
    assert outcome(rule, ctx(s(T.PENDING), s(T.PENDING, "Submitted"))) is None
    assert isinstance(
        outcome(rule, ctx(s(T.PENDING, "Submitted"), s(T.PENDING, "Submitted"))), Abort
    )
    assert isinstance(outcome(rule, ctx(s(T.RUNNING), s(T.PENDING, "Submitted"))), Abort)
    for initial in (T.SCHEDULED, T.PAUSED, T.COMPLETED, T.FAILED, T.CRASHED):
        assert outcome(rule, ctx(s(initial), s(T.PENDING))) == "skip"


def test_only_scheduled_runs_become_late_once():
    rule = OnlyScheduledRunsBecomeLate()
    late = s(T.SCHEDULED, "Late")
    assert outcome(rule, ctx(s(T.SCHEDULED), late)) is None
    assert is_null_reject(outcome(rule, ctx(s(T.SCHEDULED, "Late"), late)))
    assert is_null_reject(outcome(rule, ctx(None, late)))
    assert is_null_reject(outcome(rule, ctx(s(T.PENDING), late)))
    assert outcome(rule, ctx(s(T.PENDING), s(T.SCHEDULED))) is None  # not Late: no opinion


def test_pending_inherits_the_scheduled_time():
    rule = CopyScheduledTime()
    at = NOW + timedelta(hours=1)
    result = outcome(rule, ctx(s(T.SCHEDULED, scheduled_time=at), s(T.PENDING)))
    assert isinstance(result, Proceed) and result.proposed is not None
    assert result.proposed.details.scheduled_time == at
    own = NOW + timedelta(hours=2)
    assert (
        outcome(rule, ctx(s(T.SCHEDULED, scheduled_time=at), s(T.PENDING, scheduled_time=own)))
        is None
    )


def test_running_waits_for_the_scheduled_time():
    rule = WaitForScheduledTime()
    future = s(T.SCHEDULED, scheduled_time=NOW + timedelta(seconds=90))
    result = outcome(rule, ctx(future, s(T.RUNNING)))
    assert isinstance(result, Wait) and result.delay_seconds == 90
    pending = s(T.PENDING, scheduled_time=NOW + timedelta(seconds=5))
    assert isinstance(outcome(rule, ctx(pending, s(T.RUNNING))), Wait)
    assert outcome(rule, ctx(s(T.SCHEDULED, scheduled_time=NOW), s(T.RUNNING))) is None
    assert outcome(rule, ctx(s(T.PENDING), s(T.RUNNING))) is None


def test_tasks_run_only_while_their_flow_runs():
    rule = RunTasksOnlyInRunningFlows()
    task = {"kind": RunKind.TASK_RUN, "flow_run_id": "f"}
    assert (
        outcome(rule, ctx(s(T.PENDING), s(T.RUNNING), flow_run_state=s(T.RUNNING), **task)) is None
    )
    timeout = NOW + timedelta(minutes=5)
    paused = s(T.PAUSED, pause_timeout=timeout)
    result = outcome(rule, ctx(s(T.PENDING), s(T.RUNNING), flow_run_state=paused, **task))
    assert isinstance(result, Reject) and result.replacement is not None
    assert result.replacement.name == "NotReady" and result.replacement.type is T.PAUSED
    assert result.replacement.details.pause_timeout == timeout
    for flow_state in (s(T.PENDING), s(T.CANCELLING), s(T.COMPLETED), None):
        got = outcome(rule, ctx(s(T.PENDING), s(T.RUNNING), flow_run_state=flow_state, **task))
        assert isinstance(got, Abort)
    alone = ctx(s(T.PENDING), s(T.RUNNING), kind=RunKind.TASK_RUN)  # no flow run: exempt
    assert outcome(rule, alone) is None


def test_reruns_are_renamed():
    rule = RenameReruns()

    def name(initial: State, run_count: int) -> str | None:
        result = outcome(rule, ctx(initial, s(T.RUNNING), run_count=run_count))
        if isinstance(result, Proceed) and result.proposed is not None:
            return result.proposed.name
        return None

    assert name(s(T.SCHEDULED, "AwaitingRetry"), 1) == "Retrying"
    assert name(s(T.FAILED), 1) == "Rerunning"
    assert name(s(T.SCHEDULED), 2) == "Rerunning"
    assert name(s(T.PENDING), 0) is None  # a first run
    assert name(s(T.PAUSED), 1) is None  # a resumed pause
    assert name(s(T.PAUSED, "NotReady"), 1) == "Rerunning"  # parked task: not a resume


# --- pausing -------------------------------------------------------------------------------------


def test_only_running_runs_pause_and_each_key_once():
    rule = PauseOnlyRunningRuns()
    assert isinstance(outcome(rule, ctx(None, s(T.PAUSED))), Abort)
    for initial in (T.PENDING, T.SCHEDULED, T.PAUSED, T.COMPLETED):
        assert is_null_reject(outcome(rule, ctx(s(initial), s(T.PAUSED))))
    result = outcome(rule, ctx(s(T.RUNNING), s(T.PAUSED, pause_key="k1")))
    assert isinstance(result, Proceed) and result.effects == (RememberPauseKey("k1"),)
    fired = ctx(s(T.RUNNING), s(T.PAUSED, pause_key="k1"), pause_keys=frozenset({"k1"}))
    assert is_null_reject(outcome(rule, fired))
    assert outcome(rule, ctx(s(T.RUNNING), s(T.PAUSED))) == Proceed()


def test_paused_runs_resume_only_to_allowed_states_before_the_timeout():
    rule = ResumeOnlyBeforePauseTimeout()
    paused = s(T.PAUSED, pause_timeout=NOW + timedelta(minutes=1))
    for target in (
        T.RUNNING,
        T.SCHEDULED,
        T.CANCELLING,
        T.COMPLETED,
        T.FAILED,
        T.CANCELLED,
        T.CRASHED,
    ):
        assert outcome(rule, ctx(paused, s(target))) is None
    for target in (T.PENDING, T.PAUSED):
        assert is_null_reject(outcome(rule, ctx(paused, s(target))))
    expired = s(T.PAUSED, pause_timeout=NOW - timedelta(seconds=1))
    result = outcome(rule, ctx(expired, s(T.RUNNING)))
    assert isinstance(result, Reject) and result.replacement is not None
    assert result.replacement.type is T.FAILED and "never resumed" in result.replacement.message


# --- retries -------------------------------------------------------------------------------------


def test_failures_with_retries_left_await_a_retry():
    rule = RetryFailedRuns()
    policy = RetryPolicy(retries=2, retry_delay_seconds=(10.0,))
    failed = s(T.FAILED, message="boom", data=RESULT)
    result = outcome(rule, ctx(s(T.RUNNING), failed, run_count=1, retry_policy=policy))
    assert isinstance(result, Reject) and result.replacement is not None
    awaiting = result.replacement
    assert (awaiting.type, awaiting.name) == (T.SCHEDULED, "AwaitingRetry")
    assert awaiting.details.scheduled_time == NOW + timedelta(seconds=10)
    assert awaiting.message == "boom" and awaiting.data == RESULT
    assert isinstance(
        outcome(rule, ctx(s(T.RUNNING), failed, run_count=2, retry_policy=policy)), Reject
    )
    assert outcome(rule, ctx(s(T.RUNNING), failed, run_count=3, retry_policy=policy)) is None
    unretriable = s(T.FAILED, unretriable=True)
    assert outcome(rule, ctx(s(T.RUNNING), unretriable, run_count=1, retry_policy=policy)) is None


def test_task_failures_without_a_delay_are_retried_at_once_flows_still_await():
    rule = RetryFailedRuns()
    policy = RetryPolicy(retries=1)
    failed = s(T.FAILED, message="boom", transition_id="t9")
    result = outcome(
        rule, ctx(s(T.RUNNING), failed, kind=RunKind.TASK_RUN, run_count=1, retry_policy=policy)
    )
    assert isinstance(result, Reject) and result.replacement is not None
    retrying = result.replacement
    assert (retrying.type, retrying.name, retrying.message) == (T.RUNNING, "Retrying", "boom")
    assert retrying.details.transition_id == "t9"
    delayed = RetryPolicy(retries=1, retry_delay_seconds=(0.5,))
    result = outcome(
        rule, ctx(s(T.RUNNING), failed, kind=RunKind.TASK_RUN, run_count=1, retry_policy=delayed)
    )
    assert isinstance(result, Reject) and result.replacement is not None
    assert result.replacement.name == "AwaitingRetry"
    result = outcome(rule, ctx(s(T.RUNNING), failed, run_count=1, retry_policy=policy))
    assert isinstance(result, Reject) and result.replacement is not None
    assert result.replacement.name == "AwaitingRetry"  # a flow run: as the reference's server


def test_retry_delay_lists_are_indexed_by_attempt_and_jitter_only_lengthens():
    rule = RetryFailedRuns()
    policy = RetryPolicy(retries=5, retry_delay_seconds=(1.0, 2.0, 4.0), retry_jitter_factor=0.5)

    def delay(run_count: int, jitter: float) -> float:
        result = rule.decide(
            ctx(s(T.RUNNING), s(T.FAILED), run_count=run_count, retry_policy=policy, jitter=jitter)
        )
        assert isinstance(result, Reject) and result.replacement is not None
        scheduled = result.replacement.details.scheduled_time
        assert scheduled is not None
        return (scheduled - NOW).total_seconds()

    assert [delay(n, 0.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert delay(2, 0.999) == pytest.approx(2.0 * 1.4995)
    assert all(2.0 <= delay(2, j / 10) <= 3.0 for j in range(10))


# --- caching -------------------------------------------------------------------------------------


def test_cached_results_complete_the_task_at_once():
    rule = RetrieveCachedResults()
    expires = NOW + timedelta(hours=1)
    cached = s(T.COMPLETED, data=RESULT, cache_expiration=expires, message="done")
    task = {"kind": RunKind.TASK_RUN}
    result = outcome(rule, ctx(s(T.PENDING), s(T.RUNNING, cache_key="k"), cached=cached, **task))
    assert isinstance(result, Reject) and result.replacement is not None
    hit = result.replacement
    assert (hit.type, hit.name, hit.data) == (T.COMPLETED, "Cached", RESULT)
    assert hit.details.cache_key == "k" and hit.details.cache_expiration == expires
    refresh = s(T.RUNNING, cache_key="k", refresh_cache=True)
    assert outcome(rule, ctx(s(T.PENDING), refresh, cached=cached, **task)) is None
    assert outcome(rule, ctx(s(T.PENDING), s(T.RUNNING, cache_key="k"), **task)) is None


def test_completed_results_with_a_key_are_cached():
    rule = CacheCompletedResults()
    expires = NOW + timedelta(days=1)
    result = outcome(
        rule, ctx(s(T.RUNNING), s(T.COMPLETED, cache_key="k", cache_expiration=expires))
    )
    assert isinstance(result, Proceed) and result.effects == (CacheResult("k", expires),)
    assert outcome(rule, ctx(s(T.RUNNING), s(T.COMPLETED))) is None


# --- concurrency ---------------------------------------------------------------------------------


def test_tag_concurrency_limits():
    rule = LimitTagConcurrency(wait_seconds=2.5)

    def decide_with(*limits: LimitUsage):
        return outcome(rule, ctx(s(T.PENDING), s(T.RUNNING), kind=RunKind.TASK_RUN, limits=limits))

    taken = decide_with(LimitUsage("db", 2, 1, False), LimitUsage("io", 5, 0, False))
    assert isinstance(taken, Proceed) and taken.effects == (TakeConcurrencySlots(("db", "io")),)
    full = decide_with(LimitUsage("db", 2, 2, False))
    assert isinstance(full, Wait) and full.delay_seconds == 2.5 and "db" in full.reason
    assert isinstance(decide_with(LimitUsage("db", 0, 0, False)), Abort)
    held = decide_with(LimitUsage("db", 1, 1, True))  # already holds its slot: not a second one
    assert held is None
    assert decide_with() is None


# --- the engine ----------------------------------------------------------------------------------


class Rename(Rule):
    TO = frozenset({T.RUNNING})

    def decide(self, context):
        return Proceed(context.proposed.evolve(name="Renamed"), effects=(RememberPauseKey("x"),))


class Refuse(Rule):
    def decide(self, context):
        return Wait(3, "later")


class Record(Rule):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def decide(self, context):
        self.seen.append(context.proposed.name)


def test_later_rules_see_the_changed_proposal_and_effects_are_kept_on_accept():
    record = Record()
    decision = decide((Rename(), record), ctx(s(T.PENDING), s(T.RUNNING)))
    assert record.seen == ["Renamed"]
    assert decision.status is SetStateStatus.ACCEPT and decision.state is not None
    assert decision.state.name == "Renamed" and decision.effects == (RememberPauseKey("x"),)


def test_a_refusal_stops_the_policy_and_drops_earlier_effects():
    record = Record()
    decision = decide((Rename(), Refuse(), record), ctx(s(T.PENDING), s(T.RUNNING)))
    assert record.seen == []
    assert decision.status is SetStateStatus.WAIT and decision.delay_seconds == 3
    assert decision.effects == () and decision.state is None and decision.rule == "Refuse"


def test_forced_policies_keep_only_the_duplicate_and_result_loss_guards():
    policies = Policies.default()
    done = s(T.COMPLETED, data=RESULT, transition_id="t")
    forced_flow = decide(policies.for_run(RunKind.FLOW_RUN, True), ctx(done, s(T.RUNNING)))
    assert forced_flow.status is SetStateStatus.REJECT and forced_flow.state is None
    crashed = decide(policies.for_run(RunKind.FLOW_RUN, True), ctx(s(T.COMPLETED), s(T.CRASHED)))
    assert crashed.status is SetStateStatus.ACCEPT
    duplicate = decide(
        policies.for_run(RunKind.TASK_RUN, True), ctx(done, s(T.CRASHED, transition_id="t"))
    )
    assert duplicate.status is SetStateStatus.REJECT
    assert [repr(r) for r in policies.for_run(RunKind.TASK_RUN, True)] == [
        "PreventDuplicateTransitions",
        "KeepCompletedResults",
    ]


def test_own_details_keeps_every_field_but_the_run_ids() -> None:
    """own_details copies a state's details field by field (for speed): a field added to
    StateDetails and not copied there would be dropped from every written state."""
    given: dict[str, object] = {}
    for index, field in enumerate(dataclasses.fields(StateDetails)):
        default = field.default
        if isinstance(default, bool):
            given[field.name] = not default
        elif isinstance(default, str):
            given[field.name] = f"value-of-{field.name}"
        else:  # the optional times
            given[field.name] = NOW + timedelta(seconds=index)
    details = StateDetails(**given)  # type: ignore[arg-type]
    run = RunRecord(
        kind=RunKind.TASK_RUN, id="t1", name="n", created=NOW, flow_run_id="f1", task_key="k"
    )
    assert own_details(run, details) == dataclasses.replace(
        details, flow_run_id="f1", task_run_id="t1"
    )


def test_a_context_knows_the_runs_state_and_deciding_by_the_covering_rules_is_deciding():
    """A TransitionContext works out the run's state and its type as it is made (also when
    `replace` makes it again), and `decide_by` over the rules a policy says cover a transition
    decides as `decide` over the whole policy, for every pair of types."""
    from stateward_service.rules.engine import decide_by

    moment = datetime.now(UTC)
    for kind in RunKind:
        policy = Policies.default().for_run(kind, False)
        for from_type in [None, *StateType]:
            state = None if from_type is None else State(from_type, timestamp=moment)
            run = RunRecord(kind=kind, id="r", name="r", created=moment, state=state)
            for to_type in StateType:
                ctx = TransitionContext(run, State(to_type), moment, None, None, (), 0.5)
                assert (ctx.initial, ctx.initial_type) == (state, from_type)
                again = dataclasses.replace(ctx, proposed=State(to_type, name="Other"))
                assert (again.initial, again.initial_type, again.jitter) == (state, from_type, 0.5)
                rules = policy.applicable(from_type, to_type)
                assert decide_by(rules, ctx) == decide(policy, ctx), (kind, from_type, to_type)
