"""Node certificates on the shared cluster: a custom certificate uploaded, served on 8006
to a client naming the node (SNI) while node-to-node calls keep the cluster's, removed
again; then ACME against a real CA, Debian's `pebble`: an account registered, a
standalone plugin, the node's domain, a certificate ordered (pebble validates http-01 on
port 80 of n1, its DNS answered by `pebble-challtestsrv` with n1's address), seen on
8006 with pebble's issuer, renewed with force, revoked. Every process is stopped by pid."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.cluster import pki
from tests.integration.harness import PASSWORD, Cluster, stop_process, wait_for

pytestmark = pytest.mark.integration

DOMAIN = "n1.binome.example"


def _served(address: str, server_name: str | None) -> dict:
    """The certificate 8006 presents (SNI `server_name`, none for None)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, 8006), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = pki.x509.load_der_x509_certificate(der)
    return {"issuer": cert.issuer.rfc4514_string(), "subject": cert.subject.rfc4514_string(),
            "fingerprint": pki.fingerprint(cert)}


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=60)


def test_custom_certificate_served_and_removed(px, cluster: Cluster, tmp_path: Path) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    n1 = cluster["n1"]
    node_fp = n1.fingerprint()
    ca_key, ca_cert = pki.create_ca("custom-test")
    key = pki.new_key()
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(key, "www"), DOMAIN, [])
    chain = (pki.cert_pem(cert) + pki.cert_pem(ca_cert)).decode()
    key_pem = pki.key_pem(key).decode()
    before = px.nodes("n1").certificates.info.get()
    try:
        # bad input: PVE's 400 per parameter, a key that is not the certificate's: 500
        with pytest.raises(ResourceException) as bad:
            px.nodes("n1").certificates.custom.post(certificates="junk", key="junk")
        assert bad.value.status_code == 400 and bad.value.errors == {
            "certificates": "not a valid PEM-formatted string.",
            "key": "not a valid PEM-formatted string."}
        with pytest.raises(ResourceException) as mismatch:
            px.nodes("n1").certificates.custom.post(certificates=chain,
                                                   key=pki.key_pem(pki.new_key()).decode())
        assert mismatch.value.status_code == 500 and "key does not match the certificate" \
            in mismatch.value.content
        assert px.nodes("n1").certificates.info.get() == before

        # through n2, proxied to n1 as PVE does
        info = px.nodes("n1").certificates.custom.post(certificates=chain, key=key_pem)
        assert info["filename"] == "pveproxy-ssl.pem" and DOMAIN in info["san"]
        seen = _served(n1.address, DOMAIN)
        assert seen["fingerprint"] == info["fingerprint"]
        assert "custom-test" in seen["issuer"]
        # by address (no SNI): the cluster's node certificate, which the nodes trust
        assert _served(n1.address, None)["fingerprint"] == node_fp
        assert px.nodes("n1").status.get()      # n2 -> n1 proxying still works
        assert [c["filename"] for c in px.nodes("n1").certificates.info.get()] == [
            "ca.pem", "node.pem", "pveproxy-ssl.pem"]
        key_file = n1.state_dir / "pki" / "pveproxy-ssl.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_pem not in json.dumps(px.nodes("n1").certificates.info.get())
        # again without force: PVE's refusal, nothing changed
        with pytest.raises(ResourceException) as again:
            px.nodes("n1").certificates.custom.post(certificates=chain)
        assert again.value.status_code == 500 and \
            "Custom certificate file exists but force flag is not set." in again.value.content
        # force, the existing key kept (no key given)
        assert px.nodes("n1").certificates.custom.post(certificates=chain, force=1)[
            "fingerprint"] == info["fingerprint"]
        # the CLI (pvenode cert set): the chain and key read from files
        (tmp_path / "chain.pem").write_text(chain)
        (tmp_path / "key.pem").write_text(key_pem)
        out = n1.json("cert", "set", "n1", "--certificates-file", str(tmp_path / "chain.pem"),
                      "--key-file", str(tmp_path / "key.pem"), "--force", "1")
        assert out["fingerprint"] == info["fingerprint"]
    finally:
        px.nodes("n1").certificates.custom.delete()
    assert _served(n1.address, DOMAIN)["fingerprint"] == node_fp
    assert px.nodes("n1").certificates.info.get() == before
    print(f"custom certificate test runtime {time.monotonic() - began:.1f} s")


