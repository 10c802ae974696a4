"""Tickets, CSRF tokens and argon2 password hashes (time passed explicitly, never slept)."""

import base64
import re

import argon2
import pytest

from binome.access import secrets
from binome.api import auth
from binome.api.errors import AuthError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
T0 = 1_700_000_000


def test_ticket_format():
    ticket = auth.make_ticket(KEY, "root@pam", now=T0)
    m = re.fullmatch(r"PVE:root@pam:([0-9A-F]{8})::([A-Za-z0-9+/]+=*)", ticket)
    assert m, ticket
    assert int(m[1], 16) == T0
    assert len(base64.b64decode(m[2])) == 32          # HMAC-SHA256


def test_ticket_verify_returns_user():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0)
    assert auth.verify_ticket(KEY, ticket, now=T0) == "alice@pve"
    assert auth.verify_ticket(KEY, ticket, now=T0 + 7200) == "alice@pve"


def test_ticket_expired():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0)
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, ticket, now=T0 + 7201)


def test_ticket_from_the_future():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0 + 301)
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, ticket, now=T0)
    # within the allowed clock skew it is accepted
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0 + 299)
    assert auth.verify_ticket(KEY, ticket, now=T0) == "alice@pve"


def test_ticket_different_key():
    ticket = auth.make_ticket(KEY, "root@pam", now=T0)
    with pytest.raises(AuthError):
        auth.verify_ticket(OTHER_KEY, ticket, now=T0)


def test_ticket_tampered_user():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0)
    forged = ticket.replace("alice@pve", "root@pam")
    assert forged != ticket
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, forged, now=T0)


def test_ticket_tampered_time():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0)
    forged = ticket.replace(f"{T0:08X}", f"{T0 + 3600:08X}")
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, forged, now=T0 + 7500)


def test_ticket_tampered_signature():
    ticket = auth.make_ticket(KEY, "alice@pve", now=T0)
    plain, _, sig = ticket.partition("::")
    raw = bytearray(base64.b64decode(sig))
    raw[0] ^= 1
    forged = plain + "::" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, forged, now=T0)


@pytest.mark.parametrize("garbage", [
    "", "PVE", "PVE:root@pam:00000000", "PVE:root@pam::abc", "XYZ:root@pam:00000000::abc",
    "PVE:a:b:c:00000000::abc",
])
def test_ticket_garbage(garbage):
    with pytest.raises(AuthError):
        auth.verify_ticket(KEY, garbage, now=T0)


def test_auth_error_is_401():
    with pytest.raises(AuthError) as info:
        auth.verify_ticket(KEY, "junk", now=T0)
    assert info.value.status == 401


def test_csrf_token_valid():
    token = auth.make_csrf_token(KEY, "alice@pve", now=T0)
    assert re.fullmatch(r"[0-9A-F]{8}:[A-Za-z0-9+/]+=*", token), token
    assert auth.verify_csrf_token(KEY, token, "alice@pve", now=T0)
    assert auth.verify_csrf_token(KEY, token, "alice@pve", now=T0 + 7200)


def test_csrf_token_bound_to_user():
    token = auth.make_csrf_token(KEY, "alice@pve", now=T0)
    assert not auth.verify_csrf_token(KEY, token, "root@pam", now=T0)


def test_csrf_token_bound_to_key():
    token = auth.make_csrf_token(KEY, "alice@pve", now=T0)
    assert not auth.verify_csrf_token(OTHER_KEY, token, "alice@pve", now=T0)


def test_csrf_token_bound_to_time():
    token = auth.make_csrf_token(KEY, "alice@pve", now=T0)
    assert not auth.verify_csrf_token(KEY, token, "alice@pve", now=T0 + 7201)
    assert not auth.verify_csrf_token(KEY, token, "alice@pve", now=T0 - 301)
    # moving the stamp forward breaks the signature
    sig = token.partition(":")[2]
    moved = f"{T0 + 3600:08X}:{sig}"
    assert not auth.verify_csrf_token(KEY, moved, "alice@pve", now=T0 + 3600)


@pytest.mark.parametrize("garbage", ["", "zz:abc", ":", "00000000"])
def test_csrf_token_garbage(garbage):
    assert not auth.verify_csrf_token(KEY, garbage, "alice@pve", now=T0)


@pytest.fixture
def stored_hash(monkeypatch):
    # cheap argon2 parameters keep the test in milliseconds; verification reads them from the hash
    monkeypatch.setattr(secrets, "_hasher",
                        argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    return secrets.hash_secret("correct horse")


def test_password_hash_verify(stored_hash):
    assert stored_hash.startswith("$argon2id$")
    assert "correct horse" not in stored_hash
    assert secrets.verify_secret(stored_hash, "correct horse") is True


def test_password_wrong(stored_hash):
    assert secrets.verify_secret(stored_hash, "wrong horse") is False
    assert secrets.verify_secret(stored_hash, "") is False


def test_password_hash_is_salted(stored_hash):
    assert secrets.hash_secret("correct horse") != stored_hash


@pytest.mark.parametrize("garbage", ["", "not a hash", "$argon2id$v=19$garbage",
                                     "$2b$12$abcdefghijklmnopqrstuv"])
def test_password_garbage_hash(garbage):
    assert secrets.verify_secret(garbage, "correct horse") is False


def test_split_userid():
    assert auth.split_userid("root@pam") == ("root", "pam")
    assert auth.split_userid("a@b@pve") == ("a@b", "pve")
