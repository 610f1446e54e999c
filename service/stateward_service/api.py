"""The service's calls at the protobuf level: validate a request, translate it to the domain, call
the orchestrator, translate the answer back (with `stateward.wire`, the conversions the client
uses too). No gRPC here: the servicer wraps these methods for the network, and the SDK's embedded
server calls them in-process. Refusals are `ServiceError`s.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.struct_pb2 import Struct

from stateward import wire
from stateward.runs import RetryPolicy, RunKind
from stateward.states import now
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2
from stateward.wire import StatusCode
from stateward_service import validation as check
from stateward_service.errors import ServiceError, invalid
from stateward_service.model import RunRecord
from stateward_service.names import make_run_name
from stateward_service.orchestrator import (
    InitialStateRefused,
    LimitAlreadyExists,
    LimitNotFound,
    Orchestrator,
    RunAlreadyExists,
    RunNotFound,
)
from stateward_service.store import BadPageToken, RunFilter

T = TypeVar("T")


def _translating(call: Callable[[], T]) -> T:
    """Run `call`, turning the orchestrator's refusals into ServiceErrors."""
    try:
        return call()
    except (RunNotFound, LimitNotFound) as error:
        raise ServiceError(StatusCode.NOT_FOUND, str(error)) from None
    except (RunAlreadyExists, LimitAlreadyExists) as error:
        raise ServiceError(StatusCode.ALREADY_EXISTS, str(error)) from None
    except InitialStateRefused as error:
        raise ServiceError(StatusCode.FAILED_PRECONDITION, str(error)) from None
    except BadPageToken as error:
        raise invalid("page_token", str(error)) from None


