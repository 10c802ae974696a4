"""Users, passwords, tokens, groups, roles and ACLs through the real HTTPS API (and
proxmoxer with a token) of the shared cluster: CRUD, refusals that change nothing,
escalation attempts, cut-off of a disabled user, and no secret in any answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3

from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
GROUP = f"ops{SUFFIX}"
ROLE = f"Audit{SUFFIX}"
ALICE = f"alice{SUFFIX}@pve"       # member of GROUP, PVEAuditor on /
DELEG = f"deleg{SUFFIX}@pve"       # Permissions.Modify on /vms/100 only
ALLOC = f"alloc{SUFFIX}@pve"       # VM.Allocate + VM.Audit on /vms/101 only
USER_PW = "first-password-1"


class Api:
    """A logged-in HTTPS session answering (status, data, errors, reason)."""

    def __init__(self, cluster: Cluster, user: str, password: str) -> None:
        self.base = f"https://{cluster['n1'].address}:8006/api2/json"
        self.s = requests.Session()
        self.s.verify = False
        self.s.trust_env = False
        r = self.s.post(self.base + "/access/ticket",
                        data={"username": user, "password": password}, timeout=10)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        self.ticket = data["ticket"]
        self.s.cookies.set("PVEAuthCookie", data["ticket"])
        self.s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]

    def call(self, method: str, url: str, /, **data: Any) -> requests.Response:
        if method == "GET":      # PVE clients send GET parameters in the query string
            return self.s.get(self.base + url, params=data, timeout=30)
        return self.s.request(method, self.base + url, data=data or None, timeout=30)

    def ok(self, method: str, url: str, /, **data: Any) -> Any:
        r = self.call(method, url, **data)
        assert r.status_code == 200, f"{method} {url}: {r.status_code} {r.reason} {r.text}"
        return r.json()["data"]


def token_get(cluster: Cluster, tokenid: str, secret: str, path: str) -> requests.Response:
    return requests.get(f"https://{cluster['n1'].address}:8006/api2/json{path}",
                        headers={"Authorization": f"PVEAPIToken={tokenid}={secret}"},
                        verify=False, timeout=10)


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    api.ok("POST", "/access/groups", groupid=GROUP, comment="operators")
    api.ok("POST", "/access/roles", roleid=ROLE, privs="VM.Audit")
    api.ok("POST", "/access/roles", roleid=f"Mod{SUFFIX}", privs="Permissions.Modify,VM.Audit")
    api.ok("POST", "/access/roles", roleid=f"Alloc{SUFFIX}", privs="VM.Allocate,VM.Audit")
    for user, groups in ((ALICE, GROUP), (DELEG, ""), (ALLOC, "")):
        api.ok("POST", "/access/users", userid=user, password=USER_PW, groups=groups,
               comment="it")
    api.ok("PUT", "/access/acl", path="/", users=ALICE, roles="PVEAuditor")
    api.ok("PUT", "/access/acl", path="/vms/100", users=DELEG, roles=f"Mod{SUFFIX}")
    api.ok("PUT", "/access/acl", path="/vms/101", users=ALLOC, roles=f"Alloc{SUFFIX}")
    yield api
    for user in (ALICE, DELEG, ALLOC):
        api.call("DELETE", f"/access/users/{user}")
    for role in (ROLE, f"Mod{SUFFIX}", f"Alloc{SUFFIX}"):
        api.call("DELETE", f"/access/roles/{role}")
    api.call("DELETE", f"/access/groups/{GROUP}")


def test_users_groups_roles_crud(admin: Api) -> None:
    users = {u["userid"]: u for u in admin.ok("GET", "/access/users", full=1)}
    assert users[ALICE]["groups"] == GROUP and users[ALICE]["tokens"] == []
    assert users[ALICE]["enable"] == 1 and "root@pam" in users
    one = admin.ok("GET", f"/access/users/{ALICE}")
    assert one["comment"] == "it" and one["groups"] == [GROUP]
    admin.ok("PUT", f"/access/users/{ALICE}", email="a@example.com", firstname="Alice")
    assert admin.ok("GET", f"/access/users/{ALICE}")["email"] == "a@example.com"
    admin.ok("PUT", f"/access/users/{ALICE}", delete="email")
    assert "email" not in admin.ok("GET", f"/access/users/{ALICE}")

    g2 = f"dev{SUFFIX}"
    admin.ok("POST", "/access/groups", groupid=g2)
    admin.ok("PUT", f"/access/users/{ALICE}", groups=g2, append=1)
    assert admin.ok("GET", f"/access/users/{ALICE}")["groups"] == [GROUP, g2]
    assert admin.ok("GET", f"/access/groups/{g2}")["members"] == [ALICE]
    admin.ok("PUT", f"/access/groups/{g2}", comment="devs")
    listed = {g["groupid"]: g for g in admin.ok("GET", "/access/groups")}
    assert listed[g2] == {"groupid": g2, "users": ALICE, "comment": "devs"}
    admin.ok("DELETE", f"/access/groups/{g2}")
    assert admin.ok("GET", f"/access/users/{ALICE}")["groups"] == [GROUP]

    roles = {r["roleid"]: r for r in admin.ok("GET", "/access/roles")}
    assert roles["PVEAuditor"]["special"] == 1 and "special" not in roles[ROLE]
    assert roles[ROLE]["privs"] == "VM.Audit"
    admin.ok("PUT", f"/access/roles/{ROLE}", privs="VM.Console", append=1)
    assert admin.ok("GET", f"/access/roles/{ROLE}") == {"VM.Audit": 1, "VM.Console": 1}
    admin.ok("PUT", f"/access/roles/{ROLE}", privs="VM.Audit")
    assert admin.ok("GET", f"/access/roles/{ROLE}") == {"VM.Audit": 1}

    bob = f"bob{SUFFIX}@pve"
    admin.ok("POST", "/access/users", userid=bob)
    admin.ok("DELETE", f"/access/users/{bob}")
    assert bob not in {u["userid"] for u in admin.ok("GET", "/access/users")}


def test_bad_input_is_refused_and_changes_nothing(admin: Api) -> None:
    before = (admin.ok("GET", "/access/users"), admin.ok("GET", "/access/groups"),
              admin.ok("GET", "/access/roles"), admin.ok("GET", "/access/acl"))
    r = admin.call("POST", "/access/users", userid=ALICE)
    assert r.status_code == 500 and "already exists" in r.reason
    r = admin.call("POST", "/access/users", userid=f"x{SUFFIX}@nosuchrealm")
    assert r.status_code == 400 and "does not exist" in r.json()["errors"]["userid"]
    r = admin.call("POST", "/access/users", userid=f"x{SUFFIX}@pve", groups="nosuchgroup")
    assert r.status_code == 400 and "nosuchgroup" in r.json()["errors"]["groups"]
    r = admin.call("POST", "/access/groups", groupid=GROUP)
    assert r.status_code == 500 and "already exists" in r.reason
    r = admin.call("POST", "/access/roles", roleid=f"R{SUFFIX}", privs="VM.Fly")
    assert r.status_code == 400 and "VM.Fly" in r.json()["errors"]["privs"]
    r = admin.call("PUT", "/access/roles/PVEAdmin", privs="VM.Audit")
    assert r.status_code == 500 and "built-in" in r.reason
    r = admin.call("PUT", "/access/acl", path="/vms/100", users=ALICE, roles="NoSuchRole")
    assert r.status_code == 400 and "NoSuchRole" in r.json()["errors"]["roles"]
    r = admin.call("PUT", "/access/acl", path="/vms/100", users=f"ghost{SUFFIX}@pve",
                   roles="PVEAuditor")
    assert r.status_code == 400 and "does not exist" in r.json()["errors"]["users"]
    r = admin.call("PUT", "/access/acl", path="/no/such/kind", users=ALICE,
                   roles="PVEAuditor")
    assert r.status_code == 400 and "invalid ACL path" in r.json()["errors"]["path"]
    # a token for a disabled user is refused
    admin.ok("PUT", f"/access/users/{ALLOC}", enable=0)
    try:
        r = admin.call("POST", f"/access/users/{ALLOC}/token/t1")
        assert r.status_code == 500 and "disabled" in r.reason
    finally:
        admin.ok("PUT", f"/access/users/{ALLOC}", enable=1)
    after = (admin.ok("GET", "/access/users"), admin.ok("GET", "/access/groups"),
             admin.ok("GET", "/access/roles"), admin.ok("GET", "/access/acl"))
    assert after == before


def test_privsep_token_through_proxmoxer(cluster: Cluster, admin: Api) -> None:
    from proxmoxer import ProxmoxAPI, ResourceException

    created = admin.ok("POST", f"/access/users/{ALICE}/token/tf", comment="terraform")
    assert created["full-tokenid"] == f"{ALICE}!tf" and created["info"]["privsep"] == 1
    secret = created["value"]
    listed = admin.ok("GET", f"/access/users/{ALICE}/token")
    assert listed == [{"tokenid": "tf", "expire": 0, "privsep": 1, "comment": "terraform"}]
    px = ProxmoxAPI(cluster["n1"].address, user=ALICE, token_name="tf", token_value=secret,
                    verify_ssl=False, timeout=10)
    # privsep: the token has no ACL yet, so it has nothing of alice's PVEAuditor
    with pytest.raises(ResourceException) as exc:
        px.access.groups(GROUP).get()
    assert exc.value.status_code == 403
    admin.ok("PUT", "/access/acl", path="/", tokens=f"{ALICE}!tf", roles="Administrator")
    assert px.access.groups(GROUP).get()["members"] == [ALICE]     # Sys.Audit: alice's too
    # the token's Administrator is cut to alice's privileges: no Group.Allocate
    with pytest.raises(ResourceException) as exc:
        px.access.groups.post(groupid=f"tok{SUFFIX}")
    assert exc.value.status_code == 403
    assert GROUP in {g["groupid"] for g in admin.ok("GET", "/access/groups")}
    assert f"tok{SUFFIX}" not in {g["groupid"] for g in admin.ok("GET", "/access/groups")}
    # tokens may not change passwords (PVE: allowtoken => 0)
    with pytest.raises(ResourceException) as exc:
        px.access.password.put(userid=ALICE, password="token-changed-1")
    assert exc.value.status_code == 403
    updated = admin.ok("PUT", f"/access/users/{ALICE}/token/tf", privsep=0)
    assert updated["privsep"] == 0 and "value" not in updated
    assert admin.ok("GET", f"/access/users/{ALICE}/token/tf")["privsep"] == 0
    # PVE 9.1 regenerate: a new secret shown once, the old one refused at once
    assert token_get(cluster, f"{ALICE}!tf", secret, "/version").status_code == 200
    r = admin.call("PUT", f"/access/users/{ALICE}/token/tf", regenerate=1, delete="expire")
    assert r.status_code == 400 and "delete" in r.json()["errors"]
    assert token_get(cluster, f"{ALICE}!tf", secret, "/version").status_code == 200
    regenerated = admin.ok("PUT", f"/access/users/{ALICE}/token/tf", regenerate=1,
                           delete="comment")
    assert regenerated["full-tokenid"] == f"{ALICE}!tf" and "comment" not in regenerated
    assert regenerated["value"] != secret and regenerated["privsep"] == 0
    assert token_get(cluster, f"{ALICE}!tf", secret, "/version").status_code == 401
    assert token_get(cluster, f"{ALICE}!tf", regenerated["value"],
                     "/version").status_code == 200
    assert regenerated["value"] not in str(admin.ok("GET", f"/access/users/{ALICE}/token"))
    secret = regenerated["value"]
    admin.ok("DELETE", f"/access/users/{ALICE}/token/tf")
    assert token_get(cluster, f"{ALICE}!tf", secret, "/version").status_code == 401
    assert all(e["ugid"] != f"{ALICE}!tf" for e in admin.ok("GET", "/access/acl"))


def test_acl_escalation_is_refused(cluster: Cluster, admin: Api) -> None:
    acl_before = admin.ok("GET", "/access/acl")
    deleg = Api(cluster, DELEG, USER_PW)
    # Permissions.Modify on /vms/100 does not reach "/" nor another VM
    r = deleg.call("PUT", "/access/acl", path="/", users=DELEG, roles="Administrator")
    assert r.status_code == 403 and "Permission check failed" in r.reason
    r = deleg.call("PUT", "/access/acl", path="/vms/102", users=DELEG, roles="PVEVMAdmin")
    assert r.status_code == 403
    # a caller sees only the entries on paths where they may modify permissions
    assert {e["path"] for e in deleg.ok("GET", "/access/acl")} == {"/vms/100"}
    # ... except an auditor of /access (PVEAuditor on /): every entry (PVE's read_acl)
    seen = Api(cluster, ALICE, USER_PW).ok("GET", "/access/acl")
    assert sorted(map(str, seen)) == sorted(map(str, acl_before))
    # ... and only their own user record (no group rights)
    assert [u["userid"] for u in deleg.ok("GET", "/access/users")] == [DELEG]
    # VM.Allocate on /vms/101 only gives roles made of privileges the caller holds there
    alloc = Api(cluster, ALLOC, USER_PW)
    r = alloc.call("PUT", "/access/acl", path="/vms/101", users=ALLOC, roles="PVEVMAdmin")
    assert r.status_code == 403 and "/vms/101" in r.reason
    r = alloc.call("PUT", "/access/acl", path="/vms/101", users=ALLOC, roles="NoAccess")
    assert r.status_code == 403
    assert admin.ok("GET", "/access/acl") == acl_before
    # within their rights it works (PVE: Permissions.Modify gives any role on that path)
    deleg.ok("PUT", "/access/acl", path="/vms/100", users=ALICE, roles=ROLE)
    alloc.ok("PUT", "/access/acl", path="/vms/101", users=ALICE, roles=ROLE)
    for path in ("/vms/100", "/vms/101"):
        admin.ok("PUT", "/access/acl", path=path, users=ALICE, roles=ROLE, delete=1)
    assert admin.ok("GET", "/access/acl") == acl_before
    # a non-admin cannot create users, groups or roles
    for method, path, data in (("POST", "/access/users", {"userid": f"e{SUFFIX}@pve"}),
                               ("POST", "/access/groups", {"groupid": f"e{SUFFIX}"}),
                               ("POST", "/access/roles", {"roleid": f"E{SUFFIX}"})):
        assert deleg.call(method, path, **data).status_code == 403


def test_disabled_user_is_cut_off(cluster: Cluster, admin: Api) -> None:
    alice = Api(cluster, ALICE, USER_PW)
    secret = admin.ok("POST", f"/access/users/{ALICE}/token/cut", privsep=0)["value"]
    try:
        assert alice.call("GET", "/version").status_code == 200
        assert token_get(cluster, f"{ALICE}!cut", secret, "/version").status_code == 200
        admin.ok("PUT", f"/access/users/{ALICE}", enable=0)
        assert alice.call("GET", "/version").status_code == 401
        assert token_get(cluster, f"{ALICE}!cut", secret, "/version").status_code == 401
        admin.ok("PUT", f"/access/users/{ALICE}", enable=1)
        assert token_get(cluster, f"{ALICE}!cut", secret, "/version").status_code == 200
    finally:
        admin.ok("PUT", f"/access/users/{ALICE}", enable=1)
        admin.call("DELETE", f"/access/users/{ALICE}/token/cut")


def test_ticket_verification_mode(cluster: Cluster, admin: Api) -> None:
    """PVE's POST /access/ticket with path and privs (verify_auth, as proxies use it):
    the user's ticket or password, the privileges on the path, no new ticket."""
    url = f"https://{cluster['n1'].address}:8006/api2/json/access/ticket"

    def post(**data: str) -> requests.Response:
        return requests.post(url, data=data, verify=False, timeout=10)

    alloc = Api(cluster, ALLOC, USER_PW)
    for secret in (alloc.ticket, USER_PW):
        r = post(username=ALLOC, password=secret, path="/vms/101", privs="VM.Audit,VM.Allocate")
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["username"] == ALLOC and data["cap"]["vms"]["VM.Allocate"] == 1
        assert "ticket" not in data and "CSRFPreventionToken" not in data
    # a privilege not held there, another path, another user's ticket, a wrong password:
    # PVE's bare 401
    for data in ({"password": alloc.ticket, "path": "/vms/101", "privs": "VM.PowerMgmt"},
                 {"password": alloc.ticket, "path": "/vms/100", "privs": "VM.Audit"},
                 {"password": admin.ticket, "path": "/vms/101", "privs": "VM.Audit"},
                 {"password": "not-the-password", "path": "/vms/101", "privs": "VM.Audit"}):
        r = post(username=ALLOC, **data)
        assert (r.status_code, r.reason) == (401, "authentication failure"), data
    # bad input: a half of the pair, an unknown privilege
    r = post(username=ALLOC, password=USER_PW, path="/vms/101")
    assert r.status_code == 400 and "privs" in r.json()["errors"]
    r = post(username=ALLOC, password=USER_PW, path="/vms/101", privs="VM.Fly")
    assert r.status_code == 400 and "privs" in r.json()["errors"]
    Api(cluster, ALLOC, USER_PW)        # the one wrong password did not lock her out


