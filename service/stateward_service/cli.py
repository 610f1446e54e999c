"""`stateward server start`: run a server in the foreground until SIGINT/SIGTERM.

The command lives beside the server it runs; the `stateward` command line reaches it through the
SDK's embedded launcher (`stateward._embedded.server_commands`), the one place the SDK imports
this package."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run a Stateward server.", no_args_is_help=True)


def _seconds(help_text: str) -> object:
    return typer.Option(help=help_text, min=0.0, show_default=False)


@app.command()
def start(
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on. (env STATEWARD_HOST, default 127.0.0.1)"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port; 0 picks a free one. (env STATEWARD_PORT, default 8470)"),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite file. (env STATEWARD_DB, default $STATEWARD_HOME/stateward.db)"),
    ] = None,
    sqlite_synchronous: Annotated[
        str | None,
        typer.Option(
            help="SQLite synchronous mode: NORMAL survives a server crash, FULL also a power cut. "
            "(env STATEWARD_SQLITE_SYNCHRONOUS, default NORMAL)"
        ),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        _seconds(
            "Seconds in-flight calls get at shutdown. "
            "(env STATEWARD_SHUTDOWN_GRACE_SECONDS, default 5)"
        ),
    ] = None,
    late_after: Annotated[
        float | None,
        _seconds(
            "A run still Scheduled this many seconds after its time becomes Late. "
            "(env STATEWARD_LATE_AFTER_SECONDS, default 15)"
        ),
    ] = None,
    late_runs_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between sweeps for late runs. "
            "(env STATEWARD_LATE_RUNS_INTERVAL_SECONDS, default 5)"
        ),
    ] = None,
    pause_expiry_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between sweeps for expired pauses. "
            "(env STATEWARD_PAUSE_EXPIRY_INTERVAL_SECONDS, default 5)"
        ),
    ] = None,
    cancelling_timeout: Annotated[
        float | None,
        _seconds(
            "A run Cancelling for this many seconds becomes Cancelled. "
            "(env STATEWARD_CANCELLING_TIMEOUT_SECONDS, default 300)"
        ),
    ] = None,
    cancelling_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between sweeps for stuck cancels. "
            "(env STATEWARD_CANCELLING_INTERVAL_SECONDS, default 10)"
        ),
    ] = None,
    cascade_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between sweeps cancelling the children of cancelled flow runs. "
            "(env STATEWARD_CASCADE_INTERVAL_SECONDS, default 5)"
        ),
    ] = None,
    slot_wait: Annotated[
        float | None,
        _seconds(
            "Seconds a task run is told to wait when its tag's concurrency limit is full. "
            "(env STATEWARD_SLOT_WAIT_SECONDS, default 1)"
        ),
    ] = None,
    log_retention: Annotated[
        int | None,
        typer.Option(
            help="Keep the newest N transitions in the log; 0 keeps all. "
            "(env STATEWARD_LOG_RETENTION, default 0)",
            min=0,
            show_default=False,
        ),
    ] = None,
    stream_buffer: Annotated[
        int | None,
        typer.Option(
            help="Recent transitions kept in memory for subscribers. "
            "(env STATEWARD_STREAM_BUFFER, default 10000)",
            min=1,
            show_default=False,
        ),
    ] = None,
    lease_check_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between looks for runs whose heartbeat lease lapsed. "
            "(env STATEWARD_LEASE_CHECK_INTERVAL_SECONDS, default 2)"
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require this key (authorization: Bearer <key>) on every call but the health "
            "check. (env STATEWARD_API_KEY)",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(help="TLS certificate chain, PEM. (env STATEWARD_SERVER_TLS_CERT)"),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="TLS private key, PEM. (env STATEWARD_SERVER_TLS_KEY)"),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            help="Require client certificates signed by this CA (mutual TLS). "
            "(env STATEWARD_SERVER_TLS_CLIENT_CA)"
        ),
    ] = None,
    max_message_bytes: Annotated[
        int | None,
        typer.Option(
            help="Largest message accepted; larger is RESOURCE_EXHAUSTED. "
            "(env STATEWARD_MAX_MESSAGE_BYTES, default 4194304)",
            min=1024,
            show_default=False,
        ),
    ] = None,
    max_streams_per_connection: Annotated[
        int | None,
        typer.Option(
            help="Calls (streams included) one connection may have open at once. "
            "(env STATEWARD_MAX_STREAMS_PER_CONNECTION, default 1000)",
            min=1,
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (off by default). "
            "(env STATEWARD_METRICS_PORT)",
            min=0,
            show_default=False,
        ),
    ] = None,
    log_prune_interval: Annotated[
        float | None,
        _seconds(
            "Seconds between prunings of the log. "
            "(env STATEWARD_LOG_PRUNE_INTERVAL_SECONDS, default 60)"
        ),
    ] = None,
) -> None:
    """Run the server until interrupted (SIGINT or SIGTERM stop it gracefully)."""
    # Imported here: every `stateward` command builds this one's options, few run it.
    from stateward_service.server import PortUnavailable, serve
    from stateward_service.settings import ServerSettings
    from stateward_service.store import DatabaseInUse

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ServerSettings.from_environment(
        host=host,
        port=port,
        db=db,
        sqlite_synchronous=sqlite_synchronous,
        shutdown_grace_seconds=shutdown_grace,
        late_after_seconds=late_after,
        late_runs_interval_seconds=late_runs_interval,
        pause_expiry_interval_seconds=pause_expiry_interval,
        cancelling_timeout_seconds=cancelling_timeout,
        cancelling_interval_seconds=cancelling_interval,
        cascade_interval_seconds=cascade_interval,
        slot_wait_seconds=slot_wait,
        log_retention=log_retention,
        log_prune_interval_seconds=log_prune_interval,
        stream_buffer=stream_buffer,
        lease_check_interval_seconds=lease_check_interval,
        api_key=api_key,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        max_message_bytes=max_message_bytes,
        max_streams_per_connection=max_streams_per_connection,
        metrics_port=metrics_port,
    )
    try:
        asyncio.run(serve(settings))
    except (PortUnavailable, DatabaseInUse, ValueError, OSError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=1) from None
