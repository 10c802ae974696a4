"""The access model as plain data: users, groups, roles, ACL entries, pools, API tokens,
realms and second factors, with PVE's id and path rules and per-parameter errors.

Pure: no I/O. `AccessConfig` is one consistent snapshot (what PVE keeps in user.cfg,
domains.cfg and priv/), the input of the evaluator and the unit the repository stores.
Secret material appears only as hashes (`Token.secret_hash`, `User.password_hash`,
`TfaEntry.secret` for a TOTP seed) and `to_public()` views never include it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final, Literal

from binome.access.roles import BUILTIN_ROLES, NO_ACCESS

ROOT_USER: Final = "root@pam"
BUILTIN_REALMS: Final = ("pam", "pve")
REALM_TYPES: Final = ("pam", "pve", "ldap", "ad", "openid")

_REALM = r"[A-Za-z][A-Za-z0-9._-]{1,31}"
_TOKEN = r"[A-Za-z][A-Za-z0-9._-]+"
USERID_RE: Final = re.compile(rf"^(?P<name>[^\s:/]+)@(?P<realm>{_REALM})$")
TOKENID_RE: Final = re.compile(rf"^(?P<user>[^\s:/]+@{_REALM})!(?P<token>{_TOKEN})$")
REALM_RE: Final = re.compile(rf"^{_REALM}$")
TOKEN_NAME_RE: Final = re.compile(rf"^{_TOKEN}$")
GROUP_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
POOL_PART_RE: Final = re.compile(r"^[A-Za-z0-9._-]+$")
STORAGE_RE: Final = re.compile(r"^[a-z][a-z0-9._-]*[a-z0-9]$", re.I)
EMAIL_RE: Final = re.compile(r"^[^\s@]+@[^\s@]+$")

# check_path in pve-access-control 9.1 (AccessControl.pm)
_ID = r"[A-Za-z0-9._-]+"
_ACL_PATH_RE: Final = re.compile(
    rf"""^(
      /
    | /access | /access/groups(/{_ID})? | /access/realm(/{_ID})?
    | /nodes(/{_ID})?
    | /vms(/[1-9][0-9]{{2,}})?
    | /storage(/{_ID})?
    | /pool(/{_ID}){{0,3}}
    | /mapping(/(pci|usb|dir|cpu|hwrng)(/{_ID})?)?
    | /mapping/notifications
    | /sdn(/(controllers|dns|fabrics|ipams|prefix-lists|route-maps|zones)(/{_ID})?)?
    | /sdn/zones/{_ID}/{_ID}(/[0-9]+)?
    )$""",
    re.X,
)


class ValidationError(ValueError):
    """Refused input; `errors` maps each parameter to PVE-style text."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _need(ok: bool, param: str, text: str) -> None:
    if not ok:
        raise ValidationError({param: text})


def split_userid(userid: str, param: str = "userid") -> tuple[str, str]:
    """`name@realm` -> (name, realm); PVE's 3-64 characters, no whitespace, ':' or '/'."""
    m = USERID_RE.match(userid)
    _need(bool(m) and 3 <= len(userid) <= 64, param, "invalid format")
    assert m is not None
    return m["name"], m["realm"]


def split_tokenid(tokenid: str, param: str = "tokenid") -> tuple[str, str]:
    """`user@realm!token` -> (userid, token name)."""
    m = TOKENID_RE.match(tokenid)
    _need(m is not None and len(m["user"]) <= 64, param, "invalid format")
    assert m is not None
    return m["user"], m["token"]


def is_tokenid(authid: str) -> bool:
    return "!" in authid


def verify_realm(realm: str, param: str = "realm") -> str:
    _need(bool(REALM_RE.match(realm)), param, "invalid format")
    return realm


def verify_token_name(name: str, param: str = "tokenid") -> str:
    _need(bool(TOKEN_NAME_RE.match(name)), param, "invalid format")
    return name


def verify_groupid(groupid: str, param: str = "groupid") -> str:
    _need(bool(GROUP_RE.match(groupid)) and len(groupid) <= 64, param,
          f"group name '{groupid}' contains invalid characters")
    return groupid


def verify_poolid(poolid: str, *, create: bool = False, param: str = "poolid") -> str:
    """Up to three levels `a/b/c`; a new pool's leaf starts with a letter (PVE)."""
    parts = poolid.split("/")
    _need(0 < len(parts) <= 3 and all(POOL_PART_RE.match(p) for p in parts), param,
          f"pool name '{poolid}' contains invalid characters")
    if create:
        _need(parts[-1][0].isalpha(), param, "pool name must start with a letter")
    return poolid


def verify_storage_id(storage: str, param: str = "storage") -> str:
    _need(bool(STORAGE_RE.match(storage)), param, f"invalid storage ID '{storage}'")
    return storage


