"""The web view's Starlette application: the page, its assets, and the JSON API it reads.

    GET  /                               the page (it loads without the key, then asks for it)
    GET  /api/flow-runs                  flow runs, newest first: ?flow= &state= &tag= &id=
                                         (each repeatable), ?since= &until= (the runs created
                                         in [since, until): ISO 8601, local time without a
                                         zone, or a span before now such as 2h, as
                                         `stateward.times.parse_moment` reads them),
                                         ?page_size= &page_token= (keyset pagination)
    GET  /api/flow-runs/{id}             a flow run (with its stored result; a subflow with its
                                         `parent_flow_run`) and its history
    GET  /api/flow-runs/{id}/logs        the lines a flow run (and its task runs) logged,
                                         oldest first: the newest `?limit=` (1-1000, 200), those
                                         before `?before=` (a line's id), or after `?after=`
    GET  /api/task-runs                  task runs, newest first: ?flow_run_id= &task= &state=
                                         &tag= &page_size= &page_token=
    GET  /api/task-runs/{id}             a task run (with its stored result), its history and
                                         its flow run
    GET  /api/task-runs/{id}/logs        the lines a task run logged, as for a flow run
    POST /api/flow-runs/{id}/cancel      propose Cancelling, as `stateward flow-run cancel` does
    POST /api/flow-runs/{id}/resume      propose Running for a run that is Paused
    POST /api/session                    (with the key) the cookie the event stream accepts
    GET  /api/events                     the transitions, as Server-Sent Events (see `events`)

Listings also give `sequence`: the newest transition they may not reflect, where the page's
event stream starts. Reads and proposals run in worker threads (they take the orchestrator's
lock and read SQLite), never on the event loop. Errors are JSON `{"error": message}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stateward.exceptions import StatusCode
from stateward.runs import OrchestrationResult, RunKind
from stateward.states import State, StateType
from stateward.times import parse_moment
from stateward_service import validation as check
from stateward_service.broadcaster import TransitionBroadcaster
from stateward_service.errors import ServiceError, invalid
from stateward_service.orchestrator import NotPaused, Orchestrator, RunInputRefused, RunNotFound
from stateward_service.shutdown import WritingCalls
from stateward_service.store import BadPageToken, DatabaseUnavailable, RunFilter, WriteConflict
from stateward_service.web.auth import (
    EVENTS_COOKIE,
    EVENTS_PATH,
    ApiKey,
    RequireApiKey,
    RequireLoopbackHost,
    is_loopback,
)
from stateward_service.web.documents import (
    Document,
    log_document,
    run_document,
    state_document,
)
from stateward_service.web.events import events_endpoint

STATIC = Path(__file__).parent / "static"
DEFAULT_PAGE_SIZE = 50
DEFAULT_LOG_LINES = 200  # a run's page shows its newest lines; older ones on request
MAX_LOG_LINES = 1000
_HTTP_STATUS = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.FAILED_PRECONDITION: 409,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNAVAILABLE: 503,
}
# The page may only talk to this server: no other origin for scripts, styles, data or frames.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

Endpoint = Callable[[Request], Awaitable[Response]]
# A line's id is an SQLite integer: a larger one can name no line (and SQLite refuses it).
_MAX_LINE_ID = 2**63 - 1


class _Json(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate that stored JSON escaped
    ("\\udc80", a file name decoded with 'surrogateescape') stays escaped instead of failing
    UTF-8 encoding with a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str) -> JSONResponse:
    return _Json({"error": message}, status_code=status)


def _answering(handler: Callable[[Request], Awaitable[Document]]) -> Endpoint:
    """Run a handler, answering its document as JSON and its refusals as errors (503 for a
    database that cannot be reached or stays too busy: the page tries again)."""

    async def endpoint(request: Request) -> Response:
        try:
            return _Json(await handler(request))
        except ServiceError as error:
            return _error(_HTTP_STATUS.get(error.code, 400), error.message)
        except RunNotFound as error:
            return _error(404, str(error))
        except BadPageToken as error:
            return _error(400, f"page_token: {error}")
        except DatabaseUnavailable as error:
            return _error(503, f"{error}; try again")
        except WriteConflict as error:
            return _error(503, f"the database stayed too busy to decide; try again ({error})")

    return endpoint


# --- reading the query string -------------------------------------------------------------------


def _many(request: Request, name: str) -> tuple[str, ...]:
    """A repeatable parameter; empty values are skipped."""
    return check.names([v for v in request.query_params.getlist(name) if v], name)


def _state_types(request: Request) -> tuple[int, ...]:
    types = []
    for value in _many(request, "state"):
        try:
            types.append(int(StateType[value.upper()]))
        except KeyError:
            known = ", ".join(t.name for t in StateType)
            raise invalid("state", f"{value!r} is not a state type; use one of {known}") from None
    return tuple(types)


# A zone's "+" that came through a query string unescaped reads as a space.
_UNESCAPED_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def _time(request: Request, name: str) -> datetime | None:
    """?since= or ?until=: a moment as `stateward --since` reads it (`parse_moment`)."""
    raw = request.query_params.get(name, "")
    if not raw:
        return None
    try:
        return parse_moment(_UNESCAPED_PLUS.sub(r"\1+\2", raw.strip()))
    except ValueError as error:
        raise invalid(name, str(error)) from None


def _page_size(request: Request) -> int:
    raw = request.query_params.get("page_size", "")
    try:
        size = int(raw) if raw else DEFAULT_PAGE_SIZE
    except ValueError:
        raise invalid("page_size", f"{raw!r} is not a number") from None
    return check.page_size(size)


def _run_id(request: Request) -> str:
    return check.run_id(request.path_params["run_id"], "run id")


def _line_id(request: Request, name: str) -> int | None:
    """?after= or ?before=: a log line's id (None when not given)."""
    raw = request.query_params.get(name, "")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"{raw!r} is not a log line's id (an integer >= 0)") from None
    if not 0 <= value <= _MAX_LINE_ID:
        raise invalid(name, f"{raw!r} is not a log line's id (an integer from 0 to 2**63-1)")
    return value


