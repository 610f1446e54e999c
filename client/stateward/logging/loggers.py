"""The loggers at the reference's module path `prefect.logging.loggers`: the same objects as
`stateward.logging` exports."""

from stateward._logging import disable_run_logger, get_logger, get_run_logger

__all__ = ["disable_run_logger", "get_logger", "get_run_logger"]
