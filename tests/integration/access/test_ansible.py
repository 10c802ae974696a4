"""Ansible's `community.proxmox` collection (PyPI `ansible`) against binome, unchanged,
authenticated with API tokens as its users do (and `proxmox_template`'s ISO upload).

The administrator's automation, with an admin token: a group, a user in it, a pool, the
pool's VM, an ACL giving the group PVEVMAdmin on the pool; the info modules read them
back; a second run changes nothing (idempotence is what Ansible users rely on). Then the
colleague's own token, limited to the pool, drives `proxmox_kvm`: it sees the pool's VM
and not the other one. The playbooks run in `ansible-playbook` processes with the
`ansible.posix.json` callback; what each task answered is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.access.client import Api, wait_task
from tests.integration.harness import PASSWORD, Cluster

PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SUFFIX = uuid.uuid4().hex[:6]
GROUP, USER, POOL = f"ans{SUFFIX}", f"ans{SUFFIX}@pve", f"ans{SUFFIX}"
VM_IN, VM_OUT = 930 + int(SUFFIX, 16) % 30 * 2, 931 + int(SUFFIX, 16) % 30 * 2


def run_play(cluster: Cluster, tmp: Path, user: str, token: tuple[str, str],
             tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `tasks` (module name -> args) in one play; each task's result, in order.
    Every task may fail (`ignore_errors`) so that the test sees every answer."""
    auth = {"api_host": cluster["n1"].address, "api_user": user, "api_token_id": token[0],
            "api_token_secret": token[1], "validate_certs": False}
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "tasks": [{module: {**auth, **args}, "ignore_errors": True}
                       for module, args in tasks]}]
    (tmp / "play.json").write_text(json.dumps(play))
    env = {**os.environ, "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
           "ANSIBLE_HOME": str(tmp / "home"), "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
           "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
           "ANSIBLE_LOCALHOST_WARNING": "False"}
    proc = subprocess.run([str(PLAYBOOK), "-i", "localhost,", str(tmp / "play.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    results = [t["hosts"]["localhost"] for t in report["plays"][0]["tasks"]]
    assert len(results) == len(tasks), proc.stdout[-2000:]
    return results


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    for vmid in (VM_IN, VM_OUT):
        wait_task(api, api.ok("POST", "/nodes/n1/qemu", vmid=vmid, memory=64,
                              name=f"ans-{vmid}"))
    try:
        yield api
    finally:
        for vmid in (VM_IN, VM_OUT):
            r = api.call("DELETE", f"/nodes/n1/qemu/{vmid}")
            if r.status_code == 200:
                wait_task(api, r.json()["data"])
        api.call("DELETE", f"/access/users/{USER}")
        api.call("DELETE", f"/access/groups/{GROUP}")
        api.call("DELETE", "/pools", poolid=POOL)
        api.call("DELETE", f"/access/users/admin@pve/token/ans{SUFFIX}")
        api.call("DELETE", f"/nodes/n1/storage/local/content/local:iso/ans{SUFFIX}.iso")


def test_community_proxmox_with_tokens(cluster: Cluster, admin: Api, tmp_path: Path) -> None:
    secret = admin.ok("POST", f"/access/users/admin@pve/token/ans{SUFFIX}",
                      privsep=0)["value"]
    admin_token = (f"ans{SUFFIX}", secret)
    setup = [
        ("community.proxmox.proxmox_group", {"groupid": GROUP, "comment": "from ansible"}),
        ("community.proxmox.proxmox_user", {"userid": USER, "groups": [GROUP],
                                             "password": "ansible-secret-1",
                                             "comment": "automation"}),
        ("community.proxmox.proxmox_pool", {"poolid": POOL, "comment": "from ansible"}),
        ("community.proxmox.proxmox_pool_member", {"poolid": POOL, "member": str(VM_IN),
                                                    "type": "vm"}),
        ("community.proxmox.proxmox_access_acl", {"state": "present", "path": f"/pool/{POOL}",
                                                   "type": "group", "ugid": GROUP,
                                                   "roleid": "PVEVMAdmin"}),
    ]
    first = run_play(cluster, tmp_path, "admin@pve", admin_token, setup)
    for (module, _), result in zip(setup, first, strict=True):
        assert not result.get("failed"), (module, result.get("msg"))
        assert result["changed"] is True, (module, result)
    # the state is what the modules asked for, read through the API
    assert admin.ok("GET", f"/access/groups/{GROUP}")["members"] == [USER]
    members = admin.ok("GET", "/pools", poolid=POOL)[0]["members"]
    assert [m["vmid"] for m in members if m["type"] == "qemu"] == [VM_IN]
    assert {"path": f"/pool/{POOL}", "type": "group", "ugid": GROUP, "roleid": "PVEVMAdmin",
            "propagate": 1} in admin.ok("GET", "/access/acl")
    Api(cluster, USER, "ansible-secret-1")          # the password the module set

    # idempotence: the same play again changes nothing; the info modules read it back
    # proxmox_template uploads an ISO image (multipart, streamed into the storage)
    iso = tmp_path / f"ans{SUFFIX}.iso"
    iso.write_bytes(os.urandom(1 << 20))
    template = {"node": "n1", "storage": "local", "content_type": "iso"}
    info = [("community.proxmox.proxmox_user_info", {"userid": USER}),
            ("community.proxmox.proxmox_group_info", {"group": GROUP}),
            ("community.proxmox.proxmox_domain_info", {}),
            ("community.proxmox.proxmox_template", {**template, "src": str(iso)})]
    # (proxmox_user re-sets a password whenever one is given, which PVE, like binome,
    # refuses to tokens: the second run leaves it out, as a playbook with tokens must)
    again = [(m, {k: v for k, v in a.items() if k != "password"}) for m, a in setup]
    second = run_play(cluster, tmp_path, "admin@pve", admin_token, again + info)
    for (module, _), result in zip(again, second[:len(again)], strict=True):
        assert not result.get("failed") and result["changed"] is False, \
            (module, result.get("msg"), result.get("changed"))
    user_info, group_info, domain_info, uploaded = second[len(setup):]
    assert not uploaded.get("failed") and uploaded["changed"] is True, uploaded
    stored = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso" / iso.name
    assert stored.read_bytes() == iso.read_bytes()
    assert not user_info.get("failed"), user_info
    assert [u["userid"] for u in user_info["proxmox_users"]] == [USER]
    assert user_info["proxmox_users"][0]["groups"] == [GROUP]
    assert "password" not in json.dumps(user_info["proxmox_users"])
    assert not group_info.get("failed"), group_info
    assert group_info["proxmox_groups"][0]["users"] == [USER]
    assert {"pam", "pve"} <= {d["realm"] for d in domain_info["proxmox_domains"]}

    # the colleague's token, limited to the pool, drives proxmox_kvm
    user_secret = admin.ok("POST", f"/access/users/{USER}/token/ci", privsep=0)["value"]
    kvm = [("community.proxmox.proxmox_kvm", {"vmid": VM_IN, "state": "current"}),
           ("community.proxmox.proxmox_kvm", {"vmid": VM_OUT, "state": "current"})]
    inside, outside = run_play(cluster, tmp_path, USER, ("ci", user_secret), kvm)
    assert not inside.get("failed") and inside["status"] == "stopped", inside
    assert outside.get("failed") and "does not exist" in outside["msg"], outside

    # and the administrator's automation tears it down
    teardown = [
        ("community.proxmox.proxmox_access_acl", {"state": "absent", "path": f"/pool/{POOL}",
                                                   "type": "group", "ugid": GROUP,
                                                   "roleid": "PVEVMAdmin"}),
        ("community.proxmox.proxmox_pool_member", {"poolid": POOL, "member": str(VM_IN),
                                                    "type": "vm", "state": "absent"}),
        ("community.proxmox.proxmox_pool", {"poolid": POOL, "state": "absent"}),
        ("community.proxmox.proxmox_user", {"userid": USER, "state": "absent"}),
        ("community.proxmox.proxmox_group", {"groupid": GROUP, "state": "absent"}),
        ("community.proxmox.proxmox_template", {**template, "template": iso.name,
                                                 "state": "absent"}),
    ]
    gone = run_play(cluster, tmp_path, "admin@pve", admin_token, teardown)
    for (module, _), result in zip(teardown, gone, strict=True):
        assert not result.get("failed") and result["changed"] is True, (module, result)
    assert POOL not in [p["poolid"] for p in admin.ok("GET", "/pools")]
    assert USER not in [u["userid"] for u in admin.ok("GET", "/access/users")]
    assert not stored.exists()
