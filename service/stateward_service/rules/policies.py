"""The ordered policies: which rules decide a proposal, in which order (spec sections 3 and 4).

A forced proposal skips the policy but not the two protections every write keeps: a retried call
applies once, and a stored result is never lost (a forced proposal may still move a completed flow
run to another final state; a completed task run with a result stays completed even then).
"""

from __future__ import annotations

from dataclasses import field

from stateward.runs import RunKind
from stateward.states import dataclass
from stateward_service.rules.caching import CacheCompletedResults, RetrieveCachedResults
from stateward_service.rules.cancellation import (
    CancelRunsNoProcessOwns,
    OnlyCancelledAfterCancelling,
)
from stateward_service.rules.concurrency import LimitTagConcurrency
from stateward_service.rules.engine import Policy
from stateward_service.rules.guards import (
    KeepCompletedResults,
    KeepFinishedRunsFinished,
    PreventDuplicateTransitions,
    PreventForcedResultLoss,
    ResetRunCountOnTaskRerun,
)
from stateward_service.rules.pausing import PauseOnlyRunningRuns, ResumeOnlyBeforePauseTimeout
from stateward_service.rules.retries import RetryFailedRuns
from stateward_service.rules.starting import (
    CopyScheduledTime,
    OnlyScheduledRunsBecomeLate,
    PreventSecondStart,
    RenameReruns,
    RunTasksOnlyInRunningFlows,
    WaitForScheduledTime,
)


def flow_policy() -> Policy:
    return Policy(
        [
            PreventDuplicateTransitions(),
            KeepFinishedRunsFinished(),
            KeepCompletedResults(),
            OnlyCancelledAfterCancelling(),
            CancelRunsNoProcessOwns(),
            PreventSecondStart(),
            OnlyScheduledRunsBecomeLate(),
            PauseOnlyRunningRuns(),
            ResumeOnlyBeforePauseTimeout(),
            CopyScheduledTime(),
            WaitForScheduledTime(),
            RetryFailedRuns(),
            RenameReruns(),
        ]
    )


def task_policy(slot_wait_seconds: float = 1.0) -> Policy:
    return Policy(
        [
            PreventDuplicateTransitions(),
            RetrieveCachedResults(),
            KeepFinishedRunsFinished(),
            KeepCompletedResults(),
            ResetRunCountOnTaskRerun(),
            RunTasksOnlyInRunningFlows(),
            LimitTagConcurrency(slot_wait_seconds),
            CopyScheduledTime(),
            WaitForScheduledTime(),
            RetryFailedRuns(),
            RenameReruns(),
            CacheCompletedResults(),
        ]
    )


@dataclass(frozen=True)
class Policies:
    """The policy for each kind of run, and for forced proposals."""

    flow: Policy
    task: Policy
    forced_flow: Policy = field(
        default_factory=lambda: Policy([PreventDuplicateTransitions(), PreventForcedResultLoss()])
    )
    forced_task: Policy = field(
        default_factory=lambda: Policy([PreventDuplicateTransitions(), KeepCompletedResults()])
    )

    @classmethod
    def default(cls, slot_wait_seconds: float = 1.0) -> Policies:
        return cls(flow=flow_policy(), task=task_policy(slot_wait_seconds))

    def for_run(self, kind: RunKind, force: bool) -> Policy:
        if kind is RunKind.FLOW_RUN:
            return self.forced_flow if force else self.flow
        return self.forced_task if force else self.task
