"""Prune selection against PBS's documented simulator examples, and the property string."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from binome.backup.prune import (
    BackupEntry,
    Mark,
    PruneError,
    PruneOptions,
    compute_prune,
    format_prune_backups,
    parse_prune_backups,
)


def _series(start: datetime, step: timedelta, count: int) -> list[BackupEntry]:
    return [BackupEntry(id=(start + i * step).strftime("%m-%d %H"), time=start + i * step)
            for i in range(count)]


def _kept(marks: dict[str, Mark]) -> set[str]:
    return {k for k, m in marks.items() if m is Mark.KEEP}


def test_daily_last_daily_weekly() -> None:
    backups = _series(datetime(2025, 1, 1, 2), timedelta(days=1), 20)
    marks = compute_prune(backups, parse_prune_backups("keep-last=2,keep-daily=3,keep-weekly=2"))
    assert _kept(marks) == {"01-20 02", "01-19 02", "01-18 02", "01-17 02", "01-16 02",
                            "01-12 02", "01-05 02"}


def test_six_hourly_last_and_daily() -> None:
    backups = _series(datetime(2025, 3, 1, 0), timedelta(hours=6), 12)
    marks = compute_prune(backups, parse_prune_backups("keep-last=1,keep-daily=2"))
    assert _kept(marks) == {"03-03 18", "03-02 18", "03-01 18"}


def test_weekly_consumes_its_week_before_monthly() -> None:
    backups = _series(datetime(2025, 1, 20, 20), timedelta(days=1), 14)
    marks = compute_prune(backups, parse_prune_backups("keep-weekly=1,keep-monthly=2"))
    assert _kept(marks) == {"02-02 20", "01-26 20"}


def test_protected_never_removed_and_not_counted() -> None:
    backups = _series(datetime(2025, 1, 1), timedelta(days=1), 5)
    backups[-1] = BackupEntry(id=backups[-1].id, time=backups[-1].time, protected=True)
    backups[0] = BackupEntry(id=backups[0].id, time=backups[0].time, protected=True)
    marks = compute_prune(backups, PruneOptions(keep_last=2))
    assert marks["01-05 00"] is Mark.PROTECTED and marks["01-01 00"] is Mark.PROTECTED
    assert _kept(marks) == {"01-04 00", "01-03 00"}
    assert marks["01-02 00"] is Mark.REMOVE


def test_keep_all_and_all_zero_keep_everything() -> None:
    backups = _series(datetime(2025, 1, 1), timedelta(days=1), 3)
    assert set(compute_prune(backups, PruneOptions(keep_all=True)).values()) == {Mark.KEEP}
    assert set(compute_prune(backups, PruneOptions()).values()) == {Mark.KEEP}


def test_unfinished_newest_kept_older_unfinished_removed() -> None:
    t = datetime(2025, 1, 1)
    backups = [BackupEntry("a", t, finished=False), BackupEntry("b", t + timedelta(days=1)),
               BackupEntry("c", t + timedelta(days=2), finished=False)]
    marks = compute_prune(backups, PruneOptions(keep_last=5))
    assert marks == {"c": Mark.KEEP, "b": Mark.KEEP, "a": Mark.REMOVE}


def test_yearly_and_hourly_periods() -> None:
    start = datetime(2023, 12, 31, 22)
    backups = [BackupEntry(id=(start + i * timedelta(minutes=30)).strftime("%m-%d %H:%M"),
                           time=start + i * timedelta(minutes=30)) for i in range(8)]
    marks = compute_prune(backups, PruneOptions(keep_hourly=2, keep_yearly=2))
    assert _kept(marks) == {"01-01 01:30", "01-01 00:30", "12-31 23:30"}


@pytest.mark.parametrize("text", [
    "keep-last", "keep-last=-1", "keep-last=x", "keep-foo=1", "keep-all=2",
    "keep-all=1,keep-last=2", "keep-last=1,keep-last=2",
])
def test_bad_property_strings_rejected(text: str) -> None:
    with pytest.raises(PruneError):
        parse_prune_backups(text)


def test_round_trip() -> None:
    options = parse_prune_backups(" keep-daily=7, keep-last=3 ")
    assert format_prune_backups(options) == "keep-last=3,keep-daily=7"
    assert format_prune_backups(parse_prune_backups("keep-all=1")) == "keep-all=1"
