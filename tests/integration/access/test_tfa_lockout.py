"""PVE's TFA lock-out through the real API: 8 TOTP failures lock TOTP (even a right code
is then refused, with PVE's bare 401 and its reason in the log), 100 failures lock every
factor for an hour, the user list shows `totp-locked` / `tfa-locked-until`, and
`PUT /access/users/{userid}/unlock-tfa` (User.Modify through the user's groups) clears
both; refused callers and bad input change nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pyotp
import pytest
import requests
import urllib3

from tests.integration.access.client import Api
from tests.integration.access.test_tfa_login import (
    _repo,
    add_totp,
    post_ticket,
    session_of,
    tfa_state,
)
from tests.integration.harness import PASSWORD, Cluster

urllib3.disable_warnings()

SUFFIX = uuid.uuid4().hex[:6]
GROUP = f"lock{SUFFIX}"
USER = f"locked{SUFFIX}@pve"          # in GROUP, has TOTP + recovery keys
OUTSIDER = f"outside{SUFFIX}@pve"     # in no group
HELPDESK = f"help{SUFFIX}@pve"        # PVEUserAdmin on /access/groups/GROUP only
NOBODY = f"nobody{SUFFIX}@pve"        # no privilege at all
PW = "tfa-user-password"              # test_tfa_login's session_of logs in with it


def plant_failures(cluster: Cluster, userid: str, totp: int, tfa: int) -> None:
    """Counters as if earlier logins had failed (the login rate limiter would take far
    longer than this test to let 8 or 100 failures through)."""
    _repo(cluster, lambda r: r.update_tfa_state(
        userid, lambda t: (replace(t, totp_failures=totp, tfa_failures=tfa), None)))


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Api]:
    api = Api(cluster, "admin@pve", PASSWORD)
    api.ok("POST", "/access/groups", groupid=GROUP)
    api.ok("POST", "/access/users", userid=USER, password=PW, groups=GROUP)
    for userid in (OUTSIDER, HELPDESK, NOBODY):
        api.ok("POST", "/access/users", userid=userid, password=PW)
    api.ok("PUT", "/access/acl", path=f"/access/groups/{GROUP}", users=HELPDESK,
           roles="PVEUserAdmin")
    try:
        yield api
    finally:
        for userid in (USER, OUTSIDER, HELPDESK, NOBODY):
            api.call("DELETE", f"/access/users/{userid}")
        api.call("DELETE", f"/access/groups/{GROUP}")


def second_step(cluster: Cluster, response: str) -> requests.Response:
    step1 = post_ticket(cluster, username=USER, password=PW)
    assert step1.status_code == 200, step1.text
    partial = step1.json()["data"]
    assert partial["NeedTFA"] == 1
    return post_ticket(cluster, username=USER, password=response,
                       **{"tfa-challenge": partial["ticket"]})


def listed(api: Api, userid: str) -> dict[str, Any] | None:
    return next((u for u in api.ok("GET", "/access/users") if u["userid"] == userid), None)


def fresh_code(totp: pyotp.TOTP, step: int) -> str:
    """A code after the registration's step and within PVE's ±1 window of now."""
    return totp.generate_otp(max(step, totp.timecode(time.time())) + 1)


def test_totp_lock_list_and_unlock(cluster: Cluster, admin: Api) -> None:
    s = session_of(cluster, USER)
    totp, step = add_totp(cluster, s, USER)
    r = s.post(f"https://{cluster['n1'].address}:8006/api2/json/access/tfa/{USER}",
               data={"type": "recovery", "password": PW})
    assert r.status_code == 200, r.text
    keys = r.json()["data"]["recovery"]
    assert "totp-locked" not in listed(admin, USER)

    # the 8th TOTP failure locks TOTP: PVE answers a bare 401 and logs why
    plant_failures(cluster, USER, totp=7, tfa=7)
    wrong = f"{(int(fresh_code(totp, step)) + 1) % 1000000:06d}"
    r = second_step(cluster, f"totp:{wrong}")
    assert (r.status_code, r.reason) == (401, "authentication failure")
    state = tfa_state(cluster, USER)
    assert state.totp_locked and (state.totp_failures, state.tfa_failures) == (8, 8)
    log = cluster["n1"].log_path.read_text(errors="replace")
    assert f"user={USER} msg=failed 2nd factor: TOTP limit reached, locked" in log
    # locked: even the right code is refused, unchecked and uncounted (not spent either)
    r = second_step(cluster, f"totp:{fresh_code(totp, step)}")
    assert (r.status_code, r.reason) == (401, "authentication failure")
    assert tfa_state(cluster, USER) == state

    # the user list (and /access/tfa) show the lock, as PVE's
    entry = listed(admin, USER)
    assert entry["totp-locked"] == 1 and "tfa-locked-until" not in entry
    tfa_entry = next(u for u in admin.ok("GET", "/access/tfa") if u["userid"] == USER)
    assert tfa_entry["totp-locked"] == 1
    # ... to who may see the user only
    nobody = Api(cluster, NOBODY, PW)
    assert [u["userid"] for u in nobody.ok("GET", "/access/users")] == [NOBODY]

    # bad input: PVE's 400 naming the parameter; refused callers: 403; nothing changes
    r = admin.call("PUT", "/access/users/no-realm/unlock-tfa")
    assert r.status_code == 400 and "userid" in r.json()["errors"], r.text
    r = nobody.call("PUT", f"/access/users/{USER}/unlock-tfa")
    assert r.status_code == 403 and r.reason.startswith("Permission check failed"), r.reason
    helpdesk = Api(cluster, HELPDESK, PW)
    r = helpdesk.call("PUT", f"/access/users/{OUTSIDER}/unlock-tfa")
    assert r.status_code == 403, r.text
    assert tfa_state(cluster, USER) == state

    # User.Modify on one of the user's groups unlocks; the answer says it was locked
    assert helpdesk.ok("PUT", f"/access/users/{USER}/unlock-tfa") == 1
    state = tfa_state(cluster, USER)
    assert (state.totp_locked, state.totp_failures, state.tfa_failures) == (False, 0, 0)
    assert "totp-locked" not in listed(admin, USER)
    assert helpdesk.ok("PUT", f"/access/users/{USER}/unlock-tfa") == 0
    r = second_step(cluster, f"totp:{fresh_code(totp, step)}")
    assert r.status_code == 200, r.text

    # 100 failures lock every factor for an hour, recovery keys included
    plant_failures(cluster, USER, totp=0, tfa=99)
    r = second_step(cluster, "recovery:0000-0000-0000-0000")
    assert r.status_code == 401
    until = tfa_state(cluster, USER).tfa_locked_until
    assert time.time() + 3500 < until <= time.time() + 3600
    log = cluster["n1"].log_path.read_text(errors="replace")
    assert f"user={USER} msg=failed 1nd factor: TFA limit reached, user locked out" in log
    assert second_step(cluster, f"recovery:{keys[0]}").status_code == 401
    entry = listed(admin, USER)
    assert entry["tfa-locked-until"] == until and "totp-locked" not in entry
    assert admin.ok("PUT", f"/access/users/{USER}/unlock-tfa") == 1
    assert "tfa-locked-until" not in listed(admin, USER)
    assert second_step(cluster, f"recovery:{keys[0]}").status_code == 200


def test_unlock_of_a_user_without_second_factors(cluster: Cluster, admin: Api) -> None:
    # PVE: proxmox-tfa's unlock has no data for the user: "no such user"
    r = admin.call("PUT", f"/access/users/{OUTSIDER}/unlock-tfa")
    assert r.status_code == 500 and "no such user" in r.reason, r.reason
    # the CLI, pveum's `user tfa unlock`
    out = cluster["n1"].cli("user", "tfa", "unlock", OUTSIDER, check=False)
    assert out.returncode != 0 and "no such user" in (out.stdout + out.stderr)