@pytest.fixture
def pebble(cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """pebble and pebble-challtestsrv on 127.<net>.0.9; n1 trusts pebble's TLS CA for
    ACME directories (its `acme-directory-ca.pem`). Yields the directory URL."""
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        pytest.fail("pebble is not installed (make setup installs it)")
    n1 = cluster["n1"]
    host = n1.address.rsplit(".", 1)[0] + ".9"
    ca_key, ca_cert = pki.create_ca("pebble-tls")
    key = pki.new_key()
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(key, "pebble"), "pebble", [host])
    (tmp_path / "cert.pem").write_bytes(pki.cert_pem(cert))
    (tmp_path / "key.pem").write_bytes(pki.key_pem(key))
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"{host}:14000", "managementListenAddress": f"{host}:15000",
        "certificate": str(tmp_path / "cert.pem"), "privateKey": str(tmp_path / "key.pem"),
        "httpPort": 80, "tlsPort": 5001, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    trust = n1.state_dir / "pki" / "acme-directory-ca.pem"
    trust.write_bytes(pki.cert_pem(ca_cert))
    procs: list[subprocess.Popen] = []
    log = open(tmp_path / "pebble.log", "wb")
    try:
        procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"{host}:8053", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"{host}:8055", "-defaultIPv4", n1.address,
             "-defaultIPv6", ""], stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        procs.append(subprocess.Popen(
            ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver",
             f"{host}:8053", "-strict=false"], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1",
                 "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}))
        ctx = ssl.create_default_context(cadata=pki.cert_pem(ca_cert).decode())

        def up() -> bool:
            with socket.create_connection((host, 14000), timeout=2) as raw, \
                    ctx.wrap_socket(raw, server_hostname=host):
                return True
        wait_for(up, 20, "pebble's directory")
        yield f"https://{host}:14000/dir"
    finally:
        for proc in procs:
            stop_process(proc)
        log.close()
        trust.unlink(missing_ok=True)


def _task_log(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def test_acme_order_renew_revoke_with_pebble(px, cluster: Cluster, pebble: str) -> None:
    from proxmoxer import ResourceException

    began = time.monotonic()
    n1 = cluster["n1"]
    node_fp = n1.fingerprint()
    try:
        # the CA's terms (the directory given), an account registered as root@pam
        tos = n1.cli("acme", "tos", "--directory", pebble).stdout.strip()
        assert tos.startswith("data:") or tos.startswith("http")
        reg = n1.cli("acme", "account", "register", "default", "admin@example.org",
                     "--directory", pebble, "--tos_url", tos)
        assert "Registration successful, account URL: 'https://" in _task_log(reg)
        assert n1.json("acme", "account", "list") == [{"name": "default"}]
        account = n1.json("acme", "account", "info", "default")
        assert account["directory"] == pebble and account["account"]["status"] == "valid"
        assert "key" not in account and "PRIVATE KEY" not in json.dumps(account)
        # a second registration under that name: PVE's 400
        dup = n1.cli("acme", "account", "register", "default", "x@example.org",
                     "--directory", pebble, check=False)
        assert dup.returncode != 0 and "already exists" in _task_log(dup)

        # plugins: the built-in standalone one, a dns one stored (its data as given)
        assert [p["plugin"] for p in px.cluster.acme.plugins.get()] == ["standalone"]
        px.cluster.acme.plugins.post(id="mydns", type="dns", api="cf",
                                     data="Q0ZfVG9rZW49eHl6Cg==")
        with pytest.raises(ResourceException) as dup_plugin:
            px.cluster.acme.plugins.post(id="mydns", type="standalone")
        assert dup_plugin.value.status_code == 500 and \
            "ACME plugin ID 'mydns' already exists" in dup_plugin.value.content

        # a domain on a plugin that does not exist: PVE's verify_conf text, nothing set
        with pytest.raises(ResourceException) as noplugin:
            px.nodes("n1").config.put(acmedomain0=f"{DOMAIN},plugin=nosuch")
        assert noplugin.value.status_code == 500 and \
            f"plugin 'nosuch' for domain '{DOMAIN}' not found!" in noplugin.value.content
        assert "acmedomain0" not in px.nodes("n1").config.get()
        # a domain on the dns plugin: refused, naming it
        px.nodes("n1").config.put(acmedomain0=f"{DOMAIN},plugin=mydns")
        bad = n1.cli("acme", "cert", "order", "n1", check=False)
        assert bad.returncode != 0 and "'mydns'" in _task_log(bad) and \
            "standalone" in _task_log(bad)
        assert _served(n1.address, DOMAIN)["fingerprint"] == node_fp

        # the standalone plugin: pebble fetches the token from n1:80
        px.nodes("n1").config.put(acmedomain0=f"{DOMAIN},plugin=standalone")
        order = n1.cli("acme", "cert", "order", "n1")
        text = _task_log(order)
        for line in ("Loading ACME account details", "Placing ACME order",
                     f"The validation for {DOMAIN} is pending!", "Setting up webserver",
                     "Triggering validation", f"Status is 'valid', domain '{DOMAIN}' OK!",
                     "All domains validated!", "Downloading certificate",
                     "Setting pveproxy certificate and key"):
            assert line in text, text
        first = _served(n1.address, DOMAIN)
        assert "Pebble Intermediate" in first["issuer"] and DOMAIN in first["subject"]
        assert _served(n1.address, None)["fingerprint"] == node_fp
        info = px.nodes("n1").certificates.info.get()
        assert info[-1]["filename"] == "pveproxy-ssl.pem" and \
            info[-1]["fingerprint"] == first["fingerprint"]

        # renew: PVE's 400 without force (it ends in more than 30 days), then forced
        with pytest.raises(ResourceException) as early:
            px.nodes("n1").certificates.acme.certificate.put()
        assert early.value.status_code == 400 and "force" in early.value.errors
        renew = n1.cli("acme", "cert", "renew", "n1", "--force", "1")
        assert "Revoking old certificate" in _task_log(renew)
        second = _served(n1.address, DOMAIN)
        assert "Pebble Intermediate" in second["issuer"]
        assert second["fingerprint"] != first["fingerprint"]

        # revoke: the custom files go, the node's own certificate is served again
        revoke = n1.cli("acme", "cert", "revoke", "n1")
        assert "Deleting certificate files" in _task_log(revoke)
        assert _served(n1.address, DOMAIN)["fingerprint"] == node_fp
        assert not (n1.state_dir / "pki" / "pveproxy-ssl.pem").exists()

        deact = n1.cli("acme", "account", "deactivate", "default")
        assert "Renaming account file from 'default' to '_deactivated_default_0'" in \
            _task_log(deact)
        assert n1.json("acme", "account", "list") == []
    finally:
        px.nodes("n1").config.put(delete="acmedomain0")
        px.cluster.acme.plugins("mydns").delete()
        if (n1.state_dir / "pki" / "pveproxy-ssl.pem").exists():
            px.nodes("n1").certificates.custom.delete()
    print(f"ACME test runtime {time.monotonic() - began:.1f} s")
