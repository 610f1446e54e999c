"""Input checks for every request: a malformed request is refused with INVALID_ARGUMENT naming
the field and what to fix, before anything is read or written."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from stateward.runs import MAX_LOG_MESSAGE, MAX_LOGGER_NAME, LogEntry, RetryPolicy
from stateward.states import State, StateType
from stateward_service.errors import invalid
from stateward_service.input_schemas import UnsafePattern, check_patterns, members_in

if TYPE_CHECKING:  # the checks of messages take them; those of the in-process API load none
    from google.protobuf.duration_pb2 import Duration
    from google.protobuf.struct_pb2 import Struct, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from stateward.v1 import runs_pb2, states_pb2

MAX_NAME = 200
MAX_MESSAGE = 100_000
MAX_CACHE_KEY = 2_000
MAX_CACHE_ENTRIES = 1_000  # per WriteCacheEntries call
MAX_KEY = 200  # transition ids, pause keys, tags
MAX_TAGS = 50
MAX_RETRIES = 10_000
MAX_DELAYS = 100
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 100
MAX_STATES_PAGE = 10_000
MAX_LEASE_SECONDS = 86_400.0
MAX_DELAY_SECONDS = 366 * 86_400.0  # a retry at most a year away
MAX_JITTER_FACTOR = 100.0
MAX_FILTER_VALUES = 1_000  # in each filter list
MAX_BATCH = 100
MAX_STREAM_BATCH = 1_000  # transitions in one WatchTransitions message
# A page token is passed back as the server made it; the server's are under 100 characters.
MAX_PAGE_TOKEN = 200
# How deeply a result's JSON may nest (as deep as protobuf lets a Struct nest).
MAX_JSON_DEPTH = 100
# The range google.protobuf.Timestamp allows: 0001-01-01 to 9999-12-31.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    import uuid  # for the ids not written as Stateward writes them: a cold start needs none

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
    _timestamp_range(ts.seconds, ts.nanos, field)


def _timestamp_range(seconds: int, nanos: int, field: str) -> None:
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS or not 0 <= nanos <= 999_999_999:
        raise invalid(
            field, "is out of range: timestamps must lie between 0001-01-01 and 9999-12-31 UTC"
        )


def duration(value: Duration, field: str, limit: float) -> float:
    """A duration in seconds: not negative, at most `limit`; unset is 0."""
    if value.nanos < 0:
        raise invalid(field, "must not be negative")
    return seconds(value.seconds + value.nanos / 1e9, field, limit)


def seconds(value: float, field: str, limit: float) -> float:
    """A number of seconds: not negative, at most `limit`."""
    if not value >= 0:  # NaN too
        raise invalid(field, "must not be negative")
    if value > limit:
        raise invalid(field, f"is {value:g}s; at most {limit:g}s is allowed")
    return value


def state_type(value: int, field: str) -> StateType:
    if value.__class__ is StateType:  # from the vocabulary (the in-process API): known
        return value
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
    details = msg.details
    # Most proposals carry no time, no pause and short texts: one look at each field says so
    # (the checks below say what is wrong with the others).
    if not (
        msg.type in _STATE_TYPES
        and len(msg.name) <= MAX_NAME
        and len(msg.message) <= MAX_MESSAGE
        and len(details.cache_key) <= MAX_CACHE_KEY
        and len(details.transition_id) <= MAX_KEY
        and len(details.pause_key) <= MAX_KEY
        and not details.run_input
        and not details.run_input_schema
        and not msg.HasField("timestamp")
        and not details.HasField("scheduled_time")
        and not details.HasField("cache_expiration")
        and not details.HasField("pause_timeout")
    ):
        _state_message_fields(msg, field)
    if msg.result.WhichOneof("value") == "json":
        result_json(msg.result.json, f"{field}.result.json")


def _state_message_fields(msg: states_pb2.State, field: str) -> None:
    """`state`'s checks of everything but the result."""
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
    if details.run_input:
        raise invalid(
            f"{field}.details.run_input",
            "is written by ResumeFlowRun only: resume a paused flow run with ResumeFlowRun",
        )
    if details.run_input_schema:
        run_input_schema(details.run_input_schema, f"{field}.details.run_input_schema")
    if msg.HasField("timestamp"):
        timestamp(msg.timestamp, f"{field}.timestamp")


