"""The server's settings, each declared once below: its name, type, default, allowed range, help
and environment variable. The flags of `stateward server start` (and their `--help`), the reading
of the environment and the validation all come from these declarations, so a new setting is one
new field here.

A setting's flag is its name with dashes, less a `_seconds` suffix (`late_after_seconds` is
`--late-after`); a yes/no setting has a `--name/--no-name` pair. Values come from the defaults,
then the environment, then the flags; a value that is not allowed raises `SettingError`, whose
message names the setting and what it allows. A variable that is set is checked even when a
flag overrides it, as the reference's settings check the environment when they load: it applies
to every command run without that flag, so it is refused where it is first met.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin, get_type_hints

from stateward import settings as client_settings
from stateward.states import dataclass

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

# The largest number of seconds a setting takes: ten years. More is a mistake (and date
# arithmetic overflows on infinity or 1e300).
MAX_SECONDS = 10 * 365 * 24 * 3600

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
READ_POOL_SIZE = 8  # PostgreSQL read connections of a server, by default


def _expand_user(path: Path) -> Path:
    """A path given by a person: `~` means their home."""
    return path.expanduser()


def _database_target(value: str) -> str:
    """Where the data lives: a PostgreSQL URL as given; a SQLite file's path with `~`
    expanded."""
    if value.startswith(POSTGRES_SCHEMES):
        return value
    return str(Path(value).expanduser())


def _a_postgres_url(value: str) -> str:
    if value and not value.startswith(POSTGRES_SCHEMES):
        raise ValueError("a postgresql:// URL")
    return value


def _upper_case(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _setting(
    default: Any = ...,
    *,
    help: str,
    env: str,
    shown_default: str | None = None,
    before: Callable[[Any], Any] | None = None,
    after: Callable[[Any], Any] | None = None,
    secret: bool = False,
    allowed: str = "",
    **constraints: Any,
) -> Any:
    """One setting's declaration: its help text, its environment variable, the default `--help`
    shows (when not the value itself; "" for none), its range (`ge`, `le`), and what a given
    value goes through `before` and `after` it is checked against its type, and what an error
    says it allows when its type does not say it all (`allowed`). A number of seconds (a float)
    is at most MAX_SECONDS unless said otherwise. Defaults are used as declared. A `secret` is
    left out of the settings' repr (which logs and tracebacks may show)."""
    if isinstance(default, float):
        constraints.setdefault("le", MAX_SECONDS)
    metadata: dict[str, Any] = {"help": help, "env": env, **constraints}
    metadata.update(shown_default=shown_default, before=before, after=after, allowed=allowed)
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server is started with. Build it with `from_environment()`: the values it
    is given are validated by pydantic (imported then); the defaults need no validation, so a
    process given none (an SDK process on the embedded default) never imports pydantic."""

    host: str = _setting("127.0.0.1", help="Address to listen on.", env="STATEWARD_HOST")
    port: int = _setting(
        client_settings.DEFAULT_PORT,
        help="Port; 0 picks a free one.",
        env="STATEWARD_PORT",
        ge=0,
        le=65535,
    )
    workers: int = _setting(
        1,
        help="Server processes sharing the port and the database (Linux): the kernel spreads "
        "connections across them; one that dies is started again. Limits and pools are per "
        "worker; the web view is the first worker's; the metrics add up all of theirs.",
        env="STATEWARD_WORKERS",
        ge=1,
        le=64,
    )
    db: str = _setting(
        lambda: str(client_settings.default_database()),
        help="SQLite file, or a PostgreSQL URL (postgresql://user:password@host/db) that several "
        "servers share.",
        env="STATEWARD_DB",
        shown_default="$STATEWARD_HOME/stateward.db",
        after=_database_target,
    )
    database_url: str = _setting(
        "",
        help="A PostgreSQL URL; when set, it is the database (in place of --db).",
        env="STATEWARD_DATABASE_URL",
        shown_default="",
        after=_a_postgres_url,
        allowed="a postgresql:// or postgres:// URL",
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = _setting(
        "NORMAL",
        help="SQLite synchronous mode: NORMAL survives a server crash, FULL also a power cut.",
        env="STATEWARD_SQLITE_SYNCHRONOUS",
        before=_upper_case,  # any case
    )
    read_pool_size: int = _setting(
        READ_POOL_SIZE,
        help="PostgreSQL: connections this server reads on at once (more reads wait up to 10 s "
        "for one), beside its 3 others (writes, LISTEN, the leader lock). Not for SQLite.",
        env="STATEWARD_READ_POOL_SIZE",
        ge=1,
        le=1000,
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
        help=(
            "Seconds at most a task run waits when its tag's concurrency limit is full before "
            "asking again (the SDK asks at once when a task run leaves RUNNING)."
        ),
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
        secret=True,
    )
    # Named apart from STATEWARD_TLS_CERT/_KEY, which are a client's own certificate.
    tls_cert: Path | None = _setting(
        None,
        help="TLS certificate chain, PEM.",
        env="STATEWARD_SERVER_TLS_CERT",
        after=_expand_user,
    )
    tls_key: Path | None = _setting(
        None, help="TLS private key, PEM.", env="STATEWARD_SERVER_TLS_KEY", after=_expand_user
    )
    tls_client_ca: Path | None = _setting(
        None,
        help="Require client certificates signed by this CA (mutual TLS).",
        env="STATEWARD_SERVER_TLS_CLIENT_CA",
        after=_expand_user,
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

    @classmethod
    def from_environment(cls, **flags: Any) -> ServerSettings:
        """Defaults, then environment variables, then `flags` (by setting name; None: not
        given). Values may be strings, as typed. Raises SettingError for a value not allowed,
        a variable's included when a flag overrides it."""
        values: dict[str, Any] = {}
        given: dict[str, str] = {}  # where each value came from, for the error message
        for declared in declarations():
            raw = os.environ.get(declared.env)
            if raw:  # an empty variable counts as unset
                values[declared.name], given[declared.name] = raw, declared.env
        overridden = {
            name: values[name]
            for name, value in flags.items()
            if value is not None and name in values
        }
        for name, value in flags.items():
            if value is not None:
                values[name], given[name] = value, flag_name(name)
        if not values:
            return cls()
        from pydantic import ValidationError

        try:
            checked = _validator()(**values)
        except ValidationError as error:
            raise SettingError.from_validation(error, values, given) from None
        if overridden:
            # Checked among the settings in use (the flags' values otherwise valid): a default
            # they make unused, which may not be workable here, is not worked out.
            try:
                _validator()(**{**values, **overridden})
            except ValidationError as error:
                raise SettingError.from_validation(
                    error,
                    overridden,
                    {name: declaration(name).env for name in overridden},
                    overridden=True,
                ) from None
        return cls(**{name: getattr(checked, name) for name in _names()})