def test_password_changes(cluster: Cluster, admin: Api) -> None:
    deleg = Api(cluster, DELEG, USER_PW)
    r = deleg.call("PUT", "/access/password", userid=DELEG, password="short")
    assert r.status_code == 400 and "password" in r.json()["errors"]
    # PVE 8+: the caller's current password confirms the change
    r = deleg.call("PUT", "/access/password", userid=DELEG, password="second-password-2")
    assert r.status_code == 400 and r.json()["errors"] == {
        "confirmation-password": "password is required to modify user"}
    r = deleg.call("PUT", "/access/password", userid=DELEG, password="second-password-2",
                   **{"confirmation-password": "not-my-password"})
    assert r.status_code == 500 and r.reason == "authentication failure"
    Api(cluster, DELEG, USER_PW)                          # nothing changed
    deleg.ok("PUT", "/access/password", userid=DELEG, password="second-password-2",
             **{"confirmation-password": USER_PW})
    Api(cluster, DELEG, "second-password-2")
    with pytest.raises(AssertionError):
        Api(cluster, DELEG, USER_PW)
    # another user's password needs User.Modify and the realm's Realm.AllocateUser
    assert deleg.call("PUT", "/access/password", userid=ALLOC,
                      password="stolen-password").status_code == 403
    admin.ok("PUT", "/access/password", userid=DELEG, password=USER_PW,
             **{"confirmation-password": PASSWORD})     # the administrator's own
    Api(cluster, DELEG, USER_PW)
    # root@pam's password is root@pam's alone (PVE: a bare 403, before any confirmation)
    r = admin.call("PUT", "/access/password", userid="root@pam", password="whatever-long",
                   **{"confirmation-password": PASSWORD})
    assert r.status_code == 403 and r.reason == "Permission check failed"


