"""GET /cluster/tasks through the real API of a 2-node cluster: every node's recent tasks
(each node keeps its own, in its state directory: n1 asks n2), in PVE's shape, filtered
as PVE's Cluster.pm does (all with Sys.Audit on /, else one's own and one's tokens')."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3

from tests.integration.access.client import Api, wait_task
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
VMID = 930 + int(SUFFIX, 16) % 60
TASKER = f"tasker{SUFFIX}@pve"        # PVEVMAdmin on /vms/VMID
AUDITOR = f"audit{SUFFIX}@pve"        # PVEAuditor on /
NODEAUD = f"nodeaud{SUFFIX}@pve"      # Sys.Audit on /nodes/n2 only (PVE wants it on /)
PW = "tasks-password-1"


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    for userid in (TASKER, AUDITOR, NODEAUD):
        api.ok("POST", "/access/users", userid=userid, password=PW)
    api.ok("PUT", "/access/acl", path=f"/vms/{VMID}", users=TASKER, roles="PVEVMAdmin")
    api.ok("PUT", "/access/acl", path="/", users=AUDITOR, roles="PVEAuditor")
    api.ok("PUT", "/access/acl", path="/nodes/n2", users=NODEAUD, roles="PVEAuditor")
    try:
        yield api
    finally:
        r = api.call("DELETE", f"/nodes/n2/qemu/{VMID}")
        if r.status_code == 200:
            wait_task(api, r.json()["data"])
        for userid in (TASKER, AUDITOR, NODEAUD):
            api.call("DELETE", f"/access/users/{userid}")


def by_upid(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["upid"]: e for e in entries}


def test_cluster_tasks_gathers_every_node_and_filters(cluster: Cluster, admin: Api) -> None:
    # the VM's creation on n2, admin's
    created = admin.ok("POST", "/nodes/n2/qemu", vmid=VMID, memory=64, name=f"t{SUFFIX}")
    wait_task(admin, created)
    token = admin.ok("POST", f"/access/users/{TASKER}/token/ci", privsep=0)
    tasker = Api(cluster, TASKER, PW)
    own = tasker.ok("POST", f"/nodes/n2/qemu/{VMID}/config", description="by tasker")
    wait_task(tasker, own)
    tok = Api(cluster, f"{TASKER}!ci", token=token["value"])
    by_token = tok.ok("POST", f"/nodes/n2/qemu/{VMID}/config", description="by token")
    wait_task(tok, by_token)

    # the administrator, asking n1, sees n2's tasks (and n1's own list is there too)
    seen = by_upid(admin.ok("GET", "/cluster/tasks"))
    assert {created, own, by_token} <= set(seen)
    entry = seen[created]
    assert entry["node"] == "n2" and entry["type"] == "qmcreate" and entry["id"] == str(VMID)
    assert entry["user"] == "admin@pve" and entry["status"] == "OK"
    assert isinstance(entry["starttime"], int) and entry["endtime"] >= entry["starttime"]
    # finished: no pid (PVE's GUI reads a pid as "running"), never a pstart
    assert "pid" not in entry and "pstart" not in entry
    assert (seen[by_token]["user"], seen[by_token]["tokenid"]) == (TASKER, "ci")
    assert any(e["node"] == "n1" for e in seen.values())
    # the same list from n2
    n2 = Api(cluster, "admin@pve", PASSWORD)
    n2.base = n2.base.replace(cluster["n1"].address, cluster["n2"].address)
    assert {created, own, by_token} <= set(by_upid(n2.ok("GET", "/cluster/tasks")))

    # Sys.Audit on / sees everything
    assert {created, own, by_token} <= set(by_upid(Api(cluster, AUDITOR, PW).ok(
        "GET", "/cluster/tasks")))
    # a user sees their own tasks and their tokens', nobody else's
    mine = tasker.ok("GET", "/cluster/tasks")
    assert set(by_upid(mine)) == {own, by_token}
    # PVE checks Sys.Audit on / here: on /nodes/n2 alone it shows nothing of others
    assert Api(cluster, NODEAUD, PW).ok("GET", "/cluster/tasks") == []
    # PVE compares the caller with the task's user part: a token sees none of its own
    assert tok.ok("GET", "/cluster/tasks") == []

    # bad input: PVE's 400 naming the parameter
    r = admin.call("GET", "/cluster/tasks", limit=5)
    assert r.status_code == 400 and "limit" in r.json()["errors"], r.text


def test_cluster_tasks_cli(cluster: Cluster, admin: Api) -> None:
    out = cluster["n1"].cli("cluster", "tasks").stdout
    assert out.startswith("UPID") and "qmcreate" in out
