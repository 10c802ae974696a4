"""Node certificates and ACME, without a CA: PVE's PEM formats and set_cert_files texts
(nothing written on bad input, the existing key kept), what the API serves, the plugins
file (PVE's section config and digest), PVE's get_acme_conf, the daily renewal decision,
and the API handlers' refusals (duplicate plugin, unknown plugin, unknown account,
duplicate account, no domains) with nothing changed."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from binome.api.errors import ApiError, ParamError
from binome.api.methods import certificates as methods
from binome.cluster import acme, pki
from binome.cluster import node_config as nc
from binome.cluster.certificates import (
    NOT_PEM,
    CertificateError,
    NodeCertificates,
    PemError,
    check_chain,
    check_pem_string,
)
from binome.store.client import Entry


def _pair(name: str = "www.example.org") -> tuple[str, str, str]:
    """A chain (leaf + CA) and the leaf's key."""
    ca_key, ca_cert = pki.create_ca("unit")
    key = pki.new_key()
    cert = pki.sign_node_cert(ca_key, ca_cert, pki.make_csr(key, name), name, [])
    return (pki.cert_pem(cert) + pki.cert_pem(ca_cert)).decode(), pki.key_pem(key).decode(), \
        pki.fingerprint(cert)


def _certs(tmp_path: Path, member: bool = True) -> tuple[NodeCertificates, list[int]]:
    changes: list[int] = []
    paths = pki.PkiPaths(tmp_path)
    pki.ensure_self_signed(paths, "n1", ["127.0.0.1"])
    return NodeCertificates(paths, lambda: member, lambda: changes.append(1)), changes


def test_pem_formats_as_pve() -> None:
    chain, key, _ = _pair()
    assert check_chain("some text before\n" + chain) == chain     # leading text stripped
    assert check_pem_string(key) == key
    for bad in ("", "junk", chain.replace("-----END CERTIFICATE-----", "", 1),
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ValueError, match=NOT_PEM):
            check_chain(bad)
    with pytest.raises(ValueError, match=NOT_PEM):
        check_pem_string("no key here")


def test_set_custom_checks_first_and_changes_nothing_on_bad_input(tmp_path: Path) -> None:
    certs, changes = _certs(tmp_path, member=False)
    chain, key, fp = _pair()
    other_chain, other_key, _ = _pair("other.example.org")
    with pytest.raises(PemError) as bad:
        certs.set_custom("junk", "junk", False)
    assert bad.value.errors == {"certificates": NOT_PEM, "key": NOT_PEM}
    with pytest.raises(PemError) as nokey:
        certs.set_custom(chain, None, False)
    assert nokey.value.errors == {
        "key": "Attempted to upload custom certificate without (existing) key."}
    with pytest.raises(CertificateError, match="key does not match the certificate"):
        certs.set_custom(chain, other_key, False)
    # PEM-shaped, but no certificate inside: the parameter's 400
    fake = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(PemError) as unreadable:
        certs.set_custom(fake, key, False)
    assert list(unreadable.value.errors) == ["certificates"]
    assert certs.custom() is None and changes == []

    info = certs.set_custom(chain, key, False)
    assert info["fingerprint"] == fp and info["filename"] == "pveproxy-ssl.pem"
    assert certs.custom_key.stat().st_mode & 0o777 == 0o600
    assert changes == [1] and certs.public() == certs.custom_cert
    # PVE: an existing file needs force; with force and no key, the stored key is used
    with pytest.raises(CertificateError, match=re.escape("Custom certificate file exists but "
                                                         "force flag is not set.")):
        certs.set_custom(other_chain, other_key, False)
    with pytest.raises(CertificateError, match="key does not match"):
        certs.set_custom(other_chain, None, True)      # the stored key is not its key
    assert certs.set_custom(chain, None, True)["fingerprint"] == fp
    assert certs.custom_key.read_text() == key
    assert [i["filename"] for i in certs.info()] == ["selfsigned.pem", "pveproxy-ssl.pem"]
    certs.delete_custom()
    assert certs.custom() is None and certs.public() == certs.paths.self_signed_cert
    assert len(changes) == 3


def test_served_is_the_node_certificate_or_the_self_signed_one(tmp_path: Path) -> None:
    member, _ = _certs(tmp_path, member=True)
    lone, _ = _certs(tmp_path, member=False)
    assert member.served() == (member.paths.node_cert, member.paths.node_key)
    assert lone.served() == (lone.paths.self_signed_cert, lone.paths.self_signed_key)


