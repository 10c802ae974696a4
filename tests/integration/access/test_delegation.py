"""Delegating a pool to a colleague, end to end through the HTTPS API and the CLI, as
docs/access-control.md tells an administrator to do it.

One scenario on the shared cluster, in steps that build on each other: the cluster
administrator delegates a pool to a colleague; the colleague sees and acts on exactly
the pool's VM; her privilege-separated token (through proxmoxer) never exceeds its own
ACL nor her; a delegated Permissions.Modify cannot escalate; disabling a user cuts off
her ticket and her token at the next request. Everything created is removed at the end
(the cluster is shared with other modules). Per-method refusals and bad input:
test_access_api.py; every built-in role: test_permission_matrix.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3
from proxmoxer import ProxmoxAPI, ResourceException

from tests.integration.access.client import Api, base_url, wait_task
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
POOL = f"dmz{SUFFIX}"
GROUP = f"web{SUFFIX}"
ALICE = f"alice{SUFFIX}@pve"
BOB = f"bob{SUFFIX}@pve"
ALICE_PW = "alice-secret-1"
VM_IN, VM_OUT = 870 + int(SUFFIX, 16) % 50 * 2, 871 + int(SUFFIX, 16) % 50 * 2
SECRET_WORDS = ("password", "secret_hash", ALICE_PW)


def _no_secret(payload: Any) -> None:
    text = json.dumps(payload)
    for word in SECRET_WORDS:
        assert word not in text, f"{word!r} in {text[:300]}"


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    for vmid in (VM_IN, VM_OUT):
        wait_task(api, api.ok("POST", "/nodes/n1/qemu", vmid=vmid, memory=64,
                               name=f"acl-{vmid}"))
    try:
        yield api
    finally:   # leave the shared cluster as found, whatever failed
        for vmid in (VM_IN, VM_OUT):
            r = api.call("DELETE", f"/nodes/n1/qemu/{vmid}")
            if r.status_code == 200:
                wait_task(api, r.json()["data"])
        for user in (ALICE, BOB):
            api.call("DELETE", f"/access/users/{user}")
        api.call("DELETE", f"/access/groups/{GROUP}")
        api.call("DELETE", "/pools", poolid=POOL)
        api.call("DELETE", f"/access/roles/Delegate{SUFFIX}")


def test_delegating_a_pool_and_tokens_through_the_api(cluster: Cluster, admin: Api) -> None:
    # the administrator builds the delegation, pveum's way
    admin.ok("POST", "/pools", poolid=POOL, comment="web servers")
    admin.ok("PUT", "/pools", poolid=POOL, vms=str(VM_IN))
    admin.ok("POST", "/access/groups", groupid=GROUP, comment="web admins")
    admin.ok("POST", "/access/users", userid=ALICE, password=ALICE_PW, groups=GROUP,
             email="alice@example.org", firstname="Alice")
    admin.ok("PUT", "/access/acl", path=f"/pool/{POOL}", groups=GROUP, roles="PVEVMAdmin")
    pool = admin.ok("GET", "/pools", poolid=POOL)
    assert [m["vmid"] for m in pool[0]["members"] if m["type"] == "qemu"] == [VM_IN]
    group = admin.ok("GET", f"/access/groups/{GROUP}")
    assert group["members"] == [ALICE]
    users = admin.ok("GET", "/access/users", full=1)
    assert ALICE in [u["userid"] for u in users]
    _no_secret(users)
    _no_secret(admin.ok("GET", f"/access/users/{ALICE}"))
    acl = admin.ok("GET", "/access/acl")
    assert {"path": f"/pool/{POOL}", "type": "group", "ugid": GROUP, "roleid": "PVEVMAdmin",
            "propagate": 1} in acl

    # alice sees and acts on exactly the pool's VM
    alice = Api(cluster, ALICE, ALICE_PW)
    assert alice.cap["vms"].get("VM.PowerMgmt") == 1
    vms = {r["vmid"] for r in alice.ok("GET", "/cluster/resources", type="vm")}
    assert VM_IN in vms and VM_OUT not in vms
    assert {v["vmid"] for v in alice.ok("GET", "/nodes/n1/qemu")} & {VM_IN, VM_OUT} == {VM_IN}
    assert alice.ok("GET", f"/nodes/n1/qemu/{VM_IN}/config")["name"] == f"acl-{VM_IN}"
    assert alice.call("PUT", f"/nodes/n1/qemu/{VM_IN}/config",
                      description="delegated").status_code == 200
    r = alice.call("GET", f"/nodes/n1/qemu/{VM_OUT}/config")
    assert r.status_code == 403 and r.reason.startswith("Permission check failed")
    assert alice.call("GET", "/nodes/n1/status").status_code == 403
    assert [u["userid"] for u in alice.ok("GET", "/access/users")] == [ALICE]
    assert alice.call("POST", "/access/users", userid=BOB).status_code == 403
    perms = alice.ok("GET", "/access/permissions", path=f"/vms/{VM_IN}")
    assert "VM.PowerMgmt" in perms[f"/vms/{VM_IN}"]   # value: propagate (pool: 0)

    # her privilege-separated token: its own ACL, never beyond her
    created = alice.ok("POST", f"/access/users/{ALICE}/token/tf", comment="terraform")
    assert created["full-tokenid"] == f"{ALICE}!tf" and created["info"]["privsep"] == 1
    secret = created["value"]
    listed = alice.ok("GET", f"/access/users/{ALICE}/token")
    assert listed == [{"tokenid": "tf", "expire": 0, "privsep": 1, "comment": "terraform"}]
    assert secret not in json.dumps(listed)
    host = cluster["n1"].address
    prox = ProxmoxAPI(host, user=ALICE, token_name="tf", token_value=secret,
                      verify_ssl=False, timeout=20)
    assert [v for v in prox.nodes("n1").qemu.get() if v["vmid"] in (VM_IN, VM_OUT)] == []
    admin.ok("PUT", "/access/acl", path="/", tokens=f"{ALICE}!tf", roles="Administrator")
    seen = {v["vmid"] for v in prox.nodes("n1").qemu.get()} & {VM_IN, VM_OUT}
    assert seen == {VM_IN}      # Administrator on / for the token, but alice has the pool only
    assert prox.nodes("n1").qemu(VM_IN).config.get()["description"] == "delegated"
    token_api = Api(cluster, f"{ALICE}!tf", token=secret)
    assert token_api.call("GET", f"/nodes/n1/qemu/{VM_OUT}/config").status_code == 403
    assert token_api.call("PUT", "/access/password", userid=ALICE,
                          password="x" * 10).status_code == 403   # tokens may not
    bad = Api(cluster, f"{ALICE}!tf", token="0" * 36)
    assert bad.call("GET", "/version").status_code == 401
    # the token cannot lift its own separation nor mint tokens for alice: a token is never
    # its user for PVE's ['userid-param', 'self'] (its id is user@realm!tokenid), so it
    # needs User.Modify, which alice lacks; proxmoxer sees PVE's 403
    with pytest.raises(ResourceException) as refused:
        prox.access.users(ALICE).token("tf").put(privsep=0)
    assert refused.value.status_code == 403
    assert token_api.call("POST", f"/access/users/{ALICE}/token/tf2",
                          privsep=0).status_code == 403
    assert token_api.call("DELETE", f"/access/users/{ALICE}/token/tf").status_code == 403
    assert alice.ok("GET", f"/access/users/{ALICE}/token/tf")["privsep"] == 1
    # her ticket still can
    alice.ok("PUT", f"/access/users/{ALICE}/token/tf", comment="terraform, separated")
    alice.ok("POST", f"/access/users/{ALICE}/token/tf2")
    alice.ok("DELETE", f"/access/users/{ALICE}/token/tf2")
    # a token's effective permissions, PVE's userid=user@realm!tokenid: her pool's VM
    # privileges only (the intersection), asked by her, by the token itself, by an auditor
    for api in (alice, token_api, admin):
        perms = api.ok("GET", "/access/permissions", userid=f"{ALICE}!tf")
        assert "VM.PowerMgmt" in perms[f"/vms/{VM_IN}"]
        assert "Sys.Modify" not in perms.get("/", {}) and f"/vms/{VM_OUT}" not in perms
    one = prox.access.permissions.get(userid=f"{ALICE}!tf", path=f"/vms/{VM_OUT}")
    assert one == {f"/vms/{VM_OUT}": {}}
    r = alice.call("GET", "/access/permissions", userid=f"{ALICE}!")
    assert r.status_code == 400 and "userid" in r.json()["errors"]

    # a delegated Permissions.Modify cannot escalate
    admin.ok("POST", "/access/roles", roleid=f"Delegate{SUFFIX}",
             privs="Permissions.Modify,VM.Audit")
    admin.ok("PUT", "/access/acl", path=f"/vms/{VM_OUT}", users=ALICE,
             roles=f"Delegate{SUFFIX}")
    before = admin.ok("GET", "/access/acl")
    r = alice.call("PUT", "/access/acl", path="/", users=ALICE, roles="Administrator")
    assert r.status_code == 403
    r = alice.call("PUT", "/access/acl", path=f"/vms/{VM_OUT}", users=ALICE,
                   roles="PVEVMAdmin")      # privileges she lacks there
    assert r.status_code == 403 and r.reason.startswith("Permission check failed")
    assert admin.ok("GET", "/access/acl") == before
    # what she holds there, she may pass on
    assert alice.call("PUT", "/access/acl", path=f"/vms/{VM_OUT}", groups=GROUP,
                      roles=f"Delegate{SUFFIX}").status_code == 200
    admin.ok("PUT", "/access/acl", path=f"/vms/{VM_OUT}", groups=GROUP,
             roles=f"Delegate{SUFFIX}", delete=1)
    assert admin.ok("GET", "/access/acl") == before

    # password: her own, then reset by the administrator
    alice.ok("PUT", "/access/password", userid=ALICE, password="alice-secret-2",
             **{"confirmation-password": ALICE_PW})
    Api(cluster, ALICE, "alice-secret-2")
    admin.ok("PUT", "/access/password", userid=ALICE, password="alice-secret-3",
             **{"confirmation-password": PASSWORD})
    r = requests.post(base_url(cluster) + "/access/ticket", verify=False, timeout=10,
                      data={"username": ALICE, "password": "alice-secret-2"})
    assert r.status_code == 401
    alice = Api(cluster, ALICE, "alice-secret-3")

    # disabling her cuts off her ticket and her token at the next request
    admin.ok("PUT", f"/access/users/{ALICE}", enable=0)
    assert alice.call("GET", "/version").status_code == 401
    assert token_api.call("GET", "/version").status_code == 401
    admin.ok("PUT", f"/access/users/{ALICE}", enable=1)
    assert token_api.call("GET", "/version").status_code == 200

    # deleting her removes her tokens and her ACL entries
    admin.ok("DELETE", f"/access/users/{ALICE}")
    assert token_api.call("GET", "/version").status_code == 401
    assert not [e for e in admin.ok("GET", "/access/acl") if ALICE in e["ugid"]]


def test_the_cli_speaks_pveum(cluster: Cluster, tmp_path) -> None:
    """`binome user|group|pool|acl|role|user token` on the local socket (root@pam)."""
    n1 = cluster["n1"]
    user, group, pool = f"carol{SUFFIX}@pve", f"ops{SUFFIX}", f"test{SUFFIX}"
    secret_file = tmp_path / "pw"
    secret_file.write_text("carol-secret-1\n")
    try:
        n1.cli("group", "add", group, "--comment", "operators")
        n1.cli("user", "add", user, "--groups", group, "--password-file", str(secret_file))
        n1.cli("pool", "add", pool)
        n1.cli("acl", "modify", f"/pool/{pool}", "--groups", group, "--roles", "PVEVMUser")
        entries = n1.json("acl", "list")
        assert {"path": f"/pool/{pool}", "type": "group", "ugid": group,
                "roleid": "PVEVMUser", "propagate": 1} in entries
        assert [u["groups"] for u in n1.json("user", "list") if u["userid"] == user] == [group]
        token = n1.json("user", "token", "add", user, "ci", "--privsep", "0")
        assert token["full-tokenid"] == f"{user}!ci" and len(token["value"]) == 36
        listed = n1.cli("user", "token", "list", user).stdout
        assert "ci" in listed and token["value"] not in listed
        refused = n1.cli("user", "add", user, check=False)
        assert refused.returncode != 0 and "already exists" in refused.stderr
        Api(cluster, user, "carol-secret-1")        # the password the CLI read from the file
        # a secret on the command line is refused, never echoed; nothing changed
        refused = n1.cli("passwd", user, "--password", "carol-secret-2", check=False)
        assert refused.returncode == 2 and "carol-secret-2" not in refused.stderr + \
            refused.stdout and "--password-file" in refused.stderr
        Api(cluster, user, "carol-secret-1")
        # pveum's one-word aliases and one-dash options; `user permissions` (a token too)
        n1.cli("aclmod", f"/pool/{pool}", "-group", group, "-role", "PVEAuditor")
        perms = n1.json("user", "permissions", user, "-path", f"/pool/{pool}")
        assert "Pool.Audit" in perms[f"/pool/{pool}"]
        n1.cli("acldel", f"/pool/{pool}", "-group", group, "-role", "PVEAuditor")
        text = n1.cli("user", "token", "permissions", user, "ci", "--path",
                      f"/pool/{pool}").stdout
        assert text.startswith("ACL PATH") and "VM.Audit" in text and "(*)" in text
        n1.cli("acl", "delete", f"/pool/{pool}", "--groups", group, "--roles", "PVEVMUser")
        assert not [e for e in n1.json("acl", "list") if e["ugid"] == group]
    finally:
        n1.cli("user", "delete", user, check=False)
        n1.cli("group", "delete", group, check=False)
        n1.cli("pool", "delete", pool, check=False)
