"""/access/domains: authentication realms (PVE's Domains.pm) and `realm sync` for LDAP/AD.

pam and pve are built in; ldap, ad and openid realms carry PVE's options. The LDAP bind
password and the OpenID client key are write-only: stored in their own key
(`access.repository.REALM_SECRETS`), never answered.
A sync is a task whose log lists what was added, updated and removed; `dry-run` logs
the same plan and stores nothing.
"""

from __future__ import annotations

from typing import Any

from binome.access.ldap import LdapClient, SyncOptions, plan_sync
from binome.access.model import BUILTIN_REALMS, AccessConfig, Realm, ValidationError
from binome.access.ops import add_realm, delete_realm, update_realm
from binome.access.permission import And
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import access_change
from binome.api.registry import WORLD, CliSpec, privs, registry
from binome.schema import Param
from binome.tasks.manager import Task

REALM = Param(description="Authentication domain ID.", max_length=32,
              pattern=r"[A-Za-z][A-Za-z\d\.\-_]+")

# the realm's own fields; everything else below is a type option (Realm.options)
_TOP = ("comment", "default", "tfa", "password", "client-key")
# PVE's schema for the options binome uses; booleans are stored as 0/1 as PVE writes them
OPTIONS: dict[str, Param] = {
    "comment": Param(optional=True, max_length=2048, description="Description."),
    "default": Param(type="boolean", optional=True,
                     description="Use this as default realm."),
    "tfa": Param(optional=True, max_length=128,
                 description="Use Two-factor authentication (type=oath)."),
    "server1": Param(optional=True, max_length=256, description="Server IP address (or DNS "
                     "name)."),
    "server2": Param(optional=True, max_length=256, description="Fallback Server IP address "
                     "(or DNS name)."),
    "port": Param(type="integer", optional=True, minimum=1, maximum=65535,
                  description="Server port."),
    "mode": Param(optional=True, enum=("ldap", "ldaps", "ldap+starttls"),
                  description="LDAP protocol mode."),
    "verify": Param(type="boolean", optional=True,
                    description="Verify the server's SSL certificate."),
    "capath": Param(optional=True, max_length=4096, description="Path to the CA "
                    "certificate store."),
    "cert": Param(optional=True, max_length=4096, description="Path to the client "
                  "certificate."),
    "certkey": Param(optional=True, max_length=4096, description="Path to the client "
                     "certificate key."),
    "sslversion": Param(optional=True, enum=("tlsv1", "tlsv1_1", "tlsv1_2", "tlsv1_3"),
                        description="LDAPS TLS/SSL version."),
    "base_dn": Param(optional=True, max_length=256, description="LDAP base domain name."),
    "user_attr": Param(optional=True, max_length=256, pattern=r"\S{2,}",
                       description="LDAP user attribute name."),
    "bind_dn": Param(optional=True, max_length=256, description="LDAP bind domain name."),
    "password": Param(optional=True, secret=True, max_length=1024,
                      description="LDAP bind password (never returned)."),
    "filter": Param(optional=True, max_length=2048, description="LDAP filter for user "
                    "sync."),
    "group_dn": Param(optional=True, max_length=256, description="LDAP base domain name "
                      "for group sync."),
    "group_filter": Param(optional=True, max_length=2048, description="LDAP filter for "
                          "group sync."),
    "group_name_attr": Param(optional=True, max_length=256, description="LDAP attribute "
                             "representing a groups name."),
    "group_classes": Param(optional=True, max_length=1024, description="The objectclasses "
                           "for groups."),
    "user_classes": Param(optional=True, max_length=1024, description="The objectclasses "
                          "for users."),
    "sync_attributes": Param(optional=True, max_length=2048, description="Comma separated "
                             "list of key=value pairs (email=mail,...)."),
    "sync-defaults-options": Param(optional=True, max_length=256, description="The default "
                                   "options for behavior of synchronizations."),
    "case-sensitive": Param(type="boolean", optional=True,
                            description="username is case-sensitive"),
    "domain": Param(optional=True, max_length=256, description="AD domain name"),
    # openid (PVE's Auth/OpenId.pm)
    "issuer-url": Param(optional=True, max_length=256, description="OpenID Issuer Url"),
    "client-id": Param(optional=True, max_length=256, description="OpenID Client ID"),
    "client-key": Param(optional=True, secret=True, max_length=256,
                        description="OpenID Client Key (never returned)."),
    "autocreate": Param(type="boolean", optional=True,
                        description="Automatically create users if they do not exist."),
    "username-claim": Param(optional=True, max_length=256,
                            description="OpenID claim used to generate the unique username "
                            "(default sub; fixed at creation)."),
    "groups-claim": Param(optional=True, max_length=256, pattern=r"[A-Za-z0-9\.\-_]+",
                          description="OpenID claim used to retrieve groups with."),
    "groups-autocreate": Param(type="boolean", optional=True,
                               description="Automatically create groups if they do not "
                               "exist."),
    "groups-overwrite": Param(type="boolean", optional=True,
                              description="All groups will be overwritten for the user on "
                              "login."),
    "prompt": Param(optional=True, max_length=256, pattern=r"\S+",
                    description="Specifies whether the Authorization Server prompts the "
                    "End-User for reauthentication and consent (none, login, consent, "
                    "select_account)."),
    "scopes": Param(optional=True, max_length=1024, description="Specifies the scopes (user "
                    "details) that should be authorized and returned (default 'email "
                    "profile')."),
    "acr-values": Param(optional=True, max_length=1024, pattern=r'[^\x00-\x1F\x7F <>#"]*',
                        description="Authentication Context Class Reference values for the "
                        "Auth Request."),
    "query-userinfo": Param(type="boolean", optional=True,
                            description="Enables querying the userinfo endpoint for claims "
                            "values (default 1)."),
    "audiences": Param(optional=True, max_length=1024, description="Further accepted "
                       "audiences of the ID token, besides the client ID (comma or space "
                       "separated)."),
}
_BOOL_OPTIONS = ("verify", "case-sensitive", "autocreate", "groups-autocreate",
                 "groups-overwrite", "query-userinfo")