def test_custom_expiry(tmp_path: Path) -> None:
    certs, _ = _certs(tmp_path)
    chain, key, _ = _pair()
    certs.set_custom(chain, key, False)
    assert not certs.custom_expires_before(time.time() + 86400)
    assert certs.custom_expires_before(time.time() + 20 * 365 * 86400)


def test_plugins_file_as_pve_section_config() -> None:
    assert acme.parse_plugins("") == {"standalone": {"type": "standalone"}}
    ids = {"standalone": {"type": "standalone"},
           "mydns": {"type": "dns", "api": "cf", "data": "eA==", "validation-delay": 30,
                     "disable": True}}
    raw = acme.format_plugins(ids)
    assert raw == ("dns: mydns\n\tapi cf\n\tdata eA==\n\tdisable 1\n\tvalidation-delay 30\n"
                   "\nstandalone: standalone\n")
    assert acme.parse_plugins(raw)["mydns"] == {"type": "dns", "api": "cf", "data": "eA==",
                                                "disable": 1, "validation-delay": 30}
    view = acme.Plugins(acme.parse_plugins(raw), raw, 3).api_view("mydns")
    assert view["plugin"] == "mydns" and view["digest"] == hashlib.sha1(raw.encode()).hexdigest()
    with pytest.raises(acme.AcmeError, match="ACME plugin 'nosuch' not defined"):
        acme.Plugins({}, "", 0).api_view("nosuch")
    assert acme.check_plugin_options("standalone", {"api": "cf"}, create=True) == {
        "api": "property is not allowed for plugin type 'standalone'"}
    assert acme.check_plugin_options("dns", {}, create=True) == {
        "api": "property is missing and it is not optional"}
    assert acme.check_plugin_options("dns", {"data": "x"}, create=False) == {}


def test_get_acme_conf_as_pve() -> None:
    plugins = acme.Plugins(acme.parse_plugins("dns: mydns\n\tapi cf\n"), "", 0)
    conf = acme.get_acme_conf({"acme": "account=prod,domains=A.example.org;b.example.org",
                               "acmedomain0": "c.example.org,plugin=mydns"}, plugins)
    assert conf == {"account": "prod", "domains": {
        "a.example.org": {"plugin": "standalone", "_configkey": "acme"},
        "b.example.org": {"plugin": "standalone", "_configkey": "acme"},
        "c.example.org": {"plugin": "mydns", "_configkey": "acmedomain0"}}}
    assert acme.get_acme_conf({}, plugins) == {"account": "default", "domains": {}}
    with pytest.raises(acme.AcmeError, match=re.escape(
            "plugin 'nosuch' for domain 'c.example.org' not found!")):
        acme.get_acme_conf({"acmedomain1": "c.example.org,plugin=nosuch"}, plugins)
    with pytest.raises(acme.AcmeError, match=re.escape(
            "duplicate domain 'a.example.org' in ACME config properties 'acmedomain2' and "
            "'acme'")):
        acme.get_acme_conf({"acme": "domains=a.example.org",
                            "acmedomain2": "A.example.org"}, plugins)
    assert acme.contact_urls("a@example.org, b@example.org") == [
        "mailto:a@example.org", "mailto:b@example.org"]


def test_renewal_decision_as_pveupdate() -> None:
    now = 1_800_000_000.0
    day = 86400
    assert acme.renewal_due(False, True, now + day, now) == (False, None)
    due, line = acme.renewal_due(True, False, None, now)
    assert not due and line is not None and "no custom certificate exists" in line
    due, line = acme.renewal_due(True, True, now + 31 * day, now)
    assert not due and line == "Custom certificate does not expire soon, skipping ACME " \
                               "renewal."
    due, line = acme.renewal_due(True, True, now + 29 * day, now)
    assert due and line is not None and "29 days" in line
    assert acme.renewal_due(True, True, now - day, now)[0]      # expired: renew too


# ---------------------------------------------------------------- the API handlers


