"""PVE calendar events: the documented examples, errors and DST."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from binome.backup.calendar import CalendarError, next_run, parse_calendar_event

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
# Saturday 2026-12-05 10:34:00
NOW = datetime(2026, 12, 5, 10, 34, tzinfo=UTC)


def _runs(schedule: str, count: int, after: datetime = NOW) -> list[str]:
    out = []
    for _ in range(count):
        found = next_run(schedule, after)
        assert found is not None
        out.append(found.strftime("%a %Y-%m-%d %H:%M:%S"))
        after = found
    return out


@pytest.mark.parametrize(("schedule", "expected"), [
    ("sat 02:00", ["Sat 2026-12-12 02:00:00", "Sat 2026-12-19 02:00:00"]),
    ("*-*-* 20:00", ["Sat 2026-12-05 20:00:00", "Sun 2026-12-06 20:00:00"]),
    ("mon..fri 21:30", ["Mon 2026-12-07 21:30:00", "Tue 2026-12-08 21:30:00"]),
    ("daily", ["Sun 2026-12-06 00:00:00", "Mon 2026-12-07 00:00:00"]),
    ("hourly", ["Sat 2026-12-05 11:00:00", "Sat 2026-12-05 12:00:00"]),
    ("weekly", ["Mon 2026-12-07 00:00:00", "Mon 2026-12-14 00:00:00"]),
    ("monthly", ["Fri 2027-01-01 00:00:00", "Mon 2027-02-01 00:00:00"]),
    ("yearly", ["Fri 2027-01-01 00:00:00", "Sat 2028-01-01 00:00:00"]),
    ("quarterly", ["Fri 2027-01-01 00:00:00", "Thu 2027-04-01 00:00:00"]),
    ("*/15", ["Sat 2026-12-05 10:45:00", "Sat 2026-12-05 11:00:00"]),
    ("12,14:00", ["Sat 2026-12-05 12:00:00", "Sat 2026-12-05 14:00:00",
                  "Sun 2026-12-06 12:00:00"]),
    ("mon,wed 8..17/2:00", ["Mon 2026-12-07 08:00:00", "Mon 2026-12-07 10:00:00",
                            "Mon 2026-12-07 12:00:00", "Mon 2026-12-07 14:00:00",
                            "Mon 2026-12-07 16:00:00", "Wed 2026-12-09 08:00:00"]),
    ("mon..wed 30/10", ["Mon 2026-12-07 00:30:00", "Mon 2026-12-07 00:40:00",
                        "Mon 2026-12-07 00:50:00", "Mon 2026-12-07 01:30:00"]),
    ("fri 12..13:5/20", ["Fri 2026-12-11 12:05:00", "Fri 2026-12-11 12:25:00",
                         "Fri 2026-12-11 12:45:00", "Fri 2026-12-11 13:05:00",
                         "Fri 2026-12-11 13:25:00", "Fri 2026-12-11 13:45:00",
                         "Fri 2026-12-18 12:05:00"]),
    ("12/2:5", ["Sat 2026-12-05 12:05:00", "Sat 2026-12-05 14:05:00"]),
    ("sat *-1..7 15:00", ["Sat 2026-12-05 15:00:00", "Sat 2027-01-02 15:00:00"]),
    ("*-05", ["Tue 2027-01-05 00:00:00", "Fri 2027-02-05 00:00:00"]),
    ("2027-10-21", ["Thu 2027-10-21 00:00:00"]),
    ("*", ["Sat 2026-12-05 10:35:00", "Sat 2026-12-05 10:36:00"]),
    ("mon..fri 8..17,22:0/15", ["Mon 2026-12-07 08:00:00", "Mon 2026-12-07 08:15:00"]),
    ("*:*:0/20", ["Sat 2026-12-05 10:34:20", "Sat 2026-12-05 10:34:40"]),
])
def test_documented_examples(schedule: str, expected: list[str]) -> None:
    assert _runs(schedule, len(expected)) == expected


def test_past_date_has_no_next_run() -> None:
    assert next_run("2015-10-21", NOW) is None


def test_event_at_exact_time_is_not_repeated() -> None:
    at = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)
    assert next_run("20:00", at) == datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def test_local_time_and_utc_flag() -> None:
    after = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    local = next_run("20:00", after, PARIS)
    assert local is not None and local.astimezone(UTC).hour == 19
    flagged = next_run("20:00 UTC", after, PARIS)
    assert flagged is not None and flagged.astimezone(UTC).hour == 20


def test_dst_gap_skipped() -> None:
    after = datetime(2027, 3, 27, 12, 0, tzinfo=PARIS)  # 2027-03-28 02:30 does not exist
    found = next_run("02:30", after, PARIS)
    assert found is not None and found.day == 29


def test_full_weekday_names_and_case() -> None:
    event = parse_calendar_event("Monday,FRI 10:00")
    assert event.weekdays == frozenset({0, 4})


@pytest.mark.parametrize("bad", [
    "", "61", "*/61", "fri..mon", "25:00", "foo 10:00", "*-13-01", "10:00 extra",
    "1:2:3:4", "*/0", "5..3", "12:,", "*-*-*-*",
])
def test_rejected(bad: str) -> None:
    with pytest.raises(CalendarError):
        parse_calendar_event(bad)