def _log_limit(request: Request) -> int:
    raw = request.query_params.get("limit", "")
    try:
        limit = int(raw) if raw else DEFAULT_LOG_LINES
    except ValueError:
        raise invalid("limit", f"{raw!r} is not a number") from None
    if not 1 <= limit <= MAX_LOG_LINES:
        raise invalid("limit", f"{limit} is not between 1 and {MAX_LOG_LINES}")
    return limit


# --- the API ------------------------------------------------------------------------------------


class WebApi:
    """The handlers, over the orchestrator and the broadcaster."""

    def __init__(
        self, orchestrator: Orchestrator, broadcaster: TransitionBroadcaster, writing: WritingCalls
    ) -> None:
        self.orchestrator = orchestrator
        self.broadcaster = broadcaster
        # The server's writing calls: a shutdown refuses the web view's writes with the RPCs'
        # and answers those in flight before the web server stops.
        self.writing = writing

    async def _page(self, request: Request, kind: RunKind, where: RunFilter, key: str) -> Document:
        size = _page_size(request)
        token = request.query_params.get("page_token", "")
        sequence = self.broadcaster.last_sequence  # read first: a gap is impossible, a repeat
        runs, next_token = await run_in_threadpool(  # harmless (the page applies it again)
            self.orchestrator.list_runs, kind, where, size, token
        )
        return {
            key: [run_document(run) for run in runs],
            "next_page_token": next_token,
            "sequence": sequence,
        }

    async def flow_runs(self, request: Request) -> Document:
        where = RunFilter(
            ids=check.run_ids(request.query_params.getlist("id"), "id"),
            names=_many(request, "flow"),
            state_types=_state_types(request),
            tags=_many(request, "tag"),
            created_after=_time(request, "since"),
            created_before=_time(request, "until"),
        )
        return await self._page(request, RunKind.FLOW_RUN, where, "flow_runs")

    async def task_runs(self, request: Request) -> Document:
        flow_run_ids = request.query_params.getlist("flow_run_id")
        where = RunFilter(
            names=_many(request, "task"),
            flow_run_ids=check.run_ids(flow_run_ids, "flow_run_id"),
            state_types=_state_types(request),
            tags=_many(request, "tag"),
        )
        return await self._page(request, RunKind.TASK_RUN, where, "task_runs")

    async def flow_run(self, request: Request) -> Document:
        run_id = _run_id(request)
        sequence = self.broadcaster.last_sequence

        def read() -> Document:
            run = self.orchestrator.get_run(run_id, RunKind.FLOW_RUN)
            states = self.orchestrator.list_states(run_id)
            document = run_document(run, with_result=True)
            if run.parent_task_run_id:
                # A subflow: the flow run of the task run that stands for it in its parent.
                try:
                    parent = self.orchestrator.get_run(run.parent_task_run_id, RunKind.TASK_RUN)
                    document["parent_flow_run"] = self._flow_run_named(parent.flow_run_id)
                except RunNotFound:
                    document["parent_flow_run"] = None
            return {
                "flow_run": document,
                "states": [state_document(state) for state in states],
                "sequence": sequence,
            }

        return await run_in_threadpool(read)

    def _flow_run_named(self, run_id: str) -> Document | None:
        """A flow run's id, name and flow name (what a link to its page shows); None for no
        id or a run that is gone."""
        if not run_id:
            return None
        try:
            run = self.orchestrator.get_run(run_id, RunKind.FLOW_RUN)
        except RunNotFound:
            return None
        return {"id": run.id, "name": run.name, "flow_name": run.flow_name}

    async def task_run(self, request: Request) -> Document:
        run_id = _run_id(request)
        sequence = self.broadcaster.last_sequence

        def read() -> Document:
            run = self.orchestrator.get_run(run_id, RunKind.TASK_RUN)
            states = self.orchestrator.list_states(run_id)
            return {
                "task_run": run_document(run, with_result=True),
                "flow_run": self._flow_run_named(run.flow_run_id),
                "states": [state_document(state) for state in states],
                "sequence": sequence,
            }

        return await run_in_threadpool(read)

    def logs(self, kind: RunKind) -> Callable[[Request], Awaitable[Document]]:
        async def logs(request: Request) -> Document:
            """A run's log lines, oldest first: after `?after=`, else the newest ones (before
            `?before=`). `more` says whether further lines are there in that direction (older
            ones for the newest, newer ones after `?after=`)."""
            run_id = _run_id(request)
            after, before = _line_id(request, "after"), _line_id(request, "before")
            if after is not None and before is not None:
                raise invalid("after", "give ?after= or ?before=, not both")
            limit = _log_limit(request)

            def read() -> Document:
                self.orchestrator.get_run(run_id, kind)  # a run of this kind, or 404
                if after is not None:
                    lines = self.orchestrator.list_logs(run_id, after, limit + 1)
                    more = len(lines) > limit
                    lines = lines[:limit]
                else:
                    lines = self.orchestrator.list_logs_before(run_id, before or 0, limit + 1)
                    more = len(lines) > limit
                    lines = lines[-limit:]
                return {"logs": [log_document(line) for line in lines], "more": more}

            return await run_in_threadpool(read)

        return logs

    async def cancel(self, request: Request) -> Document:
        """Propose Cancelling: the rules cancel at once a run no process owns; a running one
        becomes Cancelling and its process stops it."""
        run_id = _run_id(request)

        def propose() -> OrchestrationResult:
            self.orchestrator.get_run(run_id, RunKind.FLOW_RUN)  # a flow run, or 404
            cancelling = State(StateType.CANCELLING, message="cancelled from the web view")
            return self.orchestrator.set_state(run_id, cancelling)

        return _outcome(await self.writing.write(propose))

    async def resume(self, request: Request) -> Document:
        """Resume a Paused run (Orchestrator.resume_flow_run, as the ResumeFlowRun RPC does):
        only if it is still in the pause the caller saw. A JSON body's `run_input` is the input
        the pause waits for, checked against the pause's schema."""
        run_id = _run_id(request)
        run_input = await _run_input(request)

        def propose() -> OrchestrationResult:
            try:
                return self.orchestrator.resume_flow_run(
                    run_id, run_input, message="resumed from the web view"
                )
            except NotPaused as error:
                raise ServiceError(StatusCode.FAILED_PRECONDITION, str(error)) from None
            except RunInputRefused as error:
                how = 'the JSON body\'s "run_input"'
                raise invalid("run_input", error.worded(how)) from None

        return _outcome(await self.writing.write(propose))


