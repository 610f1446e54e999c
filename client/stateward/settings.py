"""Where things are: the settings a client (and the server's defaults) read from the environment.

- STATEWARD_HOME: Stateward's folder, `~/.stateward` by default; the default database lives there.
- STATEWARD_API_URL: `host:port` of the server to talk to; unset: orchestrate in-process.
- STATEWARD_REQUEST_TIMEOUT: seconds a call to a remote server may take, waiting out a restart
  (default 30); after it, the server counts as lost.
- STATEWARD_RESULTS_PERSIST_BY_DEFAULT: `true` makes every task's results persist, so tasks
  are cached by their cache policy (`DEFAULT` when none is given) without `persist_result=True`
  (default false, as the reference's PREFECT_RESULTS_PERSIST_BY_DEFAULT).
- STATEWARD_RESULTS_STORAGE_PATH: a folder where results too large to be stored on the server
  (over STATEWARD_MAX_RESULT_BYTES) are written as files, for runs not given a `result_storage`
  (default unset: such a result is kept in memory only, with a warning, or fails a run that
  asked for its result to persist, saying what to do).

Each is checked where it is read: a value that cannot be right raises `InvalidSetting` with one
line naming the variable and what it allows. Each read parses the variable as it is now: a
flow run reads those its task runs need once (see `stateward._context.for_this_run`), so a
value changed meanwhile counts from the next flow run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stateward.exceptions import InvalidSetting

DEFAULT_PORT = 8470
# How long the first call of a process waits for a server at STATEWARD_API_URL to answer before
# it says it cannot reach it (a server still starting gets this long).
FIRST_CONTACT_SECONDS = 5.0

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(\d{1,5})$")


def home() -> Path:
    """STATEWARD_HOME (`~/.stateward`): a folder, created when first needed."""
    path = Path(os.environ.get("STATEWARD_HOME") or "~/.stateward").expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidSetting(
            f"STATEWARD_HOME={str(path)!r} is a file, not a folder: point it at a folder "
            "(it is created if missing), or unset it for ~/.stateward"
        )
    return path


def default_database() -> Path:
    return home() / "stateward.db"


def api_url() -> str | None:
    """STATEWARD_API_URL as `host:port`, or None when unset (the embedded default)."""
    value = (os.environ.get("STATEWARD_API_URL") or "").strip()
    if not value:
        return None
    return check_address(value, "STATEWARD_API_URL")


def check_address(value: str, name: str) -> str:
    """`value` if it is `host:port` (port 1-65535), else InvalidSetting naming `name`."""
    if "://" in value:
        bare = value.split("://", 1)[1].split("/", 1)[0]
        raise InvalidSetting(
            f"{name}={value!r} has a scheme: give host:port, without a scheme "
            f"(e.g. {bare or f'127.0.0.1:{DEFAULT_PORT}'})"
        )
    match = _HOST_PORT.match(value)
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise InvalidSetting(
            f"{name}={value!r} is not host:port with a port from 1 to 65535 "
            f"(e.g. 127.0.0.1:{DEFAULT_PORT})"
        )
    return value


def number(name: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> float:
    """The number in environment variable `name` (`default` when unset or empty); more than
    `minimum`, a whole number when `integer`; else InvalidSetting."""
    raw = os.environ.get(name) or ""
    return _number(name, raw.strip(), default, minimum, integer)


def _number(name: str, raw: str, default: float, minimum: float, integer: bool) -> float:
    if not raw:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        value = float("nan")
    if not value > minimum or value == float("inf"):
        raise InvalidSetting(f"{name}={raw!r} must be {kind} greater than {minimum:g}")
    return value


def request_timeout() -> float:
    """STATEWARD_REQUEST_TIMEOUT: seconds a call may wait for an unreachable server (30)."""
    return number("STATEWARD_REQUEST_TIMEOUT", 30.0)


def lease_seconds() -> float:
    """STATEWARD_LEASE_SECONDS: the heartbeat lease of running runs (30); a process that stops
    renewing for this long has its runs crashed by the server."""
    return number("STATEWARD_LEASE_SECONDS", 30.0)


def max_result_bytes() -> int:
    """STATEWARD_MAX_RESULT_BYTES: the size limit of one encoded result (2 MiB)."""
    return int(number("STATEWARD_MAX_RESULT_BYTES", 2 * 1024 * 1024, integer=True))


LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def logging_level() -> str:
    """STATEWARD_LOGGING_LEVEL (INFO): one of LOGGING_LEVELS, in any case."""
    raw = os.environ.get("STATEWARD_LOGGING_LEVEL") or ""
    return _level(raw.strip() or "INFO")


def logging_extra_loggers() -> tuple[str, ...]:
    """STATEWARD_LOGGING_EXTRA_LOGGERS (none): comma-separated names of other loggers (the
    application's, a library's) whose lines logged while a flow or task run executes are
    stored with that run's logs, as the reference's PREFECT_LOGGING_EXTRA_LOGGERS."""
    raw = os.environ.get("STATEWARD_LOGGING_EXTRA_LOGGERS") or ""
    return tuple(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))


def _level(raw: str) -> str:
    if raw.upper() not in LOGGING_LEVELS:
        raise InvalidSetting(
            f"STATEWARD_LOGGING_LEVEL={raw!r} is not a level: "
            f"use one of {', '.join(LOGGING_LEVELS)}"
        )
    return raw.upper()


def check() -> None:
    """Read every client setting once, so that a process with one that cannot be right stops at
    its first run (InvalidSetting), not when it first needs the value."""
    home()
    api_url()
    request_timeout()
    lease_seconds()
    max_result_bytes()
    logging_level()
    results_persist_by_default()
    results_storage_path()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def results_persist_by_default() -> bool:
    """STATEWARD_RESULTS_PERSIST_BY_DEFAULT (false): whether every task's results persist, so
    that tasks cache by their policy; InvalidSetting for a value that is not true or false."""
    raw = os.environ.get("STATEWARD_RESULTS_PERSIST_BY_DEFAULT") or ""
    return _yes_or_no(raw)


def _yes_or_no(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidSetting(
        f"STATEWARD_RESULTS_PERSIST_BY_DEFAULT={raw!r} is not a yes/no value: use true or false"
    )


def results_storage_path() -> Path | None:
    """STATEWARD_RESULTS_STORAGE_PATH: the folder for results over the size limit of runs given
    no `result_storage` (None when unset); a relative path is taken from the current folder.
    InvalidSetting when it names something that is not a folder."""
    raw = (os.environ.get("STATEWARD_RESULTS_STORAGE_PATH") or "").strip()
    if not raw:
        return None
    return _storage_path(raw)  # a relative path from the current folder, `~` from HOME


def _storage_path(raw: str) -> Path:
    path = Path(raw).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InvalidSetting(
            f"STATEWARD_RESULTS_STORAGE_PATH={raw!r} is not a folder: point it at a folder "
            "(it is created if missing), or unset it"
        )
    return path


if not TYPE_CHECKING:  # (for type checkers, a misspelt name stays an error)

    def __getattr__(name: str) -> Any:
        """Only for a name not found: one the reference's module has and this one leaves out
        raises ImportError saying what to do instead (see `stateward._left_out`)."""
        from stateward._left_out import missing_name

        missing_name(__name__, name)
