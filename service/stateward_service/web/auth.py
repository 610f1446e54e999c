"""The API key, for the web API: the same key as the gRPC API's, sent as `Authorization: Bearer
<key>` and compared in constant time. A browser's EventSource cannot send that header, so a page
that proved the key once gets a cookie for the event stream alone (HttpOnly, SameSite=Strict,
holding a digest of the key rather than the key itself); every other call needs the header.
Requests that change something and come from another site's page are refused. A view listening
on loopback answers only requests addressed to a loopback name: a site whose name is made to
resolve to 127.0.0.1 (DNS rebinding) would otherwise be the view's own origin in the browser."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

EVENTS_PATH = "/api/events"
EVENTS_COOKIE = "stateward_events"
_COOKIE_PURPOSE = b"stateward web view event stream"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiKey:
    """The key every API call must carry; an empty key lets every call through."""

    def __init__(self, key: str) -> None:
        self.required = bool(key)
        self._key = key.encode()
        self.cookie_value = hmac.new(self._key, _COOKIE_PURPOSE, hashlib.sha256).hexdigest()

    def bearer_ok(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._key)

    def cookie_ok(self, request: Request) -> bool:
        given = request.cookies.get(EVENTS_COOKIE, "")
        return hmac.compare_digest(given.encode(), self.cookie_value.encode())

    def allows(self, request: Request) -> bool:
        if not self.required or self.bearer_ok(request):
            return True
        return request.url.path == EVENTS_PATH and self.cookie_ok(request)


class RequireApiKey:
    """Middleware: /api/ calls without the key get 401; changes from another site's page 403.
    The page and its assets load without the key (the page then asks for it)."""

    def __init__(self, app: ASGIApp, key: ApiKey) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal: Response | None = None
        if request.method not in _SAFE_METHODS and _cross_site(request):
            refusal = JSONResponse(
                {"error": "a change must come from the Stateward page itself"}, status_code=403
            )
        elif not self.key.allows(request):
            refusal = JSONResponse(
                {"error": "this server needs its API key: Authorization: Bearer <key>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="stateward"'},
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, brackets allowed) names this machine's loopback."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequireLoopbackHost:
    """Middleware for a view listening on loopback: a request whose Host header names anything
    but loopback gets 403 (DNS rebinding: another site's page reaching 127.0.0.1 by its name)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Request(scope).headers.get("host", "")
            if not is_loopback(urlsplit(f"//{host}").hostname or ""):
                refusal = JSONResponse(
                    {
                        "error": f"this view listens on loopback and answers only requests to "
                        f"a loopback name (127.0.0.1, localhost), not {host!r}"
                    },
                    status_code=403,
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _cross_site(request: Request) -> bool:
    """Whether a browser says the request comes from a page of another origin."""
    if request.headers.get("sec-fetch-site", "") in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.headers.get("host", "")
