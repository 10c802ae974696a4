"""/access/openid: login with an OpenID Connect realm (PVE's API2/OpenId.pm).

`auth-url` discovers the realm's provider, stores a pending login (state, nonce, PKCE
verifier; access/openid.py owns it) and answers the provider's authorization URL. The
browser comes back to `redirect-url` with `code` and `state`; `login` spends the state,
exchanges the code, checks the ID token, applies autocreate and the groups claim, and
answers a ticket as POST /access/ticket does. As PVE, a refused login is a 401
"authentication failure" and its reason goes to the log; only reasons about the
request itself (a state unknown, expired, spent or for another redirect URL) are told.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from binome.access.model import AccessConfig, ValidationError
from binome.access.openid import (
    OpenIdError,
    OpenIdProvider,
    OpenIdSettings,
    PendingLogin,
    PendingLogins,
    apply_login,
    username_of,
)
from binome.access.permission import AnyUser
from binome.access.repository import AccessConflict
from binome.access.service import AuthRefused
from binome.api.context import RequestContext
from binome.api.errors import ApiError, AuthError, ParamError
from binome.api.methods.access import LOGIN_FAILURE_DELAY, _full_ticket, _source
from binome.api.methods.domains import REALM
from binome.api.registry import WORLD, registry
from binome.api.schema import Param

log = logging.getLogger("binome.api.openid")

REDIRECT_URL = Param(max_length=255, pattern=r"https?://\S+",
                     description="Redirection Url. The client should set this to the used "
                     "server url (location.origin).")


def _pending_logins(ctx: RequestContext) -> PendingLogins:
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not in a cluster: no OpenID realm")
    return PendingLogins(store)


async def _settings(ctx: RequestContext, realm_id: str) -> OpenIdSettings:
    realm = (await ctx.services.access.config()).realms.get(realm_id)
    if realm is None:
        raise ParamError({"realm": f"authentication domain '{realm_id}' does not exist"})
    try:
        return OpenIdSettings.from_realm(realm)
    except OpenIdError as exc:
        raise ParamError({"realm": str(exc)}) from None


@registry.register(
    "GET", "/access/openid", name="openid_index",
    permission=AnyUser("none: a fixed list of subdirectories, as PVE"),
    description="Directory index.", returns={"type": "array"},
)
async def openid_index(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, str]]:
    return [{"subdir": "auth-url"}, {"subdir": "login"}]


@registry.register(
    "POST", "/access/openid/auth-url", name="openid_auth_url", permission=WORLD,
    description="Get the OpenId Authorization Url for the specified realm.",
    parameters={"realm": REALM, "redirect-url": REDIRECT_URL},
    returns={"type": "string", "description": "Redirection URL."},
)
async def openid_auth_url(ctx: RequestContext, params: dict[str, Any]) -> str:
    settings = await _settings(ctx, params["realm"])
    try:
        provider = await OpenIdProvider.discover(settings)
    except OpenIdError as exc:
        log.warning("openid realm %s: %s", settings.realm, exc)
        raise ApiError(500, f"OpenID provider of realm '{settings.realm}' unavailable: "
                       f"{exc}") from None
    pending = PendingLogin.new(settings.realm, params["redirect-url"], ctx.services.access.now())
    await _pending_logins(ctx).put(pending)
    return provider.authorization_url(pending)


@registry.register(
    "POST", "/access/openid/login", name="openid_login", permission=WORLD,
    description="Verify OpenID authorization code and create a ticket.",
    parameters={"state": Param(max_length=1024, description="OpenId state."),
                "code": Param(max_length=1024, secret=True,
                              description="OpenId authorization code."),
                "redirect-url": REDIRECT_URL},
    returns={"type": "object", "properties": {"username": {"type": "string"},
                                              "ticket": {"type": "string"},
                                              "CSRFPreventionToken": {"type": "string"},
                                              "cap": {"type": "object"}}},
)
async def openid_login(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    access = ctx.services.access
    source = _source(ctx)
    try:
        pending = await _pending_logins(ctx).take(params["state"], access.now())
        if pending.redirect_url != params["redirect-url"]:
            raise OpenIdError("redirect-url differs from the one of auth-url", public=True)
        realm = (await access.config()).realms.get(pending.realm)
        if realm is None:
            raise OpenIdError(f"authentication domain '{pending.realm}' does not exist")
        settings = OpenIdSettings.from_realm(realm)
        provider = await OpenIdProvider.discover(settings)
        claims = await provider.claims_for_code(params["code"], pending, access.now())
        userid = username_of(claims, settings)
        await _apply(ctx, userid, claims, settings)
    except OpenIdError as exc:
        log.warning("openid authentication failure; rhost=%s msg=%s", source, exc)
        await asyncio.sleep(LOGIN_FAILURE_DELAY)
        raise AuthError(f"authentication failure: {exc}" if exc.public
                        else "authentication failure") from None
    log.info("successful openid auth for user '%s'", userid)
    return await _full_ticket(ctx, await ctx.services.authkey(), userid)


async def _apply(ctx: RequestContext, userid: str, claims: dict[str, Any],
                 settings: OpenIdSettings) -> None:
    """Autocreate and the groups claim, stored as one access change (re-planned on
    every attempt, so a concurrent change is not overwritten); no write if nothing
    changes, which is every login of a known user without a groups claim."""
    access = ctx.services.access
    notes: list[tuple[str, ...]] = []

    def op(cfg: AccessConfig) -> AccessConfig:
        effect = apply_login(cfg, userid, claims, settings, access.now())
        notes.append(effect.notes)
        return effect.config

    op(await access.config())            # refuses a missing or disabled user first
    if not notes[-1]:
        return
    try:
        await access.change(userid, f"openid login of {userid}", op)
    except (AccessConflict, AuthRefused, ValidationError) as exc:
        raise OpenIdError(f"storing the login's changes failed: {exc}") from None
    for line in notes[-1]:
        log.info("openid realm %s: %s", settings.realm, line)
