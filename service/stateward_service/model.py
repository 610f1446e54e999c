"""The server's own records: runs as the store keeps them and the rules read them, and a limit's
usage as one proposal sees it.

Plain data; the store fills them from rows, the rules and the bookkeeping read and update them.
The vocabulary they are made of (states, run kinds, retry policies, transitions, limits) is the
SDK's, from `stateward.states` and `stateward.runs`.
"""

from __future__ import annotations

from dataclasses import field
from datetime import datetime

from stateward.runs import RetryPolicy, RunKind
from stateward.states import State, dataclass


@dataclass(slots=True)
class RunRecord:
    """A flow run or a task run with its current state and bookkeeping."""

    kind: RunKind
    id: str
    name: str
    created: datetime
    # A flow run's flow name, or a task run's task key.
    flow_name: str = ""
    task_key: str = ""
    # For a task run: its flow run ("" outside a flow). For a flow run: "".
    flow_run_id: str = ""
    # For a subflow: the task run standing for it in the parent flow run.
    parent_task_run_id: str = ""
    # For a task run standing for a subflow: that subflow's flow run id.
    child_flow_run_id: str = ""
    parameters: str = "{}"  # JSON object
    tags: tuple[str, ...] = ()
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    state: State | None = None
    run_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: float = 0.0  # seconds
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    pause_keys: frozenset[str] = frozenset()
    lease_expires: datetime | None = None

    def copy(self) -> RunRecord:
        """A copy to hand out while this record goes on changing (its fields are immutable
        values); built field by field, several times quicker than dataclasses.replace."""
        return RunRecord(
            kind=self.kind,
            id=self.id,
            name=self.name,
            created=self.created,
            flow_name=self.flow_name,
            task_key=self.task_key,
            flow_run_id=self.flow_run_id,
            parent_task_run_id=self.parent_task_run_id,
            child_flow_run_id=self.child_flow_run_id,
            parameters=self.parameters,
            tags=self.tags,
            retry_policy=self.retry_policy,
            state=self.state,
            run_count=self.run_count,
            start_time=self.start_time,
            end_time=self.end_time,
            total_run_time=self.total_run_time,
            expected_start_time=self.expected_start_time,
            next_scheduled_start_time=self.next_scheduled_start_time,
            pause_keys=self.pause_keys,
            lease_expires=self.lease_expires,
        )

    @property
    def owning_flow_run_id(self) -> str:
        """The flow run a transition of this run belongs to, for stream filters."""
        return self.id if self.kind is RunKind.FLOW_RUN else self.flow_run_id


@dataclass(frozen=True, slots=True, quick=True)
class LimitUsage:
    """A tag concurrency limit as seen by one proposal: how full it is, and whether the run
    proposing already holds one of its slots."""

    tag: str
    limit: int
    active: int
    held_by_run: bool
