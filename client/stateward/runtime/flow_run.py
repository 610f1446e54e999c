"""The flow run executing now (for a task run, the flow run it belongs to): `id`, `name`,
`flow_name`, `flow_version` (its `version=`, else a hash of its source file), `parameters`,
`tags`, `scheduled_start_time`, `run_count`, `parent_flow_run_id` (the flow run a subflow was
called in, None for a flow called at the top) and `root_flow_run_id` (the top one of a
subflow's chain; a top-level flow run's own id), as in the reference's
`prefect.runtime.flow_run` (a flow called in a task on a worker process has no parent: it is a
top-level flow run there). Read as module attributes (`from stateward.runtime import flow_run;
flow_run.id`); outside a flow run `id`, `name`, `flow_name`, `flow_version`,
`scheduled_start_time`, `parent_flow_run_id` and `root_flow_run_id` are None, `parameters` {},
`tags` [] and `run_count` 0. In its `flow_run_name` function the run is this one, its `name`
(not decided yet) None."""

from __future__ import annotations

import hashlib
import inspect
from datetime import datetime
from pathlib import Path
from typing import Any

from stateward._context import FlowRunContext, flow_run_context


def get_id() -> str | None:
    context = flow_run_context.get()
    return context.flow_run.id if context else None


def get_name() -> str | None:
    context = flow_run_context.get()
    return (context.flow_run.name or None) if context else None  # None: not named yet


def get_flow_name() -> str | None:
    context = flow_run_context.get()
    return context.flow.name if context else None


def get_flow_version() -> str | None:
    """The flow's `version=`; without one, as the reference, the MD5 hex digest of the source
    file defining the flow's function (None when that file cannot be read)."""
    context = flow_run_context.get()
    if context is None:
        return None
    if context.flow.version is not None:
        return str(context.flow.version)
    try:
        source = inspect.getsourcefile(context.flow.fn)
        return hashlib.md5(Path(source).read_bytes()).hexdigest() if source else None
    except (OSError, TypeError):  # no file (code typed at a prompt, a C function)
        return None


def get_parameters() -> dict[str, Any]:
    context = flow_run_context.get()
    return dict(context.parameters) if context else {}


def get_tags() -> list[str]:
    context = flow_run_context.get()
    return list(context.flow_run.tags) if context else []


def get_scheduled_start_time() -> datetime | None:
    context = flow_run_context.get()
    if context is None:
        return None
    return context.flow_run.expected_start_time or context.flow_run.created


def get_run_count() -> int:
    context: FlowRunContext | None = flow_run_context.get()
    return context.engine.run_count if context else 0


def get_parent_flow_run_id() -> str | None:
    context = flow_run_context.get()
    if context is None or context.engine.parent is None:
        return None
    return context.engine.parent.flow_run.id


def get_root_flow_run_id() -> str | None:
    context = flow_run_context.get()
    if context is None:
        return None
    while context.engine.parent is not None:
        context = context.engine.parent
    return context.flow_run.id


_GETTERS = {
    "id": get_id,
    "name": get_name,
    "flow_name": get_flow_name,
    "flow_version": get_flow_version,
    "parameters": get_parameters,
    "tags": get_tags,
    "scheduled_start_time": get_scheduled_start_time,
    "run_count": get_run_count,
    "parent_flow_run_id": get_parent_flow_run_id,
    "root_flow_run_id": get_root_flow_run_id,
}


def __getattr__(name: str) -> Any:
    getter = _GETTERS.get(name)
    if getter is None:
        raise AttributeError(f"stateward.runtime.flow_run has no attribute {name!r}")
    return getter()


def __dir__() -> list[str]:
    return sorted([*_GETTERS, *globals()])
