"""Token values, hashes, the PVEAPIToken header and per-request token checks."""

import re

import pytest

from binome.access.model import AccessConfig, Token, User
from binome.access.secrets import (
    hash_recovery_key,
    hash_secret,
    new_recovery_keys,
    new_salt,
    new_token_secret,
    recovery_key_matches,
    verify_secret,
)
from binome.access.tokens import TokenAuthError, TokenVerifier, parse_token_header

BPG_HEADER = re.compile(r"^\S+@\S+!\S+=([a-zA-Z0-9-]+)$")


def test_token_secret_is_a_uuid_and_hash_verifies():
    secret = new_token_secret()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", secret)
    assert BPG_HEADER.match(f"alice@pve!tf={secret}")
    stored = hash_secret(secret)
    assert secret not in stored
    assert verify_secret(stored, secret)
    assert not verify_secret(stored, new_token_secret())
    assert not verify_secret("not-a-hash", secret)


def test_recovery_keys():
    keys = new_recovery_keys()
    assert len(keys) == 10 and len(set(keys)) == 10
    assert all(re.fullmatch(r"[0-9a-f]{4}(-[0-9a-f]{4}){3}", k) for k in keys)
    salt = new_salt()
    stored = hash_recovery_key(salt, keys[0])
    assert recovery_key_matches(salt, stored, keys[0].upper() + " ")
    assert not recovery_key_matches(salt, stored, keys[1])


@pytest.mark.parametrize("header, expected", [
    ("PVEAPIToken=alice@pve!tf=abc-123", ("alice@pve!tf", "abc-123")),
    ("PVEAPIToken alice@pve!tf=abc", ("alice@pve!tf", "abc")),
    ("PVEAPIToken=alice%40pve%21tf=abc", ("alice@pve!tf", "abc")),
    ("PVEAPIToken=a=b@pve!tf=abc", ("a=b@pve!tf", "abc")),     # split at the last '='
    ("PVEAuthCookie=PVE:x", None),
    ("Bearer x", None),
])
def test_parse_header(header, expected):
    assert parse_token_header(header) == expected


@pytest.mark.parametrize("header", ["PVEAPIToken=alice@pve!tf", "PVEAPIToken=alice@pve!tf=",
                                    "PVEAPIToken=alice!tf=x", "PVEAPIToken=alice@pve=x"])
def test_parse_header_malformed(header):
    with pytest.raises(TokenAuthError):
        parse_token_header(header)


def _config(secret, user=None, token_expire=0):
    user = user or User("alice@pve")
    return AccessConfig(users={user.userid: user},
                        tokens={"alice@pve!tf": Token("alice@pve!tf", hash_secret(secret),
                                                      expire=token_expire)})


def test_authenticate_token():
    secret = new_token_secret()
    verifier = TokenVerifier()
    cfg = _config(secret)
    assert verifier.authenticate(cfg, "alice@pve!tf", secret, 1000) == "alice@pve!tf"
    assert verifier.authenticate(cfg, "alice@pve!tf", secret, 1000) == "alice@pve!tf"
    with pytest.raises(TokenAuthError, match="invalid secret"):
        verifier.authenticate(cfg, "alice@pve!tf", "wrong", 1000)
    with pytest.raises(TokenAuthError, match="no such token"):
        verifier.authenticate(cfg, "alice@pve!other", secret, 1000)
    with pytest.raises(TokenAuthError, match="does not exist"):
        verifier.authenticate(cfg, "bob@pve!tf", secret, 1000)


def test_disabled_or_expired_owner_or_token_refused_even_when_cached():
    secret = new_token_secret()
    verifier = TokenVerifier()
    verifier.authenticate(_config(secret), "alice@pve!tf", secret, 1000)
    for cfg in (_config(secret, User("alice@pve", enable=False)),
                _config(secret, User("alice@pve", expire=1000)),
                _config(secret, token_expire=1000)):
        with pytest.raises(TokenAuthError):
            verifier.authenticate(cfg, "alice@pve!tf", secret, 1000)


def test_regenerated_token_invalidates_cached_secret():
    old, new = new_token_secret(), new_token_secret()
    verifier = TokenVerifier()
    verifier.authenticate(_config(old), "alice@pve!tf", old, 1)
    with pytest.raises(TokenAuthError):
        verifier.authenticate(_config(new), "alice@pve!tf", old, 1)
