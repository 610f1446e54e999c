"""Errors the service answers with: a status code (named as gRPC names them, without importing
gRPC) and a message a person can act on. The errors interceptor turns them into gRPC statuses;
the SDK's in-process transport into the client's exceptions."""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"

    @property
    def number(self) -> int:
        """The code's number in gRPC (google.rpc.Code)."""
        return _NUMBERS[self.value]


_NUMBERS = {
    "INVALID_ARGUMENT": 3,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}


class ServiceError(Exception):
    """A refused call. `field` names the offending request field (INVALID_ARGUMENT); `metadata`
    carries machine-readable facts (e.g. the oldest sequence a cursor may start from)."""

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        field: str = "",
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.reason = reason or code.value
        self.metadata = metadata or {}


def invalid(field: str, message: str) -> ServiceError:
    return ServiceError(Code.INVALID_ARGUMENT, f"{field}: {message}", field=field)
