"""Retrying failed runs."""

from __future__ import annotations

from datetime import timedelta

from stateward.runs import RunKind
from stateward.states import State, StateDetails, StateType
from stateward_service.rules.engine import Reject, Rule, TransitionContext, Verdict


class RetryFailedRuns(Rule):
    """A run that fails with retries left is not failed yet: it waits as AwaitingRetry for its
    retry delay (plus jitter, which never shortens it), keeping the failure's message and result.
    A task run with no delay to wait goes straight to Retrying (RUNNING), as the reference's
    task engine does: no AwaitingRetry is written. A failure marked unretriable is final."""

    FROM = frozenset({StateType.RUNNING})
    TO = frozenset({StateType.FAILED})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        policy = ctx.run.retry_policy
        run_count = ctx.run.run_count
        if ctx.proposed.details.unretriable or run_count > policy.retries:
            return None
        delay = policy.delay_for(run_count) * (1.0 + policy.retry_jitter_factor * ctx.jitter)
        if delay <= 0 and ctx.run.kind is RunKind.TASK_RUN:
            retrying = State(
                StateType.RUNNING,
                name="Retrying",
                message=ctx.proposed.message,
                details=StateDetails(transition_id=ctx.proposed.details.transition_id),
            )
            return Reject(retrying, f"retry {run_count} of {policy.retries} now")
        awaiting = State(
            StateType.SCHEDULED,
            name="AwaitingRetry",
            message=ctx.proposed.message,
            details=StateDetails(
                scheduled_time=ctx.now + timedelta(seconds=delay),
                transition_id=ctx.proposed.details.transition_id,
            ),
            data=ctx.proposed.data,
        )
        return Reject(awaiting, f"retry {run_count} of {policy.retries} in {delay:.3g}s")
