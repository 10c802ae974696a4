"""Two-factor login against a real cluster: TOTP (codes computed here with pyotp),
replay refusal, recovery keys, counted failures, partial tickets, proxmoxer's flow."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
import requests
import urllib3
from proxmoxer import ProxmoxAPI

from binome.access import ops
from binome.access.model import TfaUser, User
from binome.access.repository import AccessRepository
from binome.access.secrets import hash_secret
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()
PW = "tfa-user-password"


def base(cluster: Cluster, node: str = "n1") -> str:
    return f"https://{cluster[node].address}:8006/api2/json"


def _repo(cluster: Cluster, fn: Any) -> Any:
    async def go() -> Any:
        store = cluster.raw_store("n1")
        try:
            return await fn(AccessRepository(store))
        finally:
            await store.close()
    return asyncio.run(go())


def tfa_state(cluster: Cluster, userid: str) -> TfaUser:
    async def fn(repo: AccessRepository) -> TfaUser:
        return (await repo.load()).config.tfa.get(userid) or TfaUser(userid)
    return _repo(cluster, fn)


@pytest.fixture
def user(cluster: Cluster) -> Iterator[str]:
    """A fresh pve-realm user with a password (planted: user methods are not ours)."""
    userid = f"tfa{uuid.uuid4().hex[:8]}@pve"
    _repo(cluster, lambda r: r.change("test", "add user", lambda c: ops.add_user(
        c, User(userid, password_hash=hash_secret(PW)))))
    yield userid
    _repo(cluster, lambda r: r.change("test", "delete user",
                                      lambda c: ops.delete_user(c, userid)))


def post_ticket(cluster: Cluster, **data: str) -> requests.Response:
    return requests.post(base(cluster) + "/access/ticket", data=data, verify=False,
                         timeout=20)


def session_of(cluster: Cluster, userid: str, password: str = PW) -> requests.Session:
    r = post_ticket(cluster, username=userid, password=password)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert "NeedTFA" not in data
    s = requests.Session()
    s.verify = False
    s.trust_env = False
    s.cookies.set("PVEAuthCookie", data["ticket"])
    s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    return s


def _clear_of_step_edge(period: int = 30, margin: float = 4.0) -> None:
    """Wait (bounded) until the current TOTP step has `margin` seconds left, so that
    registration and the next code land in the steps the test computes."""
    while period - (time.time() % period) < margin:
        time.sleep(0.2)


def add_totp(cluster: Cluster, s: requests.Session, userid: str) -> tuple[pyotp.TOTP, int]:
    totp = pyotp.TOTP(pyotp.random_base32())
    _clear_of_step_edge()
    step = totp.timecode(time.time())
    r = s.post(f"{base(cluster)}/access/tfa/{userid}",
               data={"type": "totp", "totp": totp.provisioning_uri(name=userid, issuer_name="t"),
                     "value": totp.generate_otp(step), "password": PW,
                     "description": "phone"})
    assert r.status_code == 200, r.text
    assert set(r.json()["data"]) == {"id"}
    return totp, step


def test_totp_login_replay_and_wrong_code(cluster: Cluster, user: str) -> None:
    s = session_of(cluster, user)
    # a wrong registration code changes nothing
    totp0 = pyotp.TOTP(pyotp.random_base32())
    r = s.post(f"{base(cluster)}/access/tfa/{user}",
               data={"type": "totp", "totp": totp0.provisioning_uri(name=user), "value": "000000",
                     "password": PW})
    assert r.status_code == 400 and "value" in r.json()["errors"], r.text
    # the caller's password is asked
    r = s.post(f"{base(cluster)}/access/tfa/{user}",
               data={"type": "totp", "totp": totp0.provisioning_uri(name=user), "value": "1"})
    assert r.status_code == 400 and "password" in r.json()["errors"]
    r = s.post(f"{base(cluster)}/access/tfa/{user}",
               data={"type": "recovery", "password": "not-the-password"})
    assert r.status_code == 500 and "recovery" not in r.text
    assert tfa_state(cluster, user).entries == ()

    totp, step = add_totp(cluster, s, user)
    entries = s.get(f"{base(cluster)}/access/tfa/{user}").json()["data"]
    assert [e["type"] for e in entries] == ["totp"] and "secret" not in entries[0]
    assert totp.secret not in s.get(f"{base(cluster)}/access/tfa").text

    # step one: the password alone gives a partial ticket
    r = post_ticket(cluster, username=user, password=PW)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["NeedTFA"] == 1 and data["ticket"].startswith("PVE:!tfa!")
    partial = data["ticket"]
    # ... which is no ticket anywhere
    r = requests.get(base(cluster) + "/version", cookies={"PVEAuthCookie": partial},
                     verify=False, timeout=10)
    assert r.status_code == 401
    r = requests.get(base(cluster, "n2") + "/cluster/status", verify=False, timeout=10,
                     headers={"Authorization": f"PVEAuthCookie={partial}"})
    assert r.status_code == 401
    assert post_ticket(cluster, username=user, password=partial).status_code == 401

    # a wrong code is refused and counted
    before = tfa_state(cluster, user).totp_failures
    wrong = f"{(int(totp.generate_otp(step + 1)) + 1) % 1000000:06d}"
    r = post_ticket(cluster, username=user, password=f"totp:{wrong}", **{"tfa-challenge": partial})
    assert r.status_code == 401
    assert tfa_state(cluster, user).totp_failures == before + 1
    # the registration's own code is spent already (replay)
    r = post_ticket(cluster, username=user, password=f"totp:{totp.generate_otp(step)}",
                    **{"tfa-challenge": partial})
    assert r.status_code == 401

    # the next step's code (within PVE's ±1 window) logs in, once
    code = totp.generate_otp(step + 1)
    r = post_ticket(cluster, username=user, password=f"totp:{code}", **{"tfa-challenge": partial})
    assert r.status_code == 200, r.text
    full = r.json()["data"]
    assert full["username"] == user and full["ticket"].startswith(f"PVE:{user}:")
    assert "NeedTFA" not in full
    r = requests.get(base(cluster) + "/version", cookies={"PVEAuthCookie": full["ticket"]},
                     verify=False, timeout=10)
    assert r.status_code == 200
    r = post_ticket(cluster, username=user, password=f"totp:{code}", **{"tfa-challenge": partial})
    assert r.status_code == 401
    # the success reset the count; the replay after it counts again
    assert tfa_state(cluster, user).totp_failures == 1

    # a partial ticket is bound to its user
    other = post_ticket(cluster, username="admin@pve", password=partial,
                        **{"tfa-challenge": partial})
    assert other.status_code == 401


def test_recovery_key_works_once(cluster: Cluster, user: str) -> None:
    s = session_of(cluster, user)
    r = s.post(f"{base(cluster)}/access/tfa/{user}", data={"type": "recovery", "password": PW})
    assert r.status_code == 200, r.text
    keys = r.json()["data"]["recovery"]
    assert len(keys) == 10 and r.json()["data"]["id"] == "recovery"
    # the keys are answered once: never again
    listing = s.get(f"{base(cluster)}/access/tfa/{user}/recovery")
    assert listing.status_code == 200 and keys[0] not in listing.text
    # a second set is refused
    again = s.post(f"{base(cluster)}/access/tfa/{user}", data={"type": "recovery",
                                                               "password": PW})
    assert again.status_code == 400

    def login_with(response: str) -> requests.Response:
        step1 = post_ticket(cluster, username=user, password=PW).json()["data"]
        assert step1["NeedTFA"] == 1
        return post_ticket(cluster, username=user, password=response,
                           **{"tfa-challenge": step1["ticket"]})

    assert login_with(f"recovery:{keys[3]}").status_code == 200
    assert login_with(f"recovery:{keys[3]}").status_code == 401
    assert login_with(f"recovery:{keys[4]}").status_code == 200

    # deleting the factor (oneself, password confirmed) ends the two-step login
    r = s.delete(f"{base(cluster)}/access/tfa/{user}/recovery", params={"password": PW})
    assert r.status_code == 200, r.text
    assert "NeedTFA" not in post_ticket(cluster, username=user, password=PW).json()["data"]


def test_proxmoxer_otp(cluster: Cluster, user: str) -> None:
    s = session_of(cluster, user)
    totp, step = add_totp(cluster, s, user)
    api = ProxmoxAPI(cluster["n1"].address, user=user, password=PW,
                     otp=totp.generate_otp(step + 1), verify_ssl=False, timeout=20)
    assert api.version.get()["version"]
    with pytest.raises(Exception, match=r"(?i)authenticat"):
        ProxmoxAPI(cluster["n1"].address, user=user, password=PW, verify_ssl=False,
                   timeout=20).version.get()


def test_tokens_may_not_change_factors(cluster: Cluster, user: str) -> None:
    r = requests.post(f"{base(cluster)}/access/tfa/{user}", data={"type": "recovery"},
                      headers={"Authorization": f"PVEAPIToken={user}!x=00000000-0000-0000-"
                                                "0000-000000000000"},
                      verify=False, timeout=10)
    assert r.status_code in (401, 403)
    assert tfa_state(cluster, user).entries == ()


def test_root_pam_factors_are_root_pam_s_alone(cluster: Cluster, user: str) -> None:
    """PVE's reauth_user_for_user_modification: an administrator with User.Modify
    changes another user's factors with their own password confirmed, but never
    root@pam's (a bare 403, nothing changed)."""
    admin = session_of(cluster, "admin@pve", PASSWORD)
    before = tfa_state(cluster, "root@pam")
    r = admin.post(f"{base(cluster)}/access/tfa/root@pam",
                   data={"type": "recovery", "password": PASSWORD})
    assert (r.status_code, r.reason) == (403, "Permission check failed"), r.text
    r = admin.delete(f"{base(cluster)}/access/tfa/root@pam/recovery",
                     params={"password": PASSWORD})
    assert r.status_code == 403
    assert tfa_state(cluster, "root@pam") == before
    # another user's: only with the administrator's own current password
    r = admin.post(f"{base(cluster)}/access/tfa/{user}", data={"type": "recovery"})
    assert r.status_code == 400 and r.json()["errors"] == {
        "password": "password is required to modify user"}
    r = admin.post(f"{base(cluster)}/access/tfa/{user}",
                   data={"type": "recovery", "password": PW})     # the user's: not the caller's
    assert r.status_code == 500 and tfa_state(cluster, user).entries == ()
    r = admin.post(f"{base(cluster)}/access/tfa/{user}",
                   data={"type": "recovery", "password": PASSWORD})
    assert r.status_code == 200, r.text
    r = admin.delete(f"{base(cluster)}/access/tfa/{user}/recovery",
                     params={"password": PASSWORD})
    assert r.status_code == 200 and tfa_state(cluster, user).entries == ()


