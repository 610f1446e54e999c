"""parse_moment: the one reading of the moments people type in filters (`--since` on the command
line, `?since=`/`?until=` in the HTTP API): ISO dates and date-times, local time without a zone,
and spans before now."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from stateward.times import parse_moment

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KOLKATA = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture
def in_kolkata(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is UTC+05:30 for the test."""
    monkeypatch.setenv("TZ", "IST-5:30")  # POSIX form: no zone database needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-21T09:30Z", datetime(2026, 11, 21, 9, 30, tzinfo=UTC)),
        ("2026-11-21 09:30:00+01:00", datetime(2026, 11, 21, 8, 30, tzinfo=UTC)),
        ("  2026-11-21T09:30:00.250000+00:00 ", datetime(2026, 11, 21, 9, 30, 0, 250000, UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5d", NOW - timedelta(days=1.5)),
        ("1W", NOW - timedelta(weeks=1)),
        ("45 s", NOW - timedelta(seconds=45)),
    ],
)
def test_dates_times_and_spans(text: str, moment: datetime) -> None:
    assert parse_moment(text, now=NOW) == moment


def test_without_a_zone_it_is_the_local_time_of_the_machine_reading_it(in_kolkata: None) -> None:
    read = parse_moment("2026-11-21T09:30")
    assert read == datetime(2026, 11, 21, 9, 30, tzinfo=KOLKATA)
    assert read.utcoffset() == timedelta(hours=5, minutes=30)
    assert parse_moment("2026-11-21") == datetime(2026, 11, 21, tzinfo=KOLKATA)


def test_a_span_counts_back_from_the_current_time_when_not_told() -> None:
    before = datetime.now(UTC)
    read = parse_moment("1h")
    assert before - timedelta(hours=1) <= read <= datetime.now(UTC) - timedelta(hours=1)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "2h ago", "-2h", ""])
def test_anything_else_is_refused_saying_what_is_taken(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_moment(text, now=NOW)
    assert str(refused.value) == (
        f"{text!r} is neither a date-time (2026-11-21, 2026-11-21T09:30, or with a zone: "
        "2026-11-21T09:30Z, 2026-11-21T09:30+01:00) nor a span before now (30m, 2h, 1d, 1w)"
    )
