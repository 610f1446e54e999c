"""Logging through the standard `logging` module: one line per state change of each run, under
the `stateward` logger. When the application configured no logging at all, Stateward shows its
lines on stderr (level from STATEWARD_LOGGING_LEVEL, INFO by default)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from stateward._context import flow_run_context, task_run_context

log = logging.getLogger("stateward")
flow_run_log = logging.getLogger("stateward.flow_runs")
task_run_log = logging.getLogger("stateward.task_runs")
_configured = False


def configure_default_logging() -> None:
    """Show Stateward's lines if nobody decided where logs go."""
    global _configured
    if _configured:
        return
    _configured = True
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s", "%H:%M:%S")
    )
    log.addHandler(handler)
    log.setLevel(os.environ.get("STATEWARD_LOGGING_LEVEL", "INFO").upper())


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each message with the run it is about."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['label']} - {msg}" if self.extra else msg, kwargs


def get_run_logger() -> logging.LoggerAdapter[logging.Logger]:
    """A logger for the task run or flow run executing now (like the reference's)."""
    task = task_run_context.get()
    if task is not None:
        return RunLogger(task_run_log, {"label": f"Task run {task.task_run.name!r}"})
    flow = flow_run_context.get()
    if flow is not None:
        return RunLogger(flow_run_log, {"label": f"Flow run {flow.flow_run.name!r}"})
    raise RuntimeError("get_run_logger() needs a flow run or a task run executing")