class MemoryStore:
    """The Store calls the ACME and node config code makes, on a dict with revisions."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, int]] = {}
        self.rev = 1

    async def get(self, key: str, **_kw: Any) -> Entry | None:
        if key not in self.data:
            return None
        value, rev = self.data[key]
        return Entry(key, value, rev)

    async def get_value(self, key: str, default: Any = None, **_kw: Any) -> Any:
        return self.data[key][0] if key in self.data else default

    async def get_prefix(self, prefix: str, **_kw: Any) -> list[Entry]:
        return [Entry(k, v, r) for k, (v, r) in sorted(self.data.items())
                if k.startswith(prefix)]

    async def put(self, key: str, value: Any) -> None:
        self.rev += 1
        self.data[key] = (value, self.rev)

    async def create(self, key: str, value: Any) -> bool:
        if key in self.data:
            return False
        await self.put(key, value)
        return True

    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = ()) -> bool:
        for key, rev in expect.items():
            if (self.data[key][1] if key in self.data else 0) != rev:
                return False
        for key, value in (puts or {}).items():
            await self.put(key, value)
        for key in deletes:
            self.data.pop(key, None)
        return True


def _ctx(tmp_path: Path, store: MemoryStore) -> Any:
    started: list[str] = []
    certs, _ = _certs(tmp_path)
    services = SimpleNamespace(
        cluster=SimpleNamespace(store=store, view=SimpleNamespace(quorate=True)),
        config=SimpleNamespace(name="n1", pki_dir=tmp_path, api_bind="127.0.0.1"),
        certificates=certs,
        tasks=SimpleNamespace(start=lambda kind, id_, user, body: started.append(kind)
                              or f"UPID:n1:{kind}"))
    return SimpleNamespace(services=services, node="n1", userid="root@pam", started=started)


def test_plugin_handlers_refuse_with_pve_texts(tmp_path: Path) -> None:
    store = MemoryStore()
    ctx = _ctx(tmp_path, store)
    run = asyncio.run
    run(methods.acme_plugin_add(ctx, {"id": "mydns", "type": "dns", "api": "cf",
                                      "data": "Q0Y9eAo="}))
    before = dict(store.data)
    with pytest.raises(ApiError) as dup:
        run(methods.acme_plugin_add(ctx, {"id": "mydns", "type": "standalone"}))
    assert dup.value.status == 500 and dup.value.message == \
        "ACME plugin ID 'mydns' already exists"
    with pytest.raises(ParamError) as notb64:
        run(methods.acme_plugin_add(ctx, {"id": "d2", "type": "dns", "api": "cf",
                                          "data": "not base64!"}))
    assert notb64.value.errors == {"data": "value is not base64 encoded"}
    with pytest.raises(ParamError) as noapi:
        run(methods.acme_plugin_add(ctx, {"id": "d2", "type": "dns"}))
    assert noapi.value.errors == {"api": "property is missing and it is not optional"}
    for params, text in (({"id": "nosuch", "api": "x"}, "ACME plugin ID 'nosuch' does not "
                                                        "exist"),
                         ({"id": "mydns", "delete": "api"}, "unable to delete required "
                                                            "option 'api'"),
                         ({"id": "mydns", "delete": "bogus"}, "no such option 'bogus'"),
                         ({"id": "mydns", "digest": "0" * 40, "api": "x"},
                          "detected modified configuration")):
        with pytest.raises(ApiError) as refused:
            run(methods.acme_plugin_update(ctx, params))
        assert refused.value.status == 500 and text in refused.value.message
    assert store.data == before
    listed = run(methods.acme_plugins_index(ctx, {}))
    assert [(p["plugin"], p["type"]) for p in listed] == [("mydns", "dns"),
                                                          ("standalone", "standalone")]
    # the DNS provider's credentials are write-only (PVE returns them): stored, not shown
    assert "data" not in listed[0] and listed[0]["has-data"] == 1
    assert "Q0Y9eAo=" not in str(run(methods.acme_plugin_get(ctx, {"id": "mydns"})))
    assert "Q0Y9eAo=" in str(store.data)
    run(methods.acme_plugin_delete(ctx, {"id": "mydns"}))
    assert [p["plugin"] for p in run(methods.acme_plugins_index(ctx, {}))] == ["standalone"]


def test_order_and_account_handlers_refuse_with_nothing_started(tmp_path: Path) -> None:
    store = MemoryStore()
    ctx = _ctx(tmp_path, store)
    run = asyncio.run
    with pytest.raises(ApiError) as nodomains:
        run(methods.node_acme_order(ctx, {}))
    assert nodomains.value.status == 400 and nodomains.value.message == \
        "ACME domain list in node configuration is missing!"
    run(store.put(nc.key("n1"), nc.format_text({"acmedomain0": "a.example.org,plugin=gone"})))
    with pytest.raises(ApiError) as unknown:
        run(methods.node_acme_order(ctx, {}))
    assert unknown.value.status == 500 and unknown.value.message == \
        "plugin 'gone' for domain 'a.example.org' not found!"
    with pytest.raises(ApiError) as nocert:
        run(methods.node_acme_renew(ctx, {}))
    assert nocert.value.message.startswith("No current (custom) certificate found")
    chain, key, _ = _pair()
    ctx.services.certificates.set_custom(chain, key, False)
    with pytest.raises(ParamError) as exists:
        run(methods.node_acme_order(ctx, {}))
    assert exists.value.errors == {"force": "Custom certificate exists but 'force' is not set."}
    with pytest.raises(ParamError) as early:
        run(methods.node_acme_renew(ctx, {}))
    assert early.value.errors == {"force": "Certificate does not expire within the next 30 "
                                           "days, and 'force' is not set."}
    for call in (methods.acme_account_get, methods.acme_account_update,
                 methods.acme_account_deactivate):
        with pytest.raises(ParamError) as noaccount:
            run(call(ctx, {"name": "nosuch"}))
        assert noaccount.value.errors == {
            "name": "ACME account config file 'nosuch' does not exist."}
    run(store.put(acme.account_key("prod"), {"directory": "https://ca.example/dir",
                                             "key": "SECRET", "location": "https://l"}))
    with pytest.raises(ParamError) as dup:
        run(methods.acme_account_register(ctx, {"name": "prod", "contact": "a@example.org"}))
    assert dup.value.errors == {"name": "ACME account config file 'prod' already exists."}
    with pytest.raises(ParamError) as eab:
        run(methods.acme_account_register(ctx, {"name": "x", "contact": "a@example.org",
                                                "eab-kid": "k"}))
    assert list(eab.value.errors) == ["eab-hmac-key"]
    assert ctx.started == []
    # the account's key is never returned; deactivated accounts are not listed
    assert run(methods.acme_account_get(ctx, {"name": "prod"})) == {
        "directory": "https://ca.example/dir", "location": "https://l"}
    run(store.put(acme.account_key("_deactivated_old_0"), {"key": "x"}))
    assert run(methods.acme_account_index(ctx, {})) == [{"name": "prod"}]


def test_standalone_responder_answers_the_token_only() -> None:
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as probe:       # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}/.well-known/acme-challenge/"
    with acme.ChallengeServer("127.0.0.1", port, "tok", "tok.thumbprint"):
        assert urllib.request.urlopen(base + "tok", timeout=5).read() == b"tok.thumbprint"
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(base + "other", timeout=5)
        assert other.value.code == 404
        # the port taken: PVE's text, not a traceback
        with pytest.raises(acme.AcmeError, match="Failed to initialize HTTP daemon"):
            acme.ChallengeServer("127.0.0.1", port, "x", "y")
    with pytest.raises(urllib.error.URLError):      # gone after the order
        urllib.request.urlopen(base + "tok", timeout=5)


def test_daily_renewal_starts_pve_s_renewal_when_due(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from binome.daemon import acme_renewal

    store = MemoryStore()
    ctx = _ctx(tmp_path, store)
    ctx.services.cluster.is_member = True
    renewed: list[bool] = []

    async def renew(ctx: Any, force: bool) -> str:
        renewed.append(force)
        return "UPID:n1:acmerenew"
    monkeypatch.setattr(methods, "renew", renew)
    job = acme_renewal.AcmeRenewal(ctx.services)
    assert asyncio.run(job.check()) is None             # no domains: nothing to do
    asyncio.run(store.put(nc.key("n1"), nc.format_text({"acmedomain0": "a.example.org"})))
    assert asyncio.run(job.check()) is None             # no certificate yet
    key = pki.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example.org")])
    now = dt.datetime.now(dt.UTC)

    def cert_ending_in(days: int) -> str:
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=60))
                .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
        return pki.cert_pem(cert).decode()
    ctx.services.certificates.set_custom(cert_ending_in(45), pki.key_pem(key).decode(), True)
    assert asyncio.run(job.check()) is None and renewed == []
    ctx.services.certificates.set_custom(cert_ending_in(20), pki.key_pem(key).decode(), True)
    assert asyncio.run(job.check()) == "UPID:n1:acmerenew" and renewed == [False]
