"""PVE tickets and CSRF tokens: the signed strings any cluster node verifies.

Ticket: ``PVE:<userid>:<8-hex time>::<base64 HMAC-SHA256>``, valid two hours,
signed with the cluster's auth key (kept in etcd, so any node verifies a ticket
issued by another). CSRF token: ``<8-hex time>:<base64 HMAC>`` bound to the user.

SPICE proxy ticket (PVE's ``assemble_spice_ticket``): ``pvespiceproxy:<8-hex
time>:<vmid>:<node>:<port>::<40-hex signature>``, what remote-viewer sends as the
``CONNECT`` host to a node's spice proxy (port 3128), valid -20..40 s as PVE. The
signature is HMAC-SHA1 (PVE's 40 hex characters) with a key derived from the auth
key (``spice_key``: never the auth key itself, as PVE uses its CSRF secret). The
one-time SPICE password that goes with it is random (40 hex, SPICE takes 60 at most).

A neutral leaf: the API verifies what clients send, and node-to-node callers (the
guest's migration calls) mint their own, without either importing the other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
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


SPICE_TICKET_MIN_AGE = -20     # PVE's verify_spice_connect_url: -20 < age < 40
SPICE_TICKET_MAX_AGE = 40
_SPICE_CONNECT_RE = re.compile(
    r"^pvespiceproxy:([a-z0-9]{8}):(\d+):(\S+):(\d+)::([a-z0-9]{40}):(\d+)$")


def spice_key(authkey: bytes) -> bytes:
    """The key SPICE proxy tickets are signed with, derived from the auth key."""
    return hmac.new(authkey, b"binome spice proxy ticket", hashlib.sha256).digest()


def _spice_sign(key: bytes, plain: str) -> str:
    return hmac.new(key, plain.encode(), hashlib.sha1).hexdigest()


def make_spice_ticket(key: bytes, vmid: int, node: str, port: int,
                      now: float | None = None) -> tuple[str, str]:
    """(one-time SPICE password, proxy ticket) for the VM's SPICE ``port`` on ``node``;
    ``key`` is :func:`spice_key`'s. The node is lower case (remote-viewer needs it)."""
    stamp = f"{int(now if now is not None else time.time()):08x}"
    plain = f"pvespiceproxy:{stamp}:{vmid}:{node.lower()}:{port}"
    return secrets.token_hex(20), f"{plain}::{_spice_sign(key, plain)}"


def verify_spice_connect(key: bytes, connect: str, now: float | None = None
                         ) -> tuple[int, str, int] | None:
    """(vmid, node, port) of a valid CONNECT target ``<proxy ticket>:<port>``, else None
    (malformed, forged, another port than signed, out of its -20..40 s)."""
    m = _SPICE_CONNECT_RE.match(connect)
    if m is None:
        return None
    stamp, vmid, node, signed_port, signature, port = m.groups()
    age = (now if now is not None else time.time()) - int(stamp, 16)
    if not SPICE_TICKET_MIN_AGE < age < SPICE_TICKET_MAX_AGE or signed_port != port:
        return None
    plain = f"pvespiceproxy:{stamp}:{vmid}:{node}:{port}"
    if not hmac.compare_digest(_spice_sign(key, plain), signature):
        return None
    return int(vmid), node, int(port)
