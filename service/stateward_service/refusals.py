"""The orchestrator's refusals as the service answers them: each exception of the domain (an
unknown run, a duplicate, a refused initial state, a busy or broken database...) becomes the
ServiceError with its status code, for the gRPC API and the in-process API alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

from stateward.exceptions import StatusCode
from stateward_service.errors import ServiceError, invalid
from stateward_service.orchestrator import (
    InitialStateRefused,
    LimitAlreadyExists,
    LimitNotFound,
    NotCompleted,
    NotPaused,
    RunAlreadyExists,
    RunInputRefused,
    RunNotFound,
)
from stateward_service.store import (
    BadPageToken,
    DatabaseUnavailable,
    StorageUnavailable,
    WriteConflict,
)

T = TypeVar("T")


def translating(call: Callable[[], T], in_batch: bool = False) -> T:
    """Run `call`, turning the orchestrator's refusals into ServiceErrors. Inside a batch or a
    group commit (`in_batch`: see `Orchestrator.in_batch`), a failure of the database (it
    cannot be reached, a race lost to another process) is raised as is: it fails the whole
    batch or group, never one operation alone (a group decides a lost race again in another
    transaction)."""
    try:
        return call()
    except REFUSALS as error:
        raise_refusal(error, in_batch)


# The orchestrator's exceptions `refusal` answers.
REFUSALS = (
    RunNotFound,
    LimitNotFound,
    RunAlreadyExists,
    LimitAlreadyExists,
    InitialStateRefused,
    NotPaused,
    NotCompleted,
    RunInputRefused,
    BadPageToken,
    DatabaseUnavailable,
    WriteConflict,
)


def raise_refusal(error: Exception, in_batch: bool = False) -> NoReturn:
    """Raises the ServiceError that answers `error`, one of REFUSALS (see `translating`), or
    `error` itself for a failure of the database inside a batch or group. For a caller on the
    hot path, which catches REFUSALS itself (`except REFUSALS as error: raise_refusal(...)`)
    rather than hand `translating` a closure."""
    if isinstance(error, RunNotFound | LimitNotFound):
        raise ServiceError(StatusCode.NOT_FOUND, str(error)) from None
    if isinstance(error, RunAlreadyExists | LimitAlreadyExists):
        raise ServiceError(StatusCode.ALREADY_EXISTS, str(error)) from None
    if isinstance(error, InitialStateRefused | NotPaused | NotCompleted):
        raise ServiceError(StatusCode.FAILED_PRECONDITION, str(error)) from None
    if isinstance(error, RunInputRefused):
        raise invalid("run_input", error.worded("run_input (JSON)")) from None
    if isinstance(error, BadPageToken):
        raise invalid("page_token", str(error)) from None
    if in_batch:  # DatabaseUnavailable, WriteConflict: the whole batch or group fails
        raise error
    if isinstance(error, WriteConflict):
        raise ServiceError(
            StatusCode.UNAVAILABLE, f"the database stayed too busy to decide; try again ({error})"
        ) from None
    raise ServiceError(StatusCode.UNAVAILABLE, str(error)) from None


def refused_alone(error: ServiceError) -> bool:
    """Whether an operation of a batch that raised `error` is answered alone, the others going
    on (a refusal: it wrote nothing), rather than failing the whole batch (StorageUnavailable:
    the database takes no writes)."""
    return not isinstance(error, StorageUnavailable)


__all__ = ["REFUSALS", "raise_refusal", "refused_alone", "translating"]
