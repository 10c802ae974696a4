"""API token authentication: the ``Authorization: PVEAPIToken=user@realm!name=secret``
header and the checks PVE makes on each request (owner exists, enabled, not expired;
token exists, not expired; secret right).

Pure apart from argon2's CPU work; `TokenVerifier` remembers recent successful
verifications (a SHA-256 of the presented value, never the value) so that a client
making many calls does not pay an argon2 hash per call.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from urllib.parse import unquote

from binome.access.model import AccessConfig, ValidationError, split_tokenid
from binome.access.secrets import verify_secret

_HEADER_RE = re.compile(r"^PVEAPIToken(?:=|\s+)(?P<value>\S.*)$")


class TokenAuthError(Exception):
    """Token refused. The message is for the log; the client sees only "authentication
    failure" so it cannot tell which part was wrong."""


def parse_token_header(header: str) -> tuple[str, str] | None:
    """(full token id, secret) from an Authorization value, or None if it is no
    PVEAPIToken header. Raises TokenAuthError if it is one but malformed."""
    m = _HEADER_RE.match(header.strip())
    if not m:
        return None
    value = unquote(m["value"].strip())
    tokenid, sep, secret = value.rpartition("=")   # PVE splits at the last '='
    if not sep or not secret:
        raise TokenAuthError("malformed API token header")
    try:
        split_tokenid(tokenid)
    except ValidationError:
        raise TokenAuthError("malformed API token id") from None
    return tokenid, secret


class TokenVerifier:
    """Verify a presented token against one access snapshot."""

    def __init__(self, cache_size: int = 256) -> None:
        self._ok: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._cache_size = cache_size

    def authenticate(self, config: AccessConfig, tokenid: str, secret: str,
                     now: float) -> str:
        """Return the token id if it may act now; raise TokenAuthError otherwise."""
        userid, _name = split_tokenid(tokenid)
        user = config.users.get(userid)
        if user is None and userid != "root@pam":
            raise TokenAuthError(f"user '{userid}' does not exist")
        if user is not None and not user.active(now):
            raise TokenAuthError(f"user '{userid}' is disabled or expired")
        token = config.tokens.get(tokenid)
        if token is None:
            raise TokenAuthError(f"no such token '{tokenid}'")
        if not token.active(now):
            raise TokenAuthError(f"token '{tokenid}' expired")
        digest = hashlib.sha256(secret.encode()).hexdigest()
        key = (tokenid, token.secret_hash, digest)
        if key in self._ok:
            self._ok.move_to_end(key)
            return tokenid
        if not verify_secret(token.secret_hash, secret):
            raise TokenAuthError(f"invalid secret for token '{tokenid}'")
        self._ok[key] = None
        while len(self._ok) > self._cache_size:
            self._ok.popitem(last=False)
        return tokenid