def proposed_state(state: State, field: str) -> None:
    """A proposed state from a caller in this process (the vocabulary, no message): the same
    checks as `state`, and its times must be timezone-aware, as a Timestamp is."""
    details = state.details
    # Most proposals carry no time, no pause and short texts: one look at each field says so
    # (the checks below say what is wrong with the others). Their details name their run and
    # proposal: every other field `_state_fields` checks is at its default (one comparison).
    if not (
        state.timestamp is None
        and len(state.name) <= MAX_NAME
        and len(state.message) <= MAX_MESSAGE
        and (
            details is _NO_DETAILS
            or (
                _checked_details(details) == _DEFAULTS_CHECKED
                and len(details.transition_id) <= MAX_KEY
            )
            or (
                len(details.cache_key) <= MAX_CACHE_KEY
                and len(details.transition_id) <= MAX_KEY
                and len(details.pause_key) <= MAX_KEY
                and details.scheduled_time is None
                and details.cache_expiration is None
                and details.pause_timeout is None
                and not details.run_input
                and not details.run_input_schema
            )
        )
    ):
        _state_fields(state, field)
    data = state.data
    if data is not None and data.json is not None:
        result_json(data.json, f"{field}.result.json")


def _state_fields(state: State, field: str) -> None:
    """`proposed_state`'s checks of everything but the result."""
    text(state.name, f"{field}.name", MAX_NAME)
    text(state.message, f"{field}.message", MAX_MESSAGE)
    details = state.details
    if details is not _NO_DETAILS:
        text(details.cache_key, f"{field}.details.cache_key", MAX_CACHE_KEY)
        text(details.transition_id, f"{field}.details.transition_id", MAX_KEY)
        text(details.pause_key, f"{field}.details.pause_key", MAX_KEY)
        for name in ("scheduled_time", "cache_expiration", "pause_timeout"):
            aware(getattr(details, name), f"{field}.details.{name}")
        if details.run_input:
            raise invalid(
                f"{field}.details.run_input",
                "is written by ResumeFlowRun only: resume a paused flow run with ResumeFlowRun",
            )
        if details.run_input_schema:
            run_input_schema(details.run_input_schema, f"{field}.details.run_input_schema")
    aware(state.timestamp, f"{field}.timestamp")


# The details every state made without any shares (one immutable value).
_NO_DETAILS = State(StateType.COMPLETED).details
# The details' fields `_state_fields` checks besides the transition id, and their defaults
# (nearly every proposal's).
_checked_details = operator.attrgetter(
    "cache_key",
    "pause_key",
    "scheduled_time",
    "cache_expiration",
    "pause_timeout",
    "run_input",
    "run_input_schema",
)
_DEFAULTS_CHECKED = _checked_details(_NO_DETAILS)


def aware(value: datetime | None, field: str) -> None:
    """A time from a caller in this process: None, or timezone-aware."""
    if value is not None and value.utcoffset() is None:
        raise invalid(field, "has no time zone: give an aware datetime (e.g. in UTC)")


class _NotJsonNumber(ValueError):
    """NaN or an infinity in JSON text: Python reads them, JSON (RFC 8259) has no such numbers."""


def _refuse_constant(name: str) -> object:
    raise _NotJsonNumber(name)


# One decoder for every result checked (`json.loads` with an option builds one each call).
_RESULT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def result_json(value: str, field: str) -> None:
    """A result's JSON text: valid JSON (no NaN or Infinity, which other languages and the
    protobuf JSON mapping cannot read), nested at most MAX_JSON_DEPTH levels."""
    too_deep = f"is nested more than {MAX_JSON_DEPTH} levels deep; store the value as a pickle"
    try:
        parsed = _RESULT_DECODER.decode(value)
    except _NotJsonNumber as error:
        raise invalid(
            field, f"holds {error}, which JSON cannot hold: encode it as a string or null"
        ) from None
    except RecursionError:
        raise invalid(field, too_deep) from None
    except ValueError as error:
        raise invalid(field, f"is not valid JSON ({error})") from None
    if _nesting(parsed) > MAX_JSON_DEPTH:
        raise invalid(field, too_deep)


