"""`stateward db backup`: a consistent copy of a database, while a server keeps using it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated

import typer

from stateward import settings
from stateward.cli._common import console, errors

app = typer.Typer(help="The SQLite database.", no_args_is_help=True)


@app.command()
def backup(
    destination: Annotated[Path, typer.Argument(help="The file to write the copy to.")],
    db: Annotated[
        Path | None,
        typer.Option(help="The database (default $STATEWARD_HOME/stateward.db)."),
    ] = None,
) -> None:
    """Copy the database with SQLite's online backup: safe while a server writes to it (the
    copy is one consistent moment), and the copy opens as a database of its own."""
    source_path = db or settings.default_database()
    if not source_path.exists():
        errors.print(f"[red]Error:[/red] no database at {source_path}")
        raise typer.Exit(1)
    if destination.exists():
        errors.print(f"[red]Error:[/red] {destination} exists; choose a new file")
        raise typer.Exit(1)
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
        ok = target.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        target.close()
        source.close()
    console.print(f"backed up {source_path} to {destination} (integrity: {ok})")
