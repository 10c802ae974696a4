"""OpenID Connect realms (PVE's `openid` type): the authorization-code flow with PKCE
and a nonce, the ID token's checks, and what a login does to users and groups.

Owns the pending logins in etcd: `/binome/openid-state/<state>` (outside the access
configuration's prefix: it is login state, not configuration, and changes no config
version). Each is bound to a lease of `STATE_TTL` seconds and spent by deleting it, so
a state works once, on any node, and an abandoned one vanishes by itself. It holds the
nonce and the PKCE verifier, which never leave the cluster.

The protocol work is authlib's (the authorization URL with its S256 challenge, the
token request with the client's credentials) and joserfc's (the ID token's signature
against the provider's JWKS); authlib's `CodeIDToken` checks iss, aud, exp, iat,
nonce, azp and at_hash. Discovery follows OpenID Connect Discovery 1.0; the issuer
announced must be the one configured. The client secret (`client-key`) is the realm's
write-only secret (see model.Realm); nothing here logs it or a token.

The pure parts (settings, pending-login records, the ID token's validation, the
username and the user/group changes of a login) take their inputs and clock as
arguments, so unit tests drive them without a provider.
"""

from __future__ import annotations

import logging
import secrets as _random
from dataclasses import dataclass, replace
from typing import Any, Protocol

from binome.access.model import (
    AccessConfig,
    Group,
    Realm,
    User,
    ValidationError,
    split_userid,
    verify_groupid,
)

log = logging.getLogger("binome.access.openid")

STATE_PREFIX = "/binome/openid-state/"
STATE_TTL = 600            # seconds from auth-url to login: a person types a password
DEFAULT_SCOPES = "email profile"
CLOCK_LEEWAY = 60          # seconds of clock skew tolerated on exp/iat
HTTP_TIMEOUT = 10.0


class OpenIdError(Exception):
    """A login or discovery refused; the text names the reason and holds no secret
    (it is logged; the client reads PVE's bare "authentication failure" unless the
    reason concerns only the request itself, see `public`)."""

    def __init__(self, message: str, *, public: bool = False) -> None:
        super().__init__(message)
        self.public = public


@dataclass(frozen=True)
class OpenIdSettings:
    """A realm's OpenID options, with PVE's defaults."""

    realm: str
    issuer: str
    client_id: str
    client_key: str | None = None
    scopes: str = DEFAULT_SCOPES
    prompt: str | None = None
    acr_values: str | None = None
    username_claim: str = "sub"
    autocreate: bool = False
    groups_claim: str | None = None
    groups_autocreate: bool = False
    groups_overwrite: bool = False
    query_userinfo: bool = True
    audiences: tuple[str, ...] = ()

    @classmethod
    def from_realm(cls, realm: Realm) -> OpenIdSettings:
        if realm.type != "openid":
            raise OpenIdError(f"wrong realm type ({realm.type} != openid)", public=True)
        o = realm.options
        audiences = tuple(a for a in str(o.get("audiences", "")).replace(",", " ").split()
                          if a)
        return cls(realm=realm.realm, issuer=str(o["issuer-url"]),
                   client_id=str(o["client-id"]), client_key=realm.client_key,
                   scopes=str(o.get("scopes") or DEFAULT_SCOPES),
                   prompt=o.get("prompt") or None, acr_values=o.get("acr-values") or None,
                   username_claim=str(o.get("username-claim") or "sub"),
                   autocreate=bool(o.get("autocreate", 0)),
                   groups_claim=o.get("groups-claim") or None,
                   groups_autocreate=bool(o.get("groups-autocreate", 0)),
                   groups_overwrite=bool(o.get("groups-overwrite", 0)),
                   query_userinfo=bool(o.get("query-userinfo", 1)), audiences=audiences)

    @property
    def scope(self) -> str:
        """`openid` first, always (PVE adds it too), then the configured scopes."""
        rest = [s for s in self.scopes.replace(",", " ").split() if s != "openid"]
        return " ".join(["openid", *rest])


# -- pending logins ----------------------------------------------------------------------

