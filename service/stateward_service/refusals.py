"""The orchestrator's refusals as the service answers them: each exception of the domain (an
unknown run, a duplicate, a refused initial state, a busy or broken database...) becomes the
ServiceError with its status code, for the gRPC API and the in-process API alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

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
        answer = refusal(error, in_batch)
        if answer is None:
            raise
        raise answer from None


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


def refusal(error: Exception, in_batch: bool = False) -> ServiceError | None:
    """The ServiceError that answers `error`, one of REFUSALS (see `translating`); None when
    it is to be raised as it is (a failure of the database inside a batch or group). For a
    caller on the hot path, which catches REFUSALS itself rather than hand `translating` a
    closure."""
    if isinstance(error, RunNotFound | LimitNotFound):
        return ServiceError(StatusCode.NOT_FOUND, str(error))
    if isinstance(error, RunAlreadyExists | LimitAlreadyExists):
        return ServiceError(StatusCode.ALREADY_EXISTS, str(error))
    if isinstance(error, InitialStateRefused | NotPaused | NotCompleted):
        return ServiceError(StatusCode.FAILED_PRECONDITION, str(error))
    if isinstance(error, RunInputRefused):
        return invalid("run_input", str(error))
    if isinstance(error, BadPageToken):
        return invalid("page_token", str(error))
    if in_batch:  # DatabaseUnavailable, WriteConflict
        return None
    if isinstance(error, WriteConflict):
        return ServiceError(
            StatusCode.UNAVAILABLE, f"the database stayed too busy to decide; try again ({error})"
        )
    return ServiceError(StatusCode.UNAVAILABLE, str(error))


def refused_alone(error: ServiceError) -> bool:
    """Whether an operation of a batch that raised `error` is answered alone, the others going
    on (a refusal: it wrote nothing), rather than failing the whole batch (StorageUnavailable:
    the database takes no writes)."""
    return not isinstance(error, StorageUnavailable)


__all__ = ["REFUSALS", "refusal", "refused_alone", "translating"]
