"""TOTP with replay refusal, single-use recovery keys, PVE's lock counters."""

from dataclasses import replace

import pyotp
import pytest

from binome.access import tfa
from binome.access.model import TfaUser

SEED = pyotp.random_base32()
URI = pyotp.TOTP(SEED).provisioning_uri(name="alice@pve", issuer_name="binome")
T0 = 1_800_000_000.0


def code(at):
    return pyotp.TOTP(SEED).at(at)


def with_totp(now=T0):
    return tfa.add_totp(TfaUser("alice@pve"), URI, code(now), entry_id="totp1",
                        description="phone", now=now)


def test_add_totp_needs_a_right_code_and_hides_the_seed():
    with pytest.raises(tfa.TfaError) as e:
        tfa.add_totp(TfaUser("alice@pve"), URI, "000000" if code(T0) != "000000" else "111111",
                     entry_id="t", description="", now=T0)
    assert e.value.errors == {"value": "failed to verify TOTP code"}
    user = with_totp()
    assert SEED not in str(user.entries[0].to_public())
    assert tfa.challenge(user) == {"totp": True}
    with pytest.raises(tfa.TfaError):
        tfa.add_totp(TfaUser("a@pve"), "otpauth://hotp/x?secret=" + SEED + "&counter=1",
                     "123456", entry_id="t", description="", now=T0)
    with pytest.raises(tfa.TfaError):
        tfa.add_totp(TfaUser("a@pve"), "not a uri", "123456", entry_id="t", description="",
                     now=T0)


def test_totp_login_within_one_step_and_replay_refused():
    user = with_totp(T0 - 90)
    user, ok = tfa.verify_response(user, f"totp:{code(T0)}", T0)
    assert ok
    user, ok = tfa.verify_response(user, f"totp:{code(T0)}", T0 + 5)   # same step: replay
    assert not ok
    user, ok = tfa.verify_response(user, f"totp:{code(T0 + 30)}", T0 + 60)  # previous step
    assert ok
    user, ok = tfa.verify_response(user, f"totp:{code(T0 - 60)}", T0 + 60)  # too old
    assert not ok
    _, ok = tfa.verify_response(user, f"totp:{code(T0 + 300)}", T0 + 60)    # too far ahead
    assert not ok


def test_code_used_at_registration_cannot_log_in():
    user = with_totp(T0)
    _, ok = tfa.verify_response(user, f"totp:{code(T0)}", T0 + 1)
    assert not ok


def test_recovery_keys_single_use_and_one_set():
    user, keys = tfa.add_recovery(TfaUser("alice@pve"), entry_id="recovery", now=T0)
    assert len(keys) == 10
    assert not any(k in repr(user) for k in keys)
    assert tfa.challenge(user) == {"recovery": list(range(10))}
    user, ok = tfa.verify_response(user, f"recovery:{keys[3]}", T0)
    assert ok
    assert tfa.challenge(user)["recovery"] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    user, ok = tfa.verify_response(user, f"recovery:{keys[3]}", T0)
    assert not ok
    with pytest.raises(tfa.TfaError):
        tfa.add_recovery(user, entry_id="recovery2", now=T0)


def test_eight_totp_failures_lock_totp_until_recovery_key():
    user = with_totp(T0 - 300)
    user, keys = tfa.add_recovery(user, entry_id="recovery", now=T0)
    wrong = "000000" if code(T0) != "000000" else "111111"
    for _ in range(8):
        user, ok = tfa.verify_response(user, f"totp:{wrong}", T0)
        assert not ok
    assert user.totp_locked
    user, ok = tfa.verify_response(user, f"totp:{code(T0)}", T0)
    assert not ok
    user, ok = tfa.verify_response(user, f"recovery:{keys[0]}", T0)
    assert ok and not user.totp_locked
    user, ok = tfa.verify_response(user, f"totp:{code(T0)}", T0)
    assert ok


def test_hundred_failures_lock_everything_for_an_hour_and_unlock():
    user, keys = tfa.add_recovery(TfaUser("alice@pve"), entry_id="recovery", now=T0)
    for _ in range(100):
        user, _ = tfa.verify_response(user, "recovery:0000-0000-0000-0000", T0)
    assert tfa.locked(user, T0 + 3599)
    _, ok = tfa.verify_response(user, f"recovery:{keys[0]}", T0 + 10)
    assert not ok
    assert not tfa.locked(user, T0 + 3600)
    user, was = tfa.unlock(user, T0 + 10)
    assert was and not tfa.locked(user, T0) and user.tfa_failures == 0
    assert tfa.unlock(user, T0) == (user, False)


def test_outcomes_and_log_texts_follow_proxmox_tfa():
    """proxmox-tfa's verify: the 8th TOTP failure reports the TOTP limit; once locked a
    TOTP answer is refused unchecked and uncounted (even a right code); the 100th failure
    reports the TFA limit and locks every factor, recovery keys included."""
    user = with_totp(T0 - 300)
    user, keys = tfa.add_recovery(user, entry_id="recovery", now=T0)
    wrong = "000000" if code(T0) != "000000" else "111111"
    outcomes = []
    for _ in range(8):
        user, outcome = tfa.verify(user, f"totp:{wrong}", T0)
        outcomes.append(outcome)
    assert outcomes == [tfa.FAILED] * 7 + [tfa.TOTP_LIMIT]
    assert (user.totp_failures, user.tfa_failures) == (8, 8)
    assert tfa.LOG_TEXT[tfa.TOTP_LIMIT] == "failed 2nd factor: TOTP limit reached, locked"
    same, outcome = tfa.verify(user, f"totp:{code(T0)}", T0)
    assert outcome == tfa.LOCKED and same == user        # nothing counted, nothing spent
    for _ in range(91):
        user, outcome = tfa.verify(user, "recovery:0000-0000-0000-0000", T0)
    assert outcome == tfa.FAILED and user.tfa_failures == 99
    user, outcome = tfa.verify(user, "recovery:0000-0000-0000-0000", T0)
    assert outcome == tfa.TFA_LIMIT and user.tfa_locked_until == int(T0) + 3600
    assert tfa.verify(user, f"recovery:{keys[0]}", T0 + 5) == (user, tfa.LOCKED)
    assert tfa.lock_status(user, T0) == {"totp-locked": 1, "tfa-locked-until": int(T0) + 3600}
    # an expired lock is not shown (proxmox-tfa filters it) and unlock says it was not...
    assert tfa.lock_status(replace(user, totp_failures=0), T0 + 3600) == {}
    assert tfa.unlock(replace(user, totp_failures=0), T0 + 3600)[1] is False
    # ... but still resets the counters
    unlocked, was = tfa.unlock(user, T0 + 10)
    assert was and tfa.lock_status(unlocked, T0 + 10) == {}
    assert (unlocked.totp_failures, unlocked.tfa_failures) == (0, 0)
    assert tfa.lock_status(None, T0) == {}


def test_recovery_key_lifts_both_locks_once_the_hour_is_over():
    user, keys = tfa.add_recovery(with_totp(T0 - 300), entry_id="recovery", now=T0)
    user = replace(user, totp_failures=8, tfa_failures=100, tfa_locked_until=int(T0) + 3600)
    user, outcome = tfa.verify(user, f"recovery:{keys[1]}", T0 + 3600)
    assert outcome == tfa.OK
    assert (user.totp_failures, user.tfa_failures, user.tfa_locked_until) == (0, 0, 0)


def test_unknown_response_type_fails():
    user = with_totp()
    user, ok = tfa.verify_response(user, "webauthn:{}", T0)
    assert not ok and user.tfa_failures == 1
