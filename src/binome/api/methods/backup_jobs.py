"""Backup jobs: PVE's `/cluster/backup`, `/cluster/backup/{id}/included_volumes` and
`/cluster/backup-info/not-backed-up`.

Validates, calls and shapes: the job records and their rules are `binome.backup.jobs`'s
(it owns their etcd keys), the next run `binome.backup.schedule`'s; each node's
scheduler (`binome.daemon.backupjobs`) runs them. Changes need Sys.Modify on `/`,
reads Sys.Audit (PVE's check); each change is a cluster log line naming the user.
"""

from __future__ import annotations

import time
from typing import Any

from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError, PermissionDenied, fail, param_error
from binome.api.methods.common import require_quorum
from binome.api.methods.qemu import guests
from binome.api.methods.vzdump import VMID_LIST
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.backup import schedule
from binome.backup.jobs import (
    COMPRESS,
    MAILNOTIFICATION,
    MODES,
    NOTIFICATION_MODES,
    BackupJobs,
    JobError,
    JobSettingsError,
    build_job,
    digest,
    new_job_id,
    parse_vmid_list,
    public_record,
    stamp_change,
)
from binome.guest import config as vmconf
from binome.schema import split_list

AUDIT = privs("Sys.Audit")
MODIFY = privs("Sys.Modify")
JOB_ID = Param(pattern=r"[A-Za-z][A-Za-z0-9_-]+", max_length=50, description="The job ID.")
JOB_OPTIONS = {
    "schedule": Param(optional=True, max_length=128,
                      description="Backup schedule. The format is a subset of `systemd` "
                                  "calendar events."),
    "starttime": Param(optional=True, pattern=r"\d{1,2}:\d{1,2}",
                       description="Job Start time (legacy; use 'schedule')."),
    "dow": Param(optional=True, pattern=r"(mon|tue|wed|thu|fri|sat|sun)(,(mon|tue|wed|thu|"
                                        r"fri|sat|sun))*",
                 description="Day of week selection (legacy; with 'starttime')."),
    "enabled": Param(type="boolean", optional=True, description="Enable or disable the job."),
    "node": Param(optional=True, format="pve-node",
                  description="Only run if executed on this node."),
    "vmid": VMID_LIST,
    "all": Param(type="boolean", optional=True, description="Backup all known guest systems "
                                                            "on this host."),
    "pool": Param(optional=True, max_length=64,
                  description="Backup all known guest systems included in the specified "
                              "pool."),
    "exclude": Param(optional=True, max_length=4096, pattern=r"[\d\s,;]+",
                     description="Exclude specified guest systems (assumes --all)"),
    "storage": Param(optional=True, pattern=r"[a-z][a-z0-9\-_.]*", max_length=64,
                     description="Store resulting file to this storage."),
    "mode": Param(optional=True, enum=MODES, description="Backup mode."),
    "compress": Param(optional=True, enum=COMPRESS, description="Compress dump file."),
    "mailto": Param(optional=True, max_length=1024,
                    description="Comma-separated list of email addresses or users."),
    "mailnotification": Param(optional=True, enum=MAILNOTIFICATION,
                              description="Deprecated: use notification targets/matchers."),
    "notification-mode": Param(optional=True, enum=NOTIFICATION_MODES,
                               description="Determine which notification system to use."),
    "prune-backups": Param(optional=True, max_length=256,
                           description="Use these retention options instead of those from "
                                       "the storage configuration."),
    "notes-template": Param(optional=True, max_length=1024,
                            description="Template string for generating notes for the "
                                        "backup(s)."),
    "protected": Param(type="boolean", optional=True,
                       description="If true, mark backup(s) as protected."),
    "comment": Param(optional=True, max_length=512, description="Description for the Job."),
    "repeat-missed": Param(type="boolean", optional=True,
                           description="If true, the job will be run as soon as possible "
                                       "if it was missed while the scheduler was not "
                                       "running."),
    "bwlimit": Param(type="integer", optional=True, minimum=0,
                     description="Limit I/O bandwidth (in KiB/s)."),
    "remove": Param(type="boolean", optional=True,
                    description="Prune older backups according to 'prune-backups'."),
}


def _jobs(ctx: RequestContext, *, quorum: bool = False) -> BackupJobs:
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return BackupJobs(store)


ALL_DAYS = "mon,tue,wed,thu,fri,sat,sun"


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """The job settings given, the legacy starttime/dow turned into a schedule (PVE's
    schedule_param_check)."""
    settings = {k: v for k, v in params.items() if k in JOB_OPTIONS}
    starttime, dow = settings.pop("starttime", None), settings.pop("dow", None)
    if settings.get("schedule") is not None:
        if starttime is not None:
            raise param_error("starttime", "'starttime' and 'schedule' cannot both be set")
    elif starttime is not None:
        days = ",".join(split_list(dow or ""))
        settings["schedule"] = f"{days} {starttime}" if days and days != ALL_DAYS \
            else starttime
    return settings


