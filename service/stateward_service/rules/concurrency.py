"""Tag concurrency limits for task runs."""

from __future__ import annotations

from stateward.runs import SLOT_WAIT_REASON
from stateward.states import StateType
from stateward_service.rules.engine import (
    ALL_OR_NONE,
    Abort,
    Proceed,
    Rule,
    TakeConcurrencySlots,
    TransitionContext,
    Verdict,
    Wait,
)


class LimitTagConcurrency(Rule):
    """No more task runs with a tag may be RUNNING than the tag's limit: a run finding a limit
    full waits, a limit of 0 refuses it, and a run never takes a second slot of one limit. The
    slot is taken only if the run is written RUNNING (the orchestrator releases it when the run
    leaves RUNNING)."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.RUNNING})

    def __init__(self, wait_seconds: float = 1.0) -> None:
        self.wait_seconds = wait_seconds

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        wanted: list[str] = []
        for usage in ctx.limits:
            if usage.limit <= 0:
                return Abort(f"tag {usage.tag!r} has a concurrency limit of 0: it may not run")
            if usage.held_by_run:
                continue
            if usage.active >= usage.limit:
                return Wait(
                    self.wait_seconds,
                    f"{SLOT_WAIT_REASON}{usage.tag!r} is full "
                    f"({usage.active} of {usage.limit} running)",
                )
            wanted.append(usage.tag)
        if not wanted:
            return None
        return Proceed(effects=(TakeConcurrencySlots(tuple(wanted)),))
