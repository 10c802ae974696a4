"""/pools through HTTPS as PVE 8 clients call it: create (nested ids), members (VMs must
exist, storages must be defined, a VM in one pool unless allow-move), removal with
delete=1, PVE's query-style PUT/DELETE and the path-style ones, the listing filtered by
Pool.Audit, Permissions.Modify on every member touched, and refusals that change nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from binome.access import ops
from binome.access.model import AccessConfig, User
from binome.access.secrets import hash_secret, new_token_secret
from binome.access.service import AccessService
from tests.integration.access.test_permission_matrix import (
    _admin,
    _create_vm,
    _destroy_vm,
    base,
)
from tests.integration.harness import Cluster


def _access(cluster: Cluster, op: Any) -> AccessConfig:
    async def go() -> AccessConfig:
        store = cluster.raw_store("n1")
        try:
            service = AccessService(lambda: store)
            if op is not None:
                await service.change("admin@pve", "pools test", op)
            return await service.config()
        finally:
            await store.close()
    return asyncio.run(go())


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> requests.Session:
    return _admin(cluster)


@pytest.fixture(scope="module")
def vms(cluster: Cluster, admin: requests.Session) -> Iterator[list[int]]:
    first = int(admin.get(base(cluster) + "/cluster/nextid", timeout=10).json()["data"])
    ids = [first, first + 1]
    try:
        for vmid in ids:
            _create_vm(admin, cluster, vmid)
        yield ids
    finally:
        for vmid in ids:
            _destroy_vm(admin, cluster, vmid)


def _pools(admin: requests.Session, cluster: Cluster, **params: Any) -> requests.Response:
    return admin.get(base(cluster) + "/pools", params=params, timeout=10)


def test_pool_lifecycle(cluster: Cluster, admin: requests.Session, vms: list[int]) -> None:
    url = base(cluster) + "/pools"
    top = f"p{uuid.uuid4().hex[:6]}"
    other = f"q{uuid.uuid4().hex[:6]}"
    try:
        assert admin.post(url, data={"poolid": top, "comment": "web"}, timeout=10)\
            .status_code == 200
        assert admin.post(url, data={"poolid": f"{top}/dmz"}, timeout=10).status_code == 200
        r = admin.post(url, data={"poolid": top}, timeout=10)
        assert r.status_code == 500 and r.reason == f"pool '{top}' already exists"
        r = admin.post(url, data={"poolid": "nope/child"}, timeout=10)
        assert r.status_code == 500 and r.reason == "parent pool 'nope' does not exist"
        r = admin.post(url, data={"poolid": "9bad"}, timeout=10)
        assert r.status_code == 400 and "poolid" in r.json()["errors"]
        listed = {p["poolid"]: p for p in _pools(admin, cluster).json()["data"]}
        assert listed[top]["comment"] == "web" and f"{top}/dmz" in listed

        # members: a VM that does not exist, an undefined storage: refused, nothing changes
        r = admin.put(url, data={"poolid": top, "vms": "999999990"}, timeout=10)
        assert r.status_code == 500 and r.reason == "VM 999999990 does not exist"
        r = admin.put(url, data={"poolid": top, "storage": "nosuch"}, timeout=10)
        assert r.status_code == 500 and r.reason == "Storage 'nosuch' does not exist"
        r = admin.put(url, data={"poolid": top, "vms": "12x"}, timeout=10)
        assert r.status_code == 400 and "vms" in r.json()["errors"]
        assert _pools(admin, cluster, poolid=top).json()["data"][0]["members"] == []

        r = admin.put(url, data={"poolid": top, "vms": f"{vms[0]},{vms[1]}",
                                 "storage": "local"}, timeout=10)
        assert r.status_code == 200, r.reason
        entry = _pools(admin, cluster, poolid=top).json()["data"][0]
        assert entry["poolid"] == top
        members = {m["id"]: m for m in entry["members"]}
        assert members[f"qemu/{vms[0]}"]["type"] == "qemu"
        assert members["storage/n1/local"]["storage"] == "local"
        only_vms = _pools(admin, cluster, poolid=top, type="qemu").json()["data"][0]
        assert {m["type"] for m in only_vms["members"]} == {"qemu"}
        # the deprecated path-style read has PVE 7's shape
        old = admin.get(f"{url}/{top}", timeout=10).json()["data"]
        assert old["comment"] == "web" and len(old["members"]) == 3
        # /cluster/resources names the pool of each VM and lists the pool itself
        res = admin.get(base(cluster) + "/cluster/resources", timeout=10).json()["data"]
        assert {"id": f"/pool/{top}", "type": "pool", "pool": top} in res
        assert [e.get("pool") for e in res if e.get("vmid") == vms[0]] == [top]

        # a VM lives in one pool: moving it needs allow-move
        assert admin.post(url, data={"poolid": other}, timeout=10).status_code == 200
        r = admin.put(f"{url}/{other}", data={"vms": str(vms[1])}, timeout=10)
        assert r.status_code == 500 and r.reason == \
            f"VM {vms[1]} belongs already to pool '{top}' and 'allow-move' is not set"
        r = admin.put(f"{url}/{other}", data={"vms": str(vms[1]), "allow-move": 1},
                      timeout=10)
        assert r.status_code == 200, r.reason
        cfg = _access(cluster, None)
        assert vms[1] in cfg.pools[other].vms and vms[1] not in cfg.pools[top].vms

        # a pool with members (or sub-pools) is not deleted
        r = admin.delete(url, params={"poolid": top}, timeout=10)
        assert r.status_code == 500 and r.reason == f"pool '{top}' is not empty"
        r = admin.put(url, data={"poolid": top, "vms": str(vms[0]), "storage": "local",
                                 "delete": 1}, timeout=10)
        assert r.status_code == 200, r.reason
        r = admin.put(url, data={"poolid": top, "vms": str(vms[0]), "delete": 1},
                      timeout=10)
        assert r.status_code == 500 and r.reason == f"VM {vms[0]} is not a pool member"
        assert admin.delete(url, params={"poolid": f"{top}/dmz"}, timeout=10)\
            .status_code == 200
        assert admin.delete(url, params={"poolid": top}, timeout=10).status_code == 200
        r = admin.delete(url, params={"poolid": top}, timeout=10)
        assert r.status_code == 500 and r.reason == f"pool '{top}' does not exist"
    finally:
        def cleanup(cfg: AccessConfig) -> AccessConfig:
            for pid in sorted((p for p in cfg.pools if p.split("/")[0] in (top, other)),
                              reverse=True):
                pool = cfg.pools[pid]
                cfg = ops.update_pool(cfg, pid, vms=pool.vms, storage=pool.storage,
                                      delete=True)
                cfg = ops.delete_pool(cfg, pid)
            return cfg
        _access(cluster, cleanup)


def test_delegated_pool_admin(cluster: Cluster, admin: requests.Session,
                              vms: list[int]) -> None:
    """PVEPoolAdmin on /pool/P sees only P, may change its comment but not add a VM it
    may not delegate (Permissions.Modify on /vms/ID, PVE's check_perm_modify)."""
    pool, hidden = f"d{uuid.uuid4().hex[:6]}", f"h{uuid.uuid4().hex[:6]}"
    userid = f"pooladm-{uuid.uuid4().hex[:6]}@pve"
    secret = new_token_secret()

    def setup(cfg: AccessConfig) -> AccessConfig:
        cfg = ops.add_pool(ops.add_pool(cfg, pool), hidden)
        cfg = ops.add_user(cfg, User(userid))
        cfg = ops.add_token(cfg, userid, "tk", hash_secret(secret), privsep=False, now=0)
        return ops.modify_acl(cfg, f"/pool/{pool}", ["PVEPoolAdmin"], users=[userid])

    header = {"Authorization": f"PVEAPIToken={userid}!tk={secret}"}
    url = base(cluster) + "/pools"
    try:
        _access(cluster, setup)
        listed = requests.get(url, headers=header, verify=False, timeout=10).json()["data"]
        assert [p["poolid"] for p in listed] == [pool]
        r = requests.get(url, params={"poolid": hidden}, headers=header, verify=False,
                         timeout=10)
        assert r.status_code == 200 and r.json()["data"] == []
        r = requests.put(url, data={"poolid": pool, "comment": "mine"}, headers=header,
                         verify=False, timeout=10)
        assert r.status_code == 200, r.reason
        r = requests.put(url, data={"poolid": pool, "vms": str(vms[0])}, headers=header,
                         verify=False, timeout=10)
        assert r.status_code == 403
        assert r.reason == f"Permission check failed (/vms/{vms[0]}, Permissions.Modify)"
        r = requests.put(url, data={"poolid": hidden, "comment": "theirs"}, headers=header,
                         verify=False, timeout=10)
        assert r.status_code == 403
        cfg = _access(cluster, None)
        assert cfg.pools[pool].comment == "mine" and not cfg.pools[pool].vms
        assert cfg.pools[hidden].comment == ""

        # moving a VM out of another pool (allow-move) needs Pool.Allocate there too
        # (pve-manager Pool.pm), beside what she may delegate on the VM itself
        _access(cluster, lambda c: ops.modify_acl(
            ops.update_pool(c, hidden, vms=[vms[0]]), f"/vms/{vms[0]}", ["PVEVMAdmin"],
            users=[userid]))
        move = {"poolid": pool, "vms": str(vms[0]), "allow-move": 1}
        r = requests.put(url, data=move, headers=header, verify=False, timeout=10)
        assert (r.status_code, r.reason) == (
            403, f"Permission check failed (/pool/{hidden}, Pool.Allocate)")
        r = requests.put(url, data={**move, "allow-move": 0}, headers=header, verify=False,
                         timeout=10)
        assert r.status_code == 500 and "'allow-move' is not set" in r.reason
        assert _access(cluster, None).pool_of_vm(vms[0]) == hidden
        _access(cluster, lambda c: ops.modify_acl(c, f"/pool/{hidden}", ["PVEPoolAdmin"],
                                                  users=[userid]))
        r = requests.put(url, data=move, headers=header, verify=False, timeout=10)
        assert r.status_code == 200, r.reason
        assert _access(cluster, None).pool_of_vm(vms[0]) == pool
    finally:
        def cleanup(cfg: AccessConfig) -> AccessConfig:
            if userid in cfg.users:
                cfg = ops.delete_user(cfg, userid)
            for pid in (pool, hidden):
                if pid in cfg.pools:
                    cfg = ops.update_pool(cfg, pid, vms=cfg.pools[pid].vms, delete=True)
                    cfg = ops.delete_pool(cfg, pid)
            return cfg
        _access(cluster, cleanup)
