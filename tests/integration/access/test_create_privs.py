"""VM create checks every key's privilege, as PVE's create_vm (check_vm_modify_config_perm
with the pool), and `start=1` needs VM.PowerMgmt (binome's deliberate addition), through
the real API: refused with PVE's 403 naming the path and privilege, nothing created."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import urllib3

from tests.integration.access.client import Api, wait_task
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
BASE = 820 + int(SUFFIX, 16) % 40 * 3
BARE, POOLED, STARTED = BASE, BASE + 1, BASE + 2
USER = f"allocator{SUFFIX}@pve"
ROLE = f"AllocOnly{SUFFIX}"
POOL = f"p{SUFFIX}"
PW = "allocator-password-1"


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    api.ok("POST", "/access/users", userid=USER, password=PW)
    api.ok("POST", "/access/roles", roleid=ROLE, privs="VM.Allocate")
    api.ok("POST", "/pools", poolid=POOL)
    for vmid in (BARE, STARTED):
        api.ok("PUT", "/access/acl", path=f"/vms/{vmid}", users=USER, roles=ROLE)
    try:
        yield api
    finally:
        for vmid in (BARE, POOLED, STARTED):
            r = api.call("POST", f"/nodes/n1/qemu/{vmid}/status/stop")
            if r.status_code == 200:
                wait_task(api, r.json()["data"])
            r = api.call("DELETE", f"/nodes/n1/qemu/{vmid}")
            if r.status_code == 200:
                wait_task(api, r.json()["data"])
        api.call("DELETE", f"/pools/{POOL}")
        api.call("DELETE", f"/access/users/{USER}")
        api.call("DELETE", f"/access/roles/{ROLE}")


def exists(api: Api, vmid: int) -> bool:
    return any(v["vmid"] == vmid for v in api.ok("GET", "/nodes/n1/qemu"))


def refused(r, path: str, priv: str) -> None:
    assert (r.status_code, r.reason) == (403, f"Permission check failed ({path}, {priv})"), \
        (r.status_code, r.reason, r.text)


def test_each_key_needs_its_privilege_at_create(cluster: Cluster, admin: Api) -> None:
    user = Api(cluster, USER, PW)
    # VM.Allocate alone: memory needs VM.Config.Memory, cores VM.Config.CPU
    refused(user.call("POST", "/nodes/n1/qemu", vmid=BARE, memory=64),
            f"/vms/{BARE}", "VM.Config.Memory")
    refused(user.call("POST", "/nodes/n1/qemu", vmid=BARE, cores=2, name="x"),
            f"/vms/{BARE}", "VM.Config.CPU")
    assert not exists(admin, BARE)
    # a bare VM is what VM.Allocate alone allows
    wait_task(user, user.ok("POST", "/nodes/n1/qemu", vmid=BARE))
    assert exists(admin, BARE)

    # in a pool where the user is PVEVMAdmin, the keys are checked on /pool/P
    admin.ok("PUT", "/access/acl", path=f"/pool/{POOL}", users=USER, roles="PVEVMAdmin")
    wait_task(user, user.ok("POST", "/nodes/n1/qemu", vmid=POOLED, pool=POOL, memory=64,
                            cores=1, name="pooled"))
    cfg = admin.ok("GET", f"/nodes/n1/qemu/{POOLED}/config")
    assert (cfg["memory"], cfg["name"]) == (64, "pooled")


def test_start_after_create_needs_power_management(cluster: Cluster, admin: Api) -> None:
    user = Api(cluster, USER, PW)
    refused(user.call("POST", "/nodes/n1/qemu", vmid=STARTED, start=1),
            f"/vms/{STARTED}", "VM.PowerMgmt")
    assert not exists(admin, STARTED)


def test_another_guests_disk_cannot_be_attached(cluster: Cluster, admin: Api) -> None:
    """PVE's check_volume_access on update: a VM admin of their own VM (here POOLED,
    through the pool) cannot attach another guest's disk to it and read it, nor a host
    path; a storage's auditor needs VM.Config.Disk on the disk's owner too. Refused
    before anything changes, PUT and POST alike."""
    if not exists(admin, POOLED):       # run alone: the pooled VM of the first test
        admin.ok("PUT", "/access/acl", path=f"/pool/{POOL}", users=USER, roles="PVEVMAdmin")
        wait_task(admin, admin.ok("POST", "/nodes/n1/qemu", vmid=POOLED, pool=POOL,
                                  memory=64))
    victim = int(admin.ok("GET", "/cluster/nextid"))
    wait_task(admin, admin.ok("POST", "/nodes/n1/qemu", vmid=victim, memory=64,
                              scsi0="local:0.001"))
    try:
        volid = admin.ok("GET", f"/nodes/n1/qemu/{victim}/config")["scsi0"].split(",")[0]
        user = Api(cluster, USER, PW)
        before = admin.ok("GET", f"/nodes/n1/qemu/{POOLED}/config")
        refused(user.call("PUT", f"/nodes/n1/qemu/{POOLED}/config", scsi1=volid),
                "/storage/local", "Datastore.Audit")
        refused(user.call("POST", f"/nodes/n1/qemu/{POOLED}/config", scsi1=volid),
                "/storage/local", "Datastore.Audit")
        admin.ok("PUT", "/access/acl", path="/storage/local", users=USER,
                 roles="PVEDatastoreUser")
        refused(user.call("PUT", f"/nodes/n1/qemu/{POOLED}/config", scsi1=volid),
                f"/vms/{victim}", "VM.Config.Disk")
        r = user.call("PUT", f"/nodes/n1/qemu/{POOLED}/config", scsi1="/dev/null")
        assert r.status_code in (400, 500) and r.status_code != 200, (r.status_code, r.text)
        assert admin.ok("GET", f"/nodes/n1/qemu/{POOLED}/config") == before
        # a new disk on a storage where the user may allocate is still theirs to add
        user.ok("PUT", f"/nodes/n1/qemu/{POOLED}/config", scsi1="local:0.001")
        assert "scsi1" in admin.ok("GET", f"/nodes/n1/qemu/{POOLED}/config")
    finally:
        admin.call("PUT", "/access/acl", path="/storage/local", users=USER,
                   roles="PVEDatastoreUser", delete=1)
        r = admin.call("DELETE", f"/nodes/n1/qemu/{victim}")
        if r.status_code == 200:
            wait_task(admin, r.json()["data"])
