"""Secret material: API token values, their argon2 hashes, recovery keys and their salted
HMACs. Nothing here logs or returns a stored secret; callers show a new secret once.

Token values are random UUIDs as PVE makes them (clients such as bpg check the shape).
PVE keeps token values in clear in priv/token.cfg; binome keeps only an argon2 hash.
Recovery keys are 64 random bits each, so a salted HMAC-SHA256 (PVE's choice) suffices:
no slow hash is needed against guessing at that entropy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
import uuid

import argon2

RECOVERY_KEY_COUNT = 10

_hasher = argon2.PasswordHasher()


def new_token_secret() -> str:
    return str(uuid.uuid4())


def hash_secret(secret: str) -> str:
    """argon2id hash of a token value or password."""
    return _hasher.hash(secret)


def verify_secret(stored_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(stored_hash, secret)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def new_recovery_keys(count: int = RECOVERY_KEY_COUNT) -> list[str]:
    """Keys shaped as PVE's: ``xxxx-xxxx-xxxx-xxxx`` lowercase hex."""
    out = []
    for _ in range(count):
        raw = _random.token_hex(8)
        out.append("-".join(raw[i:i + 4] for i in range(0, 16, 4)))
    return out


def new_salt() -> str:
    return _random.token_hex(16)


def hash_recovery_key(salt: str, key: str) -> str:
    normalized = key.strip().lower()
    return hmac.new(bytes.fromhex(salt), normalized.encode(), hashlib.sha256).hexdigest()


def recovery_key_matches(salt: str, stored: str, key: str) -> bool:
    return hmac.compare_digest(hash_recovery_key(salt, key), stored)
