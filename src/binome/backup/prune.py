"""Retention of backups: PBS/PVE prune selection and the `prune-backups` property string.

Pure logic. The selection is PBS's `compute_prune_info` (pbs-datastore/src/prune.rs), which
PVE's `prune_mark_backup_group` and the prune simulator share: rules apply in the order
last, hourly, daily, weekly, monthly, yearly; each keeps the newest backup of each period
(local time, ISO weeks) whose period no earlier rule already kept, and marks the older
backups of a period it kept as `remove`, so a rule "consumes" its periods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

KEEP_OPTIONS: tuple[str, ...] = (
    "keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly",
)


class PruneError(ValueError):
    """A `prune-backups` value that cannot be used; the message says which part and why."""


class Mark(StrEnum):
    KEEP = "keep"
    REMOVE = "remove"
    PROTECTED = "protected"


@dataclass(frozen=True)
class PruneOptions:
    """Retention settings; all counts zero and not keep_all means keep everything too."""

    keep_all: bool = False
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name.replace("-", "_")) for name in KEEP_OPTIONS}

    def keeps_all(self) -> bool:
        return self.keep_all or not any(self.counts().values())


@dataclass(frozen=True)
class BackupEntry:
    """One backup of a group as prune sees it. `time` is local (aware or naive)."""

    id: str
    time: datetime
    protected: bool = False
    finished: bool = True


def parse_prune_backups(text: str) -> PruneOptions:
    """Parse `keep-last=3,keep-daily=7` (or `keep-all=1`); raise PruneError on bad input."""
    values: dict[str, int] = {}
    keep_all = False
    seen: set[str] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if "=" not in part:
            raise PruneError(f"prune-backups: '{part}' is not key=value")
        key, _, value = (s.strip() for s in part.partition("="))
        if key in seen:
            raise PruneError(f"prune-backups: '{key}' given twice")
        seen.add(key)
        if key != "keep-all" and key not in KEEP_OPTIONS:
            raise PruneError(f"prune-backups: unknown option '{key}'")
        if not value.isdigit():
            raise PruneError(f"prune-backups: '{key}' needs an integer >= 0, got '{value}'")
        number = int(value)
        if key == "keep-all":
            if number not in (0, 1):
                raise PruneError("prune-backups: 'keep-all' is 0 or 1")
            keep_all = bool(number)
        else:
            values[key.replace("-", "_")] = number
    if keep_all and any(values.values()):
        raise PruneError("prune-backups: 'keep-all' conflicts with the other keep options")
    return PruneOptions(keep_all=keep_all, **values)


def format_prune_backups(options: PruneOptions) -> str:
    """The canonical property string: only non-zero options, in PVE's order."""
    if options.keep_all:
        return "keep-all=1"
    parts = [f"{name}={count}" for name, count in options.counts().items() if count]
    return ",".join(parts) if parts else "keep-all=1"


def options_from_mapping(mapping: dict[str, Any]) -> PruneOptions:
    """Options from an API object ({'keep-last': 3, ...}); same validation as the string."""
    return parse_prune_backups(",".join(f"{k}={v}" for k, v in mapping.items()))


_PERIOD_KEYS: dict[str, Callable[[datetime], str]] = {
    "keep-last": lambda t: t.isoformat(),
    "keep-hourly": lambda t: t.strftime("%Y/%m/%d/%H"),
    "keep-daily": lambda t: t.strftime("%Y/%m/%d"),
    "keep-weekly": lambda t: "{:04d}/{:02d}".format(*t.isocalendar()[:2]),
    "keep-monthly": lambda t: t.strftime("%Y/%m"),
    "keep-yearly": lambda t: t.strftime("%Y"),
}


def _mark_selections(ordered: Sequence[BackupEntry], marks: dict[str, Mark], keep: int,
                     period: Callable[[datetime], str]) -> None:
    already_included = {period(b.time) for b in ordered if marks.get(b.id) is Mark.KEEP}
    included: set[str] = set()
    for backup in ordered:
        if backup.id in marks:
            continue
        if backup.protected:
            marks[backup.id] = Mark.PROTECTED
            continue
        key = period(backup.time)
        if key in already_included:
            continue
        if key not in included:
            if len(included) >= keep:
                break
            included.add(key)
            marks[backup.id] = Mark.KEEP
        else:
            marks[backup.id] = Mark.REMOVE


def compute_prune(backups: Iterable[BackupEntry], options: PruneOptions) -> dict[str, Mark]:
    """Mark every backup of one group keep, remove or protected (a dry run: nothing is removed).

    Unfinished backups are removed, except the newest backup if it is unfinished (a backup
    still running); protected ones are always `protected` and never count toward a rule.
    """
    ordered = sorted(backups, key=lambda b: b.time, reverse=True)
    if len({b.id for b in ordered}) != len(ordered):
        raise PruneError("prune: backup ids must be unique")
    marks: dict[str, Mark] = {}
    keep_unfinished = True
    for backup in ordered:
        if backup.finished:
            keep_unfinished = False
            continue
        marks[backup.id] = Mark.KEEP if keep_unfinished else Mark.REMOVE
        keep_unfinished = False
    if not options.keeps_all():
        for name, count in options.counts().items():
            if count:
                _mark_selections(ordered, marks, count, _PERIOD_KEYS[name])
    default = Mark.KEEP if options.keeps_all() else Mark.REMOVE
    return {
        b.id: Mark.PROTECTED if b.protected else marks.get(b.id, default) for b in ordered
    }


def mark_backup_list(backups: Iterable[dict[str, Any]],
                     options: PruneOptions) -> list[dict[str, Any]]:
    """PVE's storage `prune_backups` dry run over a backup listing (`volid`, `ctime`,
    `vmid`, `subtype`, `protected`): each guest's backups form a group; returns
    `{volid, ctime, mark, type, vmid}` per backup, newest first within a group."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in backups:
        kind = str(entry.get("subtype") or "qemu")
        groups.setdefault((kind, int(entry["vmid"])), []).append(entry)
    out: list[dict[str, Any]] = []
    for (kind, vmid), entries in sorted(groups.items()):
        marks = compute_prune(
            [BackupEntry(id=str(e["volid"]), time=datetime.fromtimestamp(int(e["ctime"])),
                         protected=bool(e.get("protected"))) for e in entries], options)
        for entry in sorted(entries, key=lambda e: int(e["ctime"]), reverse=True):
            out.append({"volid": entry["volid"], "ctime": int(entry["ctime"]),
                        "mark": str(marks[str(entry["volid"])]), "type": kind,
                        "vmid": vmid})
    return out
