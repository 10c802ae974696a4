"""Node → Certificates, Datacenter → Resource Mappings and Datacenter → ACME in a real
browser (chromium + Selenium, the fixtures of test_browser.py) against the shared
cluster: a custom certificate made here uploaded from its files, listed with its
fingerprint and deleted; a USB mapping added, edited and removed; a standalone ACME
plugin added and removed. A refused map entry shows the API's error at the entries.
Each change is checked through the API; the page ends with no script error in the
console."""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import requests

from tests.integration.harness import Cluster
from tests.integration.ui import test_browser as ui
from tests.integration.ui.test_browser import _assert_no_script_errors, _css, _fill, _go, _wait
from tests.integration.ui.test_pages_ui import _as_admin, _ok, _submit, _url

# the browser tests' module fixtures, used here by name
api, browser, shots = ui.api, ui.browser, ui.shots

CUSTOM = "pveproxy-ssl.pem"


def _self_signed(name: str) -> tuple[str, str, str]:
    """A self-signed certificate for `name` with its matching key (PEM) and its
    SHA-256 fingerprint as PVE writes it (AA:BB:...)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem, key_pem, cert.fingerprint(hashes.SHA256()).hex(":").upper()


def test_certificates_mappings_acme(browser, cluster: Cluster, api: requests.Session,
                                    shots: Path, tmp_path: Path) -> None:
    """#/node/n1/certificates: the custom certificate uploaded from its files, listed with
    its fingerprint, deleted (confirmed); #/dc/mappings: a USB mapping for n1 refused with
    a malformed ID (the error at the entries, nothing stored), added,
    its description edited, removed; #/dc/acme: a standalone plugin added, removed."""
    tag = uuid.uuid4().hex[:6]
    domain = f"n1-{tag}.binome.test"
    mapping, plugin = f"uiusb{tag}", f"uisa{tag}"
    pem, key, fingerprint = _self_signed(domain)
    (tmp_path / "cert.pem").write_text(pem)
    (tmp_path / "key.pem").write_text(key)

    def certs() -> dict[str, dict]:
        info = _ok(api.get(_url(cluster, "/nodes/n1/certificates/info"), timeout=10))
        return {c["filename"]: c for c in info}

    assert CUSTOM not in certs(), "a custom certificate left on n1"
    _as_admin(browser, cluster)
    try:
        # the certificate: uploaded from its files, listed with its fingerprint
        _go(browser, "#/node/n1/certificates")
        _wait(browser, lambda d: _css(d, '#cert-table tr[data-filename="node.pem"]'),
              "n1's certificates")
        _css(browser, "#cert-upload")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open] #cert-pem-file"), "the upload dialog")
        _css(browser, "#cert-pem-file")[0].send_keys(str(tmp_path / "cert.pem"))
        _css(browser, "#cert-key-file")[0].send_keys(str(tmp_path / "key.pem"))
        _wait(browser, lambda d: _css(d, "#cert-pem")[0].get_attribute("value") == pem
              and _css(d, "#cert-key")[0].get_attribute("value") == key, "the files read")
        _submit(browser)
        row = f'#cert-table tr[data-filename="{CUSTOM}"]'
        _wait(browser, lambda d: _css(d, row) and _css(d, f"{row} .cert-fingerprint")[0].text
              == fingerprint, "the custom certificate listed with its fingerprint")
        assert domain in _css(browser, f"{row} .cert-san")[0].text
        assert certs()[CUSTOM]["fingerprint"] == fingerprint
        # the key is not kept by the page once sent
        assert "PRIVATE KEY" not in browser.page_source
        browser.save_screenshot(str(shots / "node-certificates.png"))
        _css(browser, "#cert-delete")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open]"), "the delete confirmation")
        _submit(browser)
        _wait(browser, lambda d: not _css(d, row), "the custom certificate gone")
        assert CUSTOM not in certs()

        # a USB mapping for n1: added, seen through the API, described again, removed
        _go(browser, "#/dc/mappings")
        _wait(browser, lambda d: _css(d, "#map-usb-add"), "the mappings page")
        _css(browser, "#map-usb-add")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open] #map-id"), "the add dialog")
        _fill(browser, "#map-id", mapping)
        _fill(browser, "#map-description", "first")
        # a malformed entry: the API's error at the entries, nothing stored
        _fill(browser, ".map-entry[data-index='0'] .map-entry-id", "zz")
        _submit(browser)
        _wait(browser, lambda d: _css(d, "dialog[open] #map-entries #error-map"),
              "the map error at the entries")
        assert "id" in _css(browser, "#error-map")[0].text
        assert api.get(_url(cluster, f"/cluster/mapping/usb/{mapping}"),
                       timeout=10).status_code == 500, "a refused mapping was stored"
        _fill(browser, ".map-entry[data-index='0'] .map-entry-id", "1d6b:0002")
        _submit(browser)
        mrow = f'#map-usb-table tr[data-id="{mapping}"]'
        _wait(browser, lambda d: _css(d, mrow), "the mapping listed")
        got = _ok(api.get(_url(cluster, f"/cluster/mapping/usb/{mapping}"), timeout=10))
        assert got["map"] == ["node=n1,id=1d6b:0002"] and got["description"] == "first", got
        _css(browser, f"{mrow} .map-edit")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open] #map-description"), "the edit dialog")
        assert _css(browser, ".map-entry-id")[0].get_attribute("value") == "1d6b:0002"
        _fill(browser, "#map-description", "second")
        _submit(browser)
        _wait(browser, lambda d: _css(d, f"{mrow} .map-description")
              and _css(d, f"{mrow} .map-description")[0].text == "second", "the new description")
        got = _ok(api.get(_url(cluster, f"/cluster/mapping/usb/{mapping}"), timeout=10))
        assert got["map"] == ["node=n1,id=1d6b:0002"] and got["description"] == "second", got
        _css(browser, f"{mrow} .map-remove")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open]"), "the remove confirmation")
        _submit(browser)
        _wait(browser, lambda d: not _css(d, mrow), "the mapping removed")
        listed = _ok(api.get(_url(cluster, "/cluster/mapping/usb"), timeout=10))
        assert mapping not in {m["id"] for m in listed}

        # a standalone ACME plugin: added, removed
        _go(browser, "#/dc/acme")
        _wait(browser, lambda d: _css(d, '#acme-plugin-table tr[data-plugin="standalone"]'),
              "the ACME page")
        _css(browser, "#acme-plugin-add")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open] #acme-plugin-id"), "the plugin dialog")
        from selenium.webdriver.support.ui import Select
        Select(_css(browser, "#acme-plugin-type")[0]).select_by_value("standalone")
        _wait(browser, lambda d: not _css(d, "#acme-plugin-api"), "no DNS fields for standalone")
        _fill(browser, "#acme-plugin-id", plugin)
        _submit(browser)
        prow = f'#acme-plugin-table tr[data-plugin="{plugin}"]'
        _wait(browser, lambda d: _css(d, prow), "the plugin listed")
        got = _ok(api.get(_url(cluster, f"/cluster/acme/plugins/{plugin}"), timeout=10))
        assert got["type"] == "standalone", got
        browser.save_screenshot(str(shots / "dc-acme.png"))
        _css(browser, f"{prow} .acme-plugin-remove")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open]"), "the remove confirmation")
        _submit(browser)
        _wait(browser, lambda d: not _css(d, prow), "the plugin removed")
        plugins = _ok(api.get(_url(cluster, "/cluster/acme/plugins"), timeout=10))
        assert plugin not in {p["plugin"] for p in plugins}
        _assert_no_script_errors(browser)
    finally:
        api.delete(_url(cluster, "/nodes/n1/certificates/custom"), timeout=10)
        api.delete(_url(cluster, f"/cluster/mapping/usb/{mapping}"), timeout=10)
        api.delete(_url(cluster, f"/cluster/acme/plugins/{plugin}"), timeout=10)
