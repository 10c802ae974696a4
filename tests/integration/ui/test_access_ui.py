"""The Permissions area and resource search in a real browser (chromium + Selenium, the
fixtures of test_browser.py), against the shared cluster: as admin@pve, a user created
through the form (a too-short password first: the API's reason shows next to the
field), a PVEAuditor ACL entry for it, an API token whose secret is shown once and
works, a pool with a VM added from the pool's page, an LDAP realm (the bind password
write-only) and its sync task; the pool view of the tree, the
search box and the Search panel, the tag view; then, logged in as the new auditor, the
write buttons are absent, and the auditor adds a TOTP factor for itself (its code
computed here from the otpauth URI the page shows once). Then the login form's OpenID
button, through the test provider of tests/integration/access/test_openid.py."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pyotp
import requests

from tests.integration.access.client import purge_realm
from tests.integration.access.test_openid import (  # noqa: F401 (fixture)
    CLIENT_ID,
    CLIENT_SECRET,
    provider,
)
from tests.integration.harness import PASSWORD, Cluster
from tests.integration.ui.test_browser import (  # noqa: F401 (fixtures)
    _assert_no_script_errors,
    _base,
    _css,
    _fill,
    _go,
    _login,
    _tree_item,
    _wait,
    api,
    browser,
    shots,
    vm,
)

AUDITOR_PW = "auditor-password-1"


def _submit(driver) -> None:
    _css(driver, "dialog[open] button[type=submit]")[0].click()


def _dialog(driver, what: str):
    return _wait(driver, lambda d: _css(d, "dialog[open]"), what)[0]


def _clear(el) -> None:
    """Empty an input with keys (the page's state follows key input events)."""
    from selenium.webdriver.common.keys import Keys

    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(Keys.BACKSPACE)


def _click(driver, css: str, what: str) -> None:
    """Click the element once it shows."""
    _wait(driver, lambda d: _css(d, css), what)[0].click()


def test_permissions_pool_view_and_search(browser, cluster: Cluster,  # noqa: F811
                                          api: requests.Session, vm: int,  # noqa: F811
                                          shots: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    suffix = uuid.uuid4().hex[:6]
    name, pool, tokenid = f"uiaud{suffix}", f"uipool{suffix}", f"uitok{suffix}"
    realm = f"uildap{suffix}"
    userid = f"{name}@pve"
    base = _base(cluster) + "/api2/json"
    try:
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
        _wait(browser, lambda d: _css(d, "#create-vm"), "Create VM for the admin")

        # a user: the API refuses a short password, its reason shows under the field
        _go(browser, "#/access/users")
        _click(browser, "#user-add", "Add user for the admin")
        _dialog(browser, "the add user dialog")
        _fill(browser, "#user-name", name)
        _fill(browser, "#user-password", "short")
        _fill(browser, "#user-confirm", "short")
        _submit(browser)
        error = _wait(browser, lambda d: _css(d, "#error-password"), "the password error")[0]
        assert "8 characters" in error.text, error.text
        assert api.get(f"{base}/access/users/{userid}", timeout=10).status_code != 200
        _fill(browser, "#user-password", AUDITOR_PW)
        _fill(browser, "#user-confirm", AUDITOR_PW)
        _submit(browser)
        def created(d) -> bool:
            # a refusal now shows in the dialog: say it, do not wait
            refused = _css(d, "#dialog-message")
            assert not refused, refused[0].text
            return bool(_css(d, f'#user-table tr[data-userid="{userid}"]'))
        try:
            _wait(browser, created, "the new user")
        except AssertionError:
            browser.save_screenshot(str(shots / "access-user-failed.png"))
            raise
        assert "created" in _css(browser, "#access-message")[0].text

        # her password set again by the admin: PVE 8+ asks the admin's own current one
        _click(browser, f'#user-table tr[data-userid="{userid}"] .user-password',
               "the password button")
        _dialog(browser, "the password dialog")
        _fill(browser, "#passwd-password", AUDITOR_PW)
        _fill(browser, "#passwd-confirm", AUDITOR_PW)
        _submit(browser)
        error = _wait(browser, lambda d: _css(d, "#error-confirmation-password"),
                      "the missing confirmation")[0]
        assert "password is required" in error.text, error.text
        _fill(browser, "#passwd-current", PASSWORD)
        _submit(browser)
        _wait(browser, lambda d: not _css(d, "dialog[open]"), "the dialog to close")
        assert requests.post(f"{base}/access/ticket", verify=False, timeout=10, data={
            "username": userid, "password": AUDITOR_PW}).status_code == 200

        # the ACL: PVEAuditor on / for the user
        _css(browser, "#access-tab-acl")[0].click()
        _click(browser, "#acl-add-user", "Add user permission")
        _dialog(browser, "the ACL dialog")
        _fill(browser, "#acl-path", "/")
        _wait(browser, lambda d: Select(_css(d, "#acl-ugid")[0]).select_by_value(userid)
              or True, "the user in the ACL dialog")
        Select(_css(browser, "#acl-role")[0]).select_by_value("PVEAuditor")
        _submit(browser)
        row = f'#acl-table tr[data-ugid="{userid}"][data-role="PVEAuditor"]'
        _wait(browser, lambda d: _css(d, row), "the ACL entry")

        # an API token of admin@pve: the secret shows once, and it works
        _css(browser, "#access-tab-tokens")[0].click()
        _click(browser, "#token-add", "Add token")
        _dialog(browser, "the token dialog")
        _fill(browser, "#token-id", tokenid)
        _submit(browser)
        secret = _wait(browser, lambda d: _css(d, "#token-secret-value"), "the secret")[0].text
        assert re.fullmatch(r"[0-9a-f-]{36}", secret), secret
        full = _css(browser, "#token-secret-id")[0].text
        assert full == f"admin@pve!{tokenid}"
        browser.save_screenshot(str(shots / "access-token-secret.png"))
        r = requests.get(f"{base}/version", verify=False, timeout=10,
                         headers={"Authorization": f"PVEAPIToken={full}={secret}"})
        assert r.status_code == 200, r.text
        _submit(browser)                                        # Close: forgotten
        _wait(browser, lambda d: not _css(d, "dialog[open]"), "the secret dialog closed")
        _wait(browser, lambda d: _css(d, f'#token-table tr[data-tokenid="{tokenid}"]'),
              "the token row")
        assert secret not in browser.page_source

        # a pool, and the VM added from the pool's page
        _css(browser, "#access-tab-pools")[0].click()
        _click(browser, "#pool-add", "Add pool")
        _dialog(browser, "the pool dialog")
        _fill(browser, "#pool-id", pool)
        _submit(browser)
        _click(browser, f'#pool-table tr[data-poolid="{pool}"] a', "the pool")
        _click(browser, "#pool-add-vms", "the pool's page")
        _dialog(browser, "the add VMs dialog")
        _click(browser, f'dialog[open] input[value="{vm}"]', "the VM to add")
        _submit(browser)
        member = f'#pool-members tr[data-member="vm/{vm}"]'
        _wait(browser, lambda d: _css(d, member), "the VM in the pool")
        browser.save_screenshot(str(shots / "access-pool.png"))

        # the pool view of the tree: the pool with its VM under it
        Select(_css(browser, "#tree-view")[0]).select_by_value("pool")
        pool_key = f"#/access/pools/{pool}"
        _wait(browser, lambda d: _tree_item(d, pool_key), "the pool in the tree")
        def keys(d) -> list[str]:
            return [i.get_attribute("data-key") for i in _css(d, ".tree [role=treeitem]")]
        _wait(browser, lambda d: f"{pool_key}#/vm/{vm}" in keys(d), "the VM under its pool")
        assert not any(k.startswith("#/node/") for k in keys(browser)), "no nodes in the pool view"
        # the search box narrows the tree; Enter opens the Search panel
        box = _css(browser, "#tree-search")[0]
        box.send_keys("no-such-thing-" + suffix)
        _wait(browser, lambda d: keys(d) == ["#/dc"], "the tree narrowed to nothing")
        _clear(box)
        box.send_keys(pool)
        _wait(browser, lambda d: pool_key in keys(d), "the pool matching the search")
        box.send_keys(Keys.ENTER)
        _wait(browser, lambda d: _css(d, f'#search-results tr[data-id="qemu/{vm}"]')
              and _css(d, f'#search-results tr[data-id="/pool/{pool}"]'),
              "the Search panel's matches")
        assert not _css(browser, '#search-results tr[data-id^="node/"]'), "nodes do not match"
        browser.save_screenshot(str(shots / "search.png"))
        _css(browser, f'#search-results tr[data-id="qemu/{vm}"]')[0].click()
        _wait(browser, lambda d: d.execute_script("return location.hash") == f"#/vm/{vm}",
              "the VM opened")
        # the tag view: the VM under its tag (set through the API)
        r = api.put(f"{base}/nodes/n1/qemu/{vm}/config", data={"tags": f"uitag{suffix}"},
                    timeout=10)
        assert r.status_code == 200, r.text
        Select(_css(browser, "#tree-view")[0]).select_by_value("tag")
        _clear(_css(browser, "#tree-search")[0])
        _wait(browser, lambda d: f"tag:uitag{suffix}#/vm/{vm}" in keys(d), "the VM under its tag")
        browser.save_screenshot(str(shots / "tree-tags.png"))
        Select(_css(browser, "#tree-view")[0]).select_by_value("server")
        _clear(_css(browser, "#tree-search")[0])
        # an LDAP realm: its server is required (the reason at the field), the bind
        # password is write-only; a sync starts a task whose end shows (nothing listens
        # on port 1: it fails)
        _go(browser, "#/access/realms")
        _click(browser, "#realm-add", "Add realm")
        _dialog(browser, "the realm dialog")
        _fill(browser, "#realm-id", realm)
        _fill(browser, "#realm-base_dn", "dc=example,dc=org")
        _fill(browser, "#realm-bind_dn", "cn=admin,dc=example,dc=org")
        _fill(browser, "#realm-password", "bind-secret-1")
        _submit(browser)
        _wait(browser, lambda d: _css(d, "#error-server1"), "the missing server's reason")
        _fill(browser, "#realm-server1", "127.0.0.1")
        _fill(browser, "#realm-port", "1")
        _submit(browser)
        _wait(browser, lambda d: _css(d, f'#realm-table tr[data-realm="{realm}"]'), "the realm")
        stored = api.get(f"{base}/access/domains/{realm}", timeout=10).json()["data"]
        assert stored["server1"] == "127.0.0.1" and "bind-secret-1" not in str(stored)
        _click(browser, f'tr[data-realm="{realm}"] .realm-edit', "Edit realm")
        _dialog(browser, "the realm edit dialog")
        _wait(browser, lambda d: _css(d, "#realm-server1")[0].get_attribute("value")
              == "127.0.0.1", "the realm's settings in the form")
        assert _css(browser, "#realm-password")[0].get_attribute("value") == ""
        _css(browser, "dialog[open] button[type=button]")[0].click()          # cancel
        _click(browser, f'tr[data-realm="{realm}"] .realm-sync', "Sync")
        _dialog(browser, "the sync dialog")
        _submit(browser)
        ended = _wait(browser, lambda d: (s := _css(d, "#task-result")[0]
                                          .get_attribute("data-status")) != "running" and s,
                      "the sync task's end", timeout=30)
        assert ended != "OK", ended
        admin_errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                        and not (e.get("source") == "network" and " 400 " in e["message"]
                                 and ("/access/users" in e["message"]
                                      or "/access/password" in e["message"]
                                      or "/access/domains" in e["message"]))]
        assert admin_errors == [], admin_errors

        # the auditor sees every page, and no write button
        _css(browser, "#logout")[0].click()
        _login(browser, AUDITOR_PW, username=name)
        _wait(browser, lambda d: userid in _css(d, "#shell-user")[0].text,
              "logged in as the auditor")
        _go(browser, "#/access/users")
        _wait(browser, lambda d: _css(d, '#user-table tr[data-userid="admin@pve"]'),
              "the user list")
        assert not _css(browser, "#user-add, .user-edit, .user-delete, #create-vm")
        checks = {"groups": "#group-add", "roles": "#role-add", "acl": "#acl-add-user",
                  "realms": "#realm-add", "pools": "#pool-add, .pool-delete"}
        for page, writes in checks.items():
            _go(browser, f"#/access/{page}")
            _wait(browser, lambda d, p=page: _css(d, f"#view-access-{p} table"), f"the {page} page")
            assert not _css(browser, writes), f"write buttons on {page} for an auditor"
        _click(browser, f'#pool-table tr[data-poolid="{pool}"] a', "the pool")
        _wait(browser, lambda d: _css(d, member), "the pool's VM")
        assert not _css(browser, "#pool-add-vms, #pool-edit, .pool-member-remove")
        browser.save_screenshot(str(shots / "access-auditor.png"))

        # a TOTP factor for oneself: the URI shown once, a code from it proves the seed
        _go(browser, "#/access/tfa")
        _click(browser, "#tfa-add-totp", "Add TOTP")
        _dialog(browser, "the TOTP dialog")
        uri = _css(browser, "#tfa-uri")[0].text
        assert uri.startswith("otpauth://totp/"), uri
        # beside it, the URI as a QR code: an SVG image the browser decoded and drew
        qr = _wait(browser, lambda d: d.execute_script(
            "const i = document.querySelector('#tfa-qr');"
            "return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src');"),
            "the QR code drawn")
        assert qr.startswith("data:image/svg+xml"), qr[:40]
        totp = pyotp.parse_uri(uri)
        _fill(browser, "#tfa-code", "000000" if totp.now() != "000000" else "111111")
        _fill(browser, "#tfa-password", AUDITOR_PW)
        _submit(browser)
        _wait(browser, lambda d: _css(d, "#error-value"), "a wrong code refused at its field")
        _fill(browser, "#tfa-code", totp.now())
        _submit(browser)
        _wait(browser, lambda d: _css(d, f'#tfa-table tr[data-userid="{userid}"]'),
              "the TOTP entry")
        assert uri not in browser.page_source
        entries = api.get(f"{base}/access/tfa/{userid}", timeout=10).json()["data"]
        assert [e["type"] for e in entries] == ["totp"], entries
        _css(browser, "#logout")[0].click()
        # the auditor's errors: only 400s of the refused TFA code
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                  and not (e.get("source") == "network" and " 400 " in e["message"]
                           and "/access/tfa/" in e["message"])]
        assert errors == [], errors
    finally:
        api.put(f"{base}/pools", data={"poolid": pool, "vms": vm, "delete": 1}, timeout=10)
        api.delete(f"{base}/pools", params={"poolid": pool}, timeout=10)
        api.delete(f"{base}/access/users/admin@pve/token/{tokenid}", timeout=10)
        api.delete(f"{base}/access/users/{userid}", timeout=10)
        api.delete(f"{base}/access/domains/{realm}", timeout=10)


