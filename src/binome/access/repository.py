"""The one owner of the access keys in etcd.

Layout (one key per record so a change rewrites only what it touches; the ACL is one
document because PVE evaluates and edits it as a whole):

    /binome/access/users/<userid>        {userid, enable, expire, firstname, lastname, email,
                                          comment, keys, groups[], password?, superuser?}
    /binome/access/groups/<groupid>      {groupid, comment}
    /binome/access/roles/<roleid>        {roleid, privs[]}            custom roles only
    /binome/access/acl                   {entries: [{path, type, ugid, roleid, propagate}]}
    /binome/access/pools/<poolid>        {poolid, comment, vms[], storage[]}  (poolid a/b/c)
    /binome/access/tokens/<user!token>   {tokenid, expire, privsep, comment, secret_hash}
    /binome/access/realms/<realm>        {realm, type, comment, default, tfa, options{}}
    /binome/access/realm-secrets/<realm> {bind_password} or {client_key} (write-only)
    /binome/access/tfa/<userid>          {userid, entries[], totp_failures, tfa_failures,
                                          tfa_locked_until, challenges[]}
    /binome/access/webauthn              {rp, id, origin, allow_subdomains}: datacenter
                                          option `webauthn` (the relying party)
    /binome/access/generation            int, bumped by every configuration change
    /binome/access/authkey               ticket key: not touched here

Issue 10's user records ({userid, enable, superuser, password, comment}) read as users
(superuser = Administrator on /, see evaluator.py) and are written back with their fields.

Every configuration change is read-modify-write: load a snapshot (one etcd range, so
consistent), apply a pure operation (ops.py), write the keys that differ in one
transaction that compares the generation key (so no access change made in between is
overwritten or bypasses a check) and bumps the cluster config version. A refused
operation raises before anything is written. TFA login state (spent time steps, spent
recovery keys, failure counters) is written with a compare on that user's TFA key only
and without a config-version bump: it is state, not configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from binome.access.model import (
    AccessConfig,
    AclEntry,
    Group,
    Pool,
    Realm,
    TfaEntry,
    TfaUser,
    Token,
    User,
    ValidationError,
    WebauthnChallenge,
    WebauthnConfig,
)
from binome.access.privileges import is_privilege, unknown_privileges

log = logging.getLogger(__name__)

ROOT = "/binome/access/"
USERS = f"{ROOT}users/"
GROUPS = f"{ROOT}groups/"
ROLES = f"{ROOT}roles/"
ACL = f"{ROOT}acl"
POOLS = f"{ROOT}pools/"
TOKENS = f"{ROOT}tokens/"
REALMS = f"{ROOT}realms/"
REALM_SECRETS = f"{ROOT}realm-secrets/"
TFA = f"{ROOT}tfa/"
WEBAUTHN = f"{ROOT}webauthn"
GENERATION = f"{ROOT}generation"
_NOT_OURS = (f"{ROOT}authkey",)


class StoreLike(Protocol):
    """The part of binome.store.client.Store used here."""

    async def get_prefix(self, prefix: str, *, serializable: bool = False) -> list[Any]: ...
    async def get(self, key: str, *, serializable: bool = False) -> Any: ...
    async def commit(self, expect: dict[str, int], puts: dict[str, Any] | None = None,
                     deletes: Any = (), *, bump_config: bool = False) -> bool: ...


class AccessConflict(RuntimeError):
    """Too many concurrent changes; nothing of this change was written."""


@dataclass(frozen=True)
class Snapshot:
    config: AccessConfig
    revisions: dict[str, int]            # key -> mod revision
    generation: int                      # mod revision of the generation key (0: absent)
    generation_value: int = 0
    warnings: tuple[str, ...] = ()       # records skipped as invalid (PVE warns likewise)


@dataclass(frozen=True)
class Change:
    """What a change did, for the cluster log ("user X did Y") and the caller."""

    actor: str
    action: str
    written: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    config: AccessConfig = field(default_factory=AccessConfig, repr=False)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)

    def log_message(self) -> str:
        return f"{self.actor}: {self.action}"


# -- encoding ---------------------------------------------------------------------------

def _user_doc(u: User) -> dict[str, Any]:
    doc: dict[str, Any] = {"userid": u.userid, "enable": int(u.enable), "expire": u.expire,
                           "firstname": u.firstname, "lastname": u.lastname,
                           "email": u.email, "comment": u.comment, "keys": u.keys,
                           "groups": list(u.groups)}
    if u.password_hash:
        doc["password"] = u.password_hash
    if u.superuser:
        doc["superuser"] = 1
    return doc


def _user(doc: dict[str, Any]) -> User:
    return User(doc["userid"], enable=bool(doc.get("enable", 1)),
                expire=int(doc.get("expire") or 0), firstname=doc.get("firstname", ""),
                lastname=doc.get("lastname", ""), email=doc.get("email", ""),
                comment=doc.get("comment", ""), keys=doc.get("keys", ""),
                groups=tuple(doc.get("groups", ())), password_hash=doc.get("password"),
                superuser=bool(doc.get("superuser", 0)))


def _tfa_doc(t: TfaUser) -> dict[str, Any]:
    return {"userid": t.userid, "totp_failures": t.totp_failures,
            "tfa_failures": t.tfa_failures, "tfa_locked_until": t.tfa_locked_until,
            "entries": [{"id": e.id, "type": e.type, "description": e.description,
                         "created": e.created, "enable": int(e.enable), "secret": e.secret,
                         "recovery_hashes": list(e.recovery_hashes),
                         "last_step": e.last_step, "sign_count": e.sign_count}
                        for e in t.entries],
            "challenges": [{"kind": c.kind, "challenge": c.challenge, "expires": c.expires,
                            "user_verification": c.user_verification,
                            "description": c.description} for c in t.challenges]}


def _tfa(doc: dict[str, Any]) -> TfaUser:
    entries = tuple(TfaEntry(id=e["id"], type=e["type"], description=e.get("description", ""),
                             created=int(e.get("created", 0)), enable=bool(e.get("enable", 1)),
                             secret=e.get("secret", ""),
                             recovery_hashes=tuple(e.get("recovery_hashes", ())),
                             last_step=int(e.get("last_step", -1)),
                             sign_count=int(e.get("sign_count", 0)))
                    for e in doc.get("entries", ()))
    challenges = tuple(WebauthnChallenge(c["kind"], c["challenge"], int(c["expires"]),
                                         c.get("user_verification"), c.get("description", ""))
                       for c in doc.get("challenges", ()))
    return TfaUser(doc["userid"], entries, int(doc.get("totp_failures", 0)),
                   int(doc.get("tfa_failures", 0)), int(doc.get("tfa_locked_until", 0)),
                   challenges)


def encode(cfg: AccessConfig) -> dict[str, Any]:
    """Every key and value the configuration is stored as (generation excluded)."""
    out: dict[str, Any] = {}
    for u in cfg.users.values():
        out[USERS + u.userid] = _user_doc(u)
    for g in cfg.groups.values():
        out[GROUPS + g.groupid] = {"groupid": g.groupid, "comment": g.comment}
    for rid, privs in cfg.roles.items():
        out[ROLES + rid] = {"roleid": rid, "privs": sorted(privs)}
    out[ACL] = {"entries": [e.to_public() for e in cfg.acl]}
    for p in cfg.pools.values():
        out[POOLS + p.poolid] = {"poolid": p.poolid, "comment": p.comment,
                                 "vms": sorted(p.vms), "storage": sorted(p.storage)}
    for t in cfg.tokens.values():
        out[TOKENS + t.tokenid] = {"tokenid": t.tokenid, "expire": t.expire,
                                   "privsep": int(t.privsep), "comment": t.comment,
                                   "secret_hash": t.secret_hash}
    for r in cfg.realms.values():
        out[REALMS + r.realm] = {"realm": r.realm, "type": r.type, "comment": r.comment,
                                 "default": int(r.default), "tfa": r.tfa,
                                 "options": dict(r.options)}
        if r.bind_password is not None:
            out[REALM_SECRETS + r.realm] = {"bind_password": r.bind_password}
        elif r.client_key is not None:
            out[REALM_SECRETS + r.realm] = {"client_key": r.client_key}
    for tfa in cfg.tfa.values():
        out[TFA + tfa.userid] = _tfa_doc(tfa)
    if cfg.webauthn is not None:
        w = cfg.webauthn
        out[WEBAUTHN] = {"rp": w.rp, "id": w.id, "origin": w.origin,
                         "allow_subdomains": int(w.allow_subdomains)}
    return out


def decode(values: dict[str, Any]) -> tuple[AccessConfig, list[str]]:
    """The configuration from stored keys; invalid records are skipped with a warning."""
    users: dict[str, User] = {}
    groups: dict[str, Group] = {}
    roles: dict[str, frozenset[str]] = {}
    pools: dict[str, Pool] = {}
    tokens: dict[str, Token] = {}
    realms: dict[str, Realm] = {}
    tfa: dict[str, TfaUser] = {}
    secrets: dict[str, dict[str, Any]] = {}
    acl: list[AclEntry] = []
    webauthn: WebauthnConfig | None = None
    warnings: list[str] = []
    for key, doc in sorted(values.items()):
        try:
            if key.startswith(USERS):
                users[key[len(USERS):]] = _user(doc)
            elif key.startswith(GROUPS):
                groups[doc["groupid"]] = Group(doc["groupid"], doc.get("comment", ""))
            elif key.startswith(ROLES):
                # PVE's parse_user_config: an unknown privilege (VM.Monitor, dropped by
                # PVE 9, in a role written before) is ignored with a warning
                privs = [str(p) for p in doc.get("privs", ())]
                for priv in unknown_privileges(privs):
                    warnings.append(f"{key}: ignore invalid privilege '{priv}'")
                roles[doc["roleid"]] = frozenset(p for p in privs if is_privilege(p))
            elif key == ACL:
                raw = doc.get("entries", []) if isinstance(doc, dict) else doc or []
                for e in raw:
                    try:
                        acl.append(AclEntry(e["path"], e["type"], e["ugid"], e["roleid"],
                                            bool(e.get("propagate", 1))))
                    except (ValidationError, KeyError, TypeError) as exc:
                        warnings.append(f"{key}: ignored ACL entry {e!r}: {exc}")
            elif key.startswith(POOLS):
                pools[doc["poolid"]] = Pool(doc["poolid"], doc.get("comment", ""),
                                            frozenset(int(v) for v in doc.get("vms", ())),
                                            frozenset(doc.get("storage", ())))
            elif key.startswith(TOKENS):
                tokens[doc["tokenid"]] = Token(doc["tokenid"], doc["secret_hash"],
                                               int(doc.get("expire", 0)),
                                               bool(doc.get("privsep", 1)),
                                               doc.get("comment", ""))
            elif key.startswith(REALMS):
                realms[doc["realm"]] = Realm(doc["realm"], doc["type"], doc.get("comment", ""),
                                             bool(doc.get("default", 0)), doc.get("tfa", ""),
                                             dict(doc.get("options", {})))
            elif key.startswith(REALM_SECRETS):
                secrets[key[len(REALM_SECRETS):]] = {
                    k: str(doc[k]) for k in ("bind_password", "client_key") if k in doc}
            elif key.startswith(TFA):
                tfa[doc["userid"]] = _tfa(doc)
            elif key == WEBAUTHN:
                webauthn = WebauthnConfig(str(doc.get("rp", "")), str(doc.get("id", "")),
                                          str(doc.get("origin", "")),
                                          bool(doc.get("allow_subdomains", 1)))
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            # never echo the record: it may hold a hash or a seed
            warnings.append(f"{key}: ignored invalid record ({type(exc).__name__})")
    for name, secret in secrets.items():
        if name in realms:
            try:
                realms[name] = replace(realms[name], **secret)
            except ValidationError:   # a secret of the wrong realm type: never echoed
                warnings.append(f"{REALM_SECRETS}{name}: ignored invalid record")
    return AccessConfig(users=users, groups=groups, roles=roles, acl=tuple(acl), pools=pools,
                        tokens=tokens, realms=realms, tfa=tfa, webauthn=webauthn), warnings


# -- repository -------------------------------------------------------------------------

class AccessRepository:
    def __init__(self, store: StoreLike, attempts: int = 10) -> None:
        self.store = store
        self.attempts = attempts

    async def load(self, *, local: bool = False) -> Snapshot:
        """The configuration as stored; `local`: this member's copy (a serializable
        read, which works without quorum but may lag)."""
        entries = await self.store.get_prefix(ROOT, serializable=local)
        values: dict[str, Any] = {}
        revisions: dict[str, int] = {}
        generation = generation_value = 0
        for e in entries:
            if e.key in _NOT_OURS:
                continue
            if e.key == GENERATION:
                generation, generation_value = e.mod_revision, int(e.value)
                continue
            values[e.key] = e.value
            revisions[e.key] = e.mod_revision
        cfg, warnings = decode(values)
        for w in warnings:
            log.warning("access config: %s", w)
        return Snapshot(cfg, revisions, generation, generation_value, tuple(warnings))

    async def change(self, actor: str, action: str,
                     operation: Callable[[AccessConfig], AccessConfig]) -> Change:
        """Apply `operation` to the current configuration and store the result.

        `operation` may be called more than once (on conflict it runs again on fresh
        data) and must be pure; its exceptions propagate with nothing written.
        """
        for _ in range(self.attempts):
            snap = await self.load()
            new = operation(snap.config)
            before, after = encode(snap.config), encode(new)
            puts = {k: v for k, v in after.items() if before.get(k) != v}
            deletes = sorted(set(before) - set(after))
            if not puts and not deletes:
                return Change(actor, action, config=new)
            expect = {GENERATION: snap.generation}
            expect.update({k: snap.revisions.get(k, 0) for k in (*puts, *deletes)})
            puts[GENERATION] = snap.generation_value + 1
            if await self.store.commit(expect, puts, deletes, bump_config=True):
                written = tuple(sorted(k for k in puts if k != GENERATION))
                return Change(actor, action, written, tuple(deletes), new)
        raise AccessConflict(f"access configuration: too many concurrent changes ({action})")

    async def load_tfa(self, *, local: bool = False) -> dict[str, TfaUser]:
        """Every user's TFA state as stored now. Logins change the counters and locks
        without a generation bump (`update_tfa_state`), so a snapshot's copy may lag."""
        out: dict[str, TfaUser] = {}
        for e in await self.store.get_prefix(TFA, serializable=local):
            try:
                t = _tfa(e.value)
            except (KeyError, TypeError, ValueError):
                continue
            out[t.userid] = t
        return out

    async def update_tfa_state(self, userid: str,
                               step: Callable[[TfaUser], tuple[TfaUser, Any]]) -> Any:
        """Run a login-time TFA step (`step(old) -> (new, result)`) and store its state
        with a compare on the user's TFA key, so a code or recovery key is spent once
        even when two logins race. Returns `result` of the run that was stored."""
        key = TFA + userid
        for _ in range(self.attempts):
            entry = await self.store.get(key)
            old = _tfa(entry.value) if entry else TfaUser(userid)
            new, result = step(old)
            if new == old:
                return result
            rev = entry.mod_revision if entry else 0
            if await self.store.commit({key: rev}, {key: _tfa_doc(new)}):
                return result
        raise AccessConflict(f"TFA state of {userid}: too many concurrent logins")
