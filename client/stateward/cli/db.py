"""`stateward db backup`: a consistent copy of a database, while a server keeps using it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from stateward import settings
from stateward.cli._common import console, errors
from stateward.cli._labels import Group

app = typer.Typer(cls=Group, help="The SQLite database.", no_args_is_help=True)


@app.command()
def backup(
    destination: Annotated[
        Path, typer.Argument(metavar="DESTINATION", help="The file to write the copy to.")
    ],
    db: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="The database (default $STATEWARD_HOME/stateward.db)."),
    ] = None,
) -> None:
    """Copy the database with SQLite's online backup: safe while a server writes to it (the
    copy is one consistent moment), and the copy opens as a database of its own. The copy is
    written under a temporary name beside DESTINATION and takes that name only once it is
    complete and passed SQLite's integrity check: DESTINATION either does not exist or is whole."""
    source_path = db or settings.default_database()
    if not source_path.exists():
        errors.print(f"[red]Error:[/red] no database at {source_path}")
        raise typer.Exit(1)
    if destination.exists():
        errors.print(f"[red]Error:[/red] {destination} exists; choose a new file")
        raise typer.Exit(1)
    folder = destination.parent
    if not folder.is_dir():
        errors.print(
            f"[red]Error:[/red] the folder {folder} does not exist: create it first "
            f"(mkdir -p {folder})"
        )
        raise typer.Exit(1)
    import tempfile  # the modules of a backup are loaded by it, not by every command

    handle, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=folder)
    os.close(handle)
    partial = Path(name)
    try:
        verdict = _copy(source_path, partial)
        if verdict != "ok":
            errors.print(
                f"[red]Error:[/red] the copy failed SQLite's integrity check ({verdict}); "
                f"{destination} was not written. Check the database with "
                "`stateward server start`, which refuses a damaged one"
            )
            raise typer.Exit(1)
        _durable(partial)
        try:
            os.link(partial, destination)  # unlike a rename, never replaces a file
        except FileExistsError:
            errors.print(f"[red]Error:[/red] {destination} appeared meanwhile; choose a new file")
            raise typer.Exit(1) from None
        _durable(folder)
    finally:
        for leftover in (partial, *_sidecars(partial)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    console.print(f"backed up {source_path} to {destination} (integrity: {verdict})")


def _copy(source_path: Path, target_path: Path) -> str:
    """Copy the database at `source_path` into `target_path` (WAL mode, as servers keep it) and
    return SQLite's integrity verdict on the copy ("ok" when sound)."""
    import sqlite3
    import urllib.parse

    # The path quoted: in a URI, `#`, `?` and `%` in a folder's name would end or change it.
    source = sqlite3.connect(f"file:{urllib.parse.quote(os.fspath(source_path))}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=WAL")
            rows = target.execute("PRAGMA integrity_check(3)").fetchall()
        finally:
            target.close()  # the last connection folds its WAL into the file and removes it
    finally:
        source.close()
    return " ".join(str(row[0]) for row in rows)


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _durable(path: Path) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
