"""WebAuthn through the real API (a cluster, its etcd): the `webauthn` datacenter option,
PVE's two-POST registration, the NeedTFA ticket's `webauthn` options and the
`webauthn:{json}` answer, from a software authenticator (tests/softauthn.py) whose
answers fido2 checks as a browser's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import requests

from tests.integration.access.test_tfa_login import (
    PW,
    base,
    post_ticket,
    session_of,
    tfa_state,
    user,  # noqa: F401  (the fixture)
)
from tests.integration.harness import PASSWORD, Cluster
from tests.softauthn import SoftAuthenticator

ORIGIN = "https://localhost:8006"


@pytest.fixture
def webauthn_option(cluster: Cluster) -> Iterator[requests.Session]:
    admin = session_of(cluster, "admin@pve", PASSWORD)
    r = admin.put(f"{base(cluster)}/cluster/options",
                  data={"webauthn": f"rp=binome,origin={ORIGIN},id=localhost"})
    assert r.status_code == 200, r.text
    yield admin
    assert admin.put(f"{base(cluster)}/cluster/options",
                     data={"delete": "webauthn"}).status_code == 200


def test_datacenter_option(cluster: Cluster) -> None:
    admin = session_of(cluster, "admin@pve", PASSWORD)
    url = f"{base(cluster)}/cluster/options"
    r = admin.put(url, data={"webauthn": "rp=binome,id=192.0.2.7"})
    assert r.status_code == 400 and "IP address" in r.json()["errors"]["webauthn"], r.text
    r = admin.put(url, data={"webauthn": "rp=binome,id=localhost,colour=blue"})
    assert r.status_code == 400 and "webauthn" in r.json()["errors"], r.text
    assert "webauthn" not in admin.get(url).json()["data"]
    r = admin.put(url, data={"webauthn": "rp=binome,origin=https://localhost:8006,"
                                         "id=localhost,allow-subdomains=0"})
    assert r.status_code == 200, r.text
    # read on another node: the option is the cluster's
    other = session_of(cluster, "admin@pve", PASSWORD)
    got = other.get(f"{base(cluster, 'n2')}/cluster/options").json()["data"]
    assert got["webauthn"] == ("rp=binome,origin=https://localhost:8006,id=localhost,"
                               "allow-subdomains=0")
    assert admin.put(url, data={"delete": "webauthn"}).status_code == 200
    assert "webauthn" not in admin.get(url).json()["data"]


def _challenge_of(ticket: str) -> dict:
    assert ticket.startswith("PVE:!tfa!")
    return json.loads(unquote(ticket.split(":")[1][len("!tfa!"):]))


def test_register_and_log_in(cluster: Cluster, user: str,  # noqa: F811
                             webauthn_option: requests.Session) -> None:
    s = session_of(cluster, user)
    url = f"{base(cluster)}/access/tfa/{user}"
    # step one: the creation options
    r = s.post(url, data={"type": "webauthn", "description": "key", "password": PW})
    assert r.status_code == 200, r.text
    options = json.loads(r.json()["data"]["challenge"])
    assert options["publicKey"]["rp"]["id"] == "localhost"
    chal = options["publicKey"]["challenge"]
    # a value without its challenge, a credential for another site: refused, no entry
    r = s.post(url, data={"type": "webauthn", "value": "{}", "password": PW})
    assert r.status_code == 400 and "challenge" in r.json()["errors"], r.text
    r = s.post(url, data={"type": "webauthn", "challenge": chal, "password": PW,
                          "value": SoftAuthenticator("https://evil.example").create(options)})
    assert r.status_code == 400 and "origin" in r.json()["errors"]["value"], r.text
    assert tfa_state(cluster, user).entries == ()
    # ... and that spent the challenge: a fresh one registers
    auth = SoftAuthenticator(ORIGIN)
    r = s.post(url, data={"type": "webauthn", "challenge": chal, "password": PW,
                          "value": auth.create(options)})
    assert r.status_code == 400, r.text
    r = s.post(url, data={"type": "webauthn", "description": "key", "password": PW})
    options = json.loads(r.json()["data"]["challenge"])
    r = s.post(url, data={"type": "webauthn", "password": PW,
                          "challenge": options["publicKey"]["challenge"],
                          "value": auth.create(options)})
    assert r.status_code == 200, r.text
    entry_id = r.json()["data"]["id"]
    entries = s.get(url).json()["data"]
    assert [(e["id"], e["type"], e["description"]) for e in entries] == [
        (entry_id, "webauthn", "key")]

    # login: the password gives a partial ticket offering webauthn
    step1 = post_ticket(cluster, username=user, password=PW).json()["data"]
    assert step1["NeedTFA"] == 1
    challenge = _challenge_of(step1["ticket"])
    assert challenge["webauthn"]["publicKey"]["rpId"] == "localhost"
    # an assertion by another key for the right credential id: PVE's bare 401
    thief = SoftAuthenticator(ORIGIN)
    thief.credential_id = auth.credential_id
    r = post_ticket(cluster, username=user, password="webauthn:" + thief.get(
        challenge["webauthn"]), **{"tfa-challenge": step1["ticket"]})
    assert (r.status_code, r.reason) == (401, "authentication failure"), r.text
    assert tfa_state(cluster, user).tfa_failures == 1
    # that spent the ticket's challenge: the right answer to it is late now
    r = post_ticket(cluster, username=user, password="webauthn:" + auth.get(
        challenge["webauthn"]), **{"tfa-challenge": step1["ticket"]})
    assert r.status_code == 401
    # a fresh login answered by the authenticator gets in
    step1 = post_ticket(cluster, username=user, password=PW).json()["data"]
    assertion = auth.get(_challenge_of(step1["ticket"])["webauthn"])
    r = post_ticket(cluster, username=user, password="webauthn:" + assertion,
                    **{"tfa-challenge": step1["ticket"]})
    assert r.status_code == 200, r.text
    ticket = r.json()["data"]["ticket"]
    assert ticket.startswith(f"PVE:{user}:")
    assert requests.get(base(cluster) + "/version", cookies={"PVEAuthCookie": ticket},
                        verify=False, timeout=10).status_code == 200
    state = tfa_state(cluster, user)
    assert state.entries[0].sign_count == auth.counter and state.tfa_failures == 0
    # replayed: refused
    r = post_ticket(cluster, username=user, password="webauthn:" + assertion,
                    **{"tfa-challenge": step1["ticket"]})
    assert r.status_code == 401
