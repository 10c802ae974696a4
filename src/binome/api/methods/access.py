"""POST /access/ticket: login (realms `pve`, `pam`, LDAP/AD), PVE's two-step TFA login, and
ticket renewal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any
from urllib.parse import quote

from binome.access import tfa
from binome.access.model import ROOT_USER, is_tokenid, normalize_path, split_tokenid
from binome.access.permission import AnyUser
from binome.access.privileges import is_privilege
from binome.access.repository import AccessRepository
from binome.access.service import AuthRefused
from binome.api import auth
from binome.api.context import RequestContext
from binome.api.errors import AuthError, ParamError, PermissionDenied
from binome.api.registry import WORLD, CliSpec, registry
from binome.api.schema import Param
from binome.schema import split_list

log = logging.getLogger("binome.api.access")

LOGIN_FAILURE_DELAY = 0.5    # slows a guesser; the rate limiter stops one


def _source(ctx: RequestContext) -> str:
    if ctx.request is None or ctx.request.remote is None:
        return "local"
    return ctx.request.remote


async def _check_password(ctx: RequestContext, userid: str, password: str) -> bool:
    key = await ctx.services.authkey()
    try:
        if auth.verify_ticket(key, password) == userid:
            await ctx.services.access.check_active(userid)
            return True   # renewal: the password is a still-valid ticket of this user
    except (AuthError, AuthRefused):
        pass
    return await ctx.services.access.verify_password(userid, password, auth.pam_authenticate)


TFA_TICKET_LIFETIME = 300


def _tfa_key(key: bytes) -> bytes:
    # a key of its own: a partial (TFA-pending) ticket can never verify as a full one
    return hashlib.sha256(b"binome-tfa-partial-ticket\0" + key).digest()


def _partial_ticket(key: bytes, userid: str, challenge: dict[str, Any], now: float) -> str:
    """PVE's `PVE:!tfa!<challenge>:<time>::<sig>`, the user id bound as signed data."""
    plain = f"PVE:!tfa!{quote(json.dumps(challenge, separators=(',', ':')), safe='')}:" \
            f"{int(now):08X}"
    sig = hmac.new(_tfa_key(key), f"{plain}\0{userid}".encode(), hashlib.sha256).hexdigest()
    return f"{plain}::{sig}"


