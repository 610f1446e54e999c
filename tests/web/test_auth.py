"""The web view with an API key: the page loads without it and asks; every API call needs the
key as a bearer token, except the event stream, which also takes the cookie a page gets by
proving the key once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, running_server
from tests.web.sse import EventStream

KEY = "web-secret-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder: Path = tmp_path_factory.mktemp("keyed")
    with running_server(folder, ui=True, env={"STATEWARD_API_KEY": KEY}) as server:
        yield server


def test_the_page_loads_without_the_key_but_the_api_needs_it(keyed_server) -> None:
    with httpx.Client(base_url=keyed_server.ui_url, timeout=10) as http:
        assert http.get("/").status_code == 200
        assert http.get("/static/app.js").status_code == 200
        for path in ("/api/flow-runs", "/api/task-runs", "/api/events"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert "API key" in refused.json()["error"]
            assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = http.get("/api/flow-runs", headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401
        right = http.get("/api/flow-runs", headers={"Authorization": f"Bearer {KEY}"})
        assert right.status_code == 200
        post = http.post(f"/api/flow-runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/cancel", json={})
        assert post.status_code == 401


def test_the_event_stream_takes_the_cookie_a_page_gets_with_the_key(keyed_server) -> None:
    with httpx.Client(base_url=keyed_server.ui_url, timeout=10) as http:
        assert http.post("/api/session").status_code == 401
        assert not http.cookies
        answer = http.post("/api/session", headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 204
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/api/events" in cookie
        assert KEY not in cookie
        with http.stream("GET", "/api/events") as response:
            assert response.status_code == 200
            assert EventStream(response).hello().data["reset"] is None
        value = http.cookies["stateward_events"]
    # The cookie opens the stream and nothing else, sent on every path.
    with httpx.Client(
        base_url=keyed_server.ui_url, timeout=10, cookies={"stateward_events": value}
    ) as http:
        assert http.get("/api/flow-runs").status_code == 401
        with http.stream("GET", "/api/events") as response:
            assert response.status_code == 200
    forged = {"stateward_events": "0" * 64}
    with httpx.Client(base_url=keyed_server.ui_url, timeout=10, cookies=forged) as http:
        assert http.get("/api/events").status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/flow-runs"),
        ("GET", "/api/events"),
        ("POST", f"/api/flow-runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/cancel"),
    ],
)
def test_a_view_on_loopback_refuses_another_host_name_dns_rebinding(web_server, method, path):
    """A page of evil.example whose name is made to resolve to 127.0.0.1 (DNS rebinding) is
    same-origin with itself: its requests carry Host: evil.example and no cross-site marks. A
    view listening on loopback answers only requests addressed to a loopback name."""
    port = web_server.ui_port
    with httpx.Client(base_url=web_server.ui_url, timeout=10) as http:
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            headers = {"Host": host, "Origin": f"http://{host}"}
            refused = http.request(method, path, headers=headers)
            assert refused.status_code == 403, (host, refused.text)
            assert "loopback" in refused.json()["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
            if method == "GET" and path == "/api/events":
                with http.stream(method, path, headers={"Host": host}) as answer:
                    assert answer.status_code == 200, host
            else:
                assert http.request(method, path, headers={"Host": host}).status_code != 403, host
