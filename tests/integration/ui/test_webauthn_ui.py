"""WebAuthn in a real browser: chromium with Selenium's virtual authenticator (CTAP2,
user presence), the UI served over HTTPS as https://localhost:8006 (chromium maps the
name to n1's loopback address: WebAuthn refuses an IP address as relying party ID) and
the `webauthn` datacenter option naming that origin, set by the administrator on the
Options page (an IP address as ID refused beside the field). A user registers a key on the
TFA page (navigator.credentials.create), logs out, logs in with the password and then
the key (navigator.credentials.get) and gets in (axe-core finds nothing serious in the
dialog and the login step); an assertion whose signature was
altered on its way is refused with PVE's bare 401, shown as the UI's refusal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.integration.harness import PASSWORD, Cluster
from tests.integration.ui import chromium
from tests.integration.ui.test_browser import (  # noqa: F401 (fixtures)
    _assert_no_script_errors,
    _base,
    _css,
    _fill,
    _go,
    _login,
    _wait,
    api,
)

ORIGIN = "https://localhost:8006"
USER_PW = "webauthn-user-pw-1"

# the browser's navigator.credentials.get, its answer's signature altered (one bit)
_TAMPER = """
const orig = navigator.credentials.get.bind(navigator.credentials);
navigator.credentials.get = async (options) => {
  const c = await orig(options);
  const sig = new Uint8Array(c.response.signature.slice(0));
  sig[sig.length - 1] ^= 1;
  return {id: c.id, type: c.type, rawId: c.rawId,
          response: {authenticatorData: c.response.authenticatorData,
                     clientDataJSON: c.response.clientDataJSON, signature: sig.buffer,
                     userHandle: c.response.userHandle}};
};
"""


@pytest.fixture
def webauthn_user(api: requests.Session, cluster: Cluster) -> Iterator[str]:  # noqa: F811
    """A PVEAuditor user with a password; the `webauthn` option is set by the test (through
    the Options page) and deleted after."""
    base = _base(cluster) + "/api2/json"
    userid = f"wa{uuid.uuid4().hex[:8]}@pve"
    r = api.post(f"{base}/access/users", data={"userid": userid, "password": USER_PW},
                 timeout=10)
    assert r.status_code == 200, r.text
    r = api.put(f"{base}/access/acl", data={"path": "/", "roles": "PVEAuditor",
                                            "users": userid}, timeout=10)
    assert r.status_code == 200, r.text
    try:
        yield userid
    finally:
        api.delete(f"{base}/access/users/{userid}", timeout=10)
        api.put(f"{base}/cluster/options", data={"delete": "webauthn"}, timeout=10)


def _log_out_and_in(driver, userid: str) -> None:
    """Log out, then the password: the second-factor form offers the key."""
    _css(driver, "#logout")[0].click()
    _login(driver, USER_PW, username=userid.split("@")[0])
    _wait(driver, lambda d: _css(d, "#login-webauthn"), "the security key button")


def test_register_and_log_in_with_a_security_key(
        cluster: Cluster, api: requests.Session, webauthn_user: str) -> None:  # noqa: F811
    from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions

    userid = webauthn_user
    address = cluster["n1"].address
    with chromium.chromium(extra_flags=(
            f"--host-resolver-rules=MAP localhost {address}",)) as driver:
        driver.add_virtual_authenticator(VirtualAuthenticatorOptions(
            has_resident_key=False, has_user_verification=False, is_user_consenting=True))
        driver.get(ORIGIN + "/")
        assert driver.execute_script("return window.isSecureContext") is True
        # the administrator sets the relying party on Datacenter -> Options: an IP
        # address as ID is refused beside the field, the host name is taken
        _login(driver, PASSWORD)
        _wait(driver, lambda d: _css(d, ".tree"), "the resource tree after login")
        _go(driver, "#/dc/options")
        _wait(driver, lambda d: _css(d, "#opt-webauthn-edit"), "WebAuthn's Edit")[0].click()
        _fill(driver, "#opt-webauthn-rp", "binome")
        _fill(driver, "#opt-webauthn-origin", ORIGIN)
        _fill(driver, "#opt-webauthn-id", address)
        _css(driver, "#opt-webauthn-save")[0].click()
        error = _wait(driver, lambda d: _css(d, "#error-webauthn"), "the refused IP")[0]
        assert "IP address" in error.text
        _fill(driver, "#opt-webauthn-id", "localhost")
        _css(driver, "#opt-webauthn-save")[0].click()
        _wait(driver, lambda d: not _css(d, "#opt-webauthn-form"), "the form closed")
        _wait(driver, lambda d: _css(d, '#opt-webauthn-current dd[data-key="id"]')[0].text
              == "localhost", "the option shown")
        got = api.get(f"{_base(cluster)}/api2/json/cluster/options", timeout=10).json()["data"]
        assert got["webauthn"] == f"rp=binome,origin={ORIGIN},id=localhost"
        _css(driver, "#logout")[0].click()

        _login(driver, USER_PW, username=userid.split("@")[0])
        _wait(driver, lambda d: _css(d, ".tree"), "the resource tree after login")

        # register: the TFA page's WebAuthn dialog, the authenticator answers create()
        _go(driver, "#/access/tfa")
        _wait(driver, lambda d: _css(d, "#tfa-add-webauthn:not([disabled])"),
              "the Add WebAuthn button")[0].click()
        _wait(driver, lambda d: _css(d, "dialog[open]"), "the WebAuthn dialog")
        _fill(driver, "#tfa-webauthn-description", "virtual key")
        assert chromium.axe_violations(driver) == [], "axe-core on the WebAuthn dialog"
        _fill(driver, "#tfa-password", USER_PW)
        _css(driver, "dialog[open] button[type=submit]")[0].click()
        row = f'#tfa-table tr[data-userid="{userid}"]'
        _wait(driver, lambda d: any("webauthn" in r.text for r in _css(d, row)),
              "the WebAuthn entry in the table", timeout=30)
        creds = driver.get_credentials()
        assert len(creds) == 1 and creds[0].rp_id == "localhost"
        entries = api.get(f"{_base(cluster)}/api2/json/access/tfa/{userid}",
                          timeout=10).json()["data"]
        assert [(e["type"], e["description"]) for e in entries] == [("webauthn", "virtual key")]

        # an assertion altered on its way: PVE's bare 401, the UI's refusal, not in
        _log_out_and_in(driver, userid)
        assert chromium.axe_violations(driver) == [], "axe-core on the security key step"
        driver.execute_script(_TAMPER)
        _css(driver, "#login-webauthn")[0].click()
        error = _wait(driver, lambda d: _css(d, "#login-error"), "the refusal")[0]
        assert error.text == "The second factor was not accepted."
        assert not _css(driver, ".tree")
        counter = driver.get_credentials()[0].sign_count

        # a fresh page (the tampering gone): password, then the key, and in
        driver.get(ORIGIN + "/")
        _login(driver, USER_PW, username=userid.split("@")[0])
        _wait(driver, lambda d: _css(d, "#login-webauthn"), "the security key button")
        _css(driver, "#login-webauthn")[0].click()
        _wait(driver, lambda d: _css(d, ".tree"), "the resource tree after the key",
              timeout=30)
        assert driver.get_credentials()[0].sign_count > counter
        _assert_no_script_errors(driver)
