"""Notifications through the real path: targets and matchers configured over the HTTPS API
of a real binome cluster (etcd + binomed), delivered by the daemons to a real SMTP server
(aiosmtpd) and a real HTTP receiver (aiohttp) started here; a node failure decided by the
CRM master reaches the SMTP server exactly once.

The tests of this module share one cluster and run in order: the first configures the
targets the second relies on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.integration.access.client import Api
from tests.integration.harness import PASSWORD, Cluster, make_cluster, wait_for
from tests.integration.notify.mailbox import Inbox
from tests.integration.notify.mailbox import free_port as _free_port

pytestmark = pytest.mark.integration

N = "/cluster/notifications"
SMTP_PASSWORD = "smtp-pa55-9f2c"
HOOK_SECRET = "hook-s3cret-71ab"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    return AuthResult(success=auth_data.login == b"alerts"
                      and auth_data.password == SMTP_PASSWORD.encode())


class Receiver:
    """A webhook receiver: an aiohttp server on its own loop in a thread."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.requests: list[tuple[str, str, dict[str, str], str]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.headers),
                              await request.text()))
        return web.Response(text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.integration.conftest import _nets, _require_tools
    _require_tools()
    inbox, smtp_port = Inbox(), _free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port,
                      authenticator=_authenticator, auth_require_tls=False)
    smtp.start()
    receiver = Receiver()
    cluster: Cluster | None = None
    try:
        receiver.start()
        cluster = make_cluster(tmp_path_factory.mktemp("notify"), next(_nets))
        yield {"cluster": cluster, "inbox": inbox, "smtp_port": smtp_port,
               "receiver": receiver, "api": Api(cluster, "admin@pve", PASSWORD)}
    finally:
        if cluster is not None:
            cluster.stop()
        receiver.stop()
        smtp.stop()


FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