@functools.cache
def _names() -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(ServerSettings))


@functools.cache
def _validator() -> type[BaseModel]:
    """A pydantic model of the declarations above, which validates given values (built once,
    when first needed: pydantic and the model cost more than everything else a server process
    loads before its first call)."""
    from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, create_model

    hints = get_type_hints(ServerSettings)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(ServerSettings):
        kind, meta = hints[field.name], field.metadata
        checks: list[Any] = [BeforeValidator(meta["before"])] if meta["before"] else []
        checks += [AfterValidator(meta["after"])] if meta["after"] else []
        if checks:
            base, optional = _kind(kind)
            kind = Annotated[base, *checks] | None if optional else Annotated[base, *checks]
        ranges = {key: meta[key] for key in ("ge", "le") if key in meta}
        if field.default_factory is not dataclasses.MISSING:
            fields[field.name] = (kind, Field(default_factory=field.default_factory, **ranges))
        else:
            fields[field.name] = (kind, Field(field.default, **ranges))
    return create_model(
        "ServerSettings", __config__=ConfigDict(frozen=True, extra="forbid"), **fields
    )


class SettingError(ValueError):
    """A setting's value is not allowed; the message names the setting and what it allows."""

    @classmethod
    def from_validation(
        cls,
        error: ValidationError,
        values: Mapping[str, Any],
        given: Mapping[str, str],
        *,
        overridden: bool = False,
    ) -> SettingError:
        """The error for the first value `error` found wrong; `overridden` says the values
        were environment variables that flags override."""
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        if name not in _names():
            return cls(f"{given.get(name, name)} is not a server setting")
        declared = declaration(name)
        source = given.get(name, declared.flag)
        value = values.get(name)
        shown = f"{source} {value}" if source.startswith("--") else f"{source}={value}"
        told = f"{shown} is not allowed (the {name} setting): it must be {declared.allowed}"
        if overridden:
            told += (
                f"; {declared.flag} overrides it here, but every command without that flag "
                f"reads it: correct it or unset {declared.env}"
            )
        return cls(told)


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
    described: str = ""  # what it allows, when its type does not say it all

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(get_args(self.kind)) if get_origin(self.kind) is Literal else ()

    @property
    def metavar(self) -> str:
        """What --help shows after the flag: the value to type (PORT, SECONDS, N, FILE)."""
        if self.choices:
            return "|".join(self.choices)
        if self.kind is float:
            return "SECONDS" if self.name.endswith("_seconds") else "NUMBER"
        if self.kind in (Path, bool):
            return "FILE" if self.kind is Path else ""
        named = _NAMED_VALUES.get(self.name.rsplit("_", 1)[-1])
        return named or ("N" if self.kind is int else "TEXT")

    @property
    def allowed(self) -> str:
        """What the setting allows, as the end of a sentence ("it must be ...")."""
        if self.described:
            return self.described
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


# A setting's value named by the last word of its name (metrics_port: PORT, db: FILE|URL).
_NAMED_VALUES = {
    "port": "PORT",
    "host": "HOST",
    "url": "URL",
    "key": "KEY",
    "bytes": "BYTES",
    "db": "FILE|URL",
}


def _number(value: float) -> str:
    """A bound as a person reads it: 0.1, 65535, 315,360,000."""
    return f"{value:,.0f}" if value >= 1e6 else f"{value:g}"


def flag_name(name: str) -> str:
    """The command-line flag of the setting `name`."""
    return "--" + name.removesuffix("_seconds").replace("_", "-")


def declarations() -> Iterator[Declaration]:
    """Every setting, in declaration order."""
    return iter(_declarations())


def declaration(name: str) -> Declaration:
    found = next((declared for declared in _declarations() if declared.name == name), None)
    if found is None:
        raise KeyError(name)
    return found


@functools.cache
def _declarations() -> tuple[Declaration, ...]:
    hints = get_type_hints(ServerSettings)
    declared = []
    for field in dataclasses.fields(ServerSettings):
        meta = field.metadata
        kind, optional = _kind(hints[field.name])
        shown = meta["shown_default"]
        if shown is None:
            default = None if field.default is dataclasses.MISSING else field.default
            shown = "" if default is None else f"{default:g}" if kind is float else str(default)
        minimum, maximum = meta.get("ge"), meta.get("le")
        declared.append(
            Declaration(
                name=field.name,
                env=meta["env"],
                help=meta["help"],
                kind=kind,
                optional=optional,
                default=str(shown),
                minimum=None if minimum is None else float(minimum),
                maximum=None if maximum is None else float(maximum),
                described=meta["allowed"],
            )
        )
    return tuple(declared)


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
