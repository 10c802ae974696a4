"""OpenID realms: the realm's configuration and its write-only client key, pending-login
states (single use, TTL), the ID token's checks with real signatures (joserfc keys made
here), usernames from claims and what a login does to users and groups."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from binome.access import ops
from binome.access.model import AccessConfig, Group, Realm, User, ValidationError
from binome.access.openid import (
    STATE_PREFIX,
    STATE_TTL,
    OpenIdError,
    OpenIdProvider,
    OpenIdSettings,
    PendingLogin,
    PendingLogins,
    apply_login,
    check_metadata,
    merge_userinfo,
    username_of,
    validate_id_token,
)
from binome.access.repository import REALM_SECRETS, REALMS, decode, encode

ISSUER = "https://id.example.test"
OPTIONS = {"issuer-url": ISSUER, "client-id": "binome"}


def realm(**options: Any) -> Realm:
    return Realm("corp", "openid", options={**OPTIONS, **options}, client_key="s3cret")


# -- the realm's configuration ---------------------------------------------------------------

def test_settings_have_pves_defaults_and_openid_first_in_the_scope() -> None:
    s = OpenIdSettings.from_realm(realm())
    assert (s.username_claim, s.autocreate, s.query_userinfo) == ("sub", False, True)
    assert s.scope == "openid email profile" and s.client_key == "s3cret"
    s = OpenIdSettings.from_realm(realm(scopes="profile openid groups", audiences="a, b",
                                        autocreate=1, **{"query-userinfo": 0}))
    assert s.scope == "openid profile groups" and s.audiences == ("a", "b")
    assert s.autocreate and not s.query_userinfo
    with pytest.raises(OpenIdError, match="wrong realm type"):
        OpenIdSettings.from_realm(Realm("pve", "pve"))


def test_client_key_is_write_only_and_stored_apart() -> None:
    r = realm()
    assert "client-key" not in r.to_public() and "s3cret" not in str(r.to_public())
    keys = encode(AccessConfig(realms={"corp": r}))
    assert "s3cret" not in str(keys[REALMS + "corp"])
    assert keys[REALM_SECRETS + "corp"] == {"client_key": "s3cret"}
    back, warnings = decode(keys)
    assert back.realms["corp"] == r and not warnings


def test_realm_checks() -> None:
    with pytest.raises(ValidationError) as e:
        Realm("corp", "openid", options={"client-id": "x"})
    assert "issuer-url" in e.value.errors
    for bad in ({"issuer-url": "ftp://x"}, {"groups-claim": "a b"},
                {"acr-values": "a<b"}, {"client-key": "x"}):
        with pytest.raises(ValidationError):
            Realm("corp", "openid", options={**OPTIONS, **bad})
    with pytest.raises(ValidationError) as e:
        Realm("dir", "ldap", options={"server1": "h", "base_dn": "x", "user_attr": "uid"},
              client_key="k")
    assert "client-key" in e.value.errors


def test_update_keeps_sets_and_deletes_the_client_key() -> None:
    cfg = ops.add_realm(AccessConfig(), realm())
    cfg = ops.update_realm(cfg, "corp", {"autocreate": 1})
    assert cfg.realms["corp"].client_key == "s3cret"
    cfg = ops.update_realm(cfg, "corp", {"client-key": "new"})
    assert cfg.realms["corp"].client_key == "new"
    assert "client-key" not in cfg.realms["corp"].options
    cfg = ops.update_realm(cfg, "corp", {}, delete=["client-key"])
    assert cfg.realms["corp"].client_key is None


# -- pending logins ------------------------------------------------------------------------

@dataclass
class Entry:
    value: Any


class MemoryStore:
    """Single-use semantics as etcd's: only one delete of a key reports it deleted."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.leases: list[int] = []

    async def grant_lease(self, ttl: int) -> int:
        self.leases.append(ttl)
        return len(self.leases)

    async def put(self, key: str, value: Any, *, lease: int | None = None) -> None:
        assert lease is not None
        self.data[key] = value

    async def get(self, key: str, *, serializable: bool = False) -> Entry | None:
        return Entry(self.data[key]) if key in self.data else None

    async def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None


