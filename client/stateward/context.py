"""The run contexts, at the reference's path: `get_run_context()` gives the context of the flow
run or task run executing now (MissingContextError, a RuntimeError, outside any), and
`tags(...)` adds tags to every run created within its block."""

from stateward._context import FlowRunContext, TaskRunContext, get_run_context, tags

__all__ = ["FlowRunContext", "TaskRunContext", "get_run_context", "tags"]
