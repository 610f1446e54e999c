"""Request messages, built once for both clients (Client and AsyncClient share these)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from stateward._convert import retry_policy_to_proto, state_to_proto
from stateward.exceptions import RPC_ERRORS, RpcError
from stateward.runs import RetryPolicy
from stateward.states import State, StateType
from stateward.v1 import orchestration_pb2 as pb
from stateward.v1 import runs_pb2


def create_flow_run(
    flow_name: str,
    *,
    id: str = "",
    name: str = "",
    parameters: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    retry_policy: RetryPolicy | None = None,
    parent_task_run_id: str = "",
    state: State | None = None,
) -> pb.CreateFlowRunRequest:
    run = runs_pb2.FlowRun(
        id=id,
        name=name,
        flow_name=flow_name,
        tags=list(tags),
        parent_task_run_id=parent_task_run_id,
    )
    if parameters:
        run.parameters.update(dict(parameters))
    if retry_policy is not None:
        retry_policy_to_proto(retry_policy, run.retry_policy)
    if state is not None:
        state_to_proto(state, run.state)
    return pb.CreateFlowRunRequest(flow_run=run)


def create_task_run(
    task_key: str,
    *,
    id: str = "",
    name: str = "",
    flow_run_id: str = "",
    parameters: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    retry_policy: RetryPolicy | None = None,
    state: State | None = None,
) -> pb.CreateTaskRunRequest:
    run = runs_pb2.TaskRun(
        id=id, name=name, task_key=task_key, flow_run_id=flow_run_id, tags=list(tags)
    )
    if parameters:
        run.parameters.update(dict(parameters))
    if retry_policy is not None:
        retry_policy_to_proto(retry_policy, run.retry_policy)
    if state is not None:
        state_to_proto(state, run.state)
    return pb.CreateTaskRunRequest(task_run=run)


def set_state(
    run_id: str,
    state: State,
    force: bool = False,
    expected_state_id: str | None = None,
    lease_seconds: float = 0.0,
) -> pb.SetStateRequest:
    request = pb.SetStateRequest(run_id=run_id, force=force)
    state_to_proto(state, request.state)
    if expected_state_id is not None:
        request.expected_state_id = expected_state_id
    if lease_seconds:
        request.lease_duration.FromNanoseconds(round(lease_seconds * 1e9))
    return request


def renew_leases(run_ids: Iterable[str], lease_seconds: float) -> pb.RenewLeasesRequest:
    request = pb.RenewLeasesRequest(run_ids=list(run_ids))
    request.lease_duration.FromNanoseconds(round(lease_seconds * 1e9))
    return request


def list_flow_runs(
    flow_names: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    ids: Iterable[str],
    page_size: int,
) -> pb.ListFlowRunsRequest:
    return pb.ListFlowRunsRequest(
        flow_names=list(flow_names),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
        tags=list(tags),
        ids=list(ids),
        page_size=page_size,
    )


def list_task_runs(
    flow_run_ids: Iterable[str],
    state_types: Iterable[StateType],
    tags: Iterable[str],
    task_keys: Iterable[str],
    page_size: int,
) -> pb.ListTaskRunsRequest:
    return pb.ListTaskRunsRequest(
        flow_run_ids=list(flow_run_ids),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
        tags=list(tags),
        task_keys=list(task_keys),
        page_size=page_size,
    )


def watch(
    run_ids: Iterable[str],
    flow_run_ids: Iterable[str],
    state_types: Iterable[StateType],
    after_sequence: int | None,
) -> pb.WatchTransitionsRequest:
    request = pb.WatchTransitionsRequest(
        run_ids=list(run_ids),
        flow_run_ids=list(flow_run_ids),
        state_types=[int(t) for t in state_types],  # type: ignore[misc]
    )
    if after_sequence is not None:
        request.after_sequence = after_sequence
    return request


def create_limit(tag: str, limit: int) -> pb.CreateConcurrencyLimitRequest:
    return pb.CreateConcurrencyLimitRequest(
        concurrency_limit=runs_pb2.ConcurrencyLimit(tag=tag, limit=limit)
    )


def batch(operations: Iterable[tuple[str, Any]]) -> pb.ExecuteBatchRequest:
    request = pb.ExecuteBatchRequest()
    for kind, message in operations:
        getattr(request.operations.add(), kind).CopyFrom(message)
    return request


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def batch_result(result: pb.BatchResult) -> Any:
    """One operation's response message, or the error it was refused with."""
    kind = result.WhichOneof("result")
    if kind is None:
        return RpcError("the server sent an empty batch result")
    if kind == "error":
        name = _CODE_NAMES.get(result.error.code, "UNKNOWN")
        return RPC_ERRORS.get(name, RpcError)(result.error.message, name)
    return getattr(result, kind)
