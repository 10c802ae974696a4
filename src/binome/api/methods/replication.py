"""PVE's storage replication jobs (`/cluster/replication`, pve-manager's
API2/ReplicationConfig.pm), as far as they can exist in binome: none can.

PVE's jobs copy a guest's ZFS volumes to another node on a schedule (`zfs send`), and
refuse a guest whose volumes lack the storage feature `replicate` ("missing replicate
feature on volume ..."). No binome storage has it: `dir` volumes are local files, and
`replicated` volumes are already copied synchronously, every write, to the peer that
holds their second copy. So the list is always empty, reading or changing a job answers
PVE's "no such job", and a create runs PVE's checks in its order and ends with PVE's
refusal (for a replicated volume with the reason spelled out). Owns no cluster state.
"""

from __future__ import annotations

from typing import Any, NoReturn

from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.errors import PermissionDenied, fail, param_error
from binome.api.methods.qemu import guests
from binome.api.registry import registry
from binome.api.schema import Param
from binome.guest import config as vmconf

# PVE's pve-replication-job-id: '<vmid>-<jobnum>'
JOB_ID_RE = r"[1-9][0-9]{2,8}-\d{1,9}"
JOB_ID = Param(pattern=JOB_ID_RE, description="Replication Job ID. The ID is composed of a "
               "Guest ID and a job number, separated by a hyphen, i.e. '<GUEST>-<JOBNUM>'.")

COMMON = {
    "comment": Param(optional=True, max_length=4096, description="Description."),
    "disable": Param(type="boolean", optional=True,
                     description="Flag to disable/deactivate the entry."),
    "rate": Param(type="number", optional=True, minimum=1,
                  description="Rate limit in mbps (megabytes per second) as floating point "
                              "number."),
    "remove_job": Param(optional=True, enum=("local", "full"),
                        description="Mark the replication job for removal."),
    "schedule": Param(optional=True, max_length=128, default="*/15",
                      description="Storage replication schedule. The format is a subset of "
                                  "`systemd` calendar events."),
    "source": Param(format="pve-node", optional=True,
                    description="For internal use, to detect if the guest was stolen."),
}


def _guest_of(job_id: str) -> int:
    return int(job_id.split("-", 1)[0])


def _no_job(job_id: str, what: str = "job") -> NoReturn:
    raise fail(f"no such {what} '{job_id}'")


@registry.register(
    "GET", "/cluster/replication", name="replication_index",
    permission=AnyUser("jobs of guests with VM.Audit (binome has none)"),
    description="List replication jobs.",
    parameters={"guest": Param(type="integer", optional=True, minimum=100,
                               maximum=999_999_999,
                               description="Only list replication jobs for this guest.")},
    returns={"type": "array", "items": {"type": "object"}},
)
async def replication_index(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    return []


@registry.register(
    "GET", "/cluster/replication/{id}", name="replication_read",
    permission=AnyUser("VM.Audit on the job's guest"),
    description="Read replication job configuration.",
    parameters={"id": JOB_ID},
    returns={"type": "object"},
)
async def replication_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    _no_job(params["id"], "replication job")


@registry.register(
    "POST", "/cluster/replication", name="replication_create",
    permission=AnyUser("VM.Replicate on /vms/<guest of the job id>"),
    description="Create a new replication job",
    parameters={"id": JOB_ID,
                "type": Param(enum=("local",), description="Section type."),
                "target": Param(format="pve-node", description="Target node."),
                **COMMON},
)
async def replication_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    """PVE's checks in PVE's order: the privilege on the guest, the guest, the target,
    the source, then the volumes, where binome always stops."""
    vmid = await _check_replicate(ctx, params["id"])
    service = guests(ctx)
    source = await service.owner(vmid)
    if source is None:
        raise fail(f"Guest '{vmid}' does not exist.")
    target = params["target"]
    if target not in ctx.services.cluster.node_records:
        raise fail(f"Target '{target}' does not exist.")
    if params.get("source") is not None and params["source"] != source:
        raise fail(f"Source '{params['source']}' does not match current node of guest "
                   f"'{vmid}' ({source})")
    if target == source:
        raise fail("Source and target must not be identical")
    vm = await service.read(vmid, node=source)
    for disk in vmconf.disks(vm.config):
        if not disk.volid or disk.is_cdrom or str(disk.options.get("replicate", "1")) == "0":
            continue
        storage = await service.storages.for_volid(disk.volid)
        if storage.config.type == "replicated":
            raise fail(f"missing replicate feature on volume '{disk.volid}' (binome "
                       f"replicates it synchronously to the other node holding its copy; "
                       f"storage replication jobs are for ZFS)")
        raise fail(f"missing replicate feature on volume '{disk.volid}'")
    raise fail("No replicatable volumes found")


@registry.register(
    "PUT", "/cluster/replication/{id}", name="replication_update",
    permission=AnyUser("VM.Replicate on /vms/<guest of the job id>"),
    description="Update replication job configuration.",
    parameters={"id": JOB_ID, **COMMON,
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(optional=True, max_length=64,
                                description="Prevent changes if current configuration file "
                                            "has a different digest.")},
)
async def replication_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _check_replicate(ctx, params["id"])
    _no_job(params["id"])


@registry.register(
    "DELETE", "/cluster/replication/{id}", name="replication_delete",
    permission=AnyUser("VM.Replicate on /vms/<guest of the job id>"),
    description="Mark replication job for removal.",
    parameters={"id": JOB_ID,
                "force": Param(type="boolean", optional=True, default=False,
                               description="Will remove the jobconfig entry, but will not "
                                           "cleanup."),
                "keep": Param(type="boolean", optional=True, default=False,
                              description="Keep replicated data at target (do not remove).")},
)
async def replication_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _check_replicate(ctx, params["id"])
    if params.get("keep") and params.get("force"):
        raise param_error("keep", "conflicts with parameter 'force'")
    _no_job(params["id"])


async def _check_replicate(ctx: RequestContext, job_id: str) -> int:
    """PVE's check in the code (`user => 'all'`): VM.Replicate on the job's guest,
    whose vmid it returns."""
    vmid = _guest_of(job_id)
    ev = await ctx.services.access.evaluator()
    if not ev.check(ctx.userid, f"/vms/{vmid}", ["VM.Replicate"]):
        raise PermissionDenied(f"/vms/{vmid}, VM.Replicate")
    return vmid

