"""Authentication: PVE tickets and CSRF tokens, argon2 password hashes, PAM.

Ticket: ``PVE:<userid>:<8-hex time>::<base64 HMAC-SHA256>``, valid two hours,
signed with the cluster's auth key (kept in etcd, so any node verifies a ticket
issued by another). CSRF token: ``<8-hex time>:<base64 HMAC>`` bound to the user.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from pathlib import Path

import argon2

from binome.api.errors import AuthError

TICKET_LIFETIME = 7200
CLOCK_SKEW = 300
PAM_SERVICE_FILE = Path("/etc/pam.d/binome")

_hasher = argon2.PasswordHasher()


def _sign(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode(), hashlib.sha256).digest()).decode()


def make_ticket(key: bytes, userid: str, now: float | None = None) -> str:
    plain = f"PVE:{userid}:{int(now if now is not None else time.time()):08X}"
    return f"{plain}::{_sign(key, plain)}"


def verify_ticket(key: bytes, ticket: str, now: float | None = None) -> str:
    """Return the user id of a valid ticket; raise AuthError otherwise."""
    plain, sep, signature = ticket.partition("::")
    parts = plain.split(":")
    if not sep or len(parts) != 3 or parts[0] != "PVE":
        raise AuthError("invalid ticket")
    if not hmac.compare_digest(_sign(key, plain), signature):
        raise AuthError("invalid ticket")
    try:
        issued = int(parts[2], 16)
    except ValueError:
        raise AuthError("invalid ticket") from None
    age = (now if now is not None else time.time()) - issued
    if age < -CLOCK_SKEW or age > TICKET_LIFETIME:
        raise AuthError("ticket expired")
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


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def _pam_check(username: str, password: str) -> bool:
    import pam  # python-pam; imported lazily: only the pam realm needs libpam

    service = "binome" if PAM_SERVICE_FILE.exists() else "login"
    return bool(pam.pam().authenticate(username, password, service=service))


async def pam_authenticate(username: str, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(None, _pam_check, username, password)


def split_userid(userid: str) -> tuple[str, str]:
    name, _, realm = userid.rpartition("@")
    return name, realm
