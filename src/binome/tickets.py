"""PVE tickets and CSRF tokens: the signed strings any cluster node verifies.

Ticket: ``PVE:<userid>:<8-hex time>::<base64 HMAC-SHA256>``, valid two hours,
signed with the cluster's auth key (kept in etcd, so any node verifies a ticket
issued by another). CSRF token: ``<8-hex time>:<base64 HMAC>`` bound to the user.

A neutral leaf: the API verifies what clients send, and node-to-node callers (the
guest's migration calls) mint their own, without either importing the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from binome.errors import BinomeError

TICKET_LIFETIME = 7200
CLOCK_SKEW = 300


class InvalidTicket(BinomeError):
    """A ticket that is malformed, forged or out of its validity window."""


def _sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


def make_ticket(key: bytes, userid: str, now: float | None = None) -> str:
    plain = f"PVE:{userid}:{int(now if now is not None else time.time()):08X}"
    return f"{plain}::{_sign(key, plain)}"


def ticket_user(key: bytes, ticket: str, now: float | None = None) -> str:
    """Return the user id of a valid ticket; raise InvalidTicket otherwise."""
    plain, sep, signature = ticket.partition("::")
    parts = plain.split(":")
    if not sep or len(parts) != 3 or parts[0] != "PVE":
        raise InvalidTicket("invalid ticket")
    if not hmac.compare_digest(_sign(key, plain), signature):
        raise InvalidTicket("invalid ticket")
    try:
        issued = int(parts[2], 16)
    except ValueError:
        raise InvalidTicket("invalid ticket") from None
    age = (now if now is not None else time.time()) - issued
    if age < -CLOCK_SKEW or age > TICKET_LIFETIME:
        raise InvalidTicket("ticket expired")
    return parts[1]


def make_csrf_token(key: bytes, userid: str, now: float | None = None) -> str:
    stamp = f"{int(now if now is not None else time.time()):08X}"
    return f"{stamp}:{_sign(key, f'csrf:{stamp}:{userid}')}"


def verify_csrf_token(key: bytes, token: str, userid: str, now: float | None = None) -> bool:
    stamp, _, signature = token.partition(":")
    try:
        issued = int(stamp, 16)
    except ValueError:
        return False
    age = (now if now is not None else time.time()) - issued
    if age < -CLOCK_SKEW or age > TICKET_LIFETIME:
        return False
    return hmac.compare_digest(_sign(key, f"csrf:{stamp}:{userid}"), signature)
