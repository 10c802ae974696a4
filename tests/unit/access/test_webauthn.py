"""WebAuthn as a second factor: PVE's two-step registration, the NeedTFA challenge's
`webauthn` options, assertions checked by python-fido2 (a software authenticator from
tests/softauthn.py answers), challenges spent once, the signature counter, the
datacenter option's checks, and storage of all of it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from binome.access import tfa
from binome.access.model import AccessConfig, TfaUser, WebauthnConfig
from binome.access.repository import decode, encode
from tests.softauthn import SoftAuthenticator

T0 = 1_800_000_000.0
ORIGIN = "https://localhost:8006"
CFG = WebauthnConfig(rp="binome", id="localhost", origin=ORIGIN)


def registered(auth: SoftAuthenticator, user: TfaUser | None = None,
               now: float = T0) -> TfaUser:
    user, options = tfa.webauthn_register_begin(user or TfaUser("alice@pve"), CFG,
                                                 description="key", now=now)
    parsed = json.loads(options)
    return tfa.webauthn_register_finish(user, CFG, parsed["publicKey"]["challenge"],
                                        auth.create(parsed), entry_id="wa1", now=now + 1)


def test_registration_options_are_pves_and_the_credential_is_stored():
    user, options = tfa.webauthn_register_begin(TfaUser("alice@pve"), CFG,
                                                description="key", now=T0)
    pk = json.loads(options)["publicKey"]
    assert pk["rp"] == {"name": "binome", "id": "localhost"}
    assert pk["user"]["id"] == "alice@pve"       # text: PVE's UI encodes it as UTF-8
    assert {"type": "public-key", "alg": -7} in pk["pubKeyCredParams"]
    assert [c.kind for c in user.challenges] == ["register"]
    auth = SoftAuthenticator(ORIGIN)
    user = tfa.webauthn_register_finish(user, CFG, pk["challenge"],
                                        auth.create(json.loads(options)),
                                        entry_id="wa1", now=T0 + 1)
    entry = user.entries[0]
    assert (entry.type, entry.description, entry.id) == ("webauthn", "key", "wa1")
    assert user.challenges == ()                 # spent
    assert entry.secret not in json.dumps(entry.to_public())
    # stored and read back whole (the credential, its counter)
    cfg = AccessConfig(tfa={"alice@pve": user}, webauthn=CFG)
    back, warnings = decode(encode(cfg))
    assert warnings == [] and back.tfa["alice@pve"] == user and back.webauthn == CFG


def test_registration_refusals():
    auth = SoftAuthenticator(ORIGIN)
    with pytest.raises(tfa.TfaError) as e:
        tfa.webauthn_register_begin(TfaUser("a@pve"), None, description="", now=T0)
    assert e.value.errors == {"type": "no webauthn configuration available"}
    user, options = tfa.webauthn_register_begin(TfaUser("a@pve"), CFG, description="",
                                                now=T0)
    parsed = json.loads(options)
    chal = parsed["publicKey"]["challenge"]
    with pytest.raises(tfa.TfaError) as e:   # the answer comes too late
        tfa.webauthn_register_finish(user, CFG, chal, auth.create(parsed), entry_id="x",
                                     now=T0 + tfa.WEBAUTHN_REGISTER_SECONDS + 1)
    assert "challenge" in e.value.errors
    with pytest.raises(tfa.TfaError) as e:   # signed for another origin
        tfa.webauthn_register_finish(user, CFG, chal,
                                     SoftAuthenticator("https://evil.example").create(parsed),
                                     entry_id="x", now=T0 + 1)
    assert "origin" in e.value.errors["value"]
    with pytest.raises(tfa.TfaError) as e:   # for another relying party
        tfa.webauthn_register_finish(user, CFG, chal,
                                     SoftAuthenticator(ORIGIN, "example.com").create(parsed),
                                     entry_id="x", now=T0 + 1)
    assert "RP ID" in e.value.errors["value"]
    with pytest.raises(tfa.TfaError) as e:
        tfa.webauthn_register_finish(user, CFG, chal, "{not json", entry_id="x",
                                     now=T0 + 1)
    assert e.value.errors == {"value": "invalid webauthn response: not JSON"}
    # the same authenticator twice
    user = registered(auth)
    with pytest.raises(tfa.TfaError) as e:
        registered(auth, user, now=T0 + 10)
    assert e.value.errors == {"value": "this credential is already registered"}


def login(user: TfaUser, now: float = T0 + 10) -> tuple[TfaUser, dict]:
    return tfa.login_challenge(user, CFG, now)


def test_login_challenge_and_assertion():
    auth = SoftAuthenticator(ORIGIN)
    user = registered(auth)
    user, challenge = login(user)
    pk = challenge["webauthn"]["publicKey"]
    assert pk["rpId"] == "localhost"
    assert pk["allowCredentials"][0]["type"] == "public-key"
    user, outcome = tfa.verify(user, "webauthn:" + auth.get(challenge["webauthn"]),
                               T0 + 11, CFG)
    assert outcome == tfa.OK
    assert user.entries[0].sign_count == 1 and user.challenges == ()
    # the same assertion again: its challenge is spent
    _, outcome = tfa.verify(user, "webauthn:" + json.dumps({"challenge": pk["challenge"]}),
                            T0 + 12, CFG)
    assert outcome == tfa.FAILED


def test_assertion_refusals_count_and_spend_the_challenge():
    auth = SoftAuthenticator(ORIGIN)
    user = registered(auth)
    other = SoftAuthenticator(ORIGIN)
    other.credential_id = auth.credential_id          # right id, wrong key
    user, challenge = login(user)
    user, outcome = tfa.verify(user, "webauthn:" + other.get(challenge["webauthn"]),
                               T0 + 11, CFG)
    assert outcome == tfa.FAILED and user.tfa_failures == 1 and user.challenges == ()
    # a counter that does not move on (a cloned authenticator)
    user, challenge = login(user)
    user, outcome = tfa.verify(user, "webauthn:" + auth.get(challenge["webauthn"]),
                               T0 + 12, CFG)
    assert outcome == tfa.OK and user.tfa_failures == 0
    user, challenge = login(user)
    user, outcome = tfa.verify(
        user, "webauthn:" + auth.get(challenge["webauthn"], counter_step=0), T0 + 13, CFG)
    assert outcome == tfa.FAILED
    # an expired challenge; a response for a challenge never handed out; garbage
    user, challenge = login(user, T0 + 20)
    _, outcome = tfa.verify(user, "webauthn:" + auth.get(challenge["webauthn"]),
                            T0 + 21 + tfa.WEBAUTHN_LOGIN_SECONDS, CFG)
    assert outcome == tfa.FAILED
    user, challenge = login(user, T0 + 30)
    forged = "A" * 43
    _, outcome = tfa.verify(user, "webauthn:" + auth.get(challenge["webauthn"],
                                                         challenge=forged), T0 + 31, CFG)
    assert outcome == tfa.FAILED
    for junk in ("webauthn:", "webauthn:[]", "webauthn:{\"challenge\": 5}"):
        _, outcome = tfa.verify(user, junk, T0 + 31, CFG)
        assert outcome == tfa.FAILED
    # no datacenter option: nothing offered, nothing accepted
    _, plain = tfa.login_challenge(user, None, T0 + 40)
    assert "webauthn" not in plain
    _, outcome = tfa.verify(user, "webauthn:" + auth.get(challenge["webauthn"]), T0 + 31,
                            None)
    assert outcome == tfa.FAILED


def test_disabled_entry_is_not_offered():
    auth = SoftAuthenticator(ORIGIN)
    user = registered(auth)
    user = replace(user, entries=(replace(user.entries[0], enable=False),))
    _, challenge = login(user)
    assert "webauthn" not in challenge


def test_pending_challenges_are_bounded():
    user = TfaUser("a@pve")
    for i in range(3 * tfa.MAX_CHALLENGES):
        user, _ = tfa.webauthn_register_begin(user, CFG, description="", now=T0 + i)
    assert len(user.challenges) == tfa.MAX_CHALLENGES


@pytest.mark.parametrize(("props", "want"), [
    ({"rp": "binome", "id": "pve.example.com", "origin": "https://pve.example.com:8006"},
     WebauthnConfig("binome", "pve.example.com", "https://pve.example.com:8006")),
    ({"rp": "b", "id": "localhost", "allow-subdomains": 0},
     WebauthnConfig("b", "localhost", "", False)),
    ({"rp": "b", "id": "example.com", "origin": "https://node1.example.com/"},
     WebauthnConfig("b", "example.com", "https://node1.example.com")),
])
def test_datacenter_option(props, want):
    cfg = tfa.parse_webauthn_option(props)
    assert cfg == want
    assert tfa.parse_webauthn_option(
        dict(item.split("=", 1) for item in tfa.format_webauthn_option(cfg).split(","))
    ) == cfg


@pytest.mark.parametrize(("props", "text"), [
    ({"rp": "b", "id": "192.0.2.10"}, "IP address"),
    ({"rp": "b", "id": "::1"}, "IP address"),
    ({"rp": "b", "id": "https://pve.example.com"}, "not a domain name"),
    ({"rp": "b", "id": "pve.example.com:8006"}, "not a domain name"),
    ({"rp": "b", "id": "example.com", "origin": "http://example.com"}, "https://"),
    ({"rp": "b", "id": "example.com", "origin": "https://example.com/ui"}, "https://"),
    ({"rp": "b", "id": "example.com", "origin": "https://example.org"}, "not on"),
])
def test_datacenter_option_refusals(props, text):
    with pytest.raises(tfa.TfaError) as e:
        tfa.parse_webauthn_option(props)
    assert text in e.value.errors["webauthn"]


def test_origin_rules():
    auth_sub = SoftAuthenticator("https://node1.example.com:8006")
    for cfg, ok in ((WebauthnConfig("b", "example.com"), True),
                    (WebauthnConfig("b", "example.com", allow_subdomains=False), False),
                    (WebauthnConfig("b", "example.com", "https://node2.example.com"),
                     False)):
        user, options = tfa.webauthn_register_begin(TfaUser("a@pve"), cfg, description="",
                                                    now=T0)
        parsed = json.loads(options)
        try:
            tfa.webauthn_register_finish(user, cfg, parsed["publicKey"]["challenge"],
                                         auth_sub.create(parsed), entry_id="x", now=T0)
            assert ok
        except tfa.TfaError as exc:
            assert not ok and "origin" in exc.errors["value"]
