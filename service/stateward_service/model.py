"""The server's domain records: runs as the store keeps them and the rules read them.

Plain data; the store fills them from rows, the rules and the bookkeeping read and update them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from stateward.states import State


class RunKind(enum.IntEnum):
    """Values of `stateward.v1.RunKind`."""

    FLOW_RUN = 1
    TASK_RUN = 2

    @property
    def label(self) -> str:
        return "flow run" if self is RunKind.FLOW_RUN else "task run"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    retry_delay_seconds: tuple[float, ...] = ()
    retry_jitter_factor: float = 0.0

    def delay_for(self, run_count: int) -> float:
        """The delay before the retry that follows attempt number `run_count` (1-based)."""
        delays = self.retry_delay_seconds
        if not delays:
            return 0.0
        return delays[min(max(run_count - 1, 0), len(delays) - 1)]


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

    @property
    def owning_flow_run_id(self) -> str:
        """The flow run a transition of this run belongs to, for stream filters."""
        return self.id if self.kind is RunKind.FLOW_RUN else self.flow_run_id


@dataclass(frozen=True, slots=True)
class LimitUsage:
    """A tag concurrency limit as seen by one proposal: how full it is, and whether the run
    proposing already holds one of its slots."""

    tag: str
    limit: int
    active: int
    held_by_run: bool


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    tag: str
    limit: int
    created: datetime
    active_slots: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """One written state change, as the transitions log and the subscribers see it."""

    sequence: int
    run_kind: RunKind
    run_id: str
    flow_run_id: str
    run_name: str
    flow_name: str
    task_key: str
    from_state: State | None
    to_state: State
