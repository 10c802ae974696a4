"""Peer authentication with a shared secret: DRBD's `cram-hmac-alg` challenge-response (pure).

Both sides send a random challenge; each answers HMAC-SHA256(secret, the
peer's challenge) and checks the peer's answer against its own challenge. A
peer echoing our own challenge back is refused (DRBD does the same: it
defeats reflecting our challenge to us on a second connection). Comparison is
constant-time. A wrong secret never gets past this step, so nothing of the
volume is exchanged with an unauthenticated peer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CHALLENGE_BYTES = 32


class AuthError(Exception):
    pass


def challenge() -> bytes:
    return secrets.token_bytes(CHALLENGE_BYTES)


def response(secret: str | bytes, peer_challenge: bytes, my_challenge: bytes) -> bytes:
    """Our answer to the peer's challenge."""
    if len(peer_challenge) != CHALLENGE_BYTES:
        raise AuthError("peer sent a challenge of the wrong size")
    if hmac.compare_digest(peer_challenge, my_challenge):
        raise AuthError("peer sent our own challenge back")
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, peer_challenge, hashlib.sha256).digest()


def verify(secret: str | bytes, my_challenge: bytes, peer_response: bytes) -> None:
    key = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, my_challenge, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, peer_response):
        raise AuthError("Authentication of peer failed")