def _nesting(value: object) -> int:
    """How many lists and objects lie inside each other in a parsed JSON value (no recursion:
    the walk stops at the first level past the limit)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def parameters(struct: Struct, field: str) -> None:
    """Run parameters: every number finite. The store keeps them as JSON and the protobuf JSON
    mapping renders them; neither has NaN or Infinity, so they are refused with the path of the
    first one found."""
    pending: list[tuple[str, Value]] = [
        (f"{field}.{key}", value) for key, value in struct.fields.items()
    ]
    while pending:
        path, value = pending.pop()
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            if not math.isfinite(value.number_value):
                raise invalid(
                    path,
                    f"is {value.number_value}, which JSON cannot hold: send a string or null "
                    "instead",
                )
        elif kind == "struct_value":
            pending.extend(
                (f"{path}.{key}", inner) for key, inner in value.struct_value.fields.items()
            )
        elif kind == "list_value":
            pending.extend(
                (f"{path}[{index}]", inner) for index, inner in enumerate(value.list_value.values)
            )


def states_page_size(value: int, field: str = "page_size") -> int:
    """A ListStates page size: 0 is as many as fit, up to MAX_STATES_PAGE."""
    if value < 0:
        raise invalid(field, f"is {value}; it must not be negative (0 means as many as fit)")
    return MAX_STATES_PAGE if value == 0 else min(value, MAX_STATES_PAGE)


def page_token(value: str, field: str = "page_token") -> str:
    if len(value) > MAX_PAGE_TOKEN:
        raise invalid(
            field,
            f"is {len(value):,} characters long, longer than any token this server makes; pass "
            "back next_page_token unchanged, or start again without a token",
        )
    return value


def tag(value: str, field: str) -> str:
    """A tag: required, at most MAX_KEY characters, without U+0000 (tags are matched inside
    the database's JSON, which ends a string at U+0000)."""
    text(value, field, MAX_KEY, required=True)
    if "\x00" in value:
        raise invalid(field, "contains U+0000 (NUL), which a tag cannot hold")
    return value


def tags(values: Sequence[str], field: str) -> tuple[str, ...]:
    if len(values) > MAX_TAGS:
        raise invalid(field, f"has {len(values)} tags; at most {MAX_TAGS} are allowed")
    for index, value in enumerate(values):
        tag(value, f"{field}[{index}]")
    return tuple(dict.fromkeys(values))


def retry_policy(msg: runs_pb2.RetryPolicy | RetryPolicy, field: str) -> None:
    """A retry policy, as a message or from the vocabulary (the same fields): retries from 0
    to MAX_RETRIES, at most MAX_DELAYS delays within a year, a jitter factor within bounds."""
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


def retry_policy_value(policy: RetryPolicy, field: str) -> RetryPolicy:
    """A retry policy from a caller in this process: the checks of `retry_policy`; returns it
    as a message would carry it (retries whole, delays and jitter as floats). A value of a
    type its field cannot hold raises TypeError, as setting the field does."""
    if policy == _NO_RETRIES:
        return _NO_RETRIES
    carried = RetryPolicy(
        _whole(policy.retries, f"{field}.retries"),
        tuple(_real(delay, f"{field}.retry_delay_seconds") for delay in policy.retry_delay_seconds),
        _real(policy.retry_jitter_factor, f"{field}.retry_jitter_factor"),
    )
    retry_policy(carried, field)
    return carried


def _whole(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field}: expected an int, got {type(value).__name__}")
    return value


def _real(value: object, field: str) -> float:
    if not isinstance(value, int | float):  # bool is an int, as a double field takes it
        raise TypeError(f"{field}: expected a number, got {type(value).__name__}")
    return float(value)


_NO_RETRIES = RetryPolicy()


def parameter_values(values: Mapping[str, Any], field: str) -> tuple[dict[str, Any], str]:
    """Run parameters from a caller in this process, as a Struct would carry them: the values
    (every number as a double: whole ones below 2**53 read back as ints) and their JSON text.
    A number JSON cannot hold is refused as `parameters` refuses it; a key that is not a
    string, or a value a Struct cannot hold, raises TypeError, as building the Struct does."""
    if not values:
        return {}, "{}"
    carried = {}
    # The JSON text of the parameters as they go (`_compact_json`'s, without building an
    # encoder): None once one is not a plain value, which `_compact_json` then writes.
    parts: list[str] | None = []
    for key, value in values.items():
        kind = value.__class__
        # Exact strings, booleans, None and ints a double holds exactly (nearly every task
        # run's parameters) are carried as they are, their path never spelled out: every task
        # run's create comes here.
        if key.__class__ is str and (
            kind is str
            or kind is bool
            or value is None
            or (kind is int and -_EXACT_IN_A_DOUBLE < value < _EXACT_IN_A_DOUBLE)
        ):
            carried[key] = value
            if parts is not None:
                parts.append(f"{_json_string(key)}:{_SCALAR_JSON[kind](value)}")
            continue
        if not isinstance(key, str):
            raise TypeError(f"a parameter's key must be a string, not {type(key).__name__}")
        carried[key] = _struct_value(value, f"{field}.{key}")
        parts = None
    if parts is not None:
        return carried, "{" + ",".join(parts) + "}"
    return carried, _compact_json(carried)


# Whole numbers of a smaller magnitude read back from a double as the int they were.
_EXACT_IN_A_DOUBLE = 2**53


# `json.dumps(..., separators=(",", ":"))` without building an encoder at each call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
# What it writes for a string (ASCII, escaped) and for each kind of plain value the
# parameters carry as they are (C functions, no encoder).
_json_string = json.encoder.encode_basestring_ascii
_SCALAR_JSON: dict[type, Callable[[Any], str]] = {
    str: _json_string,
    int: int.__repr__,
    bool: {True: "true", False: "false"}.__getitem__,
    type(None): {None: "null"}.__getitem__,
}


def _items(values: Mapping[Any, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"a parameter's key must be a string, not {type(key).__name__}")
        yield key, value


def _struct_value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise invalid(
                path, f"is {number}, which JSON cannot hold: send a string or null instead"
            )
        return int(number) if number.is_integer() and abs(number) < _EXACT_IN_A_DOUBLE else number
    if isinstance(value, Mapping):
        return {key: _struct_value(inner, f"{path}.{key}") for key, inner in _items(value)}
    if isinstance(value, list | tuple):
        return [_struct_value(inner, f"{path}[{index}]") for index, inner in enumerate(value)]
    raise TypeError(f"{path}: a {type(value).__name__} cannot be a parameter's value")


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise invalid(field, f"is {value}; it must not be negative (0 means {DEFAULT_PAGE_SIZE})")
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def stream_batch(value: int, field: str = "max_batch") -> int:
    """The most transitions one stream message may carry: 0 and 1 both mean one."""
    if value > MAX_STREAM_BATCH:
        raise invalid(field, f"is {value:,}; at most {MAX_STREAM_BATCH:,} are allowed")
    return max(1, value)


def run_ids(values: Sequence[str], field: str) -> tuple[str, ...]:
    filter_size(values, field)
    return tuple(uuid_value(value, f"{field}[{index}]") for index, value in enumerate(values))


def filter_size(values: Sequence[object], field: str) -> None:
    if len(values) > MAX_FILTER_VALUES:
        raise invalid(
            field, f"has {len(values):,} values; at most {MAX_FILTER_VALUES:,} are allowed"
        )


MAX_RUN_INPUT = 1024 * 1024


def run_input_schema(value: str, field: str) -> None:
    """A pause's input schema: a JSON object that is a valid JSON Schema (draft 2020-12)."""
    text(value, field, MAX_MESSAGE)
    result_json(value, field)
    # jsonschema loads when a pause first carries a schema, not with the service.
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    schema = json.loads(value)
    if not isinstance(schema, dict):
        raise invalid(field, 'must be a JSON Schema object, such as {"type": "object"}')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise invalid(field, f"is not a valid JSON Schema: {error.message}") from None
    try:
        check_patterns(schema)
    except UnsafePattern as error:
        raise invalid(field, f"is refused: {error}") from None
    # Every reference must resolve within the schema: nothing is fetched, and a pause whose
    # schema cannot be checked could never be resumed.
    resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))
    for ref in _references(schema):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise invalid(
                field, f"its $ref {ref!r} leads nowhere; refer only within the schema (#/$defs/...)"
            ) from None


