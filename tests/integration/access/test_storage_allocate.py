"""Datastore.AllocateSpace on each storage a VM disk is allocated on (PVE's
`$check_storage_access` / `$check_storage_access_clone`), through the real API: a user
who may create, clone and configure the VM but not allocate on the storage gets PVE's
403 and nothing is created; bad input is PVE's 400 naming the parameter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import urllib3

from tests.integration.access.client import Api, wait_task
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
BASE = 700 + int(SUFFIX, 16) % 40 * 3
SRC, NEW, OTHER = BASE, BASE + 1, BASE + 2
CREATOR = f"creator{SUFFIX}@pve"      # PVEVMAdmin on the three VM ids, no storage rights
PW = "creator-password-1"
DENIED = "Permission check failed (/storage/local, Datastore.AllocateSpace)"


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    api.ok("POST", "/access/users", userid=CREATOR, password=PW)
    for vmid in (SRC, NEW, OTHER):
        api.ok("PUT", "/access/acl", path=f"/vms/{vmid}", users=CREATOR, roles="PVEVMAdmin")
    try:
        yield api
    finally:
        for vmid in (SRC, NEW, OTHER):
            r = api.call("DELETE", f"/nodes/n1/qemu/{vmid}")
            if r.status_code == 200:
                wait_task(api, r.json()["data"])
        api.call("DELETE", f"/access/users/{CREATOR}")


def exists(api: Api, vmid: int) -> bool:
    return any(v["vmid"] == vmid for v in api.ok("GET", "/nodes/n1/qemu"))


def test_disks_need_datastore_allocatespace(cluster: Cluster, admin: Api) -> None:
    creator = Api(cluster, CREATOR, PW)
    # create: a diskless VM needs no storage right; a disk on 'local' does
    r = creator.call("POST", "/nodes/n1/qemu", vmid=SRC, memory=64, virtio0="local:1")
    assert (r.status_code, r.reason) == (403, DENIED), (r.status_code, r.reason)
    assert not exists(admin, SRC)
    # bad input is a 400 naming the parameter, before any permission question
    r = creator.call("POST", "/nodes/n1/qemu", vmid=SRC, memory=64, virtio0="local:1,cache=bogus")
    assert r.status_code == 400 and "virtio0" in r.json()["errors"], r.text
    assert not exists(admin, SRC)
    wait_task(creator, creator.ok("POST", "/nodes/n1/qemu", vmid=SRC, memory=64))
    # adding a disk to it: the same check (PVE's update_vm_api)
    r = creator.call("PUT", f"/nodes/n1/qemu/{SRC}/config", virtio0="local:1")
    assert (r.status_code, r.reason) == (403, DENIED), (r.status_code, r.reason)
    assert "virtio0" not in creator.ok("GET", f"/nodes/n1/qemu/{SRC}/config")

    # the administrator gives the VM a disk: cloning it allocates on 'local'
    admin.ok("PUT", f"/nodes/n1/qemu/{SRC}/config", virtio0="local:1")
    r = creator.call("POST", f"/nodes/n1/qemu/{SRC}/clone", newid=NEW)
    assert (r.status_code, r.reason) == (403, DENIED), (r.status_code, r.reason)
    assert not exists(admin, NEW)

    # PVEDatastoreUser on the storage (as PVE's docs say) lets all three through
    admin.ok("PUT", "/access/acl", path="/storage/local", users=CREATOR,
             roles="PVEDatastoreUser")
    try:
        wait_task(creator, creator.ok("POST", f"/nodes/n1/qemu/{SRC}/clone", newid=NEW))
        assert creator.ok("GET", f"/nodes/n1/qemu/{NEW}/config")["virtio0"].startswith(
            f"local:{NEW}/")
        wait_task(creator, creator.ok("POST", "/nodes/n1/qemu", vmid=OTHER, memory=64,
                                      virtio0="local:1"))
        creator.ok("PUT", f"/nodes/n1/qemu/{OTHER}/config", virtio1="local:1")
    finally:
        admin.ok("PUT", "/access/acl", path="/storage/local", users=CREATOR,
                 roles="PVEDatastoreUser", delete=1)
