"""Rules for pausing and resuming flow runs."""

from __future__ import annotations

from stateward.states import State, StateType
from stateward_service.rules.engine import (
    ALL_OR_NONE,
    ALL_TYPES,
    TERMINAL,
    Abort,
    Proceed,
    Reject,
    RememberPauseKey,
    Rule,
    TransitionContext,
    Verdict,
    null_reject,
)


class PauseOnlyRunningRuns(Rule):
    """Only running code can pause, and each pause point (pause key) pauses a run once: when the
    run reaches it again, it keeps running."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.PAUSED})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        initial = ctx.initial
        if initial is None:
            return Abort("a run with no state cannot pause; it must be RUNNING")
        if initial.type is not StateType.RUNNING:
            return null_reject(f"only a RUNNING run can pause (it is {initial.name})")
        key = ctx.proposed.details.pause_key
        if key and key in ctx.run.pause_keys:
            return null_reject(f"pause key {key!r} already paused this run; it keeps running")
        return Proceed(effects=(RememberPauseKey(key),) if key else ())


_RESUMABLE = frozenset({StateType.RUNNING, StateType.SCHEDULED, StateType.CANCELLING}) | TERMINAL


class ResumeOnlyBeforePauseTimeout(Rule):
    """A paused run resumes (RUNNING or SCHEDULED), is cancelled or ends; nothing else. Past its
    pause timeout it cannot resume any more: it failed to be resumed in time."""

    FROM = frozenset({StateType.PAUSED})
    TO = ALL_TYPES

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        initial = ctx.initial
        assert initial is not None
        if ctx.proposed.type not in _RESUMABLE:
            return null_reject(
                f"a paused run can only resume, be cancelled or end, not become "
                f"{ctx.proposed.type.name}"
            )
        timeout = initial.details.pause_timeout
        if timeout is not None and timeout < ctx.now:
            failed = State(
                StateType.FAILED,
                message=f"the run was paused and never resumed before {timeout.isoformat()}",
            )
            return Reject(failed, "the pause expired")
        return None
