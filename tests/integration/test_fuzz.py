"""A property-based fuzzer over every method the server serves: random request messages (built
from each method's request descriptor, odd values included) and random bytes. Whatever it sends,
no answer is UNKNOWN or INTERNAL, and the server stays SERVING. The example counts are bounded so
that it runs in seconds."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.raw import call_raw, every_method, path
from tests.support import ServerProcess

BROKEN = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
METHODS = every_method()
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as clients send it: valid UTF-8 (no lone surrogates; protobuf refuses to encode them),
# with control characters, U+0000 and long strings among them; and ids that parse.
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.uuids().map(str),
    st.sampled_from(["", "\x00", "a" * 2001, "Late", "AwaitingRetry", "NaN"]),
)
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]),
)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | DOUBLES | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: TEXT,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=40),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: DOUBLES,
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), INT32)  # open enums take any number
    return SCALARS[field.type]


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type with a random subset of fields set, nested a few levels."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Struct":
        return st.dictionaries(TEXT, JSON_VALUES, max_size=4).map(_struct(cls))
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            value: st.SearchStrategy[Any] = st.deferred(
                lambda f=field: messages(f.message_type, depth + 1)
            )
        else:
            value = _scalar(field)
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        parts[field.name] = st.none() | value

    def build(values: dict[str, Any]) -> Message:
        msg = cls()
        for name, value in values.items():
            if value is None:
                continue
            target = getattr(msg, name)
            if isinstance(value, list):
                target.extend(value)
            elif isinstance(value, Message):
                target.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries(parts).map(build)


def _struct(cls: Any) -> Any:
    def make(values: dict[str, Any]) -> Message:
        msg = cls()
        msg.update(values)
        return msg

    return make


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory):
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "fuzz.db").start()
    yield server
    server.stop()


def _serving(server: ServerProcess) -> bool:
    health = health_pb2_grpc.HealthStub(server.channel())
    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=20)
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def _requests() -> st.SearchStrategy[tuple[MethodDescriptor, bytes]]:
    per_method = [
        messages(method.input_type).map(lambda m, method=method: (method, m.SerializeToString()))
        for method in METHODS
    ]
    return st.one_of(per_method)


@FUZZ
@given(call=_requests())
def test_no_request_message_is_answered_unknown_or_internal(fuzzed, call):
    method, data = call
    code, message = call_raw(fuzzed.channel(), method, data, timeout=20)
    assert code not in BROKEN, (path(method), message)


@settings(FUZZ, max_examples=100)
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=300))
def test_no_bytes_are_answered_unknown_or_internal(fuzzed, method, data):
    code, message = call_raw(fuzzed.channel(), method, data, timeout=20)
    assert code not in BROKEN, (path(method), data, message)


def test_the_server_is_still_serving_after_the_fuzzing(fuzzed):
    assert _serving(fuzzed)
    assert "Traceback" not in fuzzed.output()
