"""Errors the service answers with: a status code (`stateward.exceptions.StatusCode`, named and
numbered as gRPC does, without importing gRPC) and a message a person can act on. The errors
interceptor turns them into gRPC statuses; the SDK's in-process transport into the client's
exceptions, through the same table as a status from the network."""

from __future__ import annotations

from stateward.exceptions import StatusCode


class ServiceError(Exception):
    """A refused call. `field` names the offending request field (INVALID_ARGUMENT); `metadata`
    carries machine-readable facts (e.g. the oldest sequence a cursor may start from)."""

    def __init__(
        self,
        code: StatusCode,
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
        self.reason = reason or code.name
        self.metadata = metadata or {}


def invalid(field: str, message: str) -> ServiceError:
    return ServiceError(StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)
