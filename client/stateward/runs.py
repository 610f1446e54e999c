"""Runs, transitions and decisions as the client returns them: plain, immutable records."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stateward.states import State


class RunKind(enum.Enum):
    FLOW_RUN = 1
    TASK_RUN = 2


class SetStateStatus(enum.IntEnum):
    """The server's answer to a proposed state (values of `stateward.v1.SetStateStatus`)."""

    ACCEPT = 1
    REJECT = 2
    WAIT = 3
    ABORT = 4


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    retry_delay_seconds: tuple[float, ...] = ()
    retry_jitter_factor: float = 0.0


@dataclass(frozen=True, slots=True)
class FlowRun:
    id: str
    name: str
    flow_name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    retry_policy: RetryPolicy = RetryPolicy()
    state: State | None = None
    run_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: timedelta = timedelta(0)
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    parent_task_run_id: str = ""
    created: datetime | None = None
    lease_expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskRun:
    id: str
    name: str
    task_key: str
    flow_run_id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    retry_policy: RetryPolicy = RetryPolicy()
    state: State | None = None
    run_count: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    total_run_time: timedelta = timedelta(0)
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    child_flow_run_id: str = ""
    created: datetime | None = None
    lease_expires: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to a proposed state: `state` is the run's state after the call."""

    status: SetStateStatus
    state: State | None
    reason: str = ""
    delay_seconds: float = 0.0
    written: bool = False  # a state was written (ACCEPT, or a REJECT with a replacement)

    @property
    def accepted(self) -> bool:
        return self.status is SetStateStatus.ACCEPT


@dataclass(frozen=True, slots=True)
class Transition:
    """One accepted state change, as the transitions stream delivers it."""

    sequence: int
    run_id: str
    run_kind: RunKind
    flow_run_id: str
    run_name: str
    flow_name: str
    task_key: str
    from_state: State | None
    to_state: State


@dataclass(frozen=True, slots=True)
class ConcurrencyLimit:
    tag: str
    limit: int
    active_slots: tuple[str, ...] = ()
    created: datetime | None = None
