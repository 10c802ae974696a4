"""OpenID Connect realms against a real provider: the reference Node.js OP
(`oidc-provider`, tests/integration/access/oidc_op) started by the test on loopback.

The whole redirect flow runs over HTTP as a browser would: auth-url, the provider's
login and consent forms (its development interactions take any name as the user),
the redirect back with a code, /access/openid/login, then the ticket on the API.
Refusals through the real path: a replayed state, a code of another login (PKCE binds
it to its state), a nonce changed on the way to the provider, an ID token whose payload
the provider's side rewrote after signing (server.js does it for the user "mallory"),
a user missing without autocreate, a password login.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
import urllib3

from tests.integration.access.client import Api, base_url, purge_realm, stored_access_config
from tests.integration.harness import PASSWORD, Cluster, stop_process, wait_for

urllib3.disable_warnings()

OP_DIR = Path(__file__).parent / "oidc_op"
CLIENT_ID = "binome-test"
CLIENT_SECRET = "op-client-secret-never-shown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _install_op() -> None:
    """`npm ci` once (make setup does it too); offline afterwards."""
    if (OP_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=OP_DIR, check=True,
                   capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def provider(cluster: Cluster) -> Iterator[dict[str, str]]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed (make setup installs it)")
    _install_op()
    port = _free_port()
    redirect = f"https://{cluster['n1'].address}:8006"
    proc = subprocess.Popen(["node", "server.js", str(port), CLIENT_ID, CLIENT_SECRET,
                             redirect], cwd=OP_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    try:
        wait_for(lambda: any(line.startswith("listening") for line in lines)
                 or proc.poll() is not None, 30, "the OpenID provider to listen")
        assert proc.poll() is None, "the OpenID provider exited"
        yield {"issuer": f"http://127.0.0.1:{port}", "redirect": redirect}
    finally:
        stop_process(proc)


def _anon(cluster: Cluster, path: str, **data: str) -> requests.Response:
    return requests.post(base_url(cluster) + path, data=data, verify=False, timeout=30)


def _auth_url(cluster: Cluster, realm: str, redirect: str) -> str:
    r = _anon(cluster, "/access/openid/auth-url", realm=realm, **{"redirect-url": redirect})
    assert r.status_code == 200, r.text
    return str(r.json()["data"])


def _through_provider(url: str, login: str, redirect: str) -> dict[str, str]:
    """What a browser does at the provider: follow redirects, fill in the login form
    (any password: development interactions), confirm consent, until the provider
    sends it back to `redirect`; returns that redirect's query (code, state, iss)."""
    browser = requests.Session()
    browser.trust_env = False
    response = browser.get(url, allow_redirects=False, timeout=10)
    for _ in range(12):
        if response.is_redirect:
            target = urljoin(response.url, response.headers["Location"])
            if target.startswith(redirect):
                return {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
            response = browser.get(target, allow_redirects=False, timeout=10)
            continue
        assert response.status_code == 200, (response.status_code, response.text[:500])
        action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
        prompt = re.search(r'name="prompt" value="(\w+)"', response.text)
        assert action and prompt, response.text[:500]
        form = {"prompt": prompt[1]}
        if prompt[1] == "login":
            form |= {"login": login, "password": "anything"}
        response = browser.post(urljoin(response.url, action[1]), data=form,
                                allow_redirects=False, timeout=10)
    raise AssertionError("the provider never redirected back")


def _login(cluster: Cluster, query: dict[str, str], redirect: str) -> requests.Response:
    return _anon(cluster, "/access/openid/login", code=query["code"], state=query["state"],
                 **{"redirect-url": redirect})


def test_openid_login_flow_and_refusals(cluster: Cluster, provider: dict[str, str]) -> None:
    admin = Api(cluster, "admin@pve", PASSWORD)
    redirect = provider["redirect"]
    realm, strict = f"oidc{os.getpid() % 1000}", f"oids{os.getpid() % 1000}"
    try:
        admin.ok("POST", "/access/domains", realm=realm, type="openid",
                 **{"issuer-url": provider["issuer"], "client-id": CLIENT_ID,
                    "client-key": CLIENT_SECRET, "autocreate": 1,
                    "scopes": "email profile groups", "groups-claim": "groups",
                    "groups-autocreate": 1, "prompt": "login"})
        # the client key is write-only: stored, never answered
        shown = admin.ok("GET", f"/access/domains/{realm}")
        assert "client-key" not in shown and CLIENT_SECRET not in str(shown)
        assert shown["issuer-url"] == provider["issuer"]
        assert stored_access_config(cluster).realms[realm].client_key == CLIENT_SECRET

        url = _auth_url(cluster, realm, redirect)
        asked = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert url.startswith(provider["issuer"] + "/auth?")
        assert asked["response_type"] == "code" and asked["client_id"] == CLIENT_ID
        assert asked["redirect_uri"] == redirect and asked["prompt"] == "login"
        assert asked["scope"].split() == ["openid", "email", "profile", "groups"]
        assert asked["code_challenge_method"] == "S256"
        assert len(asked["state"]) >= 40 and len(asked["nonce"]) >= 40

        back = _through_provider(url, "alice", redirect)
        assert back["state"] == asked["state"]
        r = _login(cluster, back, redirect)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["username"] == f"alice@{realm}"
        assert set(data) >= {"ticket", "CSRFPreventionToken", "cap"}
        # the ticket works on the API
        s = requests.Session()
        s.verify = False
        s.trust_env = False
        s.cookies.set("PVEAuthCookie", data["ticket"])
        me = s.get(base_url(cluster) + "/access/permissions", timeout=10)
        assert me.status_code == 200, me.text
        # autocreate from the claims; groups claim mapped to `<group>-<realm>`, the
        # invalid name skipped
        user = stored_access_config(cluster).users[f"alice@{realm}"]
        assert (user.email, user.firstname, user.lastname) == \
            ("alice@example.test", "Test", "alice")
        assert user.groups == (f"ops-{realm}",)

        # the same state again: spent
        again = _login(cluster, back, redirect)
        assert again.status_code == 401
        assert "already used" in again.json()["message"]

        # a code of login A presented with the state of login B: the provider refuses
        # B's PKCE verifier for A's code (and A's ID token carries A's nonce)
        url_a = _auth_url(cluster, realm, redirect)
        url_b = _auth_url(cluster, realm, redirect)
        back_a = _through_provider(url_a, "alice", redirect)
        state_b = parse_qs(urlsplit(url_b).query)["state"][0]
        mixed = _login(cluster, {"code": back_a["code"], "state": state_b}, redirect)
        assert mixed.status_code == 401
        assert mixed.json()["message"].strip() == "authentication failure"
        # the authorization request's nonce changed on its way to the provider (the
        # browser's side): the provider signs the wrong nonce, binome refuses it
        url_n = _auth_url(cluster, realm, redirect)
        changed = re.sub(r"nonce=[^&]+", "nonce=" + "x" * 43, url_n)
        assert changed != url_n
        wrong_nonce = _login(cluster, _through_provider(changed, "alice", redirect), redirect)
        assert wrong_nonce.status_code == 401
        assert wrong_nonce.json()["message"].strip() == "authentication failure"
        # an ID token rewritten after signing (sub "mallory" -> "admin"): refused, and
        # no admin@realm is made
        url_t = _auth_url(cluster, realm, redirect)
        tampered = _login(cluster, _through_provider(url_t, "mallory", redirect), redirect)
        assert tampered.status_code == 401
        users = stored_access_config(cluster).users
        assert f"admin@{realm}" not in users and f"mallory@{realm}" not in users
        # a state used with another redirect URL than its auth-url's
        url_c = _auth_url(cluster, realm, redirect)
        back_c = _through_provider(url_c, "alice", redirect)
        other = _login(cluster, back_c, "https://elsewhere.example")
        assert other.status_code == 401 and "redirect-url" in other.json()["message"]

        # an OpenID user has no password login
        pw = _anon(cluster, "/access/ticket", username=f"alice@{realm}", password="x")
        assert pw.status_code == 401

        # username-claim, no autocreate: the user must exist
        admin.ok("POST", "/access/domains", realm=strict, type="openid",
                 **{"issuer-url": provider["issuer"], "client-id": CLIENT_ID,
                    "client-key": CLIENT_SECRET, "username-claim": "preferred_username"})
        back = _through_provider(_auth_url(cluster, strict, redirect), "bob", redirect)
        refused = _login(cluster, back, redirect)
        assert refused.status_code == 401
        assert refused.json()["message"].strip() == "authentication failure"
        assert f"u-bob@{strict}" not in stored_access_config(cluster).users
        admin.ok("POST", "/access/users", userid=f"u-bob@{strict}")
        back = _through_provider(_auth_url(cluster, strict, redirect), "bob", redirect)
        r = _login(cluster, back, redirect)
        assert r.status_code == 200, r.text
        assert r.json()["data"]["username"] == f"u-bob@{strict}"
        # username-claim is fixed at creation, as in PVE
        fixed = admin.call("PUT", f"/access/domains/{strict}", **{"username-claim": "sub"})
        assert fixed.status_code == 400 and "username-claim" in fixed.json()["errors"]

        # bad input: clear errors, nothing stored
        unknown = _anon(cluster, "/access/openid/auth-url", realm="nosuch",
                        **{"redirect-url": redirect})
        assert unknown.status_code == 400 and "realm" in unknown.json()["errors"]
        wrong_type = _anon(cluster, "/access/openid/auth-url", realm="pve",
                           **{"redirect-url": redirect})
        assert wrong_type.status_code == 400
        malformed = _login(cluster, {"code": "x", "state": "../../etc"}, redirect)
        assert malformed.status_code == 401 and "malformed" in malformed.json()["message"]
        no_issuer = admin.call("POST", "/access/domains", realm="oidcbad", type="openid",
                               **{"client-id": CLIENT_ID})
        assert no_issuer.status_code == 400 and "issuer-url" in no_issuer.json()["errors"]
        assert "oidcbad" not in stored_access_config(cluster).realms
    finally:
        purge_realm(cluster, realm)
        purge_realm(cluster, strict)
