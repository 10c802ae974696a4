"""PVE/PBS calendar events (backup job schedules): parse them and compute the next run.

Pure logic. The syntax is PVE's (proxmox-time `calendar_event.rs`, systemd.time-like):
`[WEEKDAY] [[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]] [UTC]`, each field a list of
`*`, `N`, `N..M`, `N/STEP`, `N..M/STEP` or `*/STEP`; a bare time number is minutes of
every hour; a weekday or date alone means 00:00; keywords `minutely`, `hourly`, `daily`,
`weekly`, `monthly`, `yearly`/`annually`, `quarterly`, `semiannually`. No PyPI library
implements this syntax (croniter is cron's), so it lives here, small and tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                  "sunday")
KEYWORDS: dict[str, str] = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "semiannually": "*-01,07-01 00:00:00",
}
_YEARS_AHEAD = 30


class CalendarError(ValueError):
    """A schedule that cannot be parsed; the message names the bad part."""


@dataclass(frozen=True)
class CalendarEvent:
    """A parsed schedule: the allowed values of each field (None for a year means any)."""

    text: str
    weekdays: frozenset[int]
    years: frozenset[int] | None
    months: frozenset[int]
    days: frozenset[int]
    hours: frozenset[int]
    minutes: frozenset[int]
    seconds: frozenset[int]
    utc: bool = False

    def next_run(self, after: datetime, tz: tzinfo | None = None) -> datetime | None:
        """The first event strictly after `after` (at or after after+1 s), or None if none.

        Fields are matched in `tz` (UTC if the event says `UTC`); the result is aware.
        Local times that do not exist (a DST gap) are skipped.
        """
        zone = UTC if self.utc else (tz or after.tzinfo or UTC)
        if after.tzinfo is None:
            after = after.replace(tzinfo=zone)
        start = (after.astimezone(zone) + timedelta(seconds=1)).replace(microsecond=0)
        last_year = (max(self.years) if self.years is not None
                     else start.year + _YEARS_AHEAD)
        for year in range(start.year, last_year + 1):
            if self.years is not None and year not in self.years:
                continue
            for month in sorted(self.months):
                if (year, month) < (start.year, start.month):
                    continue
                for day in sorted(self.days):
                    try:
                        candidate_day = date(year, month, day)
                    except ValueError:
                        continue
                    if candidate_day < start.date():
                        continue
                    if candidate_day.weekday() not in self.weekdays:
                        continue
                    found = self._first_time_on(candidate_day, start, zone)
                    if found is not None:
                        return found
        return None

    def _first_time_on(self, day: date, start: datetime, zone: tzinfo) -> datetime | None:
        for hour in sorted(self.hours):
            for minute in sorted(self.minutes):
                for second in sorted(self.seconds):
                    local = datetime(day.year, day.month, day.day, hour, minute, second,
                                     tzinfo=zone)
                    if local < start:
                        continue
                    round_trip = local.astimezone(UTC).astimezone(zone)
                    if round_trip.replace(tzinfo=None) != local.replace(tzinfo=None):
                        continue  # in a DST gap
                    return local
        return None


def _parse_field(text: str, low: int, high: int, what: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CalendarError(f"empty {what} in '{text}'")
        base, _, step_text = item.partition("/")
        step = 0
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CalendarError(f"bad {what} repetition '{item}'")
            step = int(step_text)
            if step > high:
                raise CalendarError(f"{what} repetition {step} out of range in '{item}'")
        if base == "*":
            first, last = low, high
            step = step or 1
        else:
            first_text, dots, last_text = base.partition("..")
            if not first_text.isdigit() or (dots and not last_text.isdigit()):
                raise CalendarError(f"bad {what} '{item}'")
            first = int(first_text)
            last = int(last_text) if dots else (high if step else first)
            if not (low <= first <= high and low <= last <= high):
                raise CalendarError(f"{what} out of range ({low}..{high}) in '{item}'")
            if last < first:
                raise CalendarError(f"{what} range '{base}' goes backwards")
        values.update(range(first, last + 1, step or 1))
    return frozenset(values)


def _weekday_number(name: str) -> int:
    lowered = name.lower()
    if lowered in WEEKDAYS:
        return WEEKDAYS.index(lowered)
    if lowered in _FULL_WEEKDAYS:
        return _FULL_WEEKDAYS.index(lowered)
    raise CalendarError(f"unknown weekday '{name}'")


def _parse_weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split(","):
        if not item:
            continue
        first, dots, last = item.partition("..")
        a = _weekday_number(first)
        b = _weekday_number(last) if dots else a
        if b < a:
            raise CalendarError(f"weekday range '{item}' wraps around (write it as a list)")
        days.update(range(a, b + 1))
    if not days:
        raise CalendarError(f"empty weekday list '{text}'")
    return frozenset(days)


def parse_calendar_event(text: str) -> CalendarEvent:
    """Parse a PVE schedule such as `sat 02:00`, `mon..fri 21:30`, `*/15` or `daily`."""
    original = text
    stripped = text.strip()
    if not stripped:
        raise CalendarError("empty calendar event")
    stripped = KEYWORDS.get(stripped.lower(), stripped)
    tokens = stripped.split()
    utc = False
    if tokens and tokens[-1].upper() == "UTC":
        utc = True
        tokens.pop()
    weekdays = frozenset(range(7))
    if tokens and tokens[0][:1].isalpha():
        weekdays = _parse_weekdays(tokens.pop(0).rstrip(","))
        while tokens and tokens[0][:1].isalpha():  # `mon, wed` written with a space
            weekdays |= _parse_weekdays(tokens.pop(0).rstrip(","))
    years: frozenset[int] | None = None
    months = frozenset(range(1, 13))
    days = frozenset(range(1, 32))
    date_given = False
    if tokens and "-" in tokens[0]:
        parts = tokens.pop(0).split("-")
        if len(parts) == 3:
            years = None if parts[0] == "*" else _parse_field(parts[0], 1970, 9999, "year")
            parts = parts[1:]
        if len(parts) != 2:
            raise CalendarError(f"bad date in '{original}'")
        months = _parse_field(parts[0], 1, 12, "month")
        days = _parse_field(parts[1], 1, 31, "day")
        date_given = True
    hours, minutes, seconds = frozenset({0}), frozenset({0}), frozenset({0})
    if tokens:
        time_parts = tokens.pop(0).split(":")
        if len(time_parts) == 1:
            hours = frozenset(range(24))
            minutes = _parse_field(time_parts[0], 0, 59, "minute")
        elif len(time_parts) in (2, 3):
            hours = _parse_field(time_parts[0], 0, 23, "hour")
            minutes = _parse_field(time_parts[1], 0, 59, "minute")
            if len(time_parts) == 3:
                seconds = _parse_field(time_parts[2], 0, 59, "second")
        else:
            raise CalendarError(f"bad time in '{original}'")
    elif not date_given and weekdays == frozenset(range(7)):
        raise CalendarError(f"'{original}' has no weekday, date or time")
    if tokens:
        raise CalendarError(f"unexpected '{' '.join(tokens)}' in '{original}'")
    return CalendarEvent(text=original.strip(), weekdays=weekdays, years=years, months=months,
                         days=days, hours=hours, minutes=minutes, seconds=seconds, utc=utc)


def next_run(schedule: str, after: datetime, tz: tzinfo | None = None) -> datetime | None:
    """Parse `schedule` and return its next event after `after` (see CalendarEvent.next_run)."""
    return parse_calendar_event(schedule).next_run(after, tz)
