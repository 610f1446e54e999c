"""The server's settings, each declared once below: its name, type, default, allowed range, help
and environment variable. The flags of `stateward server start` (and their `--help`), the reading
of the environment and the validation all come from these declarations, so a new setting is one
new field here.

A setting's flag is its name with dashes, less a `_seconds` suffix (`late_after_seconds` is
`--late-after`); a yes/no setting has a `--name/--no-name` pair. Values come from the defaults,
then the environment, then the flags; a value that is not allowed raises `SettingError`, whose
message names the setting and what it allows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from stateward import settings as client_settings

# The largest number of seconds a setting takes: ten years. More is a mistake (and date
# arithmetic overflows on infinity or 1e300).
MAX_SECONDS = 10 * 365 * 24 * 3600

# A path given by a person: `~` means their home.
UserPath = Annotated[Path, AfterValidator(lambda path: path.expanduser())]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def _database_target(value: str) -> str:
    """A PostgreSQL URL as given; a SQLite file's path with `~` expanded."""
    if value.startswith(POSTGRES_SCHEMES):
        return value
    return str(Path(value).expanduser())


# Where the data lives: a SQLite file, or a PostgreSQL URL shared by server replicas.
DatabaseTarget = Annotated[str, AfterValidator(_database_target)]


def _setting(
    default: Any = ...,
    *,
    help: str,
    env: str,
    shown_default: str | None = None,
    **constraints: Any,
) -> Any:
    """One setting's declaration: its help text, its environment variable, the default `--help`
    shows (when not the value itself; "" for none), and its range (`ge`, `le`). A number of
    seconds (a float) is at most MAX_SECONDS unless said otherwise."""
    if isinstance(default, float):
        constraints.setdefault("le", MAX_SECONDS)
    extra: dict[str, Any] = {"env": env}
    if shown_default is not None:
        extra["shown_default"] = shown_default
    if callable(default):
        return Field(default_factory=default, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class ServerSettings(BaseModel):
    """Everything a server is started with. Build it with `from_environment()`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = _setting("127.0.0.1", help="Address to listen on.", env="STATEWARD_HOST")
    port: int = _setting(
        client_settings.DEFAULT_PORT,
        help="Port; 0 picks a free one.",
        env="STATEWARD_PORT",
        ge=0,
        le=65535,
    )
    db: DatabaseTarget = _setting(
        lambda: str(client_settings.default_database()),
        help="SQLite file, or a PostgreSQL URL (postgresql://user:password@host/db) that several "
        "servers share.",
        env="STATEWARD_DB",
        shown_default="$STATEWARD_HOME/stateward.db",
    )
    database_url: str = _setting(
        "",
        help="A PostgreSQL URL; when set, it is the database (in place of --db).",
        env="STATEWARD_DATABASE_URL",
        shown_default="",
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = _setting(
        "NORMAL",
        help="SQLite synchronous mode: NORMAL survives a server crash, FULL also a power cut.",
        env="STATEWARD_SQLITE_SYNCHRONOUS",
    )
    quick_check: bool = _setting(
        True,
        help="Refuse a damaged database (quick check at start, ~10 s/GB).",
        env="STATEWARD_QUICK_CHECK",
    )
    shutdown_grace_seconds: float = _setting(
        5.0,
        help="Seconds in-flight calls get at shutdown.",
        env="STATEWARD_SHUTDOWN_GRACE_SECONDS",
        ge=0,
    )
    late_after_seconds: float = _setting(
        15.0,
        help="A run still Scheduled this many seconds after its time becomes Late.",
        env="STATEWARD_LATE_AFTER_SECONDS",
        ge=0,
    )
    late_runs_interval_seconds: float = _setting(
        5.0,
        help="Seconds between sweeps for late runs.",
        env="STATEWARD_LATE_RUNS_INTERVAL_SECONDS",
        ge=0.1,
    )
    pause_expiry_interval_seconds: float = _setting(
        5.0,
        help="Seconds between sweeps for expired pauses.",
        env="STATEWARD_PAUSE_EXPIRY_INTERVAL_SECONDS",
        ge=0.1,
    )
    cancelling_timeout_seconds: float = _setting(
        300.0,
        help="A run Cancelling for this many seconds becomes Cancelled.",
        env="STATEWARD_CANCELLING_TIMEOUT_SECONDS",
        ge=0,
    )
    cancelling_interval_seconds: float = _setting(
        10.0,
        help="Seconds between sweeps for stuck cancels.",
        env="STATEWARD_CANCELLING_INTERVAL_SECONDS",
        ge=0.1,
    )
    cascade_interval_seconds: float = _setting(
        5.0,
        help="Seconds between sweeps cancelling the children of cancelled flow runs.",
        env="STATEWARD_CASCADE_INTERVAL_SECONDS",
        ge=0.1,
    )
    slot_wait_seconds: float = _setting(
        1.0,
        help="Seconds a task run is told to wait when its tag's concurrency limit is full.",
        env="STATEWARD_SLOT_WAIT_SECONDS",
        ge=0,
    )
    log_retention: int = _setting(
        0,
        help="Keep the newest N transitions in the log; 0 keeps all.",
        env="STATEWARD_LOG_RETENTION",
        ge=0,
    )
    run_log_retention: int = _setting(
        1_000_000,
        help="Keep the newest N lines that runs logged (all runs together); 0 keeps all.",
        env="STATEWARD_RUN_LOG_RETENTION",
        ge=0,
    )
    log_prune_interval_seconds: float = _setting(
        60.0,
        help="Seconds between prunings of the log.",
        env="STATEWARD_LOG_PRUNE_INTERVAL_SECONDS",
        ge=0.1,
    )
    stream_buffer: int = _setting(
        10_000,
        help="Recent transitions kept in memory for subscribers; one that falls further behind "
        "reads the log instead.",
        env="STATEWARD_STREAM_BUFFER",
        ge=1,
    )
    lease_check_interval_seconds: float = _setting(
        2.0,
        help="Seconds between looks for runs whose heartbeat lease lapsed (they are crashed).",
        env="STATEWARD_LEASE_CHECK_INTERVAL_SECONDS",
        ge=0.1,
    )
    api_key: str = _setting(
        "",
        help="Require this key (authorization: Bearer <key>) on every call but the health check.",
        env="STATEWARD_API_KEY",
        shown_default="",
    )
    # Named apart from STATEWARD_TLS_CERT/_KEY, which are a client's own certificate.
    tls_cert: UserPath | None = _setting(
        None, help="TLS certificate chain, PEM.", env="STATEWARD_SERVER_TLS_CERT"
    )
    tls_key: UserPath | None = _setting(
        None, help="TLS private key, PEM.", env="STATEWARD_SERVER_TLS_KEY"
    )
    tls_client_ca: UserPath | None = _setting(
        None,
        help="Require client certificates signed by this CA (mutual TLS).",
        env="STATEWARD_SERVER_TLS_CLIENT_CA",
    )
    max_message_bytes: int = _setting(
        4 * 1024 * 1024,
        help="Largest message accepted; larger is RESOURCE_EXHAUSTED.",
        env="STATEWARD_MAX_MESSAGE_BYTES",
        ge=1024,
    )
    max_streams_per_connection: int = _setting(
        1000,
        help="Calls (streams included) one connection may have open at once.",
        env="STATEWARD_MAX_STREAMS_PER_CONNECTION",
        ge=1,
    )
    max_concurrent_calls: int = _setting(
        10_000,
        help="Calls (streams included) the server runs at once; more: RESOURCE_EXHAUSTED.",
        env="STATEWARD_MAX_CONCURRENT_CALLS",
        ge=1,
    )
    metrics_port: int = _setting(
        0,
        help="Serve Prometheus metrics on this port, on the same host; 0: off.",
        env="STATEWARD_METRICS_PORT",
        ge=0,
        le=65535,
    )
    # The web view: the runs page, its JSON API and its event stream. With an API key, the API
    # needs it too.
    ui: bool = _setting(True, help="Serve the web view of the runs.", env="STATEWARD_UI")
    ui_host: str = _setting(
        "127.0.0.1", help="Address the web view listens on.", env="STATEWARD_UI_HOST"
    )
    ui_port: int = _setting(
        8471,
        help="Port of the web view; 0 picks a free one.",
        env="STATEWARD_UI_PORT",
        ge=0,
        le=65535,
    )
    ui_heartbeat_seconds: float = _setting(
        15.0,
        help="Seconds between heartbeats on an idle event stream of the web view (they keep "
        "proxies from closing it).",
        env="STATEWARD_UI_HEARTBEAT_SECONDS",
        ge=0.1,
    )

    @property
    def database(self) -> str:
        """The database this server opens: the PostgreSQL URL, else `db`."""
        return self.database_url or self.db

    @field_validator("database_url")
    @classmethod
    def _a_postgres_url(cls, value: str) -> str:
        if value and not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("a postgresql:// URL")
        return value

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def from_environment(cls, **flags: Any) -> ServerSettings:
        """Defaults, then environment variables, then `flags` (by setting name; None: not
        given). Values may be strings, as typed. Raises SettingError for a value not allowed."""
        values: dict[str, Any] = {}
        given: dict[str, str] = {}  # where each value came from, for the error message
        for declared in declarations():
            raw = os.environ.get(declared.env)
            if raw:  # an empty variable counts as unset
                values[declared.name], given[declared.name] = raw, declared.env
        for name, value in flags.items():
            if value is not None:
                values[name], given[name] = value, flag_name(name)
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingError.from_validation(error, values, given) from None


class SettingError(ValueError):
    """A setting's value is not allowed; the message names the setting and what it allows."""

    @classmethod
    def from_validation(
        cls, error: ValidationError, values: Mapping[str, Any], given: Mapping[str, str]
    ) -> SettingError:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        if name not in ServerSettings.model_fields:
            return cls(f"{given.get(name, name)} is not a server setting")
        declared = declaration(name)
        source = given.get(name, declared.flag)
        value = values.get(name)
        shown = f"{source} {value}" if source.startswith("--") else f"{source}={value}"
        return cls(f"{shown} is not allowed (the {name} setting): it must be {declared.allowed}")


@dataclass(frozen=True)
class Declaration:
    """One setting as declared, in the terms the command line and the docs need."""

    name: str
    env: str
    help: str
    kind: Any  # the type: int, float, str, bool, Path, or a Literal of the allowed values
    optional: bool  # None is allowed (no value)
    default: str  # as --help shows it; "" for none
    minimum: float | None
    maximum: float | None

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(get_args(self.kind)) if get_origin(self.kind) is Literal else ()

    @property
    def metavar(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        if self.kind is float:
            return "SECONDS" if self.name.endswith("_seconds") else "NUMBER"
        return {int: "INTEGER", Path: "PATH", bool: ""}.get(self.kind, "TEXT")

    @property
    def allowed(self) -> str:
        """What the setting allows, as the end of a sentence ("it must be ...")."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {
            int: "a whole number",
            float: "a number of seconds" if self.name.endswith("_seconds") else "a number",
            bool: "true or false",
            Path: "a path",
        }.get(self.kind, "text")
        if self.minimum is not None and self.maximum is not None:
            what += f" from {_number(self.minimum)} to {_number(self.maximum)}"
        elif self.minimum is not None:
            what += f", at least {_number(self.minimum)}"
        return what


def _number(value: float) -> str:
    """A bound as a person reads it: 0.1, 65535, 315,360,000."""
    return f"{value:,.0f}" if value >= 1e6 else f"{value:g}"


def flag_name(name: str) -> str:
    """The command-line flag of the setting `name`."""
    return "--" + name.removesuffix("_seconds").replace("_", "-")


def declarations() -> Iterator[Declaration]:
    """Every setting, in declaration order."""
    for name in ServerSettings.model_fields:
        yield declaration(name)


def declaration(name: str) -> Declaration:
    info: FieldInfo = ServerSettings.model_fields[name]
    extra = info.json_schema_extra
    assert isinstance(extra, dict)
    kind, optional = _kind(info.annotation)
    minimum = maximum = None
    for constraint in info.metadata:  # pydantic keeps `ge`/`le` as annotated-types objects
        if getattr(constraint, "ge", None) is not None:
            minimum = float(constraint.ge)
        if getattr(constraint, "le", None) is not None:
            maximum = float(constraint.le)
    shown = extra.get("shown_default")
    if shown is None:
        default = info.get_default(call_default_factory=False)
        shown = "" if default is None else f"{default:g}" if kind is float else str(default)
    return Declaration(
        name=name,
        env=str(extra["env"]),
        help=info.description or "",
        kind=kind,
        optional=optional,
        default=str(shown),
        minimum=minimum,
        maximum=maximum,
    )


def _kind(annotation: Any) -> tuple[Any, bool]:
    """The setting's base type (Annotated and `| None` peeled off), and whether None is allowed."""
    optional = False
    args = get_args(annotation)
    if type(None) in args and get_origin(annotation) is not Literal:
        optional = True
        annotation = next(arg for arg in args if arg is not type(None))
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation, optional


__all__ = ["Declaration", "ServerSettings", "SettingError", "declarations", "flag_name"]
