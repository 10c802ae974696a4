"""Backup jobs (PVE's `jobs.cfg` vzdump sections, `/cluster/backup`): the records in etcd
and the one place that builds and checks them.

Owns `/binome/backup/jobs/<id>`: one JSON record per job, PVE's section keys (`type`
vzdump, `schedule`, `enabled`, `node`, `vmid`|`all`|`pool`, `exclude`, `storage`, `mode`,
`compress`, `mailto`, `notification-mode`, `prune-backups`, `notes-template`,
`protected`, `comment`, `repeat-missed`, `bwlimit`, ...). `build_job` applies an
administrator's settings to a record with PVE's rules (API2/Backup.pm: the guest
selection is exactly one of vmid, all, pool; `exclude` implies `all`; the schedule is a
calendar event; `notes-template` and `protected` need a `storage`); `without_vmid` takes
a destroyed VM out of a job (PVE's purge). Every change bumps
the cluster config version in the same transaction. When a job runs is
`binome.backup.schedule`'s; who runs it, the daemon's backup scheduler.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from binome.backup.calendar import CalendarError, parse_calendar_event
from binome.backup.prune import PruneError, format_prune_backups, parse_prune_backups

JOBS = "/binome/backup/jobs/"
ID_RE = re.compile(r"[a-z][a-z0-9_-]+", re.IGNORECASE)      # PVE's pve-configid
VMID_LIST_RE = re.compile(r"[\d\s,;]+")
MODES = ("snapshot", "suspend", "stop")
COMPRESS = ("0", "1", "gzip", "lzo", "zstd")
NOTIFICATION_MODES = ("auto", "legacy-sendmail", "notification-system")
MAILNOTIFICATION = ("always", "failure")
#: every setting a job stores besides `type` (PVE's vzdump job properties binome runs)
SETTINGS: tuple[str, ...] = (
    "schedule", "enabled", "node", "vmid", "all", "pool", "exclude", "storage", "mode",
    "compress", "mailto", "mailnotification", "notification-mode", "prune-backups",
    "notes-template", "protected", "comment", "repeat-missed", "bwlimit", "remove",
)
BOOLEANS = ("enabled", "all", "protected", "repeat-missed", "remove")


class JobError(Exception):
    """A missing, duplicate or concurrently changed job (the API answers 500)."""


class JobSettingsError(ValueError):
    """Settings that make no valid job; `errors` maps each parameter to its problem."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def new_job_id() -> str:
    """PVE's generated id: `backup-` and the first 13 characters of a UUID."""
    return "backup-" + str(uuid.uuid4())[:13]


