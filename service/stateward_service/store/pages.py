"""Page tokens of the run listings: opaque to clients, tied to the listing and its filters."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

# A page of a listing stops before this many bytes of runs or states (their text and results),
# below the 4 MiB a gRPC client receives by default; it holds one item at least.
PAGE_BYTES = 3 * 1024 * 1024
STATES = 0  # the kind a page token of states carries (runs carry their RunKind)


class BadPageToken(ValueError):
    """A page token that this store did not make for these filters."""


def encode_page_token(rowid: int, kind: int, fingerprint: str) -> str:
    payload = json.dumps({"k": int(kind), "r": rowid, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: int, fingerprint: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        rowid, token_kind, token_filter = payload["r"], payload["k"], payload["f"]
    except (ValueError, TypeError, KeyError, UnicodeError, RecursionError) as error:
        raise BadPageToken("the page token is not one this server made") from error
    # Runs' positions are rowids, from 1; a state's (its sequence, on SQLite) is below zero
    # for a state whose transition was pruned before schema 9 (see its migration).
    lowest = -(2**63) if kind == STATES else 0
    if token_kind != int(kind) or not isinstance(rowid, int) or not lowest <= rowid < 2**63:
        raise BadPageToken("the page token belongs to another listing")
    if token_filter != fingerprint:
        raise BadPageToken(
            "the page token was made for other filters; repeat the first request's filters "
            "or start again without a token"
        )
    return rowid


def page(cursor: Any, count: int, budget: int) -> tuple[list[Any], bool]:
    """The cursor's rows, up to `count` of them and while their text and blobs stay within
    `budget` bytes (the first row whatever its size), and whether more rows follow. Rows are
    read one at a time: a page never holds more in memory than it answers with."""
    rows: list[Any] = []
    used = 0
    try:
        while (row := cursor.fetchone()) is not None:
            size = 64 + sum(len(value) for value in row if isinstance(value, str | bytes))
            if len(rows) == count or (rows and used + size > budget):
                return rows, True
            rows.append(row)
            used += size
        return rows, False
    finally:
        cursor.close()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
