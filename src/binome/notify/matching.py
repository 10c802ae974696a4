"""Which targets an event goes to: PVE 8's matcher semantics (severity, field, calendar rules).

Pure. Rules within one option and across options combine with the matcher's mode (all/any);
invert-match negates the result; a matcher without rules always matches, even inverted.
A target is notified at most once per event, and disabled entries are skipped.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from binome.notify.config import TARGET_TYPES, Entry, NotificationConfig
from binome.notify.events import Event

log = logging.getLogger(__name__)
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@dataclass(frozen=True)
class FieldRule:
    field: str
    exact: tuple[str, ...] | None
    regex: re.Pattern[str] | None

    def matches(self, fields: dict[str, str]) -> bool:
        value = fields.get(self.field)
        if value is None:
            return False
        if self.exact is not None:
            return value in self.exact
        assert self.regex is not None
        return self.regex.search(value) is not None


def parse_field_rule(text: str) -> FieldRule:
    kind, sep, rest = text.partition(":")
    name, eq, value = rest.partition("=")
    if not sep or kind not in ("exact", "regex") or not eq or not name:
        raise ValueError(f"invalid match-field statement: {text}")
    if kind == "exact":
        return FieldRule(name, tuple(v.strip() for v in value.split(",")), None)
    try:
        return FieldRule(name, None, re.compile(value))
    except re.error as exc:
        raise ValueError(f"invalid regex: {exc}") from exc


@dataclass(frozen=True)
class CalendarRule:
    """A daily duration: weekdays (0=Mon) and a [start, end) range of minutes in the day."""

    days: frozenset[int]
    start: int
    end: int

    def matches(self, timestamp: float) -> bool:
        t = time.localtime(timestamp)
        minute = t.tm_hour * 60 + t.tm_min
        return t.tm_wday in self.days and self.start <= minute < self.end


def _minutes(text: str) -> int:
    hour, _, minute = text.partition(":")
    h, m = int(hour), int(minute or 0)
    if not (0 <= h <= 24 and 0 <= m < 60) or (h == 24 and m):
        raise ValueError
    return h * 60 + m


def parse_calendar(text: str) -> CalendarRule:
    """`8-12`, `mon-fri 9:00-17:00`, `sun,tue-wed,fri 9-17` (PVE's daily-duration format)."""
    parts = text.split()
    try:
        if len(parts) == 1:
            days, span = set(range(7)), parts[0]
        elif len(parts) == 2:
            days = set()
            for item in parts[0].split(","):
                first, _, last = item.partition("-")
                a = DAYS.index(first)
                b = DAYS.index(last) if last else a
                days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
            span = parts[1]
        else:
            raise ValueError
        start_s, dash, end_s = span.partition("-")
        start = _minutes(start_s)
        end = _minutes(end_s) if dash else start + 60
        if end <= start:
            raise ValueError
    except ValueError:
        raise ValueError(f"invalid match-calendar statement: {text}") from None
    return CalendarRule(frozenset(days), start, end)


def _combine(results: list[bool], mode: str) -> bool:
    return all(results) if mode == "all" else any(results)


def matcher_matches(matcher: Entry, event: Event) -> bool:
    opts = matcher.options
    mode = opts.get("mode", "all")
    per_option: list[bool] = []
    severities = [s.strip() for item in opts.get("match-severity", []) for s in item.split(",")]
    if severities:
        per_option.append(event.severity.value in severities)
    fields = [parse_field_rule(r) for r in opts.get("match-field", [])]
    if fields:
        per_option.append(_combine([r.matches(event.fields) for r in fields], mode))
    calendars = [parse_calendar(c) for c in opts.get("match-calendar", [])]
    if calendars:
        per_option.append(_combine([c.matches(event.timestamp) for c in calendars], mode))
    if not per_option:
        return True
    return _combine(per_option, mode) != bool(opts.get("invert-match"))


def targets_for(config: NotificationConfig, event: Event) -> list[Entry]:
    """The enabled targets an event goes to, each once, in config order."""
    names: set[str] = set()
    for matcher in config.matchers():
        if matcher.disabled:
            log.info("skipping disabled matcher '%s'", matcher.name)
            continue
        try:
            if matcher_matches(matcher, event):
                names.update(matcher.options.get("target", []))
        except ValueError as exc:
            log.error("matcher '%s' failed: %s", matcher.name, exc)
    out = []
    for entry in config.targets():
        if entry.name in names and entry.type in TARGET_TYPES:
            if entry.disabled:
                log.info("skipping disabled target '%s'", entry.name)
                continue
            out.append(entry)
    return out