def normalize_path(path: str) -> str | None:
    """PVE's normalize_path: collapse '/', drop a trailing one, add a leading one; None if
    a character is outside [A-Za-z0-9._/-]."""
    if not path:
        return None
    path = re.sub(r"/+", "/", path).rstrip("/") or "/"
    if not path.startswith("/"):
        path = "/" + path
    return path if re.fullmatch(r"[A-Za-z0-9._/-]+", path) else None


def verify_acl_path(path: str, param: str = "path") -> str:
    """The normalized path if an ACL may be set on it (PVE's check_path), else an error."""
    norm = normalize_path(path)
    _need(norm is not None and bool(_ACL_PATH_RE.match(norm)), param,
          f"invalid ACL path '{path}'")
    assert norm is not None
    return norm


def _text(value: str, param: str, limit: int) -> str:
    _need(len(value) <= limit, param, f"value may only be {limit} characters long")
    _need("\n" not in value or param == "comment", param, "value must not contain newlines")
    return value


@dataclass(frozen=True)
class User:
    userid: str
    enable: bool = True
    expire: int = 0                      # epoch seconds; 0 = never
    firstname: str = ""
    lastname: str = ""
    email: str = ""
    comment: str = ""
    keys: str = ""                       # legacy TFA keys; "x" = entries in the TFA store
    groups: tuple[str, ...] = ()
    password_hash: str | None = None     # argon2, pve realm only; never returned
    superuser: bool = False              # binome <= issue 10 record; read as Administrator on /

    def __post_init__(self) -> None:
        split_userid(self.userid)
        _need(self.expire >= 0, "expire", "value must be at least 0")
        _text(self.firstname, "firstname", 1024)
        _text(self.lastname, "lastname", 1024)
        _text(self.comment, "comment", 2048)
        if self.email:
            _need(len(self.email) <= 254 and bool(EMAIL_RE.match(self.email)), "email",
                  "value does not look like a valid email address")
        for g in self.groups:
            verify_groupid(g, "groups")

    @property
    def realm(self) -> str:
        return split_userid(self.userid)[1]

    def active(self, now: float) -> bool:
        """Enabled and not expired: PVE checks this on every request, not just at login."""
        if self.userid == ROOT_USER:
            return True
        return self.enable and (self.expire == 0 or now < self.expire)

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"userid": self.userid, "enable": int(self.enable),
                               "expire": self.expire, "groups": list(self.groups)}
        for k in ("firstname", "lastname", "email", "comment", "keys"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out


@dataclass(frozen=True)
class Group:
    groupid: str
    comment: str = ""

    def __post_init__(self) -> None:
        verify_groupid(self.groupid)
        _text(self.comment, "comment", 2048)


@dataclass(frozen=True)
class Role:
    roleid: str
    privs: frozenset[str]

    @property
    def special(self) -> bool:
        return self.roleid in BUILTIN_ROLES


UgidType = Literal["user", "group", "token"]


@dataclass(frozen=True)
class AclEntry:
    """One (path, principal, role) grant; PVE stores `propagate` per role and principal."""

    path: str
    ugid_type: UgidType
    ugid: str                            # userid, group id (without '@'), or full token id
    roleid: str
    propagate: bool = True

    def __post_init__(self) -> None:
        norm = normalize_path(self.path)
        _need(norm == self.path, "path", f"invalid ACL path '{self.path}'")
        if self.ugid_type == "user":
            split_userid(self.ugid, "users")
        elif self.ugid_type == "group":
            verify_groupid(self.ugid, "groups")
        elif self.ugid_type == "token":
            split_tokenid(self.ugid, "tokens")
        else:
            raise ValidationError({"type": f"invalid ACL principal type '{self.ugid_type}'"})

    def to_public(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.ugid_type, "ugid": self.ugid,
                "roleid": self.roleid, "propagate": int(self.propagate)}


@dataclass(frozen=True)
class Pool:
    poolid: str
    comment: str = ""
    vms: frozenset[int] = frozenset()
    storage: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        verify_poolid(self.poolid)
        _text(self.comment, "comment", 2048)
        for vmid in self.vms:
            _need(isinstance(vmid, int) and vmid >= 100, "vms", f"invalid vmid '{vmid}'")
        for s in self.storage:
            verify_storage_id(s)


@dataclass(frozen=True)
class Token:
    """An API token; the secret exists only as `secret_hash` (see tokens.py)."""

    tokenid: str                         # full id user@realm!name
    secret_hash: str
    expire: int = 0                      # 0 = the user's expiry
    privsep: bool = True
    comment: str = ""

    def __post_init__(self) -> None:
        split_tokenid(self.tokenid)
        _need(self.expire >= 0, "expire", "value must be at least 0")
        _text(self.comment, "comment", 2048)

    @property
    def userid(self) -> str:
        return split_tokenid(self.tokenid)[0]

    @property
    def name(self) -> str:
        return split_tokenid(self.tokenid)[1]

    def active(self, now: float) -> bool:
        return self.expire == 0 or now < self.expire

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokenid": self.name, "expire": self.expire,
                               "privsep": int(self.privsep)}
        if self.comment:
            out["comment"] = self.comment
        return out


