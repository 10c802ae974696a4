"""Delivery to real servers on loopback: aiosmtpd (plain, STARTTLS+AUTH, TLS) and a webhook."""

from __future__ import annotations

import asyncio
import base64
import datetime
import socket
import ssl
from email import message_from_bytes

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from binome.notify.config import NotificationConfig, validate_entry
from binome.notify.dispatch import Dispatcher, combine
from binome.notify.events import make_event
from binome.notify.senders import DeliveryError, Sender


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.mails: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=auth_data.login == b"alerts" and auth_data.password == b"s3cret")


@pytest.fixture
def tls_files(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


def _smtp_target(port: int, mode: str, **extra):
    opts = {"server": "localhost", "port": port, "mode": mode, "from-address": "binome@lab",
            "mailto": ["admin@lab"], "author": "binome n1", **extra}
    return validate_entry("smtp", "mail", opts)


def _config(*targets, matcher_targets=None):
    cfg = NotificationConfig()
    for t in targets:
        cfg.add(t)
    cfg.add(validate_entry("matcher", "all-out", {"target": matcher_targets or
                                                  [t.name for t in targets]}))
    return cfg


async def test_smtp_plain_content():
    inbox, port = Inbox(), _free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    sender = Sender()
    try:
        ev = make_event("fence-failed", "n1", node="n2", error="BMC timeout")
        await sender.send(_smtp_target(port, "insecure"), combine([ev]))
    finally:
        ctl.stop()
    (mail,) = inbox.mails
    assert mail["Subject"] == "Fencing node n2 FAILED"
    assert mail["From"] == "binome n1 <binome@lab>" and mail["To"] == "admin@lab"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "binome fence n2 --confirm-off" in mail.get_payload()


async def test_smtp_starttls_auth_and_implicit_tls(tls_files):
    server_ctx, client_ctx = tls_files
    inbox, port = Inbox(), _free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=server_ctx,
                     require_starttls=True, authenticator=_authenticator,
                     auth_require_tls=True, server_hostname="localhost")
    ctl.start()
    sender = Sender(smtp_tls_context=client_ctx)
    note = make_event("node-offline", "n1", node="n2")
    try:
        await sender.send(_smtp_target(port, "starttls", username="alerts", password="s3cret"),
                          combine([note]))
        with pytest.raises(DeliveryError) as err:
            await sender.send(_smtp_target(port, "starttls", username="alerts",
                                           password="wrong-pw"), combine([note]))
        assert "wrong-pw" not in str(err.value)
    finally:
        ctl.stop()
    assert [m["Subject"] for m in inbox.mails] == ["Node n2 offline"]

    port2 = _free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port2, ssl_context=server_ctx,
                     server_hostname="localhost")
    ctl.start()
    try:
        await sender.send(_smtp_target(port2, "tls"), combine([note]))
    finally:
        ctl.stop()
    assert len(inbox.mails) == 2


def _webhook(port: int):
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return validate_entry("webhook", "hook", {
        "url": f"http://127.0.0.1:{port}/hook/{{{{ url-encode fields.type }}}}",
        "method": "post",
        "header": [f"name=X-Token,value={b64('{{ secrets.token }}')}"],
        "body": b64('{"title":"{{ escape title }}","sev":"{{ severity }}",'
                    '"host":"{{ fields.hostname }}"}'),
        "secret": [f"name=token,value={b64('tok-123')}"],
    })


async def test_webhook_storm_grouped_and_retried_after_server_down():
    received: list = []
    port = _free_port()
    hook = _webhook(port)
    sender = Sender()
    dispatcher = Dispatcher(lambda: _config(hook), sender.send, group_window=0.3,
                            first_retry=0.2)
    dispatcher.start()
    try:
        # A node failure: fence + 20 recoveries within the window, server down at first.
        dispatcher.emit(make_event("fence-requested", "n1", node="n2", reason="offline"))
        for vmid in range(100, 120):
            dispatcher.emit(make_event("ha-recovered", "n1", sid=f"vm:{vmid}", from_node="n2",
                                       node="n1"))
        await asyncio.sleep(0.5)
        assert dispatcher.status["hook"].last_error is not None
        assert dispatcher.status["hook"].pending == 2
        runner, _ = await _start_on(port, received)
        try:
            await asyncio.wait_for(dispatcher.drain(), 10)
        finally:
            await runner.cleanup()
    finally:
        await dispatcher.stop()
        await sender.close()
    assert sorted(path for path, _, _ in received) == ["/hook/fencing", "/hook/ha"]
    status = dispatcher.status["hook"]
    assert status.delivered == 2 and status.pending == 0 and status.last_success
    for _path, headers, body in received:
        assert headers["X-Token"] == "tok-123"
        assert '"host":"n1"' in body
    ha_body = next(b for p, _, b in received if p == "/hook/ha")
    assert "+19 related events" in ha_body
    assert "tok-123" not in (status.last_error or "")


async def _start_on(port: int, received: list):
    async def hook(request: web.Request) -> web.Response:
        received.append((request.path, dict(request.headers), await request.text()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_emit_never_blocks_and_counts_drops():
    async def slow_send(entry, note):
        await asyncio.sleep(10)

    dispatcher = Dispatcher(lambda: NotificationConfig(), slow_send, queue_size=5)
    for _ in range(8):
        dispatcher.emit(make_event("node-online", "n1", node="n2"))
    assert dispatcher.dropped == 3


async def test_test_endpoint_reports_errors():
    sender = Sender()
    dispatcher = Dispatcher(lambda: _config(_webhook(_free_port())), sender.send)
    try:
        with pytest.raises(DeliveryError, match="does not exist"):
            await dispatcher.test_target("nope", "n1")
        with pytest.raises(DeliveryError, match="hook"):
            await dispatcher.test_target("hook", "n1")
    finally:
        await sender.close()