def _split(params: dict[str, Any]) -> dict[str, Any]:
    """The given realm fields, booleans of options as PVE's 0/1."""
    out = {k: params[k] for k in OPTIONS if params.get(k) is not None}
    for k in _BOOL_OPTIONS:
        if k in out:
            out[k] = int(bool(out[k]))
    return out


def _realm_or_404(cfg: AccessConfig, realm_id: str) -> Realm:
    if realm_id in BUILTIN_REALMS:
        return cfg.realms.get(realm_id) or Realm(realm_id, realm_id)  # type: ignore[arg-type]
    realm = cfg.realms.get(realm_id)
    if realm is None:
        raise ApiError(500, f"domain '{realm_id}' does not exist")
    return realm


@registry.register(
    "GET", "/access/domains", name="domains", permission=WORLD,
    description="Authentication domain index (the login form lists them).",
    returns={"type": "array"},
    cli=CliSpec(("realm", "list"), formatter="table:realm,type,comment"),
)
async def domains(ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = await ctx.services.access.config()
    builtin = {"pam": "Linux PAM standard authentication",
               "pve": "Proxmox VE authentication server"}
    out: list[dict[str, Any]] = []
    for realm_id in (*BUILTIN_REALMS, *sorted(r for r in cfg.realms if r not in builtin)):
        realm = _realm_or_404(cfg, realm_id)
        entry: dict[str, Any] = {"realm": realm_id, "type": realm.type,
                                 "comment": realm.comment or builtin.get(realm_id, "")}
        if realm.tfa:
            entry["tfa"] = realm.tfa.split(",")[0].removeprefix("type=")
        if realm.default:
            entry["default"] = 1
        out.append(entry)
    return out


@registry.register(
    "POST", "/access/domains", name="domain_create",
    permission=privs("Realm.Allocate", path="/access/realm"),
    description="Add an authentication server.",
    parameters={"realm": REALM,
                "type": Param(enum=("ldap", "ad", "openid"), description="Realm type."),
                **OPTIONS},
    cli=CliSpec(("realm", "add"), positional=("realm",)),
)
async def domain_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    given = _split(params)
    top = {k: given.pop(k) for k in _TOP if k in given}

    def op(cfg: AccessConfig) -> AccessConfig:
        return add_realm(cfg, Realm(params["realm"], params["type"],
                                    comment=top.get("comment", ""),
                                    default=bool(top.get("default", False)),
                                    tfa=top.get("tfa", ""), options=given,
                                    bind_password=top.get("password"),
                                    client_key=top.get("client-key")))

    await access_change(ctx, f"add realm {params['realm']}", op)


@registry.register(
    "GET", "/access/domains/{realm}", name="domain_read",
    permission=privs("Realm.Allocate", "Sys.Audit", path="/access/realm", any=True),
    description="Get auth server configuration (the bind password and the OpenID client "
    "key are never returned).",
    parameters={"realm": REALM},
    returns={"type": "object"},
)
async def domain_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    realm = _realm_or_404(await ctx.services.access.config(), params["realm"])
    out = realm.to_public()
    out["digest"] = ""     # PVE clients send it back; binome's changes are CAS anyway
    return out


@registry.register(
    "PUT", "/access/domains/{realm}", name="domain_update",
    permission=privs("Realm.Allocate", path="/access/realm"),
    description="Update authentication server settings.",
    parameters={"realm": REALM, **OPTIONS,
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(optional=True, max_length=64, description="Ignored.")},
    cli=CliSpec(("realm", "modify"), positional=("realm",)),
)
async def domain_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    given = _split(params)
    delete = [d for d in str(params.get("delete") or "").replace(";", ",").split(",") if d]
    unknown = [d for d in delete if d not in OPTIONS]
    if unknown:
        raise ParamError({"delete": f"invalid option '{unknown[0]}'"})
    if "username-claim" in given or "username-claim" in delete:
        raise ParamError({"username-claim": "can't change fixed property"})
    clash = [d for d in delete if d in given]
    if clash:
        raise ParamError({"delete": f"cannot set and delete property '{clash[0]}' at the "
                          "same time"})
    await access_change(ctx, f"update realm {params['realm']}",
                        lambda cfg: update_realm(cfg, params["realm"], given, delete))


@registry.register(
    "DELETE", "/access/domains/{realm}", name="domain_delete",
    permission=privs("Realm.Allocate", path="/access/realm"),
    description="Delete an authentication server.",
    parameters={"realm": REALM},
    cli=CliSpec(("realm", "delete"), positional=("realm",)),
)
async def domain_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await access_change(ctx, f"delete realm {params['realm']}",
                        lambda cfg: delete_realm(cfg, params["realm"]))


@registry.register(
    "POST", "/access/domains/{realm}/sync", name="domain_sync",
    permission=And(privs("Realm.AllocateUser", path="/access/realm/{realm}"),
                   privs("User.Modify", path="/access/groups")),
    description="Syncs users and/or groups from the configured LDAP to user.cfg.",
    parameters={
        "realm": REALM,
        "scope": Param(optional=True, enum=("users", "groups", "both"),
                       description="Select what to sync."),
        "remove-vanished": Param(optional=True, max_length=64, pattern=r"[a-z;,]*",
                                 description="A semicolon-separated list of things to remove "
                                 "when they or the user vanishes during a sync: acl, entry, "
                                 "properties; or none."),
        "enable-new": Param(type="boolean", optional=True,
                            description="Enable newly synced users immediately."),
        "dry-run": Param(type="boolean", optional=True, default=False,
                         description="If set, does not write anything."),
    },
    returns={"type": "string", "description": "Worker UPID."},
    cli=CliSpec(("realm", "sync"), positional=("realm",)),
)
async def domain_sync(ctx: RequestContext, params: dict[str, Any]) -> str:
    access = ctx.services.access
    realm = _realm_or_404(await access.config(), params["realm"])
    if realm.type not in ("ldap", "ad"):
        raise ApiError(500, f"Cannot sync realm type '{realm.type}'! Only LDAP/AD realms "
                       "can be synced.")
    try:
        options = SyncOptions.parse(realm, params)
    except ValidationError as exc:
        raise ParamError(exc.errors) from None

    async def body(task: Task) -> None:
        directory = await LdapClient(realm).read()
        task.log(f"got data from server: {len(directory.users)} users, "
                 f"{len(directory.groups)} groups")
        if options.dry_run:
            plan = plan_sync(await access.config(), realm, directory, options)
            task.log("dry run: nothing is written")
        else:
            plans = []

            def op(cfg: AccessConfig) -> AccessConfig:
                # re-planned on every attempt: a concurrent change is not overwritten
                plans.append(plan_sync(cfg, realm, directory, options))
                return plans[-1].config

            await access.change(ctx.userid, f"sync realm {realm.realm}", op)
            plan = plans[-1]
        for line in plan.summary() or ["no changes"]:
            task.log(line)

    type_ = "auth-realm-sync-test" if options.dry_run else "auth-realm-sync"
    return ctx.services.tasks.start(type_, realm.realm, ctx.userid, body)