async def _check_create(ctx: RequestContext, record: dict[str, Any]) -> None:
    """PVE's extra checks for a non-root user: Datastore.Allocate on the job's storage,
    VM.Backup on its pool (which must exist)."""
    ev = await ctx.services.access.evaluator()
    if record.get("pool"):
        pool = str(record["pool"])
        if pool not in ev.config.pools:
            raise fail(f"pool '{pool}' does not exist")
        if ctx.userid != "root@pam" and not ev.check(ctx.userid, f"/pool/{pool}",
                                                     ["VM.Backup"]):
            raise PermissionDenied(f"/pool/{pool}, VM.Backup")
    storage = record.get("storage")
    if storage and ctx.userid != "root@pam" and not ev.check(
            ctx.userid, f"/storage/{storage}", ["Datastore.Allocate"]):
        raise PermissionDenied(f"/storage/{storage}, Datastore.Allocate")


def _build(old: dict[str, Any] | None, params: dict[str, Any],
           delete: list[str]) -> dict[str, Any]:
    try:
        record = build_job(old, _settings(params), delete)
    except JobSettingsError as exc:
        raise ParamError(exc.errors) from None
    stamp_change(old, record, time.time())
    return record


def _listed(job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    out = public_record(job_id, record)
    # PVE: jobs are cluster wide, a node may not have run one: the next event from now
    nxt = schedule.job_next_run({**record, "enabled": 1}, None, time.time())
    if nxt is not None:
        out["next-run"] = nxt
    return out


async def _log(ctx: RequestContext, message: str) -> None:
    try:
        await ctx.services.clusterlog.write(message, tag="backup", user=ctx.userid)
    except Exception:   # best effort: the change is stored
        pass


async def _get(jobs: BackupJobs, job_id: str, param: bool = True) -> dict[str, Any]:
    try:
        return await jobs.record(job_id)
    except JobError as exc:
        raise (param_error("id", str(exc)) if param else fail(str(exc))) from None


@registry.register(
    "GET", "/cluster/backup", name="backup_job_index", permission=AUDIT,
    description="List vzdump backup schedule.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("backup-job", "list"),
                formatter="table:id,enabled,schedule,next-run,node,storage,vmid,all,pool"),
)
async def backup_job_index(ctx: RequestContext, params: dict[str, Any]
                           ) -> list[dict[str, Any]]:
    records = await _jobs(ctx).records()
    return [_listed(job_id, rec) for job_id, rec in sorted(records.items())]


@registry.register(
    "POST", "/cluster/backup", name="backup_job_create", permission=MODIFY,
    description="Create new vzdump backup job.",
    parameters={"id": Param(optional=True, pattern=JOB_ID.pattern, max_length=50,
                            description="Job ID (will be autogenerated)."), **JOB_OPTIONS},
    cli=CliSpec(("backup-job", "create")),
)
async def backup_job_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    jobs = _jobs(ctx, quorum=True)
    job_id = params.get("id") or new_job_id()
    record = _build(None, params, [])
    await _check_create(ctx, record)
    try:
        await jobs.create(job_id, record)
    except JobError as exc:
        raise fail(str(exc)) from None
    await _log(ctx, f"backup job '{job_id}' created by {ctx.userid} "
                    f"(schedule '{record['schedule']}')")


@registry.register(
    "GET", "/cluster/backup/{id}", name="backup_job_read", permission=AUDIT,
    description="Read vzdump backup job definition.",
    parameters={"id": JOB_ID}, returns={"type": "object"},
    cli=CliSpec(("backup-job", "config"), positional=("id",)),
)
async def backup_job_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    record = await _get(_jobs(ctx), params["id"])
    out = public_record(params["id"], record)
    out["digest"] = digest(record)
    return out


@registry.register(
    "PUT", "/cluster/backup/{id}", name="backup_job_update", permission=MODIFY,
    description="Update vzdump backup job definition.",
    parameters={"id": JOB_ID, **JOB_OPTIONS,
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(optional=True, max_length=64,
                                description="Prevent changes if current configuration file "
                                            "has a different digest.")},
    cli=CliSpec(("backup-job", "set"), positional=("id",)),
)
async def backup_job_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    jobs = _jobs(ctx, quorum=True)
    job_id = params["id"]
    delete = split_list(params.get("delete") or "")
    if not delete and not any(params.get(k) is not None for k in JOB_OPTIONS):
        raise fail("no options specified")
    try:
        old = await jobs.record(job_id)
    except JobError:
        raise fail("no such vzdump job") from None
    if params.get("digest") and params["digest"] != digest(old):
        raise fail("detected modified configuration - file changed by other user? "
                   "Try again.")
    record = _build(old, params, delete)
    await _check_create(ctx, {k: v for k, v in record.items()
                              if k in ("pool", "storage") and params.get(k) is not None})
    try:
        await jobs.replace(job_id, old, record)
    except JobError as exc:
        raise fail(str(exc)) from None
    await _log(ctx, f"backup job '{job_id}' changed by {ctx.userid}")


