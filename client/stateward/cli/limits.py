"""`stateward concurrency-limit ...`: tag concurrency limits."""

from __future__ import annotations

from typing import Annotated

import typer

from stateward.cli._common import client, console, new_table
from stateward.cli._labels import Group, whole_number

app = typer.Typer(cls=Group, help="Tag concurrency limits for task runs.", no_args_is_help=True)


@app.command("create")
def create(
    tag: Annotated[str, typer.Argument(metavar="TAG", help="The tag.")],
    limit: Annotated[
        int,
        typer.Argument(
            parser=whole_number(0),
            metavar="LIMIT",
            help="How many task runs with it may run at once: 0 or more.",
        ),
    ],
) -> None:
    """Create a limit for a tag."""
    with client() as connected:
        created = connected.create_concurrency_limit(tag, limit)
    console.print(f"tag {created.tag!r}: at most {created.limit} running")


@app.command("ls")
def list_limits() -> None:
    """List every limit with how many of its slots are taken."""
    table = new_table("Tag", "Limit", "Running")
    with client() as connected:
        limits = connected.list_concurrency_limits()
    if not limits:
        console.print("No concurrency limits yet (`stateward concurrency-limit create TAG N`).")
        return
    for limit in limits:
        table.add_row(limit.tag, str(limit.limit), str(len(limit.active_slots)))
    console.print(table)


@app.command("inspect")
def inspect(tag: Annotated[str, typer.Argument(metavar="TAG", help="The tag.")]) -> None:
    """Show a limit and the task runs holding its slots."""
    with client() as connected:
        limit = connected.get_concurrency_limit(tag)
    console.print(f"tag {limit.tag!r}: {len(limit.active_slots)} of {limit.limit} running")
    for run_id in limit.active_slots:
        console.print(f"  {run_id}")


@app.command("delete")
def delete(tag: Annotated[str, typer.Argument(metavar="TAG", help="The tag.")]) -> None:
    """Delete a limit; the runs holding its slots keep running."""
    with client() as connected:
        connected.delete_concurrency_limit(tag)
    console.print(f"deleted the limit of tag {tag!r}")
