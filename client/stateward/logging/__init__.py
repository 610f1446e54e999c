"""Loggers, at the reference's path (`prefect.logging`): `get_run_logger()` for the lines of
the run executing now (sent to the server with the run's logs), `get_logger(name)` for code of
one's own, and `disable_run_logger()` for calling a task's function directly in a test. The
same names are in `stateward.logging.loggers`, as in the reference's `prefect.logging.loggers`."""

from stateward._logging import disable_run_logger, get_logger, get_run_logger

__all__ = ["disable_run_logger", "get_logger", "get_run_logger"]
