"""PVE's built-in roles through HTTPS: for each role granted on `/`, on `/vms/<id>` and on
`/pool/<p>`, a representative call per area is allowed (anything but 403) or refused
(403) exactly as PVE documents; filtered listings show an object only to who may see it.

Principals are set up straight in the cluster's etcd through `AccessService.change`
(the users/ACL API is another piece of work): one user per (role, scope), each with a
non-privsep API token, so every request is a token request (no CSRF, no login limiter).
The VM is created but never started: power and console calls answer after the
permission check with a non-403 error.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import urllib3

from binome.access import ops
from binome.access.model import AccessConfig, User
from binome.access.secrets import hash_secret, new_token_secret
from binome.access.service import AccessService
from tests.integration.harness import PASSWORD, Cluster, wait_for

urllib3.disable_warnings()

ROLES = ["Administrator", "PVEAdmin", "PVEVMAdmin", "PVEVMUser", "PVEAuditor",
         "PVEDatastoreAdmin", "PVEDatastoreUser", "PVEPoolAdmin", "PVEPoolUser",
         "PVEUserAdmin", "PVESysAdmin", "PVETemplateUser", "NoAccess"]
SCOPES = ["root", "vm", "pool"]
STORAGE = "local"

_ALL = {"VM.Audit", "VM.PowerMgmt", "VM.Config.Options", "VM.Config.Memory", "VM.Console",
        "Datastore.Audit", "Datastore.AllocateSpace", "Sys.Audit", "Pool.Audit", "Pool.Allocate"}
# PVE's documented built-in roles, restricted to the privileges the calls below need
# (pve-access-control AccessControl.pm create_roles; written out, not imported, so the
# test does not check binome's roles against themselves)
ROLE_PRIVS: dict[str, set[str]] = {
    "Administrator": _ALL,
    "PVEAdmin": _ALL,
    "PVEVMAdmin": {"VM.Audit", "VM.PowerMgmt", "VM.Config.Options", "VM.Config.Memory",
                   "VM.Console"},
    "PVEVMUser": {"VM.Audit", "VM.PowerMgmt", "VM.Console"},
    "PVEAuditor": {"VM.Audit", "Datastore.Audit", "Sys.Audit", "Pool.Audit"},
    "PVEDatastoreAdmin": {"Datastore.Audit", "Datastore.AllocateSpace"},
    "PVEDatastoreUser": {"Datastore.Audit", "Datastore.AllocateSpace"},
    "PVEPoolAdmin": {"Pool.Audit", "Pool.Allocate"},
    "PVEPoolUser": {"Pool.Audit"},
    "PVEUserAdmin": set(),
    "PVESysAdmin": {"Sys.Audit"},
    "PVETemplateUser": {"VM.Audit"},
    "NoAccess": set(),
}
# which targets a grant at each scope reaches: the pool holds the VM and the storage
REACHES = {"root": {"vm", "storage", "node", "root", "pool"},
           "vm": {"vm"},
           "pool": {"vm", "storage", "pool"}}


@dataclass(frozen=True)
class Call:
    label: str
    method: str
    path: str                                  # {vmid}, {pool} filled in
    privs: tuple[str, ...]
    target: str                                # vm | storage | node | root | pool
    data: dict[str, Any] | None = None
    any: bool = False
    listed: Callable[[Any, int, str], bool] | None = None   # a filtered listing

    def expected(self, role: str, scope: str) -> bool:
        have = ROLE_PRIVS[role]
        ok = any(p in have for p in self.privs) if self.any else set(self.privs) <= have
        return ok and self.target in REACHES[scope]


def _has_vm(data: Any, vmid: int, pool: str) -> bool:
    return any(e.get("vmid") == vmid for e in data)


CALLS = [
    Call("vm config", "GET", "/nodes/n1/qemu/{vmid}/config", ("VM.Audit",), "vm"),
    Call("vm status", "GET", "/nodes/n1/qemu/{vmid}/status/current", ("VM.Audit",), "vm"),
    Call("vm shutdown", "POST", "/nodes/n1/qemu/{vmid}/status/shutdown", ("VM.PowerMgmt",),
         "vm", data={}),
    Call("vm config change", "PUT", "/nodes/n1/qemu/{vmid}/config", ("VM.Config.Options",),
         "vm", data={"description": "matrix"}),
    # PVE checks each key: memory needs VM.Config.Memory, not VM.Config.Options
    Call("vm memory change", "PUT", "/nodes/n1/qemu/{vmid}/config", ("VM.Config.Memory",),
         "vm", data={"memory": 64}),
    Call("vm console", "POST", "/nodes/n1/qemu/{vmid}/vncproxy", ("VM.Console",), "vm",
         data={}),
    Call("storage status", "GET", f"/nodes/n1/storage/{STORAGE}/status",
         ("Datastore.Audit", "Datastore.AllocateSpace"), "storage", any=True),
    Call("storage content", "GET", f"/nodes/n1/storage/{STORAGE}/content",
         ("Datastore.Audit", "Datastore.AllocateSpace"), "storage", any=True),
    Call("node status", "GET", "/nodes/n1/status", ("Sys.Audit",), "node"),
    Call("cluster status", "GET", "/cluster/status", ("Sys.Audit",), "root"),
    Call("HA status", "GET", "/cluster/ha/status/current", ("Sys.Audit",), "root"),
    Call("pool read", "GET", "/pools/{pool}", ("Pool.Audit",), "pool"),
    Call("pool modify", "PUT", "/pools", ("Pool.Allocate",), "pool",
         data={"poolid": "{pool}", "comment": "matrix"}),
    # listings: every user may call them; they show only what the caller may see
    Call("vm list", "GET", "/nodes/n1/qemu", ("VM.Audit",), "vm", listed=_has_vm),
    Call("resources: the VM", "GET", "/cluster/resources?type=vm", ("VM.Audit",), "vm",
         listed=_has_vm),
    Call("resources: the pool", "GET", "/cluster/resources", ("Pool.Audit",), "pool",
         listed=lambda d, v, p: any(e.get("type") == "pool" and e.get("pool") == p
                                    for e in d)),
    Call("storage list", "GET", "/nodes/n1/storage",
         ("Datastore.Audit", "Datastore.AllocateSpace"), "storage", any=True,
         listed=lambda d, v, p: any(e.get("storage") == STORAGE for e in d)),
    Call("pool list", "GET", "/pools", ("Pool.Audit", "Pool.Allocate"), "pool", any=True,
         listed=lambda d, v, p: any(e.get("poolid") == p for e in d)),
]


def base(cluster: Cluster) -> str:
    return f"https://{cluster['n1'].address}:8006/api2/json"


def _admin(cluster: Cluster) -> requests.Session:
    r = requests.post(base(cluster) + "/access/ticket", verify=False, timeout=10,
                      data={"username": "admin@pve", "password": PASSWORD})
    assert r.status_code == 200, r.text
    s = requests.Session()
    s.verify = False
    s.trust_env = False
    s.cookies.set("PVEAuthCookie", r.json()["data"]["ticket"])
    s.headers["CSRFPreventionToken"] = r.json()["data"]["CSRFPreventionToken"]
    return s


def _wait_task(s: requests.Session, cluster: Cluster, upid: str) -> str:
    url = f"{base(cluster)}/nodes/n1/tasks/{upid}/status"
    wait_for(lambda: s.get(url, timeout=10).json()["data"]["status"] == "stopped", 60,
             f"task {upid}")
    return str(s.get(url, timeout=10).json()["data"].get("exitstatus"))


def _access(cluster: Cluster, action: str, op: Callable[[AccessConfig], AccessConfig]) -> None:
    async def go() -> None:
        store = cluster.raw_store("n1")
        try:
            await AccessService(lambda: store).change("admin@pve", action, op)
        finally:
            await store.close()
    asyncio.run(go())


@dataclass
class World:
    vmid: int
    pool: str
    tokens: dict[tuple[str, str], str]          # (role, scope) -> Authorization header
    admin: requests.Session


def _create_vm(admin: requests.Session, cluster: Cluster, vmid: int, **extra: Any) -> None:
    r = admin.post(f"{base(cluster)}/nodes/n1/qemu", timeout=30,
                   data={"vmid": vmid, "name": f"matrix-{vmid}", "memory": 64, **extra})
    assert r.status_code == 200, r.text
    assert _wait_task(admin, cluster, r.json()["data"]) == "OK"


def _destroy_vm(admin: requests.Session, cluster: Cluster, vmid: int) -> None:
    r = admin.delete(f"{base(cluster)}/nodes/n1/qemu/{vmid}", timeout=30)
    if r.status_code == 200:
        assert _wait_task(admin, cluster, r.json()["data"]) == "OK"


@pytest.fixture(scope="module")
def world(cluster: Cluster) -> Iterator[World]:
    admin = _admin(cluster)
    vmid = int(admin.get(base(cluster) + "/cluster/nextid", timeout=10).json()["data"])
    _create_vm(admin, cluster, vmid)
    pool = f"mx{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:6]
    secrets: dict[tuple[str, str], str] = {}
    userids: list[str] = []

    def setup(cfg: AccessConfig) -> AccessConfig:
        cfg = ops.add_pool(cfg, pool, "permission matrix")
        cfg = ops.update_pool(cfg, pool, vms=[vmid], storage=[STORAGE])
        for role in ROLES:
            for scope in SCOPES:
                userid = f"mx-{tag}-{role.lower()}-{scope}@pve"
                secret = new_token_secret()
                path = {"root": "/", "vm": f"/vms/{vmid}", "pool": f"/pool/{pool}"}[scope]
                cfg = ops.add_user(cfg, User(userid))
                cfg = ops.add_token(cfg, userid, "mx", hash_secret(secret), privsep=False,
                                    now=0)
                cfg = ops.modify_acl(cfg, path, [role], users=[userid])
                secrets[(role, scope)] = f"PVEAPIToken={userid}!mx={secret}"
                userids.append(userid)
        return cfg

    try:
        _access(cluster, "permission matrix fixtures", setup)
        yield World(vmid, pool, secrets, admin)
    finally:
        _destroy_vm(admin, cluster, vmid)

        def teardown(cfg: AccessConfig) -> AccessConfig:
            for userid in userids:
                if userid in cfg.users:
                    cfg = ops.delete_user(cfg, userid)
            if pool in cfg.pools:
                cfg = ops.update_pool(cfg, pool, storage=[STORAGE], delete=True)
                cfg = ops.delete_pool(cfg, pool)
            return cfg
        _access(cluster, "permission matrix cleanup", teardown)


def _request(cluster: Cluster, world: World, header: str, call: Call) -> requests.Response:
    path = call.path.format(vmid=world.vmid, pool=world.pool)
    data = {k: str(v).format(pool=world.pool) for k, v in (call.data or {}).items()}
    return requests.request(call.method, base(cluster) + path, verify=False, timeout=30,
                            headers={"Authorization": header},
                            data=data if call.method != "GET" else None)


CASES = [(role, scope) for role in ROLES for scope in SCOPES]


def test_matrix(cluster: Cluster, world: World) -> None:
    """Every (role, scope, call): the answer PVE gives. All mismatches are reported at
    once, so a wrong declaration shows which roles it affects."""
    jobs = [(role, scope, call) for role, scope in CASES for call in CALLS]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(
            lambda job: _request(cluster, world, world.tokens[(job[0], job[1])], job[2]),
            jobs))
    wrong = []
    allowed_seen = denied_seen = 0
    for (role, scope, call), r in zip(jobs, answers, strict=True):
        want = call.expected(role, scope)
        allowed_seen += want
        denied_seen += not want
        assert r.status_code != 401, f"{role}@{scope} {call.label}: token refused: {r.reason}"
        if call.listed is not None:
            if r.status_code != 200:
                wrong.append(f"{role} on {scope}: {call.label}: {r.status_code} {r.reason}")
                continue
            got = call.listed(r.json()["data"], world.vmid, world.pool)
        else:
            got = r.status_code != 403
            if not want and r.status_code == 403:
                assert r.reason.startswith("Permission check failed"), r.reason
        if got != want:
            wrong.append(f"{role} on {scope}: {call.label}: expected "
                         f"{'allowed' if want else 'refused'}, got {r.status_code} {r.reason}")
    assert allowed_seen and denied_seen
    assert not wrong, "\n".join(wrong)


def test_refused_change_changes_nothing(cluster: Cluster, world: World) -> None:
    """A refused config change leaves the config as it was (PVEVMUser: no Config.Options)."""
    url = f"{base(cluster)}/nodes/n1/qemu/{world.vmid}/config"
    before = world.admin.get(url, timeout=10).json()["data"]
    r = requests.put(url, data={"description": "refused"}, verify=False, timeout=10,
                     headers={"Authorization": world.tokens[("PVEVMUser", "root")]})
    assert r.status_code == 403
    assert r.reason == f"Permission check failed (/vms/{world.vmid}, VM.Config.Options)"
    assert world.admin.get(url, timeout=10).json()["data"] == before


def test_create_in_pool_and_destroy_cleans_up(cluster: Cluster, world: World) -> None:
    """VM.Allocate on /pool/P creates a VM only with pool=P, and the VM joins the pool;
    destroying it takes it out of the pool and drops its ACL entries (PVE)."""
    header = world.tokens[("PVEVMAdmin", "pool")]
    admin = world.admin
    vmid = int(admin.get(base(cluster) + "/cluster/nextid", timeout=10).json()["data"])
    url = f"{base(cluster)}/nodes/n1/qemu"
    data = {"vmid": str(vmid), "name": "pooled", "memory": "64"}
    r = requests.post(url, data=data, verify=False, timeout=30, headers={"Authorization": header})
    assert r.status_code == 403 and f"/vms/{vmid}" in r.reason
    r = requests.post(url, data={**data, "pool": "no-such-pool"}, verify=False, timeout=30,
                      headers={"Authorization": header})
    assert r.status_code == 403          # no VM.Allocate on that pool
    r = admin.post(url, data={**data, "pool": "nosuchpool"}, timeout=30)
    assert r.status_code == 500 and r.reason == "pool 'nosuchpool' does not exist"
    r = requests.post(url, data={**data, "pool": world.pool}, verify=False, timeout=30,
                      headers={"Authorization": header})
    assert r.status_code == 200, r.reason
    try:
        assert _wait_task(admin, cluster, r.json()["data"]) == "OK"
        members = admin.get(base(cluster) + "/pools", params={"poolid": world.pool},
                            timeout=10).json()["data"][0]["members"]
        assert {m.get("vmid") for m in members} >= {vmid, world.vmid}
        # the pool's delegate now manages the new VM
        r = requests.get(f"{url}/{vmid}/config", verify=False, timeout=10,
                         headers={"Authorization": header})
        assert r.status_code == 200
        _access(cluster, "grant on the new VM",
                lambda cfg: ops.modify_acl(cfg, f"/vms/{vmid}", ["PVEAuditor"],
                                           users=["admin@pve"]))
    finally:
        _destroy_vm(admin, cluster, vmid)
    pools = admin.get(base(cluster) + "/pools", params={"poolid": world.pool},
                      timeout=10).json()["data"]
    assert vmid not in {m.get("vmid") for m in pools[0]["members"]}

    async def acl() -> list[str]:
        store = cluster.raw_store("n1")
        try:
            cfg = await AccessService(lambda: store).config()
        finally:
            await store.close()
        return [e.path for e in cfg.acl]
    assert f"/vms/{vmid}" not in asyncio.run(acl())
