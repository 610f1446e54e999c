"""Runs, transitions and the answers to proposals: the vocabulary the SDK and the server share.

Plain, immutable records, no I/O, made quickly (see `stateward._records`). The client
returns them; the server's orchestrator, its rules and its store use the same classes
(`stateward.wire` converts them to and from protobuf).
"""

from __future__ import annotations

import enum
from dataclasses import field
from datetime import datetime, timedelta
from typing import Any

from stateward._records import dataclass
from stateward.states import State


class RunKind(enum.IntEnum):
    """Whether a run is a flow run or a task run; the values are those of `stateward.v1.RunKind`."""

    FLOW_RUN = 1
    TASK_RUN = 2

    @property
    def label(self) -> str:
        """How a message names the kind: "flow run" or "task run"."""
        return "flow run" if self is RunKind.FLOW_RUN else "task run"


class SetStateStatus(enum.IntEnum):
    """The orchestrator's answer to a proposed state; the values are those of
    `stateward.v1.SetStateStatus`."""

    ACCEPT = 1
    REJECT = 2
    WAIT = 3
    ABORT = 4


@dataclass(frozen=True, slots=True, quick=True)
class RetryPolicy:
    """How often a failed run is retried, and after how long."""

    retries: int = 0
    retry_delay_seconds: tuple[float, ...] = ()
    retry_jitter_factor: float = 0.0

    def delay_for(self, run_count: int) -> float:
        """The delay before the retry that follows attempt number `run_count` (1-based): the
        matching entry of `retry_delay_seconds`, its last entry past its end, 0 without any."""
        delays = self.retry_delay_seconds
        if not delays:
            return 0.0
        return delays[min(max(run_count - 1, 0), len(delays) - 1)]


@dataclass(frozen=True, slots=True, quick=True)
class FlowRun:
    """A flow run as the server returns it (its parameters decoded, its current state)."""

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


@dataclass(frozen=True, slots=True, quick=True)
class TaskRun:
    """A task run as the server returns it; `flow_run_id` is empty outside a flow."""

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


@dataclass(frozen=True, slots=True, quick=True)
class OrchestrationResult:
    """The orchestrator's answer to a proposed state (a SetState call).

    `state` is the run's state after the call: the accepted proposal, the state the rules wrote in
    its place, or the unchanged current one. `delay_seconds` tells a WAIT how long to wait before
    proposing again. `written` says whether a state was written (ACCEPT, or a REJECT with a
    replacement).
    """

    status: SetStateStatus
    state: State | None
    reason: str = ""
    delay_seconds: float = 0.0
    written: bool = False

    @property
    def accepted(self) -> bool:
        return self.status is SetStateStatus.ACCEPT

    @property
    def waits_for_slot(self) -> bool:
        """Whether this is a WAIT because a tag's concurrency limit is full."""
        return self.status is SetStateStatus.WAIT and self.reason.startswith(SLOT_WAIT_REASON)


# How the reason of a WAIT for a tag concurrency slot begins (the rule words it so).
SLOT_WAIT_REASON = "the concurrency limit of tag "


@dataclass(frozen=True, slots=True, quick=True)
class Transition:
    """One accepted state change, as the transitions log keeps it and the stream delivers it."""

    sequence: int
    run_id: str
    run_kind: RunKind
    flow_run_id: str
    run_name: str
    flow_name: str
    task_key: str
    from_state: State | None
    to_state: State


@dataclass(frozen=True, slots=True, quick=True)
class ConcurrencyLimit:
    """A tag concurrency limit: at most `limit` task runs with the tag run at once;
    `active_slots` are the ids of the runs holding a slot."""

    tag: str
    limit: int
    active_slots: tuple[str, ...] = ()
    created: datetime | None = None


@dataclass(frozen=True, slots=True, quick=True)
class CacheEntry:
    """A completed task run's state to store under a cache key, until `cache_expiration` (None:
    for good): an entry held back until the task run around it completed."""

    task_run_id: str
    cache_key: str
    cache_expiration: datetime | None = None


# The longest text and logger name of a run's log line that the server stores (in characters).
MAX_LOG_MESSAGE = 100_000
MAX_LOGGER_NAME = 200


@dataclass(frozen=True, slots=True, quick=True)
class LogEntry:
    """One line a run's code logged: its flow run (for a task run's line, the task run's flow
    run, if any), its task run ("" for a flow run's own line), when, the `logging` level, the
    logger's name (at most MAX_LOGGER_NAME characters) and the text (at most MAX_LOG_MESSAGE).
    `id` is the server's number for it (0 until stored)."""

    flow_run_id: str
    task_run_id: str
    timestamp: datetime
    level: int
    logger: str
    message: str
    id: int = 0
