"""Moments as people type them in filters: `--since` on the command line and `?since=` /
`?until=` in the web view's HTTP API read them with this one function, by one rule."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(text: str, now: datetime | None = None) -> datetime:
    """`text` as a time zone-aware moment. Takes an ISO 8601 date or date-time
    (`2026-11-21`, `2026-11-21T09:30`, `2026-11-21 09:30:00Z`, `...+01:00`), or a span before
    `now` (None: the current time) such as `30m`, `2h`, `1.5d`, `1w`. A date or date-time
    without a zone is in the local time zone of the machine reading it: the command line's
    for a command, the server's for its HTTP API. Raises ValueError saying what is taken."""
    value = text.strip()
    span = _SPAN.match(value.lower())
    if span:
        try:
            before = timedelta(**{_UNITS[span.group(2)]: float(span.group(1))})
            return (now or datetime.now(UTC)) - before
        except OverflowError:  # further back than a datetime goes (the year 1)
            raise ValueError(
                f"{text!r} reaches back before the year 1: give a shorter span"
            ) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a date-time (2026-11-21, 2026-11-21T09:30, or with a zone: "
            "2026-11-21T09:30Z, 2026-11-21T09:30+01:00) nor a span before now (30m, 2h, 1d, 1w)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


__all__ = ["parse_moment"]
