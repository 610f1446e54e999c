"""The web view's event stream over real HTTP: ids are transition sequences, a reconnection with
Last-Event-ID misses nothing and repeats nothing (across a server restart too), idle streams get
heartbeats, and a cursor the log cannot serve restarts the page's view."""

from __future__ import annotations

import signal
import threading
import uuid
from pathlib import Path

import httpx

from tests.support import ST, ServerProcess, new_flow_run, propose, running_server, wait_until
from tests.web.sse import EventStream


def make_transitions(stub, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    """`count` transitions on new runs of one flow; returns the run ids in order."""
    flow = f"streamed-{uuid.uuid4().hex[:8]}"
    return [new_flow_run(stub, flow_name=flow).id for _ in range(count)]


def newest_sequence(http: httpx.Client) -> int:
    return int(http.get("/api/flow-runs", params={"page_size": 1}).json()["sequence"])


def test_events_are_transitions_with_their_sequence_as_id(web_server: ServerProcess) -> None:
    stub = web_server.stub()
    with httpx.Client(base_url=web_server.ui_url, timeout=20) as http:
        after = newest_sequence(http)
        runs = make_transitions(stub, 3)
        propose(stub, runs[0], ST.STATE_TYPE_RUNNING)
        with http.stream("GET", "/api/events", params={"after": after}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = EventStream(response)
            hello, found = stream.hello(), stream.transitions(4)
    assert hello.id == str(after) and hello.data == {"sequence": after, "reset": None}
    assert [int(event.id) for event in found] == list(range(after + 1, after + 5))
    assert [event.data["sequence"] for event in found] == list(range(after + 1, after + 5))
    assert [event.data["run_id"] for event in found] == [*runs, runs[0]]
    last = found[-1].data
    assert last["run_kind"] == "flow_run" and last["flow_name"].startswith("streamed-")
    assert last["from_state"]["type"] == "PENDING" and last["to_state"]["type"] == "RUNNING"


def test_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(
    web_server: ServerProcess,
) -> None:
    stub = web_server.stub()
    with httpx.Client(base_url=web_server.ui_url, timeout=20) as http:
        after = newest_sequence(http)
        make_transitions(stub, 5)
        with http.stream("GET", "/api/events", params={"after": after}) as response:
            stream = EventStream(response)
            stream.hello()
            first = stream.transitions(2)
        make_transitions(stub, 3)  # while no stream is open
        # A browser resumes with the header; it wins over the query the page first opened with.
        with http.stream(
            "GET",
            "/api/events",
            params={"after": after},
            headers={"Last-Event-ID": first[-1].id or ""},
        ) as response:
            stream = EventStream(response)
            hello, rest = stream.hello(), stream.transitions(6)
            # ...then it goes on live.
            live_run = make_transitions(stub, 1)[0]
            live = stream.transitions(1)[0]
    assert hello.data["sequence"] == after + 2
    assert [int(event.id) for event in first + rest] == list(range(after + 1, after + 9))
    assert live.data["run_id"] == live_run and int(live.id) == after + 9


def test_without_a_cursor_the_stream_starts_at_the_newest_transition(web_server) -> None:
    stub = web_server.stub()
    make_transitions(stub, 1)
    with httpx.Client(base_url=web_server.ui_url, timeout=20) as http:
        newest = newest_sequence(http)
        with http.stream("GET", "/api/events") as response:
            stream = EventStream(response)
            hello = stream.hello()
            assert hello.data["sequence"] >= newest
            run = make_transitions(stub, 1)[0]
            first = stream.transitions(1)[0]
    assert first.data["run_id"] == run


def test_a_cursor_from_another_database_restarts_the_view(web_server) -> None:
    with httpx.Client(base_url=web_server.ui_url, timeout=20) as http:
        newest = newest_sequence(http)
        with http.stream("GET", "/api/events", headers={"Last-Event-ID": "99999999"}) as response:
            hello = EventStream(response).hello()
        bad = http.get("/api/events", params={"after": "soon"})
    assert "beyond the newest transition" in hello.data["reset"]
    assert hello.data["sequence"] >= newest and int(hello.id or 0) == hello.data["sequence"]
    assert bad.status_code == 400


def test_idle_streams_get_heartbeats(web_server: ServerProcess) -> None:
    with (
        httpx.Client(base_url=web_server.ui_url, timeout=20) as http,
        http.stream("GET", "/api/events") as response,
    ):
        stream = EventStream(response)
        stream.hello()
        # The server was started with --ui-heartbeat 0.5: wait for two beats.
        comments = stream.until_comments(2)
    assert all(comment.startswith("ping") for comment in comments), comments


def test_a_stream_ends_at_shutdown_and_resumes_after_the_restart(tmp_path: Path) -> None:
    with running_server(tmp_path, ui=True) as server:
        stub = server.stub()
        with httpx.Client(base_url=server.ui_url, timeout=20) as http:
            after = newest_sequence(http)
            make_transitions(stub, 2)
            received: list[int] = []
            ended = threading.Event()

            def read() -> None:
                with http.stream("GET", "/api/events", params={"after": after}) as response:
                    stream = EventStream(response)
                    stream.hello()
                    try:
                        while True:
                            received.append(int(stream.transitions(1)[0].id or 0))
                    except EOFError:
                        ended.set()  # the server closed the stream

            reader = threading.Thread(target=read)
            reader.start()
            wait_until(lambda: len(received) == 2, what="the first transitions")
            server.stop(signal.SIGTERM)
            assert ended.wait(20), "the stream did not end at shutdown"
            reader.join()
            server.restart()
            stub = server.stub()
            make_transitions(stub, 3)
        with (
            httpx.Client(base_url=server.ui_url, timeout=20) as http,
            http.stream(
                "GET", "/api/events", headers={"Last-Event-ID": str(received[-1])}
            ) as response,
        ):
            stream = EventStream(response)
            stream.hello()
            rest = stream.transitions(3)
    assert received + [int(event.id or 0) for event in rest] == list(range(after + 1, after + 6))
