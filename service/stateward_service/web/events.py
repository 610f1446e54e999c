"""GET /api/events: every transition as a Server-Sent Event, resumable like WatchTransitions.

Each event's `id:` is the transition's sequence. A stream starts after `Last-Event-ID` (what a
browser sends when it reconnects by itself), else after `?after=N` (the cursor a page got with
its data), else at the newest transition; it replays what it missed from the broadcaster's ring
or the log, with no gap and no duplicate, then goes on live. It opens with a `hello` event whose
id is that starting cursor, so a page that loses the stream before any transition resumes from
there. A cursor the log cannot resume from (another database's, or one retention pruned) starts
the stream at the newest transition with `"reset": <why>` in the `hello` event: the page reloads
its data. A database that cannot be reached when the cursor is checked is answered 503, as the
API answers it, and logged in one line: the page tries again. One that goes away while a stream
replays from the log ends that stream, said in one line too: the browser reconnects from the
last event it got. Comment lines every `heartbeat` seconds keep proxies from closing an idle
stream. At shutdown the stream ends and the browser reconnects with its Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stateward_service.broadcaster import (
    CursorAhead,
    CursorExpired,
    StreamClosed,
    TransitionBroadcaster,
    TransitionFilter,
)
from stateward_service.store import DatabaseUnavailable
from stateward_service.web.documents import encode_transition

log = logging.getLogger("stateward.server")

RECONNECT_MILLISECONDS = 1000  # how soon a browser reconnects after the stream ends
_EVERYTHING = TransitionFilter()


def _cursor(request: Request) -> int | None:
    """The sequence the stream starts after, if the request names one; ValueError if it is
    not a sequence."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    if raw is None or raw == "":
        return None
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


async def _stream(
    broadcaster: TransitionBroadcaster, after: int | None, reset: str | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    start = broadcaster.last_sequence if after is None else after
    yield ServerSentEvent(
        data=json.dumps({"sequence": start, "reset": reset}),
        event="hello",
        id=str(start),
        retry=RECONNECT_MILLISECONDS,
        sep="\n",
    )
    reached = start
    try:
        async with aclosing(broadcaster.subscribe(_EVERYTHING, start, encode_transition)) as feed:
            async for reached, frame in feed:  # noqa: B007 - `reached` is read after the loop
                yield frame
    except (StreamClosed, CursorExpired):
        # Shutting down, or this page fell behind what the log keeps: either way the browser
        # reconnects with its Last-Event-ID, and the new stream resumes or says to reload.
        return
    except DatabaseUnavailable as error:
        # A replay reads the log: the database went away meanwhile. The stream ends as any
        # other (the browser reconnects, and its next try is refused 503 until the database
        # is back), said in one line.
        said = " ".join(str(error).split())
        log.warning(
            "web view: an event stream's replay stopped after %d (the page resumes from there): %s",
            reached,
            said,
        )


def events_endpoint(
    broadcaster: TransitionBroadcaster, heartbeat: float
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint; `heartbeat`: seconds between comment lines on an idle stream."""

    async def events(request: Request) -> Response:
        try:
            after = _cursor(request)
        except ValueError:
            return JSONResponse(
                {"error": "Last-Event-ID / after: not a transition sequence (an integer >= 0)"},
                status_code=400,
            )
        reset = None
        if after is not None:
            try:
                await asyncio.to_thread(broadcaster.check_cursor, after)
            except (CursorAhead, CursorExpired) as error:
                reset, after = str(error), None
            except DatabaseUnavailable as error:
                # One line (the message may hold the driver's several): the page tries again.
                said = " ".join(str(error).split())
                log.warning("web view: an event stream after %d was refused: %s", after, said)
                return JSONResponse({"error": f"{error}; try again"}, status_code=503)
        return EventSourceResponse(
            _stream(broadcaster, after, reset),
            ping=heartbeat,
            sep="\n",
            send_timeout=30,
            headers={"Cache-Control": "no-store"},
        )

    return events