RealmType = Literal["pam", "pve", "ldap", "ad", "openid"]
LDAP_MODES: Final = ("ldap", "ldaps", "ldap+starttls")
REMOVE_VANISHED: Final = ("acl", "entry", "properties")


@dataclass(frozen=True)
class Realm:
    """An authentication domain. Its secret is write-only, never in `to_public()`:
    `bind_password` (LDAP/AD bind) or `client_key` (OpenID client secret).

    `openid` realms log in by the redirect flow of access/openid.py, never by password.
    """

    realm: str
    type: RealmType
    comment: str = ""
    default: bool = False
    tfa: str = ""                        # "type=oath[,digits=6][,step=30]"
    options: dict[str, Any] = field(default_factory=dict)   # type-specific, see below
    bind_password: str | None = None
    client_key: str | None = None

    LDAP_OPTIONS: ClassVar[frozenset[str]] = frozenset({
        "server1", "server2", "port", "mode", "verify", "capath", "cert", "certkey",
        "sslversion", "base_dn", "user_attr", "bind_dn", "filter", "group_filter",
        "group_dn", "user_classes", "group_classes", "group_name_attr", "sync_attributes",
        "sync-defaults-options", "case-sensitive", "domain"})
    OPENID_OPTIONS: ClassVar[frozenset[str]] = frozenset({
        "issuer-url", "client-id", "autocreate", "username-claim",
        "groups-claim", "groups-autocreate", "groups-overwrite", "prompt", "scopes",
        "acr-values", "query-userinfo", "audiences"})

    def __post_init__(self) -> None:
        verify_realm(self.realm)
        _need(self.type in REALM_TYPES, "type", f"invalid realm type '{self.type}'")
        if self.realm in BUILTIN_REALMS or self.type in BUILTIN_REALMS:
            _need(self.realm == self.type, "realm",
                  f"the '{self.type}' realm type is built in and unique")
        _text(self.comment, "comment", 2048)
        if self.tfa:
            _need(bool(re.fullmatch(r"type=oath(,digits=[6-8])?(,step=\d{2,})?", self.tfa)),
                  "tfa", "only type=oath[,digits=6-8][,step=N] is supported")
        allowed: frozenset[str] = frozenset()
        if self.type in ("ldap", "ad"):
            allowed = self.LDAP_OPTIONS
            _need("server1" in self.options, "server1", "property is missing and it is not "
                  "optional")
            if self.type == "ldap":
                for key in ("base_dn", "user_attr"):
                    _need(key in self.options, key,
                          "property is missing and it is not optional")
            _need(self.options.get("mode", "ldap") in LDAP_MODES, "mode",
                  "value must be one of ldap, ldaps, ldap+starttls")
            port = self.options.get("port")
            _need(port is None or (isinstance(port, int) and 1 <= port <= 65535), "port",
                  "invalid port")
        elif self.type == "openid":
            allowed = self.OPENID_OPTIONS
            for key in ("issuer-url", "client-id"):
                _need(key in self.options, key, "property is missing and it is not optional")
        for key in self.options:
            _need(key in allowed, key, f"property is not defined in schema for '{self.type}'")
        _need(self.bind_password is None or self.type in ("ldap", "ad"), "password",
              "only LDAP and AD realms have a bind password")
        _need(self.client_key is None or self.type == "openid", "client-key",
              "only OpenID realms have a client key")
        if self.type == "openid":
            self._check_openid()

    def _check_openid(self) -> None:
        """PVE's patterns for the options it constrains; URLs must be http(s)."""
        o = self.options
        issuer = str(o.get("issuer-url", ""))
        _need(bool(re.fullmatch(r"https?://[^\s]+", issuer)) and len(issuer) <= 256,
              "issuer-url", "value must be an http or https URL (at most 256 characters)")
        _need(0 < len(str(o.get("client-id", ""))) <= 256, "client-id",
              "value must be 1 to 256 characters")
        _need(self.client_key is None or 0 < len(self.client_key) <= 256, "client-key",
              "value must be 1 to 256 characters")
        claim = o.get("groups-claim")
        _need(claim is None or bool(re.fullmatch(r"[A-Za-z0-9.\-_]{1,256}", str(claim))),
              "groups-claim", "value does not match the regex pattern")
        _need(bool(re.fullmatch(r"\S*", str(o.get("prompt", "")))), "prompt",
              "value does not match the regex pattern")
        _need(bool(re.fullmatch(r'[^\x00-\x1F\x7F <>#"]*', str(o.get("acr-values", "")))),
              "acr-values", "value does not match the regex pattern")

    def to_public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"realm": self.realm, "type": self.type, **self.options}
        if self.comment:
            out["comment"] = self.comment
        if self.default:
            out["default"] = 1
        if self.tfa:
            out["tfa"] = self.tfa
        return out