async def test_a_state_works_once_and_not_after_its_ttl() -> None:
    store = MemoryStore()
    logins = PendingLogins(store)
    now = 1000.0
    pending = PendingLogin.new("corp", "https://pve:8006", now)
    assert len({pending.state, pending.nonce, pending.code_verifier}) == 3
    assert 43 <= len(pending.code_verifier) <= 128
    await logins.put(pending)
    assert store.leases == [STATE_TTL] and list(store.data) == [STATE_PREFIX + pending.state]
    assert await logins.take(pending.state, now + 5) == pending
    with pytest.raises(OpenIdError, match="already used") as e:
        await logins.take(pending.state, now + 6)
    assert e.value.public
    late = PendingLogin.new("corp", "https://pve:8006", now)
    await logins.put(late)
    with pytest.raises(OpenIdError, match="expired"):
        await logins.take(late.state, now + STATE_TTL + 1)
    assert not store.data      # spent even when refused
    for bad in ("../../x", "short", "a" * 200, "with space" * 3):
        with pytest.raises(OpenIdError, match="malformed"):
            await logins.take(bad, now)


# -- the provider's answers ------------------------------------------------------------------

KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
JWKS = {"keys": [KEY.as_dict(private=False)]}
METADATA = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth",
            "token_endpoint": ISSUER + "/token", "jwks_uri": ISSUER + "/jwks",
            "id_token_signing_alg_values_supported": ["RS256"]}
SETTINGS = OpenIdSettings.from_realm(realm(audiences="extra"))
NOW = time.time()


def id_token(key: Any = KEY, alg: str = "RS256", **claims: Any) -> str:
    base = {"iss": ISSUER, "sub": "alice", "aud": "binome", "exp": int(NOW) + 300,
            "iat": int(NOW), "nonce": "n-1"}
    payload = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": "k1"}, payload, key)


def check(token: str, nonce: str = "n-1") -> dict[str, Any]:
    return validate_id_token(token, jwks=JWKS, metadata=METADATA, settings=SETTINGS,
                             nonce=nonce, access_token=None, now=NOW)


def test_a_good_id_token_passes() -> None:
    assert check(id_token())["sub"] == "alice"
    assert check(id_token(aud=["extra", "binome"], azp="binome"))["sub"] == "alice"


@pytest.mark.parametrize("token, nonce, reason", [
    (id_token(), "n-2", "nonce"),
    (id_token(nonce=None), "n-1", "nonce"),
    (id_token(aud="someone-else"), "n-1", "aud"),
    (id_token(iss="https://evil.example"), "n-1", "iss"),
    (id_token(exp=int(NOW) - 3600), "n-1", "expired"),
    (id_token(iat=None), "n-1", "iat"),
    (id_token(key=OTHER_KEY), "n-1", "signature"),
    (id_token(key=OctKey.import_key(b"k" * 32), alg="HS256"), "n-1", "signature"),
])
def test_id_token_refusals(token: str, nonce: str, reason: str) -> None:
    with pytest.raises(OpenIdError) as e:
        check(token, nonce)
    assert reason in str(e.value).lower()


def test_a_tampered_id_token_is_refused() -> None:
    head, payload, sig = id_token().split(".")
    forged = id_token(key=OTHER_KEY, sub="root").split(".")[1]
    with pytest.raises(OpenIdError, match="signature"):
        check(f"{head}.{forged}.{sig}")
    with pytest.raises(OpenIdError, match="signature"):
        check(f"{head}.{payload}.{sig[:-4]}AAAA")


def test_discovery_must_name_the_configured_issuer() -> None:
    assert check_metadata(SETTINGS, METADATA) is METADATA
    with pytest.raises(OpenIdError, match="issuer"):
        check_metadata(SETTINGS, {**METADATA, "issuer": "https://other"})
    with pytest.raises(OpenIdError, match="jwks_uri"):
        check_metadata(SETTINGS, {k: v for k, v in METADATA.items() if k != "jwks_uri"})


def test_userinfo_must_be_about_the_same_subject() -> None:
    merged = merge_userinfo({"sub": "a", "email": "id@x"}, {"sub": "a", "email": "ui@x",
                                                             "groups": ["g"]})
    assert merged == {"sub": "a", "email": "id@x", "groups": ["g"]}
    with pytest.raises(OpenIdError, match="another subject"):
        merge_userinfo({"sub": "a"}, {"sub": "b"})