def _partial_ticket_valid(key: bytes, ticket: str, userid: str, now: float) -> bool:
    plain, sep, sig = ticket.partition("::")
    parts = plain.split(":")
    if not sep or len(parts) != 3 or not parts[1].startswith("!tfa!"):
        return False
    want = hmac.new(_tfa_key(key), f"{plain}\0{userid}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, sig):
        return False
    try:
        age = now - int(parts[2], 16)
    except ValueError:
        return False
    return -30 <= age <= TFA_TICKET_LIFETIME


async def _refuse(ctx: RequestContext, userid: str, source: str,
                  message: str = "authentication failure",
                  answer: str | None = None) -> AuthError:
    """Count and log a failed login; `answer` is what the client reads (default: the
    logged message; PVE answers only "authentication failure")."""
    access = ctx.services.access
    access.limiter.failure(userid, source, access.now())
    log.warning("authentication failure; rhost=%s user=%s msg=%s", source, userid, message)
    await asyncio.sleep(LOGIN_FAILURE_DELAY)
    return AuthError(message if answer is None else answer)


async def _second_factor(ctx: RequestContext, userid: str, response: str) -> str:
    """Spend `response` (`totp:CODE` / `recovery:KEY`) with a compare on the user's TFA
    key: of two logins racing with one code, one wins. Returns `tfa.verify`'s outcome
    (counters and PVE's locks are stored with it)."""
    access = ctx.services.access
    store = ctx.services.cluster.store
    if store is None:
        return tfa.FAILED
    now = access.now()
    webauthn = (await access.config()).webauthn
    outcome = await AccessRepository(store).update_tfa_state(
        userid, lambda t: tfa.verify(t, response, now, webauthn))
    return str(outcome)


async def _factor_refused(ctx: RequestContext, userid: str, source: str,
                          outcome: str) -> AuthError:
    """PVE logs why (`failed 2nd factor: TOTP limit reached, locked`, ...) and answers
    a bare 401 "authentication failure", locked or not."""
    text = tfa.LOG_TEXT.get(outcome, "failed 2nd factor")
    if outcome == tfa.LOCKED:
        text += " (locked: unlock-tfa, a recovery key for TOTP, or the hour's end)"
    return await _refuse(ctx, userid, source, text, answer="authentication failure")


async def _login_challenge(ctx: RequestContext, cfg: Any, tfa_user: Any,
                           now: float) -> dict[str, Any]:
    """The NeedTFA ticket's challenge; with WebAuthn entries, PVE's `webauthn` request
    options, whose challenge is stored with the user's TFA state until answered."""
    store = ctx.services.cluster.store
    if store is None or not any(e.type == "webauthn" for e in tfa_user.entries):
        return tfa.challenge(tfa_user)
    result = await AccessRepository(store).update_tfa_state(
        tfa_user.userid, lambda t: tfa.login_challenge(t, cfg.webauthn, now))
    return dict(result)


@registry.register(
    "POST", "/access/ticket", name="create_ticket", permission=WORLD,
    description="Create or verify an authentication ticket.",
    parameters={
        "username": Param(description="User name (user@realm).", max_length=64),
        "password": Param(description="The secret password, or a valid ticket to renew; "
                          "with tfa-challenge, the TFA response (totp:CODE, recovery:KEY, "
                          "webauthn:JSON).",
                          secret=True),
        "realm": Param(optional=True, description="Realm, if not part of the user name.",
                       max_length=32),
        "otp": Param(optional=True, secret=True,
                     description="One-time password for two-factor login (one step)."),
        "tfa-challenge": Param(optional=True, max_length=8192,
                               description="The signed TFA challenge ticket of step one."),
        "path": Param(optional=True, max_length=64,
                      description="Verify ticket, and check if user have access 'privs' on "
                                  "'path' (answers no new ticket)."),
        "privs": Param(optional=True, max_length=64,
                       description="Verify ticket, and check if user have access 'privs' on "
                                   "'path' (a privilege list)."),
        "new-format": Param(type="boolean", optional=True, description="Ignored."),
    },
    returns={"type": "object", "properties": {"username": {"type": "string"},
                                              "ticket": {"type": "string"},
                                              "CSRFPreventionToken": {"type": "string"},
                                              "NeedTFA": {"type": "integer"}}},
)
async def create_ticket(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    userid = params["username"]
    if "@" not in userid:
        userid = f"{userid}@{params.get('realm') or 'pam'}"
    access = ctx.services.access
    source = _source(ctx)
    wait = access.limiter.retry_after(userid, source, access.now())
    if wait > 0:
        log.warning("authentication refused (rate limit); rhost=%s user=%s", source, userid)
        raise AuthError(access.limiter.message(wait))
    key = await ctx.services.authkey()
    if params.get("path") is not None or params.get("privs") is not None:
        return await _verify_auth(ctx, key, userid, source, params)
    challenge_ticket = params.get("tfa-challenge")
    if challenge_ticket:
        # step two: the partial ticket proves the password; the password is the factor
        if not _partial_ticket_valid(key, challenge_ticket, userid, access.now()):
            raise await _refuse(ctx, userid, source, "invalid tfa challenge")
        try:
            await access.check_active(userid)
        except AuthRefused:
            raise await _refuse(ctx, userid, source) from None
        outcome = await _second_factor(ctx, userid, params["password"])
        if outcome != tfa.OK:
            raise await _factor_refused(ctx, userid, source, outcome)
        return await _full_ticket(ctx, key, userid)
    renewal = _is_renewal(key, userid, params["password"])
    if not await _check_password(ctx, userid, params["password"]):
        raise await _refuse(ctx, userid, source)
    if not renewal:
        cfg = await access.config()
        tfa_user = cfg.tfa.get(userid)
        _, realm = userid.rsplit("@", 1)
        realm_cfg = cfg.realms.get(realm)
        if realm_cfg is not None and realm_cfg.tfa and not (
                tfa_user and any(e.enable and e.type == "totp" for e in tfa_user.entries)):
            raise await _refuse(ctx, userid, source, f"realm '{realm}' requires two-factor "
                                "authentication (TOTP) and the user has none configured")
        if tfa_user is not None and tfa.has_factors(tfa_user):
            if params.get("otp"):
                # PVE's one-step form: the code comes with the password
                outcome = await _second_factor(ctx, userid, f"totp:{params['otp']}")
                if outcome != tfa.OK:
                    raise await _factor_refused(ctx, userid, source, outcome)
                return await _full_ticket(ctx, key, userid)
            now = access.now()
            challenge = await _login_challenge(ctx, cfg, tfa_user, now)
            return {"username": userid, "NeedTFA": 1,
                    "ticket": _partial_ticket(key, userid, challenge, now),
                    # a CSRF token for a name no user can have: useless until step two
                    "CSRFPreventionToken": auth.make_csrf_token(key, "!tfa!" + userid)}
    return await _full_ticket(ctx, key, userid)


def _path_privs(params: dict[str, Any]) -> tuple[str, list[str]]:
    """PVE's `requires` between path and privs, and privs' pve-priv-list format (400s)."""
    path, privs = params.get("path"), params.get("privs")
    if not path or not privs:
        missing = "privs" if path else "path"
        raise ParamError({missing: "property is missing and it is not optional (required "
                                   "with '" + ("path" if path else "privs") + "')"})
    names = split_list(privs)
    bad = [n for n in names if not is_privilege(n)]
    if bad or not names:
        raise ParamError({"privs": f"invalid privilege '{bad[0] if bad else privs}'"})
    return path, names


def _no_permission(userid: str, source: str, message: str) -> AuthError:
    """A verified user without the privileges: PVE's bare 401, logged, but not counted as
    a failed login (a proxy asking again must not lock the user out)."""
    log.warning("authentication failure; rhost=%s user=%s msg=%s", source, userid, message)
    return AuthError()


async def _verify_auth(ctx: RequestContext, key: bytes, userid: str, source: str,
                       params: dict[str, Any]) -> dict[str, Any]:
    """PVE's ticket verification mode (AccessControl.pm verify_auth), as proxies use it:
    the password is this user's valid ticket, or their password (with `otp` when they
    have second factors); the user must hold every privilege of `privs` on `path`. The
    answer is the user name and `cap`, never a new ticket; any failure is PVE's bare 401
    (the reason is logged)."""
    path, names = _path_privs(params)
    access = ctx.services.access
    norm = normalize_path(path)
    if norm is None:
        raise _no_permission(userid, source, f"invalid path - {path}")
    try:
        await access.check_active(userid)
    except AuthRefused:
        raise await _refuse(ctx, userid, source) from None
    password = params["password"]
    if not _is_renewal(key, userid, password):
        if not await access.verify_password(userid, password, auth.pam_authenticate):
            raise await _refuse(ctx, userid, source)
        tfa_user = (await access.config()).tfa.get(userid)
        if tfa_user is not None and tfa.has_factors(tfa_user):
            if not params.get("otp"):
                raise await _refuse(ctx, userid, source, "second factor required",
                                    answer="authentication failure")
            outcome = await _second_factor(ctx, userid, f"totp:{params['otp']}")
            if outcome != tfa.OK:
                raise await _factor_refused(ctx, userid, source, outcome)
    evaluator = await access.evaluator()
    if not evaluator.check(userid, norm, names):
        raise _no_permission(userid, source, f"no permission ({path}, {params['privs']})")
    access.limiter.success(userid)
    data: dict[str, Any] = {"username": userid,
                            "cap": {**evaluator.cap(userid), "sdn": {}, "mapping": {}}}
    if ctx.services.cluster.cluster_name and evaluator.check(userid, "/", ["Sys.Audit"]):
        data["clustername"] = ctx.services.cluster.cluster_name
    return data


def _is_renewal(key: bytes, userid: str, password: str) -> bool:
    """A still-valid full ticket of this user renews without asking the factor again."""
    try:
        return auth.verify_ticket(key, password) == userid
    except AuthError:
        return False


async def _full_ticket(ctx: RequestContext, key: bytes, userid: str) -> dict[str, Any]:
    access = ctx.services.access
    access.limiter.success(userid)
    evaluator = await access.evaluator()
    data = {"username": userid, "ticket": auth.make_ticket(key, userid),
            "CSRFPreventionToken": auth.make_csrf_token(key, userid),
            "cap": {**evaluator.cap(userid), "sdn": {}, "mapping": {}}}
    if ctx.services.cluster.cluster_name:
        data["clustername"] = ctx.services.cluster.cluster_name
    return data


@registry.register(
    "GET", "/access/permissions", name="access_permissions",
    permission=AnyUser("another user's or token's: Sys.Audit on /access, or one's own token"),
    description="The effective privileges of a user (default: the caller) by path.",
    parameters={"userid": Param(optional=True, format="pve-userid-or-token", max_length=128,
                                description="User ID or full API token ID "
                                            "(user@realm!tokenid)."),
                "path": Param(optional=True, max_length=256,
                              description="Only dump this specific path, not the whole "
                                          "tree.")},
    returns={"type": "object"},
    cli=CliSpec(("user", "permissions"), positional=("userid",), formatter="permissions"),
)
async def access_permissions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    evaluator = await ctx.services.access.evaluator()
    target = params.get("userid") or ctx.userid
    if target != ctx.userid and ctx.userid != ROOT_USER:
        # PVE: another user or token needs Sys.Audit on /access, or be one's own token
        own_token = is_tokenid(target) and split_tokenid(target)[0] == ctx.userid
        if not own_token and not evaluator.check(ctx.userid, "/access", ["Sys.Audit"]):
            raise PermissionDenied("/access, Sys.Audit")
    return evaluator.permissions(target, params.get("path"))


