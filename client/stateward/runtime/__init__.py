"""What the code of a run can read about the run executing it, at the reference's paths:
`stateward.runtime.flow_run` and `stateward.runtime.task_run`. Outside a run each value is
None, 0 or empty."""

from stateward.runtime import flow_run, task_run

__all__ = ["flow_run", "task_run"]
