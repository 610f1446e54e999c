"""Where things are: the settings a client (and the server's defaults) read from the environment.

- STATEWARD_HOME: Stateward's folder, `~/.stateward` by default; the default database lives there.
- STATEWARD_API_URL: `host:port` of the server to talk to; unset means an embedded server.
- STATEWARD_REQUEST_TIMEOUT: seconds a call to a remote server may take, waiting out a restart
  (default 30); after it, the server counts as lost.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PORT = 8470


def home() -> Path:
    return Path(os.environ.get("STATEWARD_HOME") or "~/.stateward").expanduser()


def default_database() -> Path:
    return home() / "stateward.db"


def api_url() -> str | None:
    return os.environ.get("STATEWARD_API_URL") or None


def request_timeout() -> float:
    return float(os.environ.get("STATEWARD_REQUEST_TIMEOUT") or 30.0)
