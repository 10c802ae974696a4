"""A real SMTP server for the notification tests (aiosmtpd on loopback) and the helpers to
point a cluster's notifications at it over the HTTPS API."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd's handler: every mail received, parsed, in order."""

    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.content))
        self.last_arrival = time.monotonic()
        return "250 OK"

    last_arrival = 0.0

    def settle(self, quiet: float = 7.0, timeout: float = 60.0) -> None:
        """Wait until no mail came for `quiet` seconds (longer than the dispatcher's 5 s
        group window), then forget what came: an earlier test's events still waiting in a
        group window reach a matcher created meanwhile, and must not count in the next
        test."""
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        while time.monotonic() - max(self.last_arrival, start) < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"mail kept coming for {timeout} s: {self.subjects()}")
            time.sleep(0.2)
        self.mails.clear()

    @staticmethod
    def subject(mail: Message) -> str:
        """The subject as sent: a long one is folded over lines on the wire (RFC 5322,
        "I/O error on\\r\\n /long/path"), which the parsed header keeps."""
        return _FOLD.sub("", str(mail["Subject"]))

    def subjects(self) -> list[str]:
        return [self.subject(m) for m in self.mails]

    def with_subject(self, subject: str) -> list[Message]:
        return [m for m in self.mails if self.subject(m) == subject]

    @staticmethod
    def body(mail: Message) -> str:
        raw = mail.get_payload(decode=True)
        text = raw.decode() if isinstance(raw, bytes) else str(mail.get_payload())
        return text.replace("\r\n", "\n")     # SMTP's line ends

    def events(self, title: str) -> list[tuple[Message, str]]:
        """Each event with this title, with its text: a mail of its own (the subject), or
        one part of a grouped mail (its body lists each event's time and title)."""
        found = []
        for mail in self.mails:
            body = self.body(mail)
            if self.subject(mail) == title:
                found.append((mail, body))
                continue
            for part in body.split("\n\n"):
                head, _, text = part.partition("\n")
                if head.endswith("  " + title):
                    found.append((mail, text))
        return found


    def titles(self) -> list[str]:
        """Every event received, by title, in order: a mail's subject, or each part of a
        grouped mail ("<title> (+N related events)", whose body has one part per event)."""
        out = []
        for mail in self.mails:
            subject = self.subject(mail)
            if not _GROUPED.search(subject):
                out.append(subject)
                continue
            for part in self.body(mail).split("\n\n"):
                head = part.partition("\n")[0]
                stamp = _STAMP.match(head)
                if stamp:
                    out.append(head[stamp.end():])
        return out

    def senders(self) -> set[str]:
        """The nodes that sent the mails (the Message-ID's domain is the hostname)."""
        return {str(m["Message-ID"]).rstrip(">").rpartition("@")[2] for m in self.mails}


_FOLD = re.compile(r"\r?\n(?=[ \t])")
_GROUPED = re.compile(r" \(\+\d+ related events\)$")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ")


@contextmanager
def smtp_server(hostname: str = "127.0.0.1", **kwargs: Any) -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on `hostname` (loopback, or an address the lab's nodes reach)."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname=hostname, port=port, **kwargs)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