def test_openid_login_button(browser, cluster: Cluster, api: requests.Session,  # noqa: F811
                             provider: dict[str, str], shots: Path) -> None:  # noqa: F811
    """An OpenID Connect realm in the login form: choosing it hides the password and
    shows "Login with <realm>"; the browser goes to the provider (the test OP of
    test_openid.py), signs in there and comes back with code and state, and the page
    finishes the login (autocreate) and forgets them from its address."""
    from selenium.webdriver.support.ui import Select

    base = f"{_base(cluster)}/api2/json"
    realm = f"uioidc{uuid.uuid4().hex[:4]}"
    r = api.post(f"{base}/access/domains", timeout=10, data={
        "realm": realm, "type": "openid", "issuer-url": provider["issuer"],
        "client-id": CLIENT_ID, "client-key": CLIENT_SECRET, "autocreate": 1})
    assert r.status_code == 200, r.text
    try:
        if _css(browser, "#logout"):
            _css(browser, "#logout")[0].click()
        else:
            browser.get(_base(cluster) + "/")
        _wait(browser, lambda d: _css(d, f"#login-realm option[value={realm}]"),
              "the OpenID realm in the realm list")
        Select(_css(browser, "#login-realm")[0]).select_by_value(realm)
        button = _wait(browser, lambda d: _css(d, "#login-openid"), "the OpenID button")[0]
        assert button.text == f"Login with {realm}"
        assert not _css(browser, "#login-password, #login-submit")
        browser.save_screenshot(str(shots / "login-openid.png"))
        button.click()
        # the provider's own pages (oidc-provider's development interactions): any
        # name signs in, then the consent
        _wait(browser, lambda d: d.current_url.startswith(provider["issuer"])
              and _css(d, "input[name=login]"), "the provider's login form")
        _css(browser, "input[name=login]")[0].send_keys("carol")
        _css(browser, "input[name=password]")[0].send_keys("anything")
        _css(browser, "button[type=submit]")[0].click()
        _wait(browser, lambda d: _css(d, "input[name=prompt][value=consent]")
              or d.current_url.startswith(provider["redirect"]), "the provider's consent")
        if _css(browser, "input[name=prompt][value=consent]"):
            _css(browser, "button[type=submit]")[0].click()
        _wait(browser, lambda d: _css(d, "#shell-user") and f"carol@{realm}" in
              _css(d, "#shell-user")[0].text, "logged in back from the provider")
        assert browser.execute_script("return location.search") == ""
        browser.save_screenshot(str(shots / "login-openid-done.png"))
        _css(browser, "#logout")[0].click()
        _wait(browser, lambda d: _css(d, "#login-realm"), "the login form again")
        _assert_no_script_errors(browser)
    finally:
        purge_realm(cluster, realm)