@dataclass(frozen=True)
class PendingLogin:
    """What auth-url remembers for login: the state is the key, the rest stays here."""

    state: str
    realm: str
    redirect_url: str
    nonce: str
    code_verifier: str
    expires: float

    @classmethod
    def new(cls, realm: str, redirect_url: str, now: float) -> PendingLogin:
        # 256 bits each; the verifier is within RFC 7636's 43-128 characters
        return cls(state=_random.token_urlsafe(32), realm=realm, redirect_url=redirect_url,
                   nonce=_random.token_urlsafe(32), code_verifier=_random.token_urlsafe(48),
                   expires=now + STATE_TTL)

    def to_doc(self) -> dict[str, Any]:
        return {"realm": self.realm, "redirect_url": self.redirect_url, "nonce": self.nonce,
                "code_verifier": self.code_verifier, "expires": self.expires}

    @classmethod
    def from_doc(cls, state: str, doc: dict[str, Any]) -> PendingLogin:
        return cls(state=state, realm=str(doc["realm"]), redirect_url=str(doc["redirect_url"]),
                   nonce=str(doc["nonce"]), code_verifier=str(doc["code_verifier"]),
                   expires=float(doc["expires"]))


def check_state_shape(state: str) -> None:
    """A state is what `PendingLogin.new` makes: refuse anything else before a lookup
    (the value becomes part of an etcd key)."""
    if not (20 <= len(state) <= 128) or not all(c.isalnum() or c in "-_" for c in state):
        raise OpenIdError("malformed openid state", public=True)


class StateStore(Protocol):
    """The part of binome.store.client.Store the pending logins use."""

    async def grant_lease(self, ttl: int) -> int: ...
    async def put(self, key: str, value: Any, *, lease: int | None = None) -> None: ...
    async def get(self, key: str, *, serializable: bool = False) -> Any: ...
    async def delete(self, key: str) -> bool: ...


class PendingLogins:
    """The pending logins in etcd (see the module docstring)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def put(self, pending: PendingLogin) -> None:
        lease = await self.store.grant_lease(STATE_TTL)
        await self.store.put(STATE_PREFIX + pending.state, pending.to_doc(), lease=lease)

    async def take(self, state: str, now: float) -> PendingLogin:
        """The pending login of `state`, spent: of two logins racing with one state,
        only the one whose delete removed the key goes on."""
        check_state_shape(state)
        key = STATE_PREFIX + state
        entry = await self.store.get(key)
        if entry is None or not await self.store.delete(key):
            raise OpenIdError("openid state is unknown, expired or already used", public=True)
        try:
            pending = PendingLogin.from_doc(state, entry.value)
        except (KeyError, TypeError, ValueError):
            raise OpenIdError("openid state record is invalid", public=True) from None
        if now >= pending.expires:     # the lease may outlive its TTL by a little
            raise OpenIdError("openid state is unknown, expired or already used", public=True)
        return pending


# -- the provider's answers, checked -------------------------------------------------------

REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


def check_metadata(settings: OpenIdSettings, metadata: Any) -> dict[str, Any]:
    """The discovery document, if it is one for the configured issuer (OIDC Discovery
    §4.3: the issuer announced must be the issuer asked, exactly)."""
    if not isinstance(metadata, dict):
        raise OpenIdError("discovery document is not a JSON object")
    missing = [k for k in REQUIRED_METADATA if not isinstance(metadata.get(k), str)]
    if missing:
        raise OpenIdError(f"discovery document lacks {', '.join(missing)}")
    if metadata["issuer"] != settings.issuer:
        raise OpenIdError(f"discovery document names issuer '{metadata['issuer']}', not "
                          f"the configured '{settings.issuer}'")
    return metadata


def validate_id_token(id_token: str, *, jwks: dict[str, Any], metadata: dict[str, Any],
                      settings: OpenIdSettings, nonce: str, access_token: str | None,
                      now: float) -> dict[str, Any]:
    """The ID token's claims after checking its signature against the provider's keys
    and iss, aud (client id or a configured audience), exp, iat, nonce, azp, at_hash."""
    # imported here: only nodes with an OpenID realm need them
    from authlib.oidc.core import CodeIDToken
    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    algorithms = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    # "none" and symmetric algorithms are refused: the signature must be the provider's
    algorithms = [a for a in algorithms if a != "none" and not a.startswith("HS")]
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]  # checked by joserfc
        token = jwt.decode(id_token, keys, algorithms=algorithms)
    except (JoseError, ValueError, TypeError) as exc:
        raise OpenIdError(f"ID token signature invalid ({type(exc).__name__})") from None
    params = {"nonce": nonce, "client_id": settings.client_id}
    if access_token:
        params["access_token"] = access_token
    options = {"iss": {"essential": True, "value": settings.issuer},
               "aud": {"essential": True,
                       "values": [settings.client_id, *settings.audiences]}}
    claims = CodeIDToken(token.claims, token.header, options, params)
    try:
        claims.validate(now=int(now), leeway=CLOCK_LEEWAY)
    except Exception as exc:   # authlib's JoseError subclasses: name which claim failed
        raise OpenIdError(f"ID token refused: {getattr(exc, 'description', exc)}") from None
    return dict(claims)


def merge_userinfo(claims: dict[str, Any], userinfo: Any) -> dict[str, Any]:
    """The ID token's claims completed by the userinfo answer, which must be about the
    same subject (OIDC Core §5.3.2); the ID token's own values win."""
    if not isinstance(userinfo, dict):
        raise OpenIdError("userinfo answer is not a JSON object")
    if userinfo.get("sub") != claims.get("sub"):
        raise OpenIdError("userinfo answer is about another subject")
    return {**userinfo, **claims}