def test_no_secret_in_any_answer(cluster: Cluster, admin: Api) -> None:
    secret = admin.ok("POST", f"/access/users/{ALICE}/token/peek")["value"]
    try:
        texts = [admin.call("GET", p).text for p in (
            "/access/users?full=1", f"/access/users/{ALICE}", f"/access/users/{ALICE}/token",
            f"/access/users/{ALICE}/token/peek", "/access/groups", f"/access/groups/{GROUP}",
            "/access/roles", "/access/acl")]
        for text in texts:
            assert secret not in text and USER_PW not in text and PASSWORD not in text
            assert "argon2" not in text and "hash" not in text
    finally:
        admin.call("DELETE", f"/access/users/{ALICE}/token/peek")


def test_cli_lists(cluster: Cluster, admin: Api) -> None:
    n1 = cluster["n1"]
    assert ALICE in {u["userid"] for u in n1.json("user", "list")}
    assert GROUP in {g["groupid"] for g in n1.json("group", "list")}
    g = f"cli{SUFFIX}"
    n1.cli("group", "add", g, "--comment", "from the cli")
    n1.cli("acl", "modify", "/vms/100", "--groups", g, "--roles", ROLE)
    assert any(e["ugid"] == g for e in n1.json("acl", "list"))
    n1.cli("acl", "delete", "/vms/100", "--groups", g, "--roles", ROLE)
    assert all(e["ugid"] != g for e in n1.json("acl", "list"))
    n1.cli("group", "delete", g)
    assert g not in {x["groupid"] for x in n1.json("group", "list")}
