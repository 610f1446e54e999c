"""Rules that protect a run's history: retried calls apply once, finished runs stay finished, and
a stored result is never lost."""

from __future__ import annotations

from stateward.states import StateType
from stateward_service.rules.engine import (
    ALL_TYPES,
    NON_TERMINAL,
    TERMINAL,
    Abort,
    Proceed,
    ResetRunCount,
    Rule,
    TransitionContext,
    Verdict,
    null_reject,
)


class PreventDuplicateTransitions(Rule):
    """A proposal carrying the current state's transition id was already applied: a client
    retried the call. Refuse it quietly so it applies once."""

    FROM = ALL_TYPES
    TO = ALL_TYPES

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        transition_id = ctx.proposed.details.transition_id
        if transition_id and ctx.initial and ctx.initial.details.transition_id == transition_id:
            return null_reject(
                f"transition {transition_id} was already applied: it is the current state"
            )
        return None


class KeepFinishedRunsFinished(Rule):
    """A finished run cannot be cancelled, paused or crashed: nothing is running to act on."""

    FROM = TERMINAL
    TO = frozenset({StateType.CANCELLING, StateType.PAUSED, StateType.CRASHED})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        return Abort(
            f"the {ctx.run.kind.label} already finished ({ctx.initial.name}); "
            f"it cannot become {ctx.proposed.type.name}"
        )


class PreventForcedResultLoss(Rule):
    """A forced proposal may move a flow run that completed with a result to another final
    state, but never back to a non-final one nor to a COMPLETED state without a result: either
    would drop the stored result from the run's current state."""

    FROM = frozenset({StateType.COMPLETED})
    TO = ALL_TYPES

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        if not ctx.initial.has_result():
            return None
        if ctx.proposed.type not in TERMINAL:
            return null_reject(
                "the flow run completed with a stored result; "
                f"moving it to {ctx.proposed.type.name} would lose it"
            )
        if ctx.proposed.type is StateType.COMPLETED and not ctx.proposed.has_result():
            return null_reject(
                "the flow run completed with a stored result; "
                "a COMPLETED state without a result would replace it"
            )
        return None


class KeepCompletedResults(Rule):
    """A run that completed with a result is final for good: its result may be a cache entry, an
    input of other runs, or what a caller already read, and a cancel or failure racing the
    completion must not be written after it. Every proposal is null-rejected."""

    FROM = frozenset({StateType.COMPLETED})
    TO = ALL_TYPES

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        if ctx.initial.has_result():
            return null_reject(
                f"the {ctx.run.kind.label} completed with a stored result; it stays completed"
            )
        return None


class ResetRunCountOnTaskRerun(Rule):
    """A finished task run sent back to a non-final state is a rerun: its attempts count again
    from zero, so its retries are available again."""

    FROM = TERMINAL
    TO = NON_TERMINAL

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        return Proceed(effects=(ResetRunCount(),))