TfaType = Literal["totp", "recovery", "webauthn"]


@dataclass(frozen=True)
class TfaEntry:
    """A second factor. `secret` is the TOTP seed (base32), for recovery the salt of the
    key hashes, for WebAuthn the credential (fido2's AttestedCredentialData, base64url:
    its id and public key)."""

    id: str
    type: TfaType
    description: str = ""
    created: int = 0
    enable: bool = True
    secret: str = ""                                 # never returned
    recovery_hashes: tuple[str | None, ...] = ()     # None = that key was used
    last_step: int = -1                              # TOTP time step last accepted (replay)
    sign_count: int = 0                              # WebAuthn signature counter last seen

    def to_public(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "description": self.description,
                "created": self.created, "enable": int(self.enable)}


@dataclass(frozen=True)
class WebauthnChallenge:
    """A WebAuthn challenge handed out and not yet answered (PVE keeps them in tfa.cfg):
    `kind` register or login, the challenge (base64url), the user verification asked
    for, when it expires, and a registration's description."""

    kind: Literal["register", "login"]
    challenge: str
    expires: int
    user_verification: str | None = None
    description: str = ""


@dataclass(frozen=True)
class WebauthnConfig:
    """Datacenter option `webauthn` (PVE's datacenter.cfg): relying party name and ID,
    the origin users browse to (unset: any https origin on the ID, or a subdomain if
    `allow_subdomains`)."""

    rp: str = ""
    id: str = ""
    origin: str = ""
    allow_subdomains: bool = True

    @property
    def usable(self) -> bool:
        return bool(self.rp and self.id)


@dataclass(frozen=True)
class TfaUser:
    """A user's factors and lock state (PVE: 8 TOTP failures lock TOTP; 100 lock all)."""

    userid: str
    entries: tuple[TfaEntry, ...] = ()
    totp_failures: int = 0
    tfa_failures: int = 0
    tfa_locked_until: int = 0
    challenges: tuple[WebauthnChallenge, ...] = ()   # WebAuthn challenges pending

    @property
    def totp_locked(self) -> bool:
        return self.totp_failures >= 8


@dataclass(frozen=True)
class AccessConfig:
    """One snapshot of the whole access configuration."""

    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    roles: dict[str, frozenset[str]] = field(default_factory=dict)   # custom roles only
    acl: tuple[AclEntry, ...] = ()
    pools: dict[str, Pool] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    realms: dict[str, Realm] = field(default_factory=dict)
    tfa: dict[str, TfaUser] = field(default_factory=dict)
    webauthn: WebauthnConfig | None = None                         # datacenter option

    def role_privs(self, roleid: str) -> frozenset[str] | None:
        return BUILTIN_ROLES.get(roleid, self.roles.get(roleid))

    def all_roles(self) -> dict[str, frozenset[str]]:
        return {**self.roles, **BUILTIN_ROLES}

    def members(self, groupid: str) -> list[str]:
        return sorted(u.userid for u in self.users.values() if groupid in u.groups)

    def pool_of_vm(self, vmid: int) -> str | None:
        for pool in self.pools.values():
            if vmid in pool.vms:
                return pool.poolid
        return None

    def pools_of_storage(self, storage: str) -> list[str]:
        return sorted(p.poolid for p in self.pools.values() if storage in p.storage)

    def with_changes(self, **changes: Any) -> AccessConfig:
        return replace(self, **changes)

    def check_acl_entry(self, entry: AclEntry) -> None:
        """Refuse an ACL naming an unknown role, principal or path (nothing is written)."""
        verify_acl_path(entry.path)
        _need(self.role_privs(entry.roleid) is not None, "roles",
              f"role '{entry.roleid}' does not exist")
        if entry.ugid_type == "user":
            _need(entry.ugid in self.users, "users", f"user '{entry.ugid}' does not exist")
        elif entry.ugid_type == "group":
            _need(entry.ugid in self.groups, "groups", f"group '{entry.ugid}' does not exist")
        else:
            _need(entry.ugid in self.tokens, "tokens", f"token '{entry.ugid}' does not exist")


__all__ = [
    "NO_ACCESS", "ROOT_USER", "AccessConfig", "AclEntry", "Group", "Pool", "Realm", "Role",
    "TfaEntry", "TfaUser", "Token", "User", "ValidationError", "is_tokenid", "normalize_path",
    "split_tokenid", "split_userid", "verify_acl_path", "verify_groupid", "verify_poolid",
    "verify_realm", "verify_storage_id", "verify_token_name",
]
