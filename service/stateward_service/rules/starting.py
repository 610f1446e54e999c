"""Rules about starting runs: a run starts once, on time, and only while its flow runs."""

from __future__ import annotations

from stateward.states import State, StateDetails, StateType
from stateward_service.rules.engine import (
    ALL_OR_NONE,
    Abort,
    Proceed,
    Reject,
    Rule,
    TransitionContext,
    Verdict,
    Wait,
    null_reject,
)


class PreventSecondStart(Rule):
    """A flow run that was already submitted (or is being or was cancelled) must not be
    submitted again: two processes would run it. Renaming a pending run is allowed."""

    FROM = frozenset(
        {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.CANCELLED}
    )
    TO = frozenset({StateType.PENDING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        name = ctx.proposed.name
        if (
            ctx.initial.type is StateType.PENDING
            and name != StateType.PENDING.default_name
            and name != ctx.initial.name
        ):
            return None
        return Abort(
            f"the flow run was already started (it is {ctx.initial.name}); "
            "it cannot be submitted a second time"
        )


class OnlyScheduledRunsBecomeLate(Rule):
    """Late means "scheduled and not started in time": only a scheduled run can become Late,
    and only once."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.SCHEDULED})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        if ctx.proposed.name != "Late":
            return None
        initial = ctx.initial
        if initial is not None and initial.type is StateType.SCHEDULED and initial.name != "Late":
            return None
        current = "no state" if initial is None else initial.name
        return null_reject(f"only a scheduled run that is not late yet can become Late ({current})")


class CopyScheduledTime(Rule):
    """A run submitted from SCHEDULED keeps its scheduled time, which decides when it may run."""

    FROM = frozenset({StateType.SCHEDULED})
    TO = frozenset({StateType.PENDING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        if ctx.proposed.details.scheduled_time is not None:
            return None
        scheduled = ctx.initial.details.scheduled_time
        return Proceed(ctx.proposed.with_details(scheduled_time=scheduled))


class WaitForScheduledTime(Rule):
    """A run does not start before its scheduled time: the client is told how long to wait."""

    FROM = frozenset({StateType.SCHEDULED, StateType.PENDING})
    TO = frozenset({StateType.RUNNING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        assert ctx.initial is not None
        scheduled = ctx.initial.details.scheduled_time
        if scheduled is None or scheduled <= ctx.now:
            return None
        delay = (scheduled - ctx.now).total_seconds()
        return Wait(delay, f"the run is scheduled to start at {scheduled.isoformat()}")


class RunTasksOnlyInRunningFlows(Rule):
    """A task runs only while its flow run is RUNNING. While the flow is paused the task is
    parked as Paused "NotReady" (until the flow's pause times out); in any other flow state it
    must not start at all."""

    FROM = ALL_OR_NONE
    TO = frozenset({StateType.RUNNING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        if not ctx.run.flow_run_id:
            return None
        flow_state = ctx.flow_run_state
        if flow_state is not None and flow_state.type is StateType.RUNNING:
            return None
        if flow_state is not None and flow_state.type is StateType.PAUSED:
            not_ready = State(
                StateType.PAUSED,
                name="NotReady",
                message="the flow run is paused; the task waits for it to resume",
                details=StateDetails(
                    pause_timeout=flow_state.details.pause_timeout,
                    transition_id=ctx.proposed.details.transition_id,
                ),
            )
            return Reject(not_ready, "the flow run is paused")
        current = "has no state" if flow_state is None else f"is {flow_state.name}"
        return Abort(f"the task's flow run {current}, not RUNNING; the task cannot start")


class RenameReruns(Rule):
    """A run entering RUNNING again is named for what it is: Retrying after AwaitingRetry,
    Rerunning otherwise. A resumed pause is neither."""

    FROM = frozenset(StateType) - {StateType.RUNNING}
    TO = frozenset({StateType.RUNNING})

    def decide(self, ctx: TransitionContext) -> Verdict | None:
        initial = ctx.initial
        assert initial is not None
        if ctx.run.run_count <= 0 or is_pause_resume(initial):
            return None
        name = "Retrying" if initial.name == "AwaitingRetry" else "Rerunning"
        return Proceed(ctx.proposed.evolve(name=name))


def is_pause_resume(initial: State | None) -> bool:
    """Whether entering RUNNING from `initial` resumes a paused run (rather than starting one).
    A task parked as NotReady never ran, so leaving it is a start."""
    return initial is not None and initial.type is StateType.PAUSED and initial.name != "NotReady"
