"""Second factors as PVE has them: TOTP (RFC 6238, via pyotp), WebAuthn (via python-fido2:
registration and assertion checks, the signature counter) and one set of ten
single-use recovery keys per user; PVE's lock rules (8 TOTP failures lock TOTP until a
recovery key is used or an admin unlocks; 100 failures lock every factor for an hour);
and refusal of a TOTP code whose time step was already used (replay).

WebAuthn challenges handed out (registration's first step, a login's NeedTFA ticket) are
kept in the user's TFA state until answered or expired, as PVE keeps them in tfa.cfg: an
answer spends its challenge, so an assertion cannot be replayed.

Pure: functions take and return `TfaUser` values; the caller stores the new value with a
compare-and-swap so that two logins cannot both spend the same code.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pyotp
from fido2.rpid import verify_rp_id
from fido2.server import Fido2Server
from fido2.utils import websafe_decode, websafe_encode
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    UserVerificationRequirement,
)

from binome.access.model import TfaEntry, TfaUser, WebauthnChallenge, WebauthnConfig
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
    """What PVE puts in a NeedTFA ticket: the usable factor types (WebAuthn's options
    come from `login_challenge`, which stores the challenge it hands out)."""
    out: dict[str, Any] = {}
    if any(e.enable and e.type == "totp" for e in user.entries):
        out["totp"] = True
    for e in user.entries:
        if e.enable and e.type == "recovery":
            out["recovery"] = [i for i, h in enumerate(e.recovery_hashes) if h is not None]
    return out


# -- WebAuthn ---------------------------------------------------------------------------

WEBAUTHN_REGISTER_SECONDS = 120     # proxmox-tfa: a registration challenge lives 2 minutes
WEBAUTHN_LOGIN_SECONDS = 300        # and a login challenge as long as the TFA ticket
WEBAUTHN_TIMEOUT_MS = 60_000        # what the browser is asked to wait for the user
MAX_CHALLENGES = 8                  # pending per user; the oldest are dropped
_USER_VERIFICATION = UserVerificationRequirement.DISCOURAGED   # PVE's: presence only
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_webauthn_option(props: dict[str, Any]) -> WebauthnConfig:
    """Check the parsed `webauthn` datacenter option (rp, origin, id, allow-subdomains);
    errors name the `webauthn` parameter."""
    rp = str(props.get("rp") or "")
    rp_id = str(props.get("id") or "")
    origin = str(props.get("origin") or "").rstrip("/")
    if rp_id:
        try:
            ipaddress.ip_address(rp_id.strip("[]"))
        except ValueError:
            pass
        else:
            raise TfaError({"webauthn": "id: an IP address cannot be a WebAuthn relying "
                                        "party ID; use the DNS name users browse to"})
        if not _HOST_RE.match(rp_id):
            raise TfaError({"webauthn": f"id: '{rp_id}' is not a domain name (no protocol, "
                                        "port or path)"})
    if origin:
        parts = urlsplit(origin)
        secure = parts.scheme == "https" or (parts.scheme == "http"
                                             and parts.hostname == "localhost")
        if not secure or not parts.hostname or parts.path or parts.query:
            raise TfaError({"webauthn": "origin: must be an https:// URL without a path "
                                        "(or http://localhost)"})
        if rp_id and not verify_rp_id(rp_id, "https://" + (parts.netloc or "")):
            raise TfaError({"webauthn": f"origin: '{origin}' is not on the relying party "
                                        f"ID '{rp_id}'"})
    allow = props.get("allow-subdomains", True)
    return WebauthnConfig(rp=rp, id=rp_id, origin=origin,
                          allow_subdomains=bool(int(allow)) if allow is not None else True)


def format_webauthn_option(cfg: WebauthnConfig) -> str:
    """The option as PVE prints it in /cluster/options."""
    out = []
    if cfg.rp:
        out.append(f"rp={cfg.rp}")
    if cfg.origin:
        out.append(f"origin={cfg.origin}")
    if cfg.id:
        out.append(f"id={cfg.id}")
    if not cfg.allow_subdomains:
        out.append("allow-subdomains=0")
    return ",".join(out)


def _server(cfg: WebauthnConfig | None) -> Fido2Server:
    if cfg is None or not cfg.usable:
        raise TfaError({"type": "no webauthn configuration available"})

    def origin_ok(origin: str) -> bool:
        if cfg.origin:
            return hmac.compare_digest(origin.rstrip("/"), cfg.origin)
        if cfg.allow_subdomains:
            return verify_rp_id(cfg.id, origin)
        parts = urlsplit(origin)
        return parts.scheme == "https" and parts.hostname == cfg.id

    return Fido2Server(PublicKeyCredentialRpEntity(name=cfg.rp, id=cfg.id),
                       verify_origin=origin_ok)


def _credential(entry: TfaEntry) -> AttestedCredentialData:
    return AttestedCredentialData(websafe_decode(entry.secret))


def _webauthn_entries(user: TfaUser) -> list[TfaEntry]:
    return [e for e in user.entries if e.type == "webauthn"]


def _keep(user: TfaUser, now: float, new: WebauthnChallenge | None = None) -> TfaUser:
    """The user's pending challenges without the expired ones (and with `new`)."""
    kept = [c for c in user.challenges if c.expires > now]
    if new is not None:
        kept.append(new)
    return replace(user, challenges=tuple(kept[-MAX_CHALLENGES:]))


