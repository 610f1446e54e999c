"""The task run executing now: `id`, `name`, `task_name`, `parameters`, `tags`, `run_count`.
Read as module attributes (`from stateward.runtime import task_run; task_run.id`); outside a
task run `id`, `name` and `task_name` are None, `parameters` {}, `tags` [] and `run_count` 0.
In its `task_run_name` function the run is this one, its `name` (not decided yet) None."""

from __future__ import annotations

from typing import Any

from stateward._context import task_run_context


def get_id() -> str | None:
    context = task_run_context.get()
    return context.task_run.id if context else None


def get_name() -> str | None:
    context = task_run_context.get()
    return (context.task_run.name or None) if context else None  # None: not named yet


def get_task_name() -> str | None:
    context = task_run_context.get()
    return context.task.name if context else None


def get_parameters() -> dict[str, Any]:
    context = task_run_context.get()
    return dict(context.parameters) if context else {}


def get_tags() -> list[str]:
    context = task_run_context.get()
    return list(context.task_run.tags) if context else []


def get_run_count() -> int:
    context = task_run_context.get()
    return context.task_run.run_count if context else 0


_GETTERS = {
    "id": get_id,
    "name": get_name,
    "task_name": get_task_name,
    "parameters": get_parameters,
    "tags": get_tags,
    "run_count": get_run_count,
}


def __getattr__(name: str) -> Any:
    getter = _GETTERS.get(name)
    if getter is None:
        raise AttributeError(f"stateward.runtime.task_run has no attribute {name!r}")
    return getter()


def __dir__() -> list[str]:
    return sorted([*_GETTERS, *globals()])
