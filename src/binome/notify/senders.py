"""Delivery of one notification to one target: smtp (aiosmtplib), sendmail, gotify, webhook.

I/O. Each sender raises `DeliveryError` with a message that never contains a secret value;
the dispatcher retries. Texts come from the rendered event (`Notification`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiohttp
import aiosmtplib

from binome.notify.config import Entry, parse_property_string, webhook_secrets
from binome.notify.template import TemplateError, render

GOTIFY_PRIORITY = {"info": 1, "notice": 3, "warning": 5, "error": 9, "unknown": 3}
SENDMAIL = "/usr/sbin/sendmail"


@dataclass(frozen=True)
class Notification:
    """What a target sends: rendered title/body, severity, metadata fields, time."""

    title: str
    message: str
    severity: str
    timestamp: float
    fields: dict[str, str] = field(default_factory=dict)


class DeliveryError(Exception):
    pass


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _recipients(entry: Entry, resolve_user: Callable[[str], str | None]) -> list[str]:
    out = [m for m in entry.options.get("mailto", [])]
    for user in entry.options.get("mailto-user", []):
        address = resolve_user(user)
        if address:
            out.append(address)
    if not out:
        raise DeliveryError(f"target '{entry.name}': no recipient has an email address")
    return out


def build_mail(entry: Entry, note: Notification, recipients: list[str],
               default_from: str = "root") -> EmailMessage:
    mail = EmailMessage()
    author = entry.options.get("author", "binome")
    mail["From"] = f"{author} <{entry.options.get('from-address', default_from)}>"
    mail["To"] = ", ".join(recipients)
    mail["Subject"] = note.title
    mail["Date"] = formatdate(note.timestamp, localtime=True)
    mail["Message-ID"] = make_msgid(domain=note.fields.get("hostname") or None)
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(note.message)
    return mail


class Sender:
    """Sends to any target type; holds the HTTP session and the SMTP TLS context."""

    def __init__(self, *, resolve_user: Callable[[str], str | None] = lambda _u: None,
                 smtp_tls_context: ssl.SSLContext | None = None,
                 http_timeout: float = 10.0, smtp_timeout: float = 5.0,
                 sendmail_path: str = SENDMAIL) -> None:
        self.resolve_user = resolve_user
        self.smtp_tls_context = smtp_tls_context
        self.http_timeout = http_timeout
        self.smtp_timeout = smtp_timeout
        self.sendmail_path = sendmail_path
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.http_timeout))
        return self._session

    async def send(self, entry: Entry, note: Notification) -> None:
        secrets = self._secret_values(entry)
        try:
            await getattr(self, "_send_" + entry.type)(entry, note)
        except DeliveryError as exc:
            raise DeliveryError(_mask(str(exc), secrets)) from None
        except (OSError, aiosmtplib.SMTPException, aiohttp.ClientError, TimeoutError,
                TemplateError) as exc:
            text = _mask(f"{type(exc).__name__}: {exc}", secrets)
            raise DeliveryError(f"target '{entry.name}': {text}") from None

    @staticmethod
    def _secret_values(entry: Entry) -> list[str]:
        values = [str(v) for k, v in entry.secrets.items() if k != "secret"]
        try:
            values += list(webhook_secrets(entry).values())
        except (ValueError, KeyError):
            pass
        return values

    async def _send_smtp(self, entry: Entry, note: Notification) -> None:
        opts = entry.options
        mode = opts.get("mode", "tls")
        port = int(opts.get("port") or {"insecure": 25, "starttls": 587, "tls": 465}[mode])
        mail = build_mail(entry, note, _recipients(entry, self.resolve_user))
        await aiosmtplib.send(
            mail, hostname=opts["server"], port=port, timeout=self.smtp_timeout,
            use_tls=mode == "tls", start_tls=mode == "starttls",
            tls_context=self.smtp_tls_context if mode != "insecure" else None,
            username=opts.get("username"), password=entry.secrets.get("password"))

    async def _send_sendmail(self, entry: Entry, note: Notification) -> None:
        if not os.access(self.sendmail_path, os.X_OK):
            raise DeliveryError(f"target '{entry.name}': {self.sendmail_path} not found")
        recipients = _recipients(entry, self.resolve_user)
        mail = build_mail(entry, note, recipients)
        proc = await asyncio.create_subprocess_exec(
            self.sendmail_path, "-i", "-f", entry.options.get("from-address", "root"), "--",
            *recipients, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(bytes(mail)), self.http_timeout)
        if proc.returncode != 0:
            raise DeliveryError(f"target '{entry.name}': sendmail exited {proc.returncode}: "
                                f"{err.decode(errors='replace').strip()[:200]}")

    async def _send_gotify(self, entry: Entry, note: Notification) -> None:
        token = str(entry.secrets["token"])
        body = {"title": note.title, "message": f"```\n{note.message}\n```",
                "priority": GOTIFY_PRIORITY.get(note.severity, 3),
                "extras": {"client::display": {"contentType": "text/markdown"}}}
        url = str(entry.options["server"]).rstrip("/") + "/message"
        headers = {"Authorization": f"Bearer {token}", "X-Gotify-Key": token}
        async with self._http().post(url, json=body, headers=headers) as resp:
            if resp.status >= 300:
                raise DeliveryError(f"target '{entry.name}': gotify answered {resp.status}")

    async def _send_webhook(self, entry: Entry, note: Notification) -> None:
        context = {"title": note.title, "message": note.message, "severity": note.severity,
                   "timestamp": int(note.timestamp), "fields": note.fields,
                   "secrets": webhook_secrets(entry)}
        url = render(str(entry.options["url"]), context)
        headers = {}
        for item in entry.options.get("header", []):
            prop = parse_property_string(item)
            value = base64.b64decode(prop.get("value", "")).decode()
            headers[prop["name"]] = render(value, context)
        body = ""
        if entry.options.get("body"):
            body = render(base64.b64decode(entry.options["body"]).decode(), context)
        method = entry.options.get("method", "post").upper()
        data = body.encode() if body or method != "GET" else None
        async with self._http().request(method, url, data=data, headers=headers) as resp:
            if resp.status >= 300:
                raise DeliveryError(f"target '{entry.name}': webhook answered {resp.status}")

