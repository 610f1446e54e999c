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
    except (RunNotFound, LimitNotFound) as error:
        raise ServiceError(StatusCode.NOT_FOUND, str(error)) from None
    except (RunAlreadyExists, LimitAlreadyExists) as error:
        raise ServiceError(StatusCode.ALREADY_EXISTS, str(error)) from None
    except (InitialStateRefused, NotPaused, NotCompleted) as error:
        raise ServiceError(StatusCode.FAILED_PRECONDITION, str(error)) from None
    except RunInputRefused as error:
        raise invalid("run_input", str(error)) from None
    except BadPageToken as error:
        raise invalid("page_token", str(error)) from None
    except DatabaseUnavailable as error:
        if in_batch:
            raise
        raise ServiceError(StatusCode.UNAVAILABLE, str(error)) from None
    except WriteConflict as error:
        if in_batch:
            raise
        raise ServiceError(
            StatusCode.UNAVAILABLE, f"the database stayed too busy to decide; try again ({error})"
        ) from None


def refused_alone(error: ServiceError) -> bool:
    """Whether an operation of a batch that raised `error` is answered alone, the others going
    on (a refusal: it wrote nothing), rather than failing the whole batch (StorageUnavailable:
    the database takes no writes)."""
    return not isinstance(error, StorageUnavailable)


__all__ = ["refused_alone", "translating"]
