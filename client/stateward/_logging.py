"""Logging through the standard `logging` module: each run's state changes, under the
`stateward` logger (at INFO, a run's end; the steps before it at DEBUG). When the application
configured no logging at all, Stateward shows its lines on stderr (level from
STATEWARD_LOGGING_LEVEL, INFO by default). With `log_prints`, what a run's code prints goes to
the run's logger instead, for as long as the run's code runs."""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from stateward import settings
from stateward._context import FlowRunContext, TaskRunContext, flow_run_context, task_run_context
from stateward._run_logs import RunLogHandler, run_extra, run_ids

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
    log.setLevel(settings.logging_level())


class _ExtraLoggerHandler(logging.Handler):
    """On each logger named by STATEWARD_LOGGING_EXTRA_LOGGERS: a line logged while a flow or
    task run executes (where `get_run_logger()` would find it) is handed, naming that run and
    starting as a run logger's lines do ("Task run 'add-0' - ..."), to the run log handlers of
    the `stateward` logger (the shipper's, or a forked child's relay). Lines logged outside any
    run are left alone; the record the application's handlers get is not changed."""

    def emit(self, record: logging.LogRecord) -> None:
        if run_ids(record) is not None:
            return  # a run logger's line: the `stateward` logger's handlers have it
        context = task_run_context.get() or flow_run_context.get()
        if context is None:
            return
        label, ids = _run_of(context)
        try:
            message = f"{label} - {record.getMessage()}"
        except Exception:  # arguments that do not fit the message: logging's own report
            self.handleError(record)
            return
        named = logging.makeLogRecord({**record.__dict__, **ids, "msg": message, "args": None})
        for handler in log.handlers:
            if isinstance(handler, RunLogHandler):
                handler.handle(named)


_extra_loggers_attached = False