def digest(record: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


def parse_vmid_list(text: str) -> list[int]:
    """`100,101 102;103` as VM ids; ValueError with PVE's wording."""
    out: list[int] = []
    for part in re.split(r"[\s,;]+", text.strip()):
        if not part:
            continue
        if not part.isdigit() or not 100 <= int(part) <= 999_999_999:
            raise ValueError(f"value '{part}' does not look like a valid VM ID")
        if int(part) not in out:
            out.append(int(part))
    return out


def build_job(old: Mapping[str, Any] | None, settings: Mapping[str, Any],
              delete: Sequence[str] = ()) -> dict[str, Any]:
    """The record to store: `old` (None on create) changed by `settings` (None: not
    given) less `delete`. Raises JobSettingsError (per-parameter messages)."""
    errors: dict[str, str] = {}
    for name in delete:
        if name not in SETTINGS:
            errors["delete"] = f"unknown option '{name}'"
        elif name == "schedule":
            errors["delete"] = "unable to delete required option 'schedule'"
        elif settings.get(name) is not None:
            errors["delete"] = f"cannot set and delete property '{name}' at the same time!"
    if errors:
        raise JobSettingsError(errors)
    given = {k: v for k, v in settings.items() if k in SETTINGS and v is not None}
    record = {k: v for k, v in (old or {}).items() if k not in delete}
    record["type"] = "vzdump"
    record.update(given)
    if old is None:
        record.setdefault("enabled", 1)
    # a new guest selection replaces the old one (PVE's update_job)
    elif given.get("vmid"):
        for name in ("all", "exclude", "pool"):
            record.pop(name, None)
    elif given.get("all"):
        record.pop("vmid", None)
        record.pop("pool", None)
    elif record.get("pool"):
        for name in ("vmid", "all", "exclude"):
            record.pop(name, None)
    for name in BOOLEANS:
        if name in record:
            record[name] = int(bool(record[name]))
    # PVE's verify_vzdump_parameters, in its order
    for name in ("all", "exclude", "pool"):
        if record.get(name) and record.get("vmid"):
            raise JobSettingsError({name: "option conflicts with option 'vmid'"})
    if "exclude" in record and not record.get("pool"):
        record["all"] = 1             # PVE: exclude implies all (unless a pool is given)
    if not (record.get("all") or record.get("pool") or record.get("vmid")):
        errors["vmid"] = "property is missing"
    for name in ("vmid", "exclude"):
        if name in record:
            try:
                vmids = parse_vmid_list(str(record[name]))
            except ValueError as exc:
                errors[name] = str(exc)
            else:
                if not vmids:
                    errors[name] = "empty list of VM IDs"
                record[name] = ",".join(str(v) for v in vmids)
    schedule = record.get("schedule")
    if schedule in (None, ""):
        errors["schedule"] = "neither 'starttime' nor 'schedule' were set"
    else:
        try:
            parse_calendar_event(str(schedule))
        except CalendarError as exc:
            errors["schedule"] = f"invalid calendar event '{schedule}' - {exc}"
    if record.get("prune-backups") is not None:
        try:
            record["prune-backups"] = format_prune_backups(
                parse_prune_backups(str(record["prune-backups"])))
        except PruneError as exc:
            errors["prune-backups"] = str(exc)
    for name in ("notes-template", "protected"):
        if record.get(name) and not record.get("storage"):
            errors[name] = "option requires option 'storage'"
    if record.get("mode", "snapshot") not in MODES:
        errors["mode"] = f"value '{record['mode']}' does not have a value in the " \
                         f"enumeration '{', '.join(MODES)}'"
    if str(record.get("compress", "0")) not in COMPRESS:
        errors["compress"] = f"value '{record['compress']}' does not have a value in the " \
                             f"enumeration '{', '.join(COMPRESS)}'"
    if errors:
        raise JobSettingsError(errors)
    return record


#: when the job was created or its schedule/enabled last changed (epoch, set by the
#: API node): every node's scheduler counts the next run from it, not from when it
#: first saw the change (PVE's per-node `updated`), so no node misses a near event
CHANGED = "_changed"


def stamp_change(old: Mapping[str, Any] | None, record: dict[str, Any], now: float) -> None:
    """Set `CHANGED` on a new job, or when its schedule or enabled flag changed."""
    if old is None or any(str(old.get(k, "")) != str(record.get(k, ""))
                          for k in ("schedule", "enabled")):
        record[CHANGED] = int(now)


def job_enabled(record: Mapping[str, Any]) -> bool:
    return bool(record.get("enabled", 1))


def public_record(job_id: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """What GET returns: the stored section, its id and its defaults made explicit."""
    out = {k: v for k, v in record.items() if k != CHANGED}
    out["id"] = job_id
    out.setdefault("enabled", 1)
    return out


def without_vmid(record: Mapping[str, Any], vmid: int) -> dict[str, Any] | None:
    """PVE's remove_vmid_from_job (a destroyed VM's `purge`): `vmid` leaves the job's
    `vmid` list (None: the list is empty, the job goes) or its `exclude` list (dropped
    when empty)."""
    out = dict(record)
    for name in ("vmid", "exclude"):
        if out.get(name) is None:
            continue
        rest = [i for i in re.split(r"[,;\s]+", str(out[name])) if i and i != str(vmid)]
        if rest:
            out[name] = ",".join(rest)
        elif name == "vmid":
            return None
        else:
            del out[name]
        break
    return out


class StoreLike(Protocol):
    """The part of binome.store.client.Store used here."""

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> list[Any]: ...
    async def get(self, key: str) -> Any: ...
    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = (), *, bump_config: bool = False) -> bool: ...


class BackupJobs:
    """The stored backup jobs, on one store client."""

    def __init__(self, store: StoreLike) -> None:
        self.store = store

    async def records(self, *, serializable: bool = False) -> dict[str, dict[str, Any]]:
        entries = await self.store.get_prefix(JOBS, serializable=serializable)
        return {e.key[len(JOBS):]: e.value for e in entries if isinstance(e.value, dict)}

    async def record(self, job_id: str) -> dict[str, Any]:
        entry = await self.store.get(JOBS + job_id)
        if entry is None or not isinstance(entry.value, dict):
            raise JobError(f"No such job '{job_id}'")
        return dict(entry.value)

    async def create(self, job_id: str, record: Mapping[str, Any]) -> None:
        key = JOBS + job_id
        if not await self.store.commit({key: 0}, {key: dict(record)}, bump_config=True):
            raise JobError(f"Job '{job_id}' already exists")

    async def replace(self, job_id: str, old: Mapping[str, Any],
                      record: Mapping[str, Any]) -> None:
        """Store `record` if the stored job is still `old`."""
        entry = await self.store.get(JOBS + job_id)
        if entry is None:
            raise JobError("no such vzdump job")
        if entry.value != old or not await self.store.commit(
                {JOBS + job_id: entry.mod_revision}, {JOBS + job_id: dict(record)},
                bump_config=True):
            raise JobError("detected modified configuration - file changed by other user? "
                           "Try again.")

    async def remove_vmid(self, vmid: int) -> list[str]:
        """PVE's remove_vmid_from_backup_jobs: every job `without_vmid`; returns what
        changed, one line per job (`JobError` when a job changed under it)."""
        changed = []
        for job_id, record in sorted((await self.records()).items()):
            if record.get("type", "vzdump") != "vzdump":
                continue
            new = without_vmid(record, vmid)
            if new is None:
                await self.remove(job_id)
                changed.append(f"removed backup job '{job_id}' (it had only VM {vmid})")
            elif new != record:
                await self.replace(job_id, record, new)
                changed.append(f"removed VM {vmid} from backup job '{job_id}'")
        return changed

    async def remove(self, job_id: str) -> None:
        entry = await self.store.get(JOBS + job_id)
        if entry is None:
            raise JobError(f"No such job '{job_id}'")
        if not await self.store.commit({JOBS + job_id: entry.mod_revision}, None,
                                       [JOBS + job_id], bump_config=True):
            raise JobError("detected modified configuration - file changed by other user? "
                           "Try again.")
