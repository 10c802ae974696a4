"""Second factors as PVE has them: TOTP (RFC 6238, via pyotp) and one set of ten
single-use recovery keys per user; PVE's lock rules (8 TOTP failures lock TOTP until a
recovery key is used or an admin unlocks; 100 failures lock every factor for an hour);
and refusal of a TOTP code whose time step was already used (replay).

Pure: functions take and return `TfaUser` values; the caller stores the new value with a
compare-and-swap so that two logins cannot both spend the same code.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pyotp

from binome.access.model import TfaEntry, TfaUser
from binome.access.secrets import (
    hash_recovery_key,
    new_recovery_keys,
    new_salt,
    recovery_key_matches,
)

TOTP_LOCK_FAILURES = 8
TFA_LOCK_FAILURES = 100
TFA_LOCK_SECONDS = 3600
TOTP_WINDOW = 1            # PVE accepts the previous and next time step
_CODE_RE = re.compile(r"^\d{6,8}$")


class TfaError(ValueError):
    """Refused TFA input; `errors` maps the parameter to its text."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _totp(uri: str) -> pyotp.TOTP:
    try:
        otp = pyotp.parse_uri(uri)
    except (ValueError, TypeError) as exc:
        raise TfaError({"totp": f"invalid otpauth URI: {exc}"}) from None
    if not isinstance(otp, pyotp.TOTP):
        raise TfaError({"totp": "only totp otpauth URIs are supported"})
    if not 6 <= otp.digits <= 8 or otp.interval < 10:
        raise TfaError({"totp": "digits must be 6-8 and period at least 10 seconds"})
    return otp


def new_totp_uri(account: str, issuer: str = "binome") -> str:
    """A fresh seed as an otpauth URI (for the CLI; the web UI makes its own)."""
    return pyotp.TOTP(pyotp.random_base32()).provisioning_uri(name=account, issuer_name=issuer)


def _accepted_step(uri: str, code: str, now: float, last_step: int) -> int | None:
    """The time step `code` belongs to, if within ±1 step of now and after `last_step`."""
    if not _CODE_RE.match(code):
        return None
    otp = _totp(uri)
    current = otp.timecode(now)
    for offset in (0, -TOTP_WINDOW, TOTP_WINDOW):
        step = current + offset
        if step > last_step and otp.generate_otp(step) == code:
            return step
    return None


def add_totp(user: TfaUser, uri: str, code: str, *, entry_id: str, description: str,
             now: float) -> TfaUser:
    """Register a TOTP factor; the code proves the authenticator holds the seed."""
    if not _accepted_step(uri, code, now, -1):
        raise TfaError({"value": "failed to verify TOTP code"})
    step = _totp(uri).timecode(now)
    entry = TfaEntry(id=entry_id, type="totp", description=description, created=int(now),
                     secret=uri, last_step=step)
    return replace(user, entries=(*user.entries, entry))


def add_recovery(user: TfaUser, *, entry_id: str, description: str = "",
                 now: float) -> tuple[TfaUser, list[str]]:
    """Create the recovery key set; the keys are returned once and stored hashed."""
    if any(e.type == "recovery" for e in user.entries):
        raise TfaError({"type": "user already has recovery keys"})
    keys = new_recovery_keys()
    salt = new_salt()
    entry = TfaEntry(id=entry_id, type="recovery", description=description,
                     created=int(now), secret=salt,
                     recovery_hashes=tuple(hash_recovery_key(salt, k) for k in keys))
    return replace(user, entries=(*user.entries, entry)), keys


def has_factors(user: TfaUser) -> bool:
    return any(e.enable for e in user.entries)


def challenge(user: TfaUser) -> dict[str, Any]:
    """What PVE puts in a NeedTFA ticket: the usable factor types."""
    out: dict[str, Any] = {}
    if any(e.enable and e.type == "totp" for e in user.entries):
        out["totp"] = True
    for e in user.entries:
        if e.enable and e.type == "recovery":
            out["recovery"] = [i for i, h in enumerate(e.recovery_hashes) if h is not None]
    return out


def locked(user: TfaUser, now: float) -> bool:
    return user.tfa_locked_until > now


def lock_status(user: TfaUser | None, now: float) -> dict[str, int]:
    """PVE's `tfa_lock_status`: `totp-locked` only when set, `tfa-locked-until` only while
    in the future (proxmox-tfa drops an expired timestamp when it reads the user)."""
    out: dict[str, int] = {}
    if user is None:
        return out
    if user.totp_locked:
        out["totp-locked"] = 1
    if user.tfa_locked_until > now:
        out["tfa-locked-until"] = user.tfa_locked_until
    return out


