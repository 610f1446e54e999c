"""The server's settings. Each has a command-line flag (`stateward server start --help`) and an
environment variable, named in `ENVIRONMENT`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from stateward import settings as client_settings
from stateward_service.loops import LoopSettings


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = client_settings.DEFAULT_PORT
    db: Path = field(default_factory=client_settings.default_database)
    # SQLite's synchronous mode: NORMAL survives a crash of the server process; FULL also
    # survives a power cut, at a cost on every commit.
    sqlite_synchronous: str = "NORMAL"
    # How long in-flight calls may take to finish at shutdown.
    shutdown_grace_seconds: float = 5.0
    # The loops: how often each sweeps, and its threshold.
    late_runs_interval_seconds: float = 5.0
    late_after_seconds: float = 15.0
    pause_expiry_interval_seconds: float = 5.0
    cancelling_interval_seconds: float = 10.0
    cancelling_timeout_seconds: float = 300.0
    cascade_interval_seconds: float = 5.0
    # How long a task run finding its tag's concurrency limit full is told to wait.
    slot_wait_seconds: float = 1.0
    # The transitions log keeps its newest `log_retention` entries (0: all of them); older ones
    # are pruned every `log_prune_interval_seconds`.
    log_retention: int = 0
    log_prune_interval_seconds: float = 60.0
    # How many recent transitions the server keeps in memory for subscribers; one that falls
    # further behind reads the log instead.
    stream_buffer: int = 10_000
    # How often runs whose heartbeat lease lapsed are looked for (and crashed).
    lease_check_interval_seconds: float = 2.0
    # With a key, every call but the health check must carry `authorization: Bearer <key>`.
    api_key: str = ""
    # TLS: the server's certificate chain and key (PEM); with a client CA, clients must present
    # a certificate it signed (mutual TLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # The largest message the server accepts (larger: RESOURCE_EXHAUSTED).
    max_message_bytes: int = 4 * 1024 * 1024
    # How many calls (streams included) one client connection may have open at once.
    max_streams_per_connection: int = 1000
    # A Prometheus endpoint on this port (0: none), on `host`.
    metrics_port: int = 0

    def loops(self) -> LoopSettings:
        return LoopSettings(**{f.name: getattr(self, f.name) for f in fields(LoopSettings)})

    @classmethod
    def from_environment(cls, **overrides: Any) -> ServerSettings:
        """Defaults, then environment variables, then the given overrides (flags)."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = os.environ.get(ENVIRONMENT.get(item.name, ""))
            if raw:
                values[item.name] = _parse(item.type, raw)
        settings = replace(cls(), **values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


ENVIRONMENT = {
    "host": "STATEWARD_HOST",
    "port": "STATEWARD_PORT",
    "db": "STATEWARD_DB",
    "sqlite_synchronous": "STATEWARD_SQLITE_SYNCHRONOUS",
    "shutdown_grace_seconds": "STATEWARD_SHUTDOWN_GRACE_SECONDS",
    "late_runs_interval_seconds": "STATEWARD_LATE_RUNS_INTERVAL_SECONDS",
    "late_after_seconds": "STATEWARD_LATE_AFTER_SECONDS",
    "pause_expiry_interval_seconds": "STATEWARD_PAUSE_EXPIRY_INTERVAL_SECONDS",
    "cancelling_interval_seconds": "STATEWARD_CANCELLING_INTERVAL_SECONDS",
    "cancelling_timeout_seconds": "STATEWARD_CANCELLING_TIMEOUT_SECONDS",
    "cascade_interval_seconds": "STATEWARD_CASCADE_INTERVAL_SECONDS",
    "slot_wait_seconds": "STATEWARD_SLOT_WAIT_SECONDS",
    "log_retention": "STATEWARD_LOG_RETENTION",
    "log_prune_interval_seconds": "STATEWARD_LOG_PRUNE_INTERVAL_SECONDS",
    "stream_buffer": "STATEWARD_STREAM_BUFFER",
    "lease_check_interval_seconds": "STATEWARD_LEASE_CHECK_INTERVAL_SECONDS",
    "api_key": "STATEWARD_API_KEY",
    # Named apart from STATEWARD_TLS_CERT/_KEY, which are a client's own certificate.
    "tls_cert": "STATEWARD_SERVER_TLS_CERT",
    "tls_key": "STATEWARD_SERVER_TLS_KEY",
    "tls_client_ca": "STATEWARD_SERVER_TLS_CLIENT_CA",
    "max_message_bytes": "STATEWARD_MAX_MESSAGE_BYTES",
    "max_streams_per_connection": "STATEWARD_MAX_STREAMS_PER_CONNECTION",
    "metrics_port": "STATEWARD_METRICS_PORT",
}


def _parse(kind: Any, raw: str) -> Any:
    name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if "Path" in name:
        return Path(raw).expanduser()
    if name == "int":
        return int(raw)
    if name == "float":
        return float(raw)
    if name == "Path":
        return Path(raw).expanduser()
    return raw