async def _run_input(request: Request) -> str | None:
    """The `run_input` of a JSON body, as JSON text (None without a body or without it)."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        document = json.loads(body)
    except ValueError as error:
        raise ServiceError(StatusCode.INVALID_ARGUMENT, f"the body is not JSON ({error})") from None
    if not isinstance(document, dict) or "run_input" not in document:
        return None
    text = json.dumps(document["run_input"])
    check.run_input(text, "run_input")
    return text


def _outcome(outcome: OrchestrationResult) -> Document:
    return {
        "status": outcome.status.name,
        "state": state_document(outcome.state),
        "reason": outcome.reason,
    }


def _session(key: ApiKey) -> Endpoint:
    async def session(request: Request) -> Response:
        """The middleware let the key through: set the event stream's cookie."""
        response = Response(status_code=204)
        if key.required:
            response.set_cookie(
                EVENTS_COOKIE,
                key.cookie_value,
                path=EVENTS_PATH,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    return session


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


def create_app(
    orchestrator: Orchestrator,
    broadcaster: TransitionBroadcaster,
    *,
    api_key: str = "",
    heartbeat_seconds: float = 15.0,
    listen_host: str = "127.0.0.1",
    writing: WritingCalls,
) -> Starlette:
    """The web view's application. With `api_key`, every /api/ call needs it. Served on a
    loopback `listen_host`, it answers only requests addressed to a loopback name. Its writes
    (cancel, resume) are counted in `writing`, the server's writing calls, so that a shutdown
    refuses new ones and answers those in flight."""
    api = WebApi(orchestrator, broadcaster, writing)
    key = ApiKey(api_key)
    routes: Sequence[Any] = [
        Route("/", _index),
        Route("/api/flow-runs", _answering(api.flow_runs)),
        Route("/api/flow-runs/{run_id}", _answering(api.flow_run)),
        Route("/api/flow-runs/{run_id}/cancel", _answering(api.cancel), methods=["POST"]),
        Route("/api/flow-runs/{run_id}/resume", _answering(api.resume), methods=["POST"]),
        Route("/api/flow-runs/{run_id}/logs", _answering(api.logs(RunKind.FLOW_RUN))),
        Route("/api/task-runs", _answering(api.task_runs)),
        Route("/api/task-runs/{run_id}", _answering(api.task_run)),
        Route("/api/task-runs/{run_id}/logs", _answering(api.logs(RunKind.TASK_RUN))),
        Route("/api/session", _session(key), methods=["POST"]),
        Route(EVENTS_PATH, events_endpoint(broadcaster, heartbeat_seconds)),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [Middleware(RequireApiKey, key=key)]
    if is_loopback(listen_host):
        middleware.insert(0, Middleware(RequireLoopbackHost))
    return Starlette(routes=list(routes), middleware=middleware)