def username_of(claims: dict[str, Any], settings: OpenIdSettings) -> str:
    """`<claim value>@<realm>` as PVE makes it (`subject` and `username` are PVE's old
    names for sub and preferred_username)."""
    attr = settings.username_claim
    value = claims.get(attr)
    if value is None and attr == "subject":
        value = claims.get("sub")
    elif value is None and attr == "username":
        value = claims.get("preferred_username")
    if value is None or not isinstance(value, str | int):
        raise OpenIdError(f"missing configured claim '{attr}' in returned info object")
    userid = f"{value}@{settings.realm}"
    try:
        split_userid(userid)
    except ValidationError:
        raise OpenIdError(f"claim '{attr}' gives an invalid user name") from None
    return userid


@dataclass(frozen=True)
class LoginEffect:
    """What a login changed: the new configuration and a line per change (logged)."""

    config: AccessConfig
    notes: tuple[str, ...] = ()


def apply_login(cfg: AccessConfig, userid: str, claims: dict[str, Any],
                settings: OpenIdSettings, now: float) -> LoginEffect:
    """PVE's login effects: autocreate the user (email, given and family name from the
    claims), refuse a missing, disabled or expired one, then map the groups claim
    (`<group>-<realm>`; invalid names skipped; existing groups only unless
    groups-autocreate; groups-overwrite first drops all the user's groups)."""
    notes: list[str] = []
    users = dict(cfg.users)
    groups = dict(cfg.groups)
    user = users.get(userid)
    if user is None:
        if not settings.autocreate:
            raise OpenIdError(f"user '{userid}' does not exist")
        fields = {"email": claims.get("email"), "firstname": claims.get("given_name"),
                  "lastname": claims.get("family_name")}
        kept: dict[str, Any] = {k: v for k, v in fields.items() if isinstance(v, str) and v}
        try:
            user = User(userid, **kept)
        except ValidationError:    # a claim PVE's schema would refuse: create without it
            user = User(userid)
        notes.append(f"created user '{userid}' (openid autocreate)")
    elif not user.active(now):
        raise OpenIdError(f"user '{userid}' is disabled or expired")
    if settings.groups_claim:
        listed = claims.get(settings.groups_claim)
        if listed is None:
            notes.append(f"groups claim '{settings.groups_claim}' is not in the claims")
        elif not isinstance(listed, list):
            notes.append("openid groups list is not an array; groups are not updated")
        else:
            wanted: set[str] = set()
            for name in listed:
                candidate = f"{name}-{settings.realm}"
                try:
                    verify_groupid(str(name))
                    verify_groupid(candidate)
                except ValidationError:
                    notes.append(f"openid group '{name}' contains invalid characters")
                    continue
                wanted.add(candidate)
            if settings.groups_autocreate:
                for gid in sorted(wanted - set(groups)):
                    groups[gid] = Group(gid)
                    notes.append(f"created group '{gid}' (openid groups-autocreate)")
            else:
                wanted &= set(groups)
            kept_groups = () if settings.groups_overwrite else user.groups
            new_groups = tuple(sorted(set(kept_groups) | wanted))
            if new_groups != user.groups:
                notes.append(f"user '{userid}' groups: {', '.join(new_groups) or 'none'}")
                user = replace(user, groups=new_groups)
    users[userid] = user
    if users == cfg.users and groups == cfg.groups:
        return LoginEffect(cfg)
    return LoginEffect(replace(cfg, users=users, groups=groups), tuple(notes))