def _references(node: object) -> Iterator[str]:
    """Every `$ref` and `$dynamicRef` in a JSON document."""
    for key, value in members_in(node):
        if key in ("$ref", "$dynamicRef") and isinstance(value, str):
            yield value


def run_input(value: str, field: str) -> None:
    """The input of a resume: a JSON document of at most MAX_RUN_INPUT bytes."""
    if len(value.encode()) > MAX_RUN_INPUT:
        raise invalid(field, f"is over {MAX_RUN_INPUT} bytes; pass a reference to the data")
    result_json(value, field)


MAX_LOG_BATCH = 1_000
E = TypeVar("E", "runs_pb2.LogEntry", LogEntry)  # a log line: a message, or a value
MAX_LOG_PAGE = 10_000


def log_entries(entries: Sequence[runs_pb2.LogEntry], field: str) -> None:
    """The lines of a WriteLogs call: at most MAX_LOG_BATCH, each naming a run, with a time,
    a level from 0 to 100 and texts within their limits."""
    _log_lines(entries, field, lambda entry, _: entry, _logged_at)


def log_entry_values(entries: Sequence[LogEntry], field: str) -> list[LogEntry]:
    """The lines of a caller in this process, as a LogEntry message would hold them (their
    texts by `message_text`'s rule), by the checks of `log_entries` (the same refusals): each
    time timezone-aware and within a Timestamp's range. A line holding what a message cannot (a
    level that is not a whole number, a text that is neither a str nor UTF-8 bytes) raises
    TypeError (UnicodeDecodeError for bytes that are not UTF-8), as making the message would:
    stored, it would fail every read of its run's logs."""
    return _log_lines(entries, field, _value_line, _logged_at_value)


