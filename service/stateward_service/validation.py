"""Input checks for every request: a malformed request is refused with INVALID_ARGUMENT naming
the field and what to fix, before anything is read or written."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from stateward.states import StateType
from stateward.v1 import runs_pb2, states_pb2
from stateward_service.errors import invalid

MAX_NAME = 200
MAX_MESSAGE = 100_000
MAX_CACHE_KEY = 2_000
MAX_KEY = 200  # transition ids, pause keys, tags
MAX_TAGS = 50
MAX_RETRIES = 10_000
MAX_DELAYS = 100
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 100
MAX_LEASE_SECONDS = 86_400.0
MAX_DELAY_SECONDS = 366 * 86_400.0  # a retry at most a year away
MAX_JITTER_FACTOR = 100.0
MAX_FILTER_VALUES = 1_000  # in each filter list
MAX_BATCH = 100
# The range google.protobuf.Timestamp allows: 0001-01-01 to 9999-12-31.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_STATE_TYPES = frozenset(int(t) for t in StateType)


def run_id(value: str, field: str) -> str:
    """A required run id in its canonical form (lowercase UUID)."""
    if not value:
        raise invalid(field, "is required (a run id, a UUID)")
    return uuid_value(value, field)


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_value(value: str, field: str) -> str:
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise invalid(field, f"{shown!r} is not a UUID") from None


def optional_run_id(value: str, field: str) -> str:
    return uuid_value(value, field) if value else ""


def text(value: str, field: str, limit: int, *, required: bool = False) -> str:
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"is {len(value):,} characters long; at most {limit:,} are allowed")
    return value


def timestamp(ts: Timestamp, field: str) -> None:
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos <= 999_999_999:
        raise invalid(
            field, "is out of range: timestamps must lie between 0001-01-01 and 9999-12-31 UTC"
        )


def duration(value: Duration, field: str, limit: float) -> float:
    """A duration in seconds: not negative, at most `limit`; unset is 0."""
    seconds = value.seconds + value.nanos / 1e9
    if seconds < 0 or value.nanos < 0:
        raise invalid(field, "must not be negative")
    if seconds > limit:
        raise invalid(field, f"is {seconds:g}s; at most {limit:g}s is allowed")
    return seconds


def state_type(value: int, field: str) -> StateType:
    if value == 0:
        raise invalid(field, "is required: STATE_TYPE_UNSPECIFIED is not a state type")
    if value not in _STATE_TYPES:
        raise invalid(field, f"{value} is not a known StateType")
    return StateType(value)


def state_types(values: Sequence[int], field: str) -> tuple[int, ...]:
    filter_size(values, field)
    return tuple(int(state_type(value, field)) for value in values)


def names(values: Sequence[str], field: str) -> tuple[str, ...]:
    """A filter list of names or tags."""
    filter_size(values, field)
    return tuple(values)


def state(msg: states_pb2.State, field: str) -> None:
    """A proposed state: a known type, sizes within limits, valid times and result."""
    state_type(msg.type, f"{field}.type")
    text(msg.name, f"{field}.name", MAX_NAME)
    text(msg.message, f"{field}.message", MAX_MESSAGE)
    details = msg.details
    text(details.cache_key, f"{field}.details.cache_key", MAX_CACHE_KEY)
    text(details.transition_id, f"{field}.details.transition_id", MAX_KEY)
    text(details.pause_key, f"{field}.details.pause_key", MAX_KEY)
    for name in ("scheduled_time", "cache_expiration", "pause_timeout"):
        if details.HasField(name):
            timestamp(getattr(details, name), f"{field}.details.{name}")
    if msg.HasField("timestamp"):
        timestamp(msg.timestamp, f"{field}.timestamp")
    if msg.result.WhichOneof("value") == "json":
        try:
            json.loads(msg.result.json)
        except ValueError as error:
            raise invalid(f"{field}.result.json", f"is not valid JSON ({error})") from None


def tags(values: Sequence[str], field: str) -> tuple[str, ...]:
    if len(values) > MAX_TAGS:
        raise invalid(field, f"has {len(values)} tags; at most {MAX_TAGS} are allowed")
    for index, tag in enumerate(values):
        text(tag, f"{field}[{index}]", MAX_KEY, required=True)
    return tuple(dict.fromkeys(values))


def retry_policy(msg: runs_pb2.RetryPolicy, field: str) -> None:
    if msg.retries < 0:
        raise invalid(f"{field}.retries", f"is {msg.retries}; it must not be negative")
    if msg.retries > MAX_RETRIES:
        raise invalid(f"{field}.retries", f"is {msg.retries}; at most {MAX_RETRIES} are allowed")
    if len(msg.retry_delay_seconds) > MAX_DELAYS:
        raise invalid(f"{field}.retry_delay_seconds", f"has more than {MAX_DELAYS} entries")
    for index, delay in enumerate(msg.retry_delay_seconds):
        if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY_SECONDS:
            raise invalid(
                f"{field}.retry_delay_seconds[{index}]",
                f"is {delay}; delays must lie between 0 and {MAX_DELAY_SECONDS:g} seconds",
            )
    jitter = msg.retry_jitter_factor
    if not math.isfinite(jitter) or not 0 <= jitter <= MAX_JITTER_FACTOR:
        raise invalid(
            f"{field}.retry_jitter_factor",
            f"is {jitter}; it must lie between 0 and {MAX_JITTER_FACTOR:g}",
        )


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise invalid(field, f"is {value}; it must not be negative (0 means {DEFAULT_PAGE_SIZE})")
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def run_ids(values: Sequence[str], field: str) -> tuple[str, ...]:
    filter_size(values, field)
    return tuple(uuid_value(value, f"{field}[{index}]") for index, value in enumerate(values))


def filter_size(values: Sequence[object], field: str) -> None:
    if len(values) > MAX_FILTER_VALUES:
        raise invalid(
            field, f"has {len(values):,} values; at most {MAX_FILTER_VALUES:,} are allowed"
        )