# Outcomes of `verify` (proxmox-tfa's TfaResult, with the limit flags PVE's login reads)
OK = "ok"
FAILED = "failed"                 # counted
TOTP_LIMIT = "totp-limit"         # counted, and this failure locked TOTP
TFA_LIMIT = "tfa-limit"           # counted, and this failure locked every factor for an hour
LOCKED = "locked"                 # refused unchecked and uncounted: the factor is locked

#: What PVE's authenticate_2nd_new_do dies with (logged as `msg=`; the client sees only
#: "authentication failure"). "1nd" is PVE's own spelling, kept for log searches.
LOG_TEXT = {
    FAILED: "failed 2nd factor",
    LOCKED: "failed 2nd factor",
    TOTP_LIMIT: "failed 2nd factor: TOTP limit reached, locked",
    TFA_LIMIT: "failed 1nd factor: TFA limit reached, user locked out",
}


def verify(user: TfaUser, response: str, now: float) -> tuple[TfaUser, str]:
    """Check a PVE TFA response (``totp:123456`` or ``recovery:xxxx-xxxx-xxxx-xxxx``), as
    proxmox-tfa's `TfaConfig::verify`.

    Returns the user's new TFA state (spent key, last step, counters, locks) and the
    outcome. Store the new state even on failure: it carries the counters.
    - every factor locked (`tfa_locked_until` in the future): refused, nothing counted;
    - TOTP locked: a TOTP answer is refused, nothing counted; a recovery key still works;
    - a failure counts one TFA failure (and one TOTP failure for a TOTP answer);
      TOTP_LOCK_FAILURES TOTP failures lock TOTP, TFA_LOCK_FAILURES failures lock every
      factor for TFA_LOCK_SECONDS;
    - success resets the TFA count (and the TOTP count for TOTP); a recovery key also
      lifts both locks.
    """
    kind, _, value = response.partition(":")
    if locked(user, now):
        return user, LOCKED
    if kind == "totp":
        if user.totp_locked:
            return user, LOCKED
        for i, e in enumerate(user.entries):
            if e.enable and e.type == "totp":
                step = _accepted_step(e.secret, value.strip(), now, e.last_step)
                if step is not None:
                    entries = list(user.entries)
                    entries[i] = replace(e, last_step=step)
                    return replace(user, entries=tuple(entries), totp_failures=0,
                                   tfa_failures=0), OK
        return _failed(user, now, totp=True)
    if kind == "recovery":
        for i, e in enumerate(user.entries):
            if not (e.enable and e.type == "recovery"):
                continue
            for j, stored in enumerate(e.recovery_hashes):
                if stored is not None and recovery_key_matches(e.secret, stored, value):
                    hashes = list(e.recovery_hashes)
                    hashes[j] = None
                    entries = list(user.entries)
                    entries[i] = replace(e, recovery_hashes=tuple(hashes))
                    # a recovery key also lifts the locks (proxmox-tfa verify_recovery)
                    return replace(user, entries=tuple(entries), totp_failures=0,
                                   tfa_failures=0, tfa_locked_until=0), OK
    return _failed(user, now, totp=False)


def verify_response(user: TfaUser, response: str, now: float) -> tuple[TfaUser, bool]:
    """`verify` with a yes/no answer."""
    new, outcome = verify(user, response, now)
    return new, outcome == OK


def _failed(user: TfaUser, now: float, *, totp: bool) -> tuple[TfaUser, str]:
    failures = user.tfa_failures + 1
    totp_failures = user.totp_failures + (1 if totp else 0)
    new = replace(user, tfa_failures=failures, totp_failures=totp_failures)
    if failures >= TFA_LOCK_FAILURES:
        return replace(new, tfa_locked_until=int(now) + TFA_LOCK_SECONDS), TFA_LIMIT
    if totp and totp_failures >= TOTP_LOCK_FAILURES:
        return new, TOTP_LIMIT
    return new, FAILED


def unlock(user: TfaUser, now: float) -> tuple[TfaUser, bool]:
    """PUT /access/users/{u}/unlock-tfa (proxmox-tfa `unlock_and_reset_tfa`): reset the
    counters and both locks; True if the user was locked (TOTP, or every factor until a
    time still to come)."""
    was = user.totp_locked or locked(user, now)
    return replace(user, totp_failures=0, tfa_failures=0, tfa_locked_until=0), was