def spend_challenge(user: TfaUser, kind: str, value: str, now: float
                    ) -> tuple[TfaUser, WebauthnChallenge | None]:
    """Spend the pending challenge `value` of `kind` (None: unknown or expired)."""
    return _take(user, kind, value, now)


def _take(user: TfaUser, kind: str, value: str, now: float
          ) -> tuple[TfaUser, WebauthnChallenge | None]:
    """Spend the pending challenge `value` of `kind` (None: unknown or expired)."""
    found = None
    rest = []
    for c in user.challenges:
        if (found is None and c.kind == kind and c.expires > now
                and hmac.compare_digest(c.challenge.encode(), value.encode())):
            found = c
        elif c.expires > now:
            rest.append(c)
    return replace(user, challenges=tuple(rest)), found


def webauthn_register_begin(user: TfaUser, cfg: WebauthnConfig | None, *,
                            description: str, now: float) -> tuple[TfaUser, str]:
    """PVE's first POST /access/tfa/{userid} type=webauthn: the creation options as a
    JSON string (`{"publicKey": ...}`, binary fields base64url, `user.id` the user id as
    text, which the client encodes as UTF-8) and the user with the challenge pending."""
    server = _server(cfg)
    options, state = server.register_begin(
        PublicKeyCredentialUserEntity(name=user.userid, id=user.userid.encode(),
                                      display_name=user.userid),
        credentials=[_credential(e) for e in _webauthn_entries(user)],
        user_verification=_USER_VERIFICATION)
    data = dict(options)
    public_key = data["publicKey"]
    public_key["user"]["id"] = user.userid
    public_key["timeout"] = WEBAUTHN_TIMEOUT_MS
    pending = WebauthnChallenge("register", state["challenge"],
                                int(now) + WEBAUTHN_REGISTER_SECONDS,
                                state["user_verification"], description)
    return _keep(user, now, pending), json.dumps(data, separators=(",", ":"))