@registry.register(
    "DELETE", "/cluster/backup/{id}", name="backup_job_delete", permission=MODIFY,
    description="Delete vzdump backup job definition.",
    parameters={"id": JOB_ID},
    cli=CliSpec(("backup-job", "delete"), positional=("id",)),
)
async def backup_job_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    try:
        await _jobs(ctx, quorum=True).remove(params["id"])
    except JobError as exc:
        raise param_error("id", str(exc)) from None
    await _log(ctx, f"backup job '{params['id']}' removed by {ctx.userid}")


async def _all_guests(ctx: RequestContext) -> list[tuple[str, int, dict[str, Any]]]:
    return sorted(await guests(ctx).configs.list_all(), key=lambda g: g[1])


async def _included(ctx: RequestContext, record: dict[str, Any],
                    all_guests: list[tuple[str, int, dict[str, Any]]]) -> list[int]:
    """The guests a job backs up, cluster-wide (PVE's get_included_guests)."""
    node = record.get("node")
    candidates = [(n, v) for n, v, _ in all_guests if node in (None, "", n)]
    exclude = set(parse_vmid_list(str(record.get("exclude") or "")))
    if record.get("vmid"):
        wanted = set(parse_vmid_list(str(record["vmid"])))
        return [v for _, v in candidates if v in wanted]
    if record.get("pool"):
        pool = (await ctx.services.access.config()).pools.get(str(record["pool"]))
        members = set(pool.vms) if pool is not None else set()
        return [v for _, v in candidates if v in members and v not in exclude]
    return [v for _, v in candidates if v not in exclude]


@registry.register(
    "GET", "/cluster/backup/{id}/included_volumes", name="backup_job_included_volumes",
    permission=AUDIT,
    description="Returns included guests and the backup status of their disks. Optimized "
                "to be used in ExtJS tree views.",
    parameters={"id": JOB_ID}, returns={"type": "object"},
    cli=CliSpec(("backup-job", "included-volumes"), positional=("id",)),
)
async def backup_job_included_volumes(ctx: RequestContext, params: dict[str, Any]
                                      ) -> dict[str, Any]:
    record = await _get(_jobs(ctx), params["id"])
    all_guests = await _all_guests(ctx)
    configs = {vmid: cfg for _, vmid, cfg in all_guests}
    vmids = await _included(ctx, record, all_guests)
    # guests named in the job but gone: only their id (PVE: type 'unknown')
    if record.get("vmid"):
        vmids += [v for v in parse_vmid_list(str(record["vmid"])) if v not in configs]
    ev = await ctx.services.access.evaluator()
    children: list[dict[str, Any]] = []
    for vmid in vmids:
        if not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Audit"]):
            continue        # PVE: no guest names leak to who may not see the guest
        cfg = configs.get(vmid)
        if cfg is None:
            children.append({"id": vmid, "type": "unknown", "leaf": 1})
            continue
        disks = []
        # qemu-server's get_backup_volumes: the bus disks, efidisk0 and tpmstate0
        for disk in (*vmconf.disks(cfg), *vmconf.special_drives(cfg)):
            if disk.is_cdrom or not disk.volid:
                continue
            off = disk.options.get("backup") in ("0", "no", "off", "false")
            included, reason = (0, "backup=no") if off else (1, "backup=yes")
            if disk.key.startswith("efidisk") and cfg.get("bios") != "ovmf":
                included, reason = 0, "efidisk but no OMVF BIOS"
            disks.append({"id": f"{vmid}:{disk.key}", "name": disk.volid,
                          "included": included, "reason": reason, "leaf": 1})
        children.append({"id": vmid, "type": "qemu", "name": cfg.get("name", ""),
                         "children": disks, "leaf": 0 if disks else 1})
    return {"children": children}


@registry.register(
    "GET", "/cluster/backup-info", name="backup_info_index", permission=AUDIT,
    description="Index for backup info related endpoints.",
    returns={"type": "array", "items": {"type": "object"}},
)
async def backup_info_index(ctx: RequestContext, params: dict[str, Any]
                            ) -> list[dict[str, Any]]:
    return [{"subdir": "not-backed-up"}]


@registry.register(
    "GET", "/cluster/backup-info/not-backed-up", name="backup_info_not_backed_up",
    permission=AUDIT,
    description="Shows all guests which are not covered by any backup job.",
    returns={"type": "array", "items": {"type": "object"}},
    cli=CliSpec(("backup-job", "not-backed-up"), formatter="table:vmid,type,name"),
)
async def backup_info_not_backed_up(ctx: RequestContext, params: dict[str, Any]
                                    ) -> list[dict[str, Any]]:
    records = await _jobs(ctx).records()
    all_guests = await _all_guests(ctx)
    covered: set[int] = set()
    for record in records.values():
        covered.update(await _included(ctx, record, all_guests))
    ev = await ctx.services.access.evaluator()
    out = []
    for _, vmid, cfg in all_guests:
        # PVE: only guests the user may see (VM.Audit), so no guest name leaks
        if vmid in covered or not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Audit"]):
            continue
        entry: dict[str, Any] = {"vmid": vmid, "type": "qemu"}
        if cfg.get("name") is not None:
            entry["name"] = cfg["name"]
        out.append(entry)
    return out