class OrchestrationApi:
    """One method per unary RPC of OrchestrationService, named as the RPC."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator

    # --- flow runs ------------------------------------------------------------------------------

    def CreateFlowRun(self, request: pb.CreateFlowRunRequest) -> pb.CreateFlowRunResponse:
        msg = request.flow_run
        flow_name = check.text(msg.flow_name, "flow_run.flow_name", check.MAX_NAME, required=True)
        given_id = check.optional_run_id(msg.id, "flow_run.id")
        run = RunRecord(
            kind=RunKind.FLOW_RUN,
            id=given_id or str(uuid.uuid4()),
            name=check.text(msg.name, "flow_run.name", check.MAX_NAME) or make_run_name(),
            created=now(),
            flow_name=flow_name,
            parent_task_run_id=check.optional_run_id(
                msg.parent_task_run_id, "flow_run.parent_task_run_id"
            ),
            parameters=_parameters_json(msg.parameters, "flow_run.parameters"),
            tags=check.tags(msg.tags, "flow_run.tags"),
            retry_policy=_retry_policy(msg.retry_policy, "flow_run.retry_policy"),
        )
        initial = _initial_state(msg, "flow_run.state")
        created = _translating(
            lambda: self.orchestrator.create_run(run, initial, new_id=not given_id)
        )
        return pb.CreateFlowRunResponse(flow_run=wire.flow_run_to_proto(created, msg.parameters))

    def GetFlowRun(self, request: pb.GetFlowRunRequest) -> pb.GetFlowRunResponse:
        run_id = check.run_id(request.id, "id")
        run = _translating(lambda: self.orchestrator.get_run(run_id, RunKind.FLOW_RUN))
        return pb.GetFlowRunResponse(flow_run=wire.flow_run_to_proto(run))

    def ListFlowRuns(self, request: pb.ListFlowRunsRequest) -> pb.ListFlowRunsResponse:
        where = RunFilter(
            names=check.names(request.flow_names, "flow_names"),
            state_types=check.state_types(request.state_types, "state_types"),
            tags=check.names(request.tags, "tags"),
            ids=check.run_ids(request.ids, "ids"),
        )
        size = check.page_size(request.page_size)
        runs, token = self._list(
            RunKind.FLOW_RUN, where, size, check.page_token(request.page_token)
        )
        return pb.ListFlowRunsResponse(
            flow_runs=[wire.flow_run_to_proto(run) for run in runs], next_page_token=token
        )

    # --- task runs ------------------------------------------------------------------------------

    def CreateTaskRun(self, request: pb.CreateTaskRunRequest) -> pb.CreateTaskRunResponse:
        msg = request.task_run
        task_key = check.text(msg.task_key, "task_run.task_key", check.MAX_NAME, required=True)
        given_id = check.optional_run_id(msg.id, "task_run.id")
        run = RunRecord(
            kind=RunKind.TASK_RUN,
            id=given_id or str(uuid.uuid4()),
            name=check.text(msg.name, "task_run.name", check.MAX_NAME) or make_run_name(),
            created=now(),
            task_key=task_key,
            flow_run_id=check.optional_run_id(msg.flow_run_id, "task_run.flow_run_id"),
            parameters=_parameters_json(msg.parameters, "task_run.parameters"),
            tags=check.tags(msg.tags, "task_run.tags"),
            retry_policy=_retry_policy(msg.retry_policy, "task_run.retry_policy"),
        )
        initial = _initial_state(msg, "task_run.state")
        created = _translating(
            lambda: self.orchestrator.create_run(run, initial, new_id=not given_id)
        )
        return pb.CreateTaskRunResponse(task_run=wire.task_run_to_proto(created, msg.parameters))

    def GetTaskRun(self, request: pb.GetTaskRunRequest) -> pb.GetTaskRunResponse:
        run_id = check.run_id(request.id, "id")
        run = _translating(lambda: self.orchestrator.get_run(run_id, RunKind.TASK_RUN))
        return pb.GetTaskRunResponse(task_run=wire.task_run_to_proto(run))

    def ListTaskRuns(self, request: pb.ListTaskRunsRequest) -> pb.ListTaskRunsResponse:
        where = RunFilter(
            names=check.names(request.task_keys, "task_keys"),
            flow_run_ids=check.run_ids(request.flow_run_ids, "flow_run_ids"),
            state_types=check.state_types(request.state_types, "state_types"),
            tags=check.names(request.tags, "tags"),
        )
        size = check.page_size(request.page_size)
        runs, token = self._list(
            RunKind.TASK_RUN, where, size, check.page_token(request.page_token)
        )
        return pb.ListTaskRunsResponse(
            task_runs=[wire.task_run_to_proto(run) for run in runs], next_page_token=token
        )

    def _list(
        self, kind: RunKind, where: RunFilter, size: int, token: str
    ) -> tuple[list[RunRecord], str]:
        return _translating(lambda: self.orchestrator.list_runs(kind, where, size, token))

    # --- states ---------------------------------------------------------------------------------

    def SetState(self, request: pb.SetStateRequest) -> pb.SetStateResponse:
        run_id = check.run_id(request.run_id, "run_id")
        if not request.HasField("state"):
            raise invalid("state", "is required: the state proposed for the run")
        check.state(request.state, "state")
        expected = None
        if request.HasField("expected_state_id"):
            expected = request.expected_state_id
            if expected:
                expected = check.uuid_value(expected, "expected_state_id")
        lease = check.duration(request.lease_duration, "lease_duration", check.MAX_LEASE_SECONDS)
        proposed = wire.state_from_proto(request.state)
        result = _translating(
            lambda: self.orchestrator.set_state(
                run_id,
                proposed,
                force=request.force,
                expected_state_id=expected,
                lease_seconds=lease,
            )
        )
        return wire.orchestration_result_to_proto(result)

    def ListStates(self, request: pb.ListStatesRequest) -> pb.ListStatesResponse:
        run_id = check.run_id(request.run_id, "run_id")
        states = _translating(lambda: self.orchestrator.list_states(run_id))
        response = pb.ListStatesResponse()
        for state in states:
            wire.state_to_proto(state, response.states.add())
        return response

    def RenewLeases(self, request: pb.RenewLeasesRequest) -> pb.RenewLeasesResponse:
        run_ids = check.run_ids(request.run_ids, "run_ids")
        seconds = check.duration(request.lease_duration, "lease_duration", check.MAX_LEASE_SECONDS)
        if seconds <= 0:
            raise invalid("lease_duration", "is required: how long each lease lasts, above zero")
        renewed, until = self.orchestrator.renew_leases(run_ids, seconds)
        response = pb.RenewLeasesResponse(renewed_run_ids=renewed)
        wire.set_timestamp(response.lease_expire_time, until)
        return response

    # --- batches --------------------------------------------------------------------------------

    def ExecuteBatch(self, request: pb.ExecuteBatchRequest) -> pb.ExecuteBatchResponse:
        if len(request.operations) > check.MAX_BATCH:
            raise invalid(
                "operations", f"has {len(request.operations)}; at most {check.MAX_BATCH} per batch"
            )
        response = pb.ExecuteBatchResponse()
        with self.orchestrator.batch():
            for index, operation in enumerate(request.operations):
                result = response.results.add()
                kind = operation.WhichOneof("operation")
                if kind is None:
                    result.error.code = StatusCode.INVALID_ARGUMENT
                    result.error.message = f"operations[{index}]: is empty"
                    continue
                try:
                    answer = getattr(self, _BATCHABLE[kind])(getattr(operation, kind))
                except ServiceError as error:
                    result.error.code = error.code
                    result.error.message = error.message
                else:
                    getattr(result, kind).CopyFrom(answer)
        return response

    # --- tag concurrency limits -----------------------------------------------------------------

    def CreateConcurrencyLimit(
        self, request: pb.CreateConcurrencyLimitRequest
    ) -> pb.CreateConcurrencyLimitResponse:
        msg = request.concurrency_limit
        tag = check.tag(msg.tag, "concurrency_limit.tag")
        if msg.limit < 0:
            raise invalid("concurrency_limit.limit", f"is {msg.limit}; it must not be negative")
        limit = _translating(lambda: self.orchestrator.create_limit(tag, msg.limit))
        return pb.CreateConcurrencyLimitResponse(concurrency_limit=wire.limit_to_proto(limit))

    def GetConcurrencyLimit(
        self, request: pb.GetConcurrencyLimitRequest
    ) -> pb.GetConcurrencyLimitResponse:
        tag = check.text(request.tag, "tag", check.MAX_KEY, required=True)
        limit = _translating(lambda: self.orchestrator.get_limit(tag))
        return pb.GetConcurrencyLimitResponse(concurrency_limit=wire.limit_to_proto(limit))

    def ListConcurrencyLimits(
        self, request: pb.ListConcurrencyLimitsRequest
    ) -> pb.ListConcurrencyLimitsResponse:
        limits = self.orchestrator.list_limits()
        return pb.ListConcurrencyLimitsResponse(
            concurrency_limits=[wire.limit_to_proto(limit) for limit in limits]
        )

    def DeleteConcurrencyLimit(
        self, request: pb.DeleteConcurrencyLimitRequest
    ) -> pb.DeleteConcurrencyLimitResponse:
        tag = check.text(request.tag, "tag", check.MAX_KEY, required=True)
        _translating(lambda: self.orchestrator.delete_limit(tag))
        return pb.DeleteConcurrencyLimitResponse()


_BATCHABLE = {
    "create_flow_run": "CreateFlowRun",
    "create_task_run": "CreateTaskRun",
    "set_state": "SetState",
    "renew_leases": "RenewLeases",
}


# --- translations -------------------------------------------------------------------------------


def _parameters_json(struct: Struct, field: str) -> str:
    if struct.fields:
        check.parameters(struct, field)
    return wire.struct_json(struct)


def _retry_policy(msg: runs_pb2.RetryPolicy, field: str) -> RetryPolicy:
    check.retry_policy(msg, field)
    return wire.retry_policy_from_proto(msg)


def _initial_state(msg: Any, field: str) -> Any:
    if not msg.HasField("state"):
        return None
    check.state(msg.state, field)
    return wire.state_from_proto(msg.state)


__all__ = ["OrchestrationApi"]