def test_realm_enforced_tfa(cluster: Cluster, user: str) -> None:
    """`tfa=type=oath` on the pve realm: a user without TOTP is refused, clearly; with
    one, the two-step login proceeds. The realm option is put back afterwards."""
    admin = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password="integration-secret",
                       verify_ssl=False, timeout=30)
    s = session_of(cluster, user)     # before enforcement: a plain login works
    admin.access.domains("pve").put(tfa="type=oath")
    try:
        r = post_ticket(cluster, username=user, password=PW)
        assert r.status_code == 401 and "two-factor" in r.reason, r.reason
        totp, step = add_totp(cluster, s, user)
        step1 = post_ticket(cluster, username=user, password=PW).json()["data"]
        assert step1["NeedTFA"] == 1
        r = post_ticket(cluster, username=user, password=f"totp:{totp.generate_otp(step + 1)}",
                        **{"tfa-challenge": step1["ticket"]})
        assert r.status_code == 200, r.text
    finally:
        admin.access.domains("pve").put(delete="tfa")
    assert "tfa" not in admin.access.domains("pve").get()


def test_cli_lists_and_deletes_factors(cluster: Cluster, user: str) -> None:
    s = session_of(cluster, user)
    r = s.post(f"{base(cluster)}/access/tfa/{user}", data={"type": "recovery", "password": PW})
    assert r.status_code == 200
    listed = cluster["n1"].json("tfa", "list")
    assert any(u["userid"] == user and u["entries"][0]["id"] == "recovery" for u in listed)
    out = cluster["n1"].cli("realm", "list").stdout
    assert out.startswith("REALM") and "\npve " in out and "\npam " in out
    # pveum's forms: `user tfa list USERID`, `user tfa delete USERID -id ID`
    text = cluster["n1"].cli("user", "tfa", "list", user).stdout
    assert text.splitlines()[:2] == [f"{user}:", "    recovery: recovery"]
    assert [u["userid"] for u in cluster["n1"].json("user", "tfa", "list", user)] == [user]
    cluster["n1"].cli("user", "tfa", "delete", user, "-id", "recovery")
    assert tfa_state(cluster, user).entries == ()