def _clock_ahead(seconds: int) -> dict[str, str]:
    """The environment that runs a process with its wall clock `seconds` ahead."""
    if not FAKETIME_LIB.exists():
        pytest.fail(f"{FAKETIME_LIB} missing: tools/setup-debian.sh installs libfaketime")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": f"+{seconds}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _short_lived_cert(cluster: Cluster, node: str, days: int) -> str:
    """Replace `node`'s certificate by one of the cluster CA valid `days` days and an hour
    (same subject, key and extensions); its expiry as the mail writes it."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from binome.cluster import pki
    from binome.store import keys

    async def read_ca() -> Any:
        store = cluster.raw_store(node)
        try:
            return await store.get_value(keys.PKI_CA)
        finally:
            await store.close()

    ca = asyncio.run(read_ca())
    ca_cert, ca_key = pki.load_cert(ca["cert"].encode()), pki.load_key(ca["key"].encode())
    path = pki.PkiPaths(cluster[node].state_dir / "pki").node_cert
    old = pki.load_cert(path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days, hours=1)
    builder = (x509.CertificateBuilder().subject_name(old.subject)
               .issuer_name(ca_cert.subject).public_key(old.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    pki.write_public(path, pki.cert_pem(builder.sign(ca_key, hashes.SHA256())))
    return not_after.strftime("%Y-%m-%d %H:%M UTC")


def _errors(api: Api, verb: str, url: str, /, **params: Any) -> dict[str, str]:
    r = api.call(verb, url, **params)
    assert r.status_code == 400, (url, r.status_code, r.text)
    return r.json().get("errors") or {}


def test_targets_configured_tested_and_secrets_never_shown(env: dict[str, Any]) -> None:
    api: Api = env["api"]
    inbox: Inbox = env["inbox"]
    receiver: Receiver = env["receiver"]
    assert {e["name"] for e in api.ok("GET", N)} >= {"endpoints", "matchers", "targets"}

    api.ok("POST", f"{N}/endpoints/smtp", name="mail", server="127.0.0.1",
           port=env["smtp_port"], mode="insecure", username="alerts", password=SMTP_PASSWORD,
           mailto=["ops@example.org", "oncall@example.org"], author="binome itest",
           **{"from-address": "binome@example.org"})
    body = '{"title": "{{ escape title }}", "severity": "{{ severity }}", ' \
           '"type": "{{ fields.type }}", "message": "{{ escape message }}"}'
    api.ok("POST", f"{N}/endpoints/webhook", name="hook", method="post",
           url=f"http://127.0.0.1:{receiver.port}/hook/{{{{ url-encode fields.type }}}}",
           header=[f"name=X-Token,value={_b64('{{ secrets.token }}')}",
                   f"name=Content-Type,value={_b64('application/json')}"],
           body=_b64(body), secret=[f"name=token,value={_b64(HOOK_SECRET)}"])

    # secrets are write-only: not in a listing, a read or a target list
    smtp = api.ok("GET", f"{N}/endpoints/smtp/mail")
    assert smtp["mailto"] == ["ops@example.org", "oncall@example.org"]
    assert smtp["username"] == "alerts" and "password" not in smtp and smtp["digest"]
    hook = api.ok("GET", f"{N}/endpoints/webhook/hook")
    assert hook["secret"] == ["name=token"] and hook["origin"] == "user-created"
    shown = [api.call("GET", f"{N}/{path}").text
             for path in ("endpoints/smtp", "endpoints/webhook", "targets",
                          "endpoints/smtp/mail", "endpoints/webhook/hook")]
    for text in shown:
        assert SMTP_PASSWORD not in text and HOOK_SECRET not in text
        assert _b64(HOOK_SECRET) not in text
    targets = {t["name"]: t for t in api.ok("GET", f"{N}/targets")}
    assert targets["mail"]["type"] == "smtp" and targets["hook"]["type"] == "webhook"
    assert targets["mail-to-root"]["origin"] == "builtin"

    # the test notification reaches the real servers, with the stored secrets
    api.ok("POST", f"{N}/targets/mail/test")
    (mail,) = inbox.with_subject("Test notification")
    assert mail["From"] == "binome itest <binome@example.org>"
    assert mail["To"] == "ops@example.org, oncall@example.org"
    assert "test of the notification target 'mail'" in mail.get_payload()
    api.ok("POST", f"{N}/targets/hook/test")
    ((method, path, headers, text),) = receiver.requests
    assert (method, path) == ("POST", "/hook/test")
    assert headers["X-Token"] == HOOK_SECRET
    assert json.loads(text)["title"] == "Test notification"

    # an update keeps the password it is not given; delete= removes an option
    digest = smtp["digest"]
    api.ok("PUT", f"{N}/endpoints/smtp/mail", comment="on-call mail", delete="author,port",
           digest=digest)
    smtp = api.ok("GET", f"{N}/endpoints/smtp/mail")
    assert smtp["comment"] == "on-call mail" and "author" not in smtp and "port" not in smtp
    api.ok("PUT", f"{N}/endpoints/smtp/mail", port=env["smtp_port"])
    r = api.call("PUT", f"{N}/endpoints/smtp/mail", comment="x", digest=digest)
    assert r.status_code == 400 and "detected modified configuration" in r.reason
    api.ok("POST", f"{N}/targets/mail/test")
    assert len(inbox.with_subject("Test notification")) == 2

    # matchers: route node events to the mail target; the built-in one is switched off
    api.ok("POST", f"{N}/matchers", name="node-events", target=["mail"],
           **{"match-field": ["exact:type=node"], "match-severity": ["warning,notice"]})
    api.ok("PUT", f"{N}/matchers/default-matcher", disable=1)
    matchers = {m["name"]: m for m in api.ok("GET", f"{N}/matchers")}
    assert matchers["node-events"]["match-field"] == ["exact:type=node"]
    assert matchers["default-matcher"]["origin"] == "modified-builtin"
    assert matchers["default-matcher"]["disable"] == 1
    fields = {f["name"] for f in api.ok("GET", f"{N}/matcher-fields")}
    assert {"type", "hostname", "node", "sid"} <= fields
    values = {(v["field"], v["value"]) for v in api.ok("GET", f"{N}/matcher-field-values")}
    assert {("type", "fencing"), ("type", "node"), ("hostname", "n2")} <= values

    # bad input: PVE's 400 naming the parameter, nothing written
    assert "port" in _errors(api, "POST", f"{N}/endpoints/smtp", name="bad", server="h",
                             port=99999, mailto="a@b", **{"from-address": "a@b"})
    assert "mode" in _errors(api, "POST", f"{N}/endpoints/smtp", name="bad", server="h",
                             mode="ssl", mailto="a@b", **{"from-address": "a@b"})
    assert "token" in _errors(api, "POST", f"{N}/endpoints/gotify", name="bad",
                              server="http://g")
    assert "match-field" in _errors(api, "POST", f"{N}/matchers", name="bad",
                                    **{"match-field": "type=fencing"})
    assert "target" in _errors(api, "POST", f"{N}/matchers", name="bad", target="nope")
    assert "name" in _errors(api, "POST", f"{N}/endpoints/gotify", name="mail",
                             server="http://g", token="t")
    assert "bogus" in _errors(api, "POST", f"{N}/matchers", name="bad", bogus="1")
    assert "comment" in _errors(api, "POST", f"{N}/matchers", name="bad",
                                comment=["one", "two"])       # given twice: not an array
    assert "secret" in _errors(api, "POST", f"{N}/endpoints/webhook", name="bad",
                               method="post", url="http://x", secret="name=s,value=!!bad")
    assert api.call("GET", f"{N}/endpoints/smtp/nope").status_code == 404
    assert api.call("GET", f"{N}/endpoints/gotify/mail").status_code == 404
    assert api.call("POST", f"{N}/targets/nope/test").status_code == 404
    assert "bad" not in {t["name"] for t in api.ok("GET", f"{N}/targets")}

    # the CLI: the same methods, arrays as repeated options, the secret from a file
    cluster: Cluster = env["cluster"]
    n1 = cluster["n1"]
    n1.cli("notification", "matcher", "add", "cli-matcher", "--target", "mail",
           "--target", "hook", "--match-severity", "error", "--comment", "from the CLI")
    shown = n1.json("notification", "matcher", "show", "cli-matcher")
    assert shown["target"] == ["mail", "hook"] and shown["comment"] == "from the CLI"
    token_file = cluster.root / "gotify-token"
    token_file.write_text("gotify-t0ken-5e1\n")
    n1.cli("notification", "endpoint", "gotify", "add", "phone", "--server",
           "http://127.0.0.1:9", "--token-file", str(token_file))
    listed = n1.cli("notification", "target", "list").stdout
    assert "phone" in listed and "gotify" in listed and "gotify-t0ken" not in listed
    assert "token" not in n1.json("notification", "endpoint", "gotify", "show", "phone")
    n1.cli("notification", "matcher", "delete", "cli-matcher")
    n1.cli("notification", "endpoint", "gotify", "delete", "phone")

    # every change is in the cluster log, naming who made it; no secret in any log
    log = api.ok("GET", "/cluster/log", max=200)
    lines = [e["msg"] for e in log if e.get("user") == "admin@pve"]
    assert any("create notification endpoint 'mail' (smtp)" in m for m in lines), lines
    assert any("update notification matcher 'default-matcher'" in m for m in lines), lines
    for node in cluster.nodes.values():
        text = node.log_path.read_text(errors="replace")
        assert SMTP_PASSWORD not in text and HOOK_SECRET not in text
    assert SMTP_PASSWORD not in json.dumps(log) and HOOK_SECRET not in json.dumps(log)


def test_node_failure_mailed_exactly_once(env: dict[str, Any]) -> None:
    """n2 crashes: the CRM master decides it is offline and mails it once (not once per
    node); n2 returns: one 'back online' mail."""
    cluster: Cluster = env["cluster"]
    inbox: Inbox = env["inbox"]
    receiver: Receiver = env["receiver"]
    # the etcd member of the dead node is unhealthy: said by the master to the webhook
    env["api"].ok("POST", f"{N}/matchers", name="etcd-events", target=["hook"],
                  **{"match-field": ["exact:type=etcd"]})
    env["api"].ok("POST", f"{N}/matchers", name="time-events", target=["mail"],
                  **{"match-field": ["exact:type=time"]})
    cluster["n2"].kill()
    (offline,) = wait_for(lambda: inbox.with_subject("Node n2 offline"), 60,
                          "the 'Node n2 offline' mail")
    text = offline.get_payload()
    assert "Node n2 stopped answering the cluster (lease " in text and "fenced" in text
    assert offline["To"] == "ops@example.org, oncall@example.org"
    (hook,) = wait_for(lambda: [r for r in receiver.requests if r[1] == "/hook/etcd"], 30,
                       "the 'etcd member n2 unhealthy' webhook call")
    sent = json.loads(hook[3])
    assert sent["title"] == "etcd member n2 unhealthy" and sent["severity"] == "error"
    assert "not answering at " in sent["message"] and "keeps quorum" in sent["message"]
    # n2 comes back with its wall clock 5 s ahead (libfaketime: binomed's time.time();
    # monotonic clocks untouched, as leases and deadlines use them): the master sees it
    # in n2's HA heartbeats and says so, once
    cluster["n2"].start(env=_clock_ahead(5))
    wait_for(lambda: inbox.with_subject("Node n2 back online"), 60,
             "the 'Node n2 back online' mail")
    skew = wait_for(lambda: [t for t in inbox.titles() if t.startswith("Clock skew on n2: ")],
                    60, f"the clock-skew mail; got {inbox.subjects()}")
    assert len(skew) == 1, inbox.subjects()
    seconds = float(skew[0].split(": ")[1].removesuffix(" s"))
    assert 4.0 <= seconds <= 5.1, skew     # the skew less the shortest heartbeat delay
    (_, text), = inbox.events(skew[0])
    assert "from the cluster's (n1's; threshold 1 s)" in text and "chronyc" in text, text
    # the other mails the cluster raised meanwhile: none for this failure twice
    assert len(inbox.with_subject("Node n2 offline")) == 1, inbox.subjects()
    assert len(inbox.with_subject("Node n2 back online")) == 1, inbox.subjects()

    # the delivery history survives a restart of the daemon that delivered the mail
    api: Api = env["api"]
    rows = wait_for(lambda: [e for e in api.ok("GET", f"{N}/history", target="mail")
                             if e["title"] == "Node n2 offline"
                             and e["status"] == "delivered"], 30,
                    "the 'Node n2 offline' delivery in the history")
    (before,) = rows
    sender = cluster[before["node"]]
    # ... which comes back with a certificate that expires in 3 days (issued by the
    # cluster's CA like its own, for the same key and names): it says so at start
    api.ok("POST", f"{N}/matchers", name="cert-events", target=["mail"],
           **{"match-field": ["exact:type=certificate"]})
    not_after = _short_lived_cert(cluster, sender.name, days=3)
    sender.stop()
    sender.start()
    (_, text), = wait_for(lambda: inbox.events("Certificate node.pem (API) expires in 3 "
                                               "days"), 30,
                          f"the certificate mail; got {inbox.subjects()}")
    assert f"The certificate node.pem (API) on {sender.name} expires on {not_after}" in text
    assert "by joining the node again" in text and "binome acme cert renew" in text, text
    after = wait_for(lambda: [e for e in api.ok("GET", f"/nodes/{sender.name}/notifications/"
                                                "history", target="mail", limit=1000)
                              if e["id"] == before["id"]], 60,
                     f"{sender.name}'s history after its restart")
    assert after == [before], (after, before)