def _log_lines(
    entries: Sequence[E],
    field: str,
    taken: Callable[[E, str], E],
    check_time: Callable[[E, str], None],
) -> list[E]:
    """The lines, each as `taken` makes it, once each passed the checks."""
    if len(entries) > MAX_LOG_BATCH:
        raise invalid(field, f"has {len(entries)} lines; send at most {MAX_LOG_BATCH} a call")
    lines = []
    for index, given in enumerate(entries):
        where = f"{field}[{index}]"
        entry = taken(given, where)
        lines.append(entry)
        if not entry.flow_run_id and not entry.task_run_id:
            raise invalid(where, "names no run: give its flow_run_id or task_run_id")
        if entry.flow_run_id:
            run_id(entry.flow_run_id, f"{where}.flow_run_id")
        if entry.task_run_id:
            run_id(entry.task_run_id, f"{where}.task_run_id")
        check_time(entry, f"{where}.timestamp")
        if not 0 <= entry.level <= 100:
            raise invalid(f"{where}.level", "must be from 0 to 100 (Python's logging levels)")
        text(entry.logger, f"{where}.logger", MAX_LOGGER_NAME)
        text(entry.message, f"{where}.message", MAX_LOG_MESSAGE)
    return lines


_NO_TIME = "is required: when the line was logged"


def _logged_at(entry: runs_pb2.LogEntry, field: str) -> None:
    if not entry.HasField("timestamp"):
        raise invalid(field, _NO_TIME)
    timestamp(entry.timestamp, field)


def _value_line(entry: LogEntry, where: str) -> LogEntry:
    """A line of a caller in this process as a message holds it (`where` names the line):
    its level a whole number, its texts by `message_text`'s rule."""
    level = entry.level
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(
            f"{where}.level: {level!r} is not a whole number: a log line's level is one of "
            "Python's logging levels (an int from 0 to 100)"
        )
    flow_run_id, task_run_id, logger, message = (
        entry.flow_run_id, entry.task_run_id, entry.logger, entry.message
    )  # fmt: skip
    if all(type(value) is str for value in (flow_run_id, task_run_id, logger, message)):
        return entry
    return dataclasses.replace(
        entry,
        flow_run_id=message_text(flow_run_id, f"{where}.flow_run_id"),
        task_run_id=message_text(task_run_id, f"{where}.task_run_id"),
        logger=message_text(logger, f"{where}.logger"),
        message=message_text(message, f"{where}.message"),
    )


def message_text(value: object, field: str) -> str:
    """`value` as a message's string field takes it, the rule of every in-process call that
    stands for a message: a str as it is, bytes as their UTF-8 text (UnicodeDecodeError when
    they are not UTF-8), anything else a TypeError naming `field`. (Stored as they came,
    bytes would never equal the text a read or lookup compares them with.)"""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    raise TypeError(f"{field}: must be a str, not {type(value).__name__}")


def _logged_at_value(entry: LogEntry, field: str) -> None:
    if entry.timestamp is None:
        raise invalid(field, _NO_TIME)
    time_value(entry.timestamp, field)


def time_value(value: datetime | None, field: str) -> None:
    """A time from a caller in this process, as `timestamp` checks one in a message: None
    (unset), or timezone-aware and within a Timestamp's range."""
    if value is None:
        return
    aware(value, field)
    delta = value - _EPOCH  # as the wire sets a Timestamp
    _timestamp_range(delta.days * 86_400 + delta.seconds, delta.microseconds * 1000, field)


def cache_entry_count(count: int, field: str) -> None:
    """The entries of one WriteCacheEntries call: at most MAX_CACHE_ENTRIES."""
    if count > MAX_CACHE_ENTRIES:
        raise invalid(field, f"has {count}; at most {MAX_CACHE_ENTRIES} per call")


def lease_duration(value: float, field: str) -> float:
    """How long each renewed lease lasts, in seconds: above zero, at most MAX_LEASE_SECONDS."""
    if seconds(value, field, MAX_LEASE_SECONDS) <= 0:
        raise invalid(field, "is required: how long each lease lasts, above zero")
    return value


def log_page_size(value: int, field: str = "page_size") -> int:
    if value == 0:
        return 1_000
    if not 1 <= value <= MAX_LOG_PAGE:
        raise invalid(field, f"must be from 1 to {MAX_LOG_PAGE} (0 means 1,000)")
    return value