def test_authorization_url_carries_state_nonce_and_s256_challenge() -> None:
    from urllib.parse import parse_qs, urlsplit

    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    settings = OpenIdSettings.from_realm(realm(prompt="consent", **{"acr-values": "mfa"}))
    pending = PendingLogin.new("corp", "https://pve:8006", NOW)
    url = OpenIdProvider(settings, METADATA).authorization_url(pending)
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(ISSUER + "/auth?")
    assert q == {"response_type": "code", "client_id": "binome",
                 "redirect_uri": "https://pve:8006", "scope": "openid email profile",
                 "state": pending.state, "nonce": pending.nonce,
                 "code_challenge": create_s256_code_challenge(pending.code_verifier),
                 "code_challenge_method": "S256", "prompt": "consent", "acr_values": "mfa"}


# -- usernames and the login's effects -------------------------------------------------------

def test_username_from_the_configured_claim() -> None:
    s = OpenIdSettings.from_realm(realm())
    assert username_of({"sub": "a1"}, s) == "a1@corp"
    named = OpenIdSettings.from_realm(realm(**{"username-claim": "username"}))
    assert username_of({"sub": "a1", "preferred_username": "ann"}, named) == "ann@corp"
    email = OpenIdSettings.from_realm(realm(**{"username-claim": "email"}))
    with pytest.raises(OpenIdError, match="missing configured claim 'email'"):
        username_of({"sub": "a1"}, email)
    with pytest.raises(OpenIdError, match="invalid user name"):
        username_of({"sub": "a b/c"}, s)


def test_autocreate_fills_the_user_from_the_claims() -> None:
    s = OpenIdSettings.from_realm(realm(autocreate=1))
    claims = {"sub": "ann", "email": "ann@example.org", "given_name": "Ann",
              "family_name": "Lee"}
    effect = apply_login(AccessConfig(), "ann@corp", claims, s, NOW)
    user = effect.config.users["ann@corp"]
    assert (user.email, user.firstname, user.lastname, user.enable) == \
        ("ann@example.org", "Ann", "Lee", True)
    assert effect.notes
    # a claim the schema refuses does not stop the login
    bad = apply_login(AccessConfig(), "ann@corp", {**claims, "email": "no"}, s, NOW)
    assert bad.config.users["ann@corp"].email == ""
    # a known user without a groups claim: nothing to write
    again = apply_login(effect.config, "ann@corp", claims, s, NOW)
    assert again.config is effect.config and not again.notes


def test_missing_or_disabled_users_are_refused() -> None:
    s = OpenIdSettings.from_realm(realm())
    with pytest.raises(OpenIdError, match="does not exist"):
        apply_login(AccessConfig(), "ann@corp", {"sub": "ann"}, s, NOW)
    cfg = AccessConfig(users={"ann@corp": User("ann@corp", enable=False)})
    with pytest.raises(OpenIdError, match="disabled"):
        apply_login(cfg, "ann@corp", {"sub": "ann"}, s, NOW)
    cfg = AccessConfig(users={"ann@corp": User("ann@corp", expire=int(NOW) - 1)})
    with pytest.raises(OpenIdError, match="expired"):
        apply_login(cfg, "ann@corp", {"sub": "ann"}, s, NOW)


def test_groups_claim_mapping() -> None:
    base = AccessConfig(users={"ann@corp": User("ann@corp", groups=("local",))},
                        groups={"local": Group("local"), "ops-corp": Group("ops-corp")})
    claims = {"sub": "ann", "groups": ["ops", "dev", "bad name!"]}
    # existing groups only, kept ones stay
    s = OpenIdSettings.from_realm(realm(**{"groups-claim": "groups"}))
    e = apply_login(base, "ann@corp", claims, s, NOW)
    assert e.config.users["ann@corp"].groups == ("local", "ops-corp")
    assert "dev-corp" not in e.config.groups
    assert any("invalid characters" in n for n in e.notes)
    # autocreate, then overwrite drops the groups the claim does not name
    s = OpenIdSettings.from_realm(realm(**{"groups-claim": "groups", "groups-autocreate": 1,
                                           "groups-overwrite": 1}))
    e = apply_login(base, "ann@corp", claims, s, NOW)
    assert e.config.users["ann@corp"].groups == ("dev-corp", "ops-corp")
    assert "dev-corp" in e.config.groups
    # not a list, or absent: groups untouched
    for odd in ({"sub": "ann", "groups": "ops"}, {"sub": "ann"}):
        e = apply_login(base, "ann@corp", odd, s, NOW)
        assert e.config.users["ann@corp"].groups == ("local",)