def _response_json(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        raise TfaError({"value": "invalid webauthn response: not JSON"}) from None
    if not isinstance(data, dict):
        raise TfaError({"value": "invalid webauthn response: not an object"})
    return data


def webauthn_register_finish(user: TfaUser, cfg: WebauthnConfig | None, challenge_str: str,
                             value: str, *, entry_id: str, now: float) -> TfaUser:
    """PVE's second POST: `challenge` as handed out, `value` the client's credential
    (JSON: id, rawId, type, response{attestationObject, clientDataJSON}, base64url).
    The challenge is spent whatever the outcome."""
    server = _server(cfg)
    user, pending = _take(user, "register", challenge_str, now)
    if pending is None:
        raise TfaError({"challenge": "no such challenge (expired or already used)"})
    response = _response_json(value)
    try:
        auth_data = server.register_complete(
            {"challenge": pending.challenge, "user_verification": pending.user_verification},
            response)
    except (ValueError, TypeError, KeyError) as exc:
        raise TfaError({"value": f"webauthn registration failed: {exc}"}) from None
    cred = auth_data.credential_data
    if cred is None:
        raise TfaError({"value": "webauthn registration failed: no credential"})
    if any(_credential(e).credential_id == cred.credential_id
           for e in _webauthn_entries(user)):
        raise TfaError({"value": "this credential is already registered"})
    entry = TfaEntry(id=entry_id, type="webauthn", description=pending.description,
                     created=int(now), secret=websafe_encode(bytes(cred)),
                     sign_count=auth_data.counter)
    return replace(user, entries=(*user.entries, entry))


def login_challenge(user: TfaUser, cfg: WebauthnConfig | None,
                    now: float) -> tuple[TfaUser, dict[str, Any]]:
    """The NeedTFA ticket's challenge (`challenge`), with PVE's `webauthn` request options
    (`{"publicKey": {challenge, rpId, allowCredentials, userVerification, timeout}}`) when
    the user has enabled WebAuthn entries and the datacenter option is set; the user
    comes back with that challenge pending."""
    out = challenge(user)
    creds = [_credential(e) for e in _webauthn_entries(user) if e.enable]
    if not creds or cfg is None or not cfg.usable:
        return _keep(user, now), out
    options, state = _server(cfg).authenticate_begin(creds,
                                                     user_verification=_USER_VERIFICATION)
    data = dict(options)
    data["publicKey"]["timeout"] = WEBAUTHN_TIMEOUT_MS
    out["webauthn"] = data
    pending = WebauthnChallenge("login", state["challenge"],
                                int(now) + WEBAUTHN_LOGIN_SECONDS, state["user_verification"])
    return _keep(user, now, pending), out


def _verify_webauthn(user: TfaUser, cfg: WebauthnConfig | None, value: str,
                     now: float) -> TfaUser | None:
    """The user with the assertion's challenge spent and the entry's counter moved on,
    or None when refused (unknown challenge, bad signature, counter not increasing)."""
    try:
        server = _server(cfg)
        response = _response_json(value)
    except TfaError:
        return None
    challenge_str = response.get("challenge")
    if not isinstance(challenge_str, str):
        return None
    user, pending = _take(user, "login", challenge_str, now)
    if pending is None:
        return None
    indexed = [(i, e) for i, e in enumerate(user.entries) if e.enable and e.type == "webauthn"]
    try:
        creds = [_credential(e) for _, e in indexed]
        cred = server.authenticate_complete(
            {"challenge": pending.challenge, "user_verification": pending.user_verification},
            creds, response)
        counter = AuthenticationResponse.from_dict(response).response.authenticator_data.counter
    except (ValueError, TypeError, KeyError):
        return None
    i, entry = next((i, e) for (i, e), c in zip(indexed, creds, strict=True) if c == cred)
    # a cloned authenticator shows as a counter that does not move on (WebAuthn §6.1.1);
    # authenticators without a counter always send 0
    if (counter or entry.sign_count) and counter <= entry.sign_count:
        return None
    entries = list(user.entries)
    entries[i] = replace(entry, sign_count=counter)
    return replace(user, entries=tuple(entries))


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


def verify(user: TfaUser, response: str, now: float,
           webauthn: WebauthnConfig | None = None) -> tuple[TfaUser, str]:
    """Check a PVE TFA response (``totp:123456``, ``recovery:xxxx-xxxx-xxxx-xxxx`` or
    ``webauthn:{assertion JSON with the challenge}``), as proxmox-tfa's `TfaConfig::verify`.

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
    if kind == "webauthn":
        verified = _verify_webauthn(user, webauthn, value, now)
        if verified is not None:
            return replace(verified, tfa_failures=0), OK
        # the challenge is spent even when the answer is refused
        spent, _ = _take(user, "login", _challenge_of(value), now)
        return _failed(spent, now, totp=False)
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


def _challenge_of(value: str) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return ""
    c = data.get("challenge") if isinstance(data, dict) else None
    return c if isinstance(c, str) else ""


def verify_response(user: TfaUser, response: str, now: float,
                    webauthn: WebauthnConfig | None = None) -> tuple[TfaUser, bool]:
    """`verify` with a yes/no answer."""
    new, outcome = verify(user, response, now, webauthn)
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
