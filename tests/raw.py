"""Calls with raw request bytes, and the bytes of malformed requests, built by hand from the
protobuf wire format (the protobuf library refuses to make most of them)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from stateward.v1 import orchestration_pb2, runs_pb2

SERVICE = orchestration_pb2.DESCRIPTOR.services_by_name["OrchestrationService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def every_method() -> list[MethodDescriptor]:
    """Every method the server serves: ours, the health service's and reflection's."""
    return [*SERVICE.methods, *HEALTH.methods, *REFLECTION.methods]


def call_raw(
    channel: grpc.Channel,
    method: MethodDescriptor,
    data: bytes,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 20.0,
) -> tuple[grpc.StatusCode, str]:
    """Send `data` as the request of `method` and return the status and message it ends with
    (a stream that started and stays open, a watch, counts as OK)."""
    try:
        if method.client_streaming:
            replies = channel.stream_stream(path(method))(
                iter([data]), metadata=metadata, timeout=timeout
            )
            for _ in replies:
                pass
        elif method.server_streaming:
            replies = channel.unary_stream(path(method))(data, metadata=metadata, timeout=timeout)
            replies.initial_metadata()  # a refusal comes with its headers, at once
            if not replies.done():  # a watch that started stays open: it was accepted
                replies.cancel()
                return grpc.StatusCode.OK, ""
            for _ in replies:
                pass
        else:
            channel.unary_unary(path(method))(data, metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


# --- the wire format ------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def path_to_string(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> list[int] | None:
    """Field numbers leading from `descriptor` to a string field (through message fields), or
    None when the message holds no string."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return [field.number]
    for field in descriptor.fields:
        sub = field.message_type
        if field.type != FieldDescriptor.TYPE_MESSAGE or sub is None or sub.full_name in seen:
            continue
        if sub.GetOptions().map_entry:
            continue
        rest = path_to_string(sub, seen | {descriptor.full_name})
        if rest is not None:
            return [field.number, *rest]
    return None


def nested(numbers: list[int], payload: bytes) -> bytes:
    """`payload` as the last field of `numbers`, each earlier number a message around it."""
    for number in reversed(numbers):
        payload = length_delimited(number, payload)
    return payload


def invalid_utf8(descriptor: Descriptor) -> bytes | None:
    """A request whose string field holds a lone surrogate encoded as UTF-8 (what Python's
    'surrogatepass' makes of '\\ud800'), or None when the message has no string."""
    numbers = path_to_string(descriptor)
    if numbers is None:
        return None
    return nested(numbers, "run-\ud800".encode("utf-8", "surrogatepass"))


def truncated(descriptor: Descriptor) -> bytes:
    """A length-delimited field that announces more bytes than follow."""
    numbers = path_to_string(descriptor) or [15]
    whole = nested(numbers, b"a" * 40)
    return whole[:-10]


def deep_struct(depth: int) -> bytes:
    """A google.protobuf.Struct holding `depth` Structs inside each other ({"a": {"a": ...}})."""
    value = b""
    for _ in range(depth):
        entry = length_delimited(1, b"a") + length_delimited(2, length_delimited(5, value))
        value = length_delimited(1, entry)
    return value


def deep_parameters(depth: int) -> bytes:
    """A CreateFlowRunRequest whose flow run's parameters nest `depth` Structs."""
    parameters = runs_pb2.FlowRun.DESCRIPTOR.fields_by_name["parameters"].number
    flow_name = runs_pb2.FlowRun.DESCRIPTOR.fields_by_name["flow_name"].number
    flow_run = length_delimited(flow_name, b"deep") + length_delimited(
        parameters, deep_struct(depth)
    )
    return length_delimited(1, flow_run)


def malformed(method: MethodDescriptor) -> Iterator[tuple[str, bytes]]:
    """Named malformed requests for `method`: random bytes, truncation, invalid UTF-8."""
    yield "random bytes", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\x01"
    yield "truncated", truncated(method.input_type)
    bad_text = invalid_utf8(method.input_type)
    if bad_text is not None:
        yield "invalid UTF-8", bad_text