def attach_extra_loggers() -> None:
    """At a process's first run: the loggers STATEWARD_LOGGING_EXTRA_LOGGERS names send what
    they log during runs to the runs' logs. A named logger whose level is not set gets
    STATEWARD_LOGGING_LEVEL (INFO), so that its INFO lines are recorded, as the reference sets
    its extra loggers' level; where its lines are shown (propagation, its handlers) is left as
    the application configured it."""
    global _extra_loggers_attached
    if _extra_loggers_attached:
        return
    _extra_loggers_attached = True
    for name in settings.logging_extra_loggers():
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(settings.logging_level())
        logger.addHandler(_ExtraLoggerHandler())


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each message with the run it is about, and names the run so that the line is
    sent to the server with the run's logs."""

    def isEnabledFor(self, level: int) -> bool:
        """A run's lines at STATEWARD_LOGGING_LEVEL (INFO) and above are recorded (and sent to
        the server) even when the application's logging is less verbose."""
        if self.extra and level >= logging.getLevelName(settings.logging_level()):
            return not self.logger.disabled
        return self.logger.isEnabledFor(level)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):  # Logger.log would ask the logger's own level again
            msg, kwargs = self.process(msg, kwargs)
            self.logger._log(level, msg, args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        if not self.extra:
            return msg, kwargs
        run: dict[str, object] = self.extra["run"]  # type: ignore[assignment]
        fields: dict[str, object] = self.extra.get("fields") or {}  # type: ignore[assignment]
        kwargs["extra"] = {**fields, **(kwargs.get("extra") or {}), **run}
        return f"{self.extra['label']} - {msg}", kwargs


def get_run_logger(
    context: FlowRunContext | TaskRunContext | None = None, **kwargs: Any
) -> logging.LoggerAdapter[logging.Logger]:
    """A logger for the task run or flow run executing now, as the reference's: its lines say
    which run they are about, go to the `stateward.task_runs` or `stateward.flow_runs` logger
    and are sent to the server with the run's logs. `context` names another run's context
    (from `get_run_context()`) instead; `kwargs` are set as attributes of every record it
    makes (a record's own `extra` wins). Inside `disable_run_logger()`, outside any run, a
    logger that records nothing. Raises MissingContextError (a RuntimeError) outside any run,
    as the reference does."""
    if context is None:
        context = task_run_context.get() or flow_run_context.get()
    if isinstance(context, (TaskRunContext, FlowRunContext)):
        label, run = _run_of(context)
        logger = task_run_log if isinstance(context, TaskRunContext) else flow_run_log
        return RunLogger(logger, {"label": label, "run": run, "fields": kwargs})
    if flow_run_log.disabled and task_run_log.disabled:
        return RunLogger(_disabled_log, {})
    from stateward.exceptions import MissingContextError

    raise MissingContextError("get_run_logger() needs a flow run or a task run executing")


def _run_of(context: FlowRunContext | TaskRunContext) -> tuple[str, dict[str, tuple[str, str]]]:
    """How a line about the context's run starts ("Task run 'add-0'"), and the record
    attributes that name the run."""
    if isinstance(context, TaskRunContext):
        task_run = context.task_run
        return f"Task run {task_run.name!r}", run_extra(task_run.flow_run_id, task_run.id)
    return f"Flow run {context.flow_run.name!r}", run_extra(context.flow_run.id, "")


_disabled_log = logging.getLogger("stateward.null")
_disabled_log.disabled = True


@contextlib.contextmanager
def disable_run_logger() -> Iterator[None]:
    """Within the block, run loggers record nothing, and `get_run_logger()` outside any run
    gives a logger that records nothing instead of raising: for calling a task's or flow's
    function directly (`my_task.fn(...)`) in a unit test, as with the reference's. The loggers
    are as they were after the block."""
    before = flow_run_log.disabled, task_run_log.disabled
    flow_run_log.disabled = task_run_log.disabled = True
    try:
        yield
    finally:
        flow_run_log.disabled, task_run_log.disabled = before


def get_logger(name: str | None = None) -> logging.Logger:
    """The `stateward` logger, or its child `stateward.<name>` (`name` may already start with
    `stateward.`): for code of one's own outside runs, as the reference's `get_logger`. Lines
    are shown as Stateward's own are; they are not sent to the server (use `get_run_logger`
    in a run for that)."""
    if name is None or name == "stateward":
        return log
    return logging.getLogger(name if name.startswith("stateward.") else f"stateward.{name}")


# --- prints -------------------------------------------------------------------------------------

# Whether print() in the code running now goes to its run's logger.
_print_to_log: contextvars.ContextVar[bool] = contextvars.ContextVar("log_prints", default=False)
# `builtins.print` is replaced while at least one run with `log_prints` runs, in any thread, and
# put back when the last one ends. Other code sees the print it had (see `_print`).
_print_lock = threading.Lock()
_printing_runs = 0
_replaced_print: Callable[..., None] = builtins.print


def _new_print_lock() -> None:
    """In a forked child: another thread may have held the lock at the fork. (The count stays:
    runs of the parent's other threads never end here, so print stays replaced, and prints
    outside a run with `log_prints` still go where they went.)"""
    global _print_lock
    _print_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_print_lock)


def _print(*args: Any, **kwargs: Any) -> None:
    if _print_to_log.get() and kwargs.get("file") is None:
        get_run_logger().info(kwargs.get("sep", " ").join(str(a) for a in args))
        return
    _replaced_print(*args, **kwargs)


class printing_to_log:
    """With `log_prints`, print() inside the run goes to the run's logger; once no run with
    `log_prints` runs any more, `builtins.print` is what it was before."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.token: contextvars.Token[bool] | None = None

    def __enter__(self) -> None:
        if not self.enabled:
            return
        global _printing_runs, _replaced_print
        with _print_lock:
            if _printing_runs == 0 and builtins.print is not _print:
                _replaced_print, builtins.print = builtins.print, _print
            _printing_runs += 1
        self.token = _print_to_log.set(True)

    def __exit__(self, *exc: object) -> None:
        if self.token is None:
            return
        global _printing_runs
        with _print_lock:
            _printing_runs -= 1
            if _printing_runs == 0 and builtins.print is _print:
                builtins.print = _replaced_print
        _print_to_log.reset(self.token)