# -- the provider, over HTTP -----------------------------------------------------------------

class OpenIdProvider:
    """One realm's provider: discovery, the authorization URL, the code's exchange."""

    def __init__(self, settings: OpenIdSettings, metadata: dict[str, Any]) -> None:
        self.settings = settings
        self.metadata = metadata

    @classmethod
    async def discover(cls, settings: OpenIdSettings) -> OpenIdProvider:
        import httpx2
        url = settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                response = await http.get(url)
                response.raise_for_status()
                metadata = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise OpenIdError(f"OpenID discovery at {url} failed: "
                              f"{type(exc).__name__}: {exc}") from None
        return cls(settings, check_metadata(settings, metadata))

    def _client(self, redirect_url: str) -> Any:
        from authlib.integrations.httpx_client import AsyncOAuth2Client
        # no client-key: a public client (PKCE alone), as PVE allows
        auth_method = "client_secret_basic" if self.settings.client_key else "none"
        return AsyncOAuth2Client(client_id=self.settings.client_id,
                                 client_secret=self.settings.client_key,
                                 token_endpoint_auth_method=auth_method,
                                 scope=self.settings.scope, redirect_uri=redirect_url,
                                 code_challenge_method="S256", timeout=HTTP_TIMEOUT)

    def authorization_url(self, pending: PendingLogin) -> str:
        extra: dict[str, str] = {}
        if self.settings.prompt:
            extra["prompt"] = self.settings.prompt
        if self.settings.acr_values:
            extra["acr_values"] = self.settings.acr_values
        client = self._client(pending.redirect_url)
        url, _ = client.create_authorization_url(
            self.metadata["authorization_endpoint"], state=pending.state,
            nonce=pending.nonce, code_verifier=pending.code_verifier, **extra)
        return str(url)

    async def claims_for_code(self, code: str, pending: PendingLogin,
                              now: float) -> dict[str, Any]:
        """Exchange the code (with the PKCE verifier), check the ID token, add the
        userinfo claims if the realm asks for them."""
        import httpx2
        from authlib.common.errors import AuthlibBaseError
        try:
            async with self._client(pending.redirect_url) as client:
                token = await client.fetch_token(
                    self.metadata["token_endpoint"], grant_type="authorization_code",
                    code=code, code_verifier=pending.code_verifier)
                if not isinstance(token.get("id_token"), str):
                    raise OpenIdError("the token answer has no ID token")
                jwks_answer = await client.get(self.metadata["jwks_uri"])
                jwks_answer.raise_for_status()
                claims = validate_id_token(
                    token["id_token"], jwks=jwks_answer.json(), metadata=self.metadata,
                    settings=self.settings, nonce=pending.nonce,
                    access_token=token.get("access_token"), now=now)
                userinfo_url = self.metadata.get("userinfo_endpoint")
                if self.settings.query_userinfo and userinfo_url and \
                        token.get("access_token"):
                    answer = await client.get(userinfo_url)
                    answer.raise_for_status()
                    claims = merge_userinfo(claims, answer.json())
                return claims
        except AuthlibBaseError as exc:    # the provider refused the code (its error code)
            raise OpenIdError(f"token request refused: {exc.error}") from None
        except (httpx2.HTTPError, ValueError) as exc:
            raise OpenIdError(f"provider request failed: {type(exc).__name__}") from None
