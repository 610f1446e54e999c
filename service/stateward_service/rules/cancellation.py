"""Rules for cancelling flow runs: a cancel that started finishes, and a run no process is
running is cancelled at once."""

from __future__ import annotations

from stateward.states import State, StateType
from stateward_service.rules.engine import (
    ALL_TYPES,
    Reject,
    Rule,
    TransitionContext,
    Verdict,
    null_reject,
)


class OnlyCancelledAfterCancelling(Rule):
    """A run being cancelled can only become CANCELLED: whatever its process still reports
    (completion, failure) must not undo the cancel."""

    FROM = frozenset({StateType.CANCELLING})
    TO = ALL_TYPES - {StateType.CANCELLED}

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        return null_reject("the run is being cancelled; only CANCELLED may follow CANCELLING")


class CancelRunsNoProcessOwns(Rule):
    """Cancelling a run that no process is running (no state yet, or scheduled but not awaiting
    a retry) has nobody to finish the cancel: it becomes CANCELLED at once."""

    FROM = frozenset({None, StateType.SCHEDULED})
    TO = frozenset({StateType.CANCELLING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        if ctx.initial is not None and ctx.initial.name == "AwaitingRetry":
            return None
        cancelled = State(
            StateType.CANCELLED,
            message=ctx.proposed.message or "cancelled before it started",
            details=ctx.proposed.details,
        )
        return Reject(cancelled, "no process is running the run, so it was cancelled at once")
