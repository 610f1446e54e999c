"""Finding the run a person means from what they type: its full id, an id prefix (the short ids
the tables show are prefixes) or its name. More than one match is an error that lists them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import typer

from stateward.exceptions import InvalidArgument, NotFound
from stateward.runs import FlowRun, TaskRun
from stateward.times import parse_moment

if TYPE_CHECKING:
    from stateward.client import Client

SHORT_ID = 8  # characters of a run's id the tables show
_SCAN_PAGE = 500

Run = TypeVar("Run", FlowRun, TaskRun)


def short_id(run_id: str) -> str:
    """The first characters of a run's id: what the tables show, and what the commands take."""
    return run_id[:SHORT_ID]


def _is_full_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def find_flow_run(client: Client, ref: str) -> FlowRun:
    """The flow run `ref` names (an id, an id prefix, a name); NotFound or InvalidArgument
    (ambiguous, listing the matches) otherwise."""
    ref = ref.strip()
    if _is_full_id(ref):
        return client.get_flow_run(ref.lower())
    runs = client.list_flow_runs(page_size=_SCAN_PAGE)
    return _one(_matching(runs, ref), ref, "flow run")


def find_task_run(client: Client, ref: str) -> TaskRun:
    """The task run `ref` names, as `find_flow_run`."""
    ref = ref.strip()
    if _is_full_id(ref):
        return client.get_task_run(ref.lower())
    runs = client.list_task_runs(page_size=_SCAN_PAGE)
    return _one(_matching(runs, ref), ref, "task run")


def _matching(runs: Iterable[Run], ref: str) -> list[Run]:
    prefix = ref.lower()
    by_id = []
    by_name = []
    for run in runs:
        if prefix and run.id.startswith(prefix):
            by_id.append(run)
        elif run.name == ref:
            by_name.append(run)
    return by_id or by_name


def _one(matches: Sequence[Run], ref: str, kind: str) -> Run:
    if not matches:
        noun = kind.replace(" ", "-")
        raise NotFound(
            f"no {kind} has an id starting with {ref!r} or the name {ref!r} "
            f"(`stateward {noun} ls` lists them)"
        )
    if len(matches) > 1:
        shown = "; ".join(f"{short_id(run.id)} {run.name}" for run in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise InvalidArgument(
            f"{ref!r} matches {len(matches)} {kind}s ({shown}{more}): give more of the id"
        )
    return matches[0]


def parse_since(text: str) -> datetime:
    """`--since`: a moment as `stateward.times.parse_moment` reads it (the HTTP API's rule);
    raises typer.BadParameter saying what is taken (the option's parser: the error names the
    option)."""
    try:
        return parse_moment(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
