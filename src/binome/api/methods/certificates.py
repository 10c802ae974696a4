"""Node certificates and ACME, in PVE's shapes (`PVE/API2/Certificates.pm`, `ACME.pm`,
`ACMEAccount.pm`, `ACMEPlugin.pm`).

`/nodes/{node}/certificates/custom` sets and removes the node's custom certificate
(`binome.cluster.certificates`, which also decides what the API serves);
`/nodes/{node}/certificates/acme/certificate` orders, renews and revokes it through ACME,
as tasks with PVE's UPID types and log lines; `/cluster/acme/...` are the accounts and
challenge plugins (`binome.cluster.acme`, which owns their etcd keys and speaks the
protocol).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from binome.access.permission import AnyUser
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import NODE, require_quorum
from binome.api.registry import ROOT_ONLY, CliSpec, privs, registry
from binome.api.schema import Param
from binome.cluster import acme
from binome.cluster.acme import AcmeConfig, AcmeError
from binome.cluster.certificates import CertificateError, PemError
from binome.cluster.node_config import NodeConfigs
from binome.schema import split_list
from binome.tasks.manager import Task, TaskFailed

if TYPE_CHECKING:
    from binome.api.context import RequestContext

CERT_INFO = {"type": "object", "properties": {
    "filename": {"type": "string", "optional": 1},
    "fingerprint": {"type": "string", "optional": 1},
    "subject": {"type": "string", "optional": 1},
    "issuer": {"type": "string", "optional": 1},
    "notbefore": {"type": "integer", "optional": 1},
    "notafter": {"type": "integer", "optional": 1},
    "san": {"type": "array", "items": {"type": "string"}, "optional": 1},
    "pem": {"type": "string", "optional": 1},
    "public-key-type": {"type": "string", "optional": 1},
    "public-key-bits": {"type": "integer", "optional": 1}}}
RESTART = Param(type="boolean", optional=True, default=False,
                description="Restart pveproxy (binome reloads the API's certificate for new "
                            "connections in any case).")
INDEX = {"type": "array", "items": {"type": "object", "properties": {}}}
UPID_RETURN = {"type": "string"}
ACCOUNT_NAME = Param(format="pve-configid", optional=True, default="default",
                     description="ACME account config file name.")
DIRECTORY = Param(pattern=r"https?://.*", optional=True, default=acme.DEFAULT_DIRECTORY,
                  max_length=1024, description="URL of ACME CA directory endpoint.")
PLUGIN_ID = Param(format="pve-configid", description="Unique identifier for ACME plugin "
                                                     "instance.")


def _store(ctx: RequestContext, *, quorum: bool = False) -> Any:
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return store


def _verify(ctx: RequestContext) -> bool | str:
    return acme.trust(ctx.services.config.pki_dir)


# ---------------------------------------------------------------- custom certificates



@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A refusal of the owner modules as PVE answers it: a bad PEM parameter 400 with
    its per-parameter errors, any other refusal 500 with PVE's text."""
    try:
        yield
    except PemError as exc:
        raise ParamError(exc.errors) from None
    except (AcmeError, CertificateError) as exc:
        raise ApiError(500, str(exc)) from None

@registry.register(
    "GET", "/nodes/{node}/certificates", name="node_certificates_index",
    permission=AnyUser("PVE: user => 'all'"), description="Node index.",
    parameters={"node": NODE}, returns=INDEX,
)
async def node_certificates_index(ctx: RequestContext, params: dict[str, Any]) -> list:
    return [{"name": "acme"}, {"name": "custom"}, {"name": "info"}]


@registry.register(
    "POST", "/nodes/{node}/certificates/custom", name="node_certificates_custom_set",
    proxyto="node", permission=privs("Sys.Modify", path="/nodes/{node}"),
    description="Upload or update custom certificate chain and key (served to clients that "
                "name the node, TLS SNI, from the next connection on).",
    parameters={"node": NODE,
                "certificates": Param(max_length=256 * 1024, secret=True,
                                      extra={"multiline": True},
                                      description="PEM encoded certificate (chain)."),
                "key": Param(optional=True, max_length=64 * 1024, secret=True,
                             extra={"multiline": True},
                             description="PEM encoded private key."),
                "force": Param(type="boolean", optional=True, default=False,
                               description="Overwrite existing custom or ACME certificate "
                                           "files."),
                "restart": RESTART},
    returns=CERT_INFO,
    cli=CliSpec(("cert", "set"), positional=("node",),
                help="Set the node's custom certificate (pvenode cert set): "
                     "--certificates-file CHAIN.pem --key-file KEY.pem."),
)
async def node_certificates_custom_set(ctx: RequestContext,
                                       params: dict[str, Any]) -> dict[str, Any]:
    with _refused():
        return ctx.services.certificates.set_custom(params["certificates"], params.get("key"),
                                                    bool(params.get("force")))


@registry.register(
    "DELETE", "/nodes/{node}/certificates/custom", name="node_certificates_custom_delete",
    proxyto="node", permission=privs("Sys.Modify", path="/nodes/{node}"),
    description="DELETE custom certificate chain and key (the node's own certificate is "
                "served again).",
    parameters={"node": NODE, "restart": RESTART},
    cli=CliSpec(("cert", "delete"), positional=("node",),
                help="Remove the node's custom certificate (pvenode cert delete)."),
)
async def node_certificates_custom_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    ctx.services.certificates.delete_custom()


# ---------------------------------------------------------------- ACME certificates


@registry.register(
    "GET", "/nodes/{node}/certificates/acme", name="node_certificates_acme_index",
    permission=AnyUser("PVE: user => 'all'"), description="ACME index.",
    parameters={"node": NODE}, returns=INDEX,
)
async def node_certificates_acme_index(ctx: RequestContext, params: dict[str, Any]) -> list:
    return [{"name": "certificate"}]


async def _node_acme_conf(ctx: RequestContext) -> dict[str, Any]:
    store = _store(ctx)
    conf = await NodeConfigs(store).load(ctx.node)
    try:
        res = acme.get_acme_conf(conf.values, await AcmeConfig(store).plugins())
    except (AcmeError, ValueError) as exc:
        raise ApiError(500, str(exc)) from None
    if not res["domains"]:
        raise ApiError(400, "ACME domain list in node configuration is missing!")
    return res


async def _session(ctx: RequestContext, task: Task, account: str) -> acme.Session:
    record = await AcmeConfig(_store(ctx)).account(account)
    if record is None:
        raise TaskFailed(f"ACME account config file '{account}' does not exist.")
    task.log("Loading ACME account details")
    try:
        return await asyncio.to_thread(acme.Session, record, _verify(ctx))
    except AcmeError as exc:
        raise TaskFailed(str(exc)) from None


async def order_into_files(ctx: RequestContext, task: Task, conf: dict[str, Any],
                           session: acme.Session, force: bool) -> None:
    """Order, then set the certificate files (PVE's realcmd of new and renew)."""
    plugins = (await AcmeConfig(_store(ctx)).plugins()).ids
    cfg = ctx.services.config
    try:
        chain, key = await asyncio.to_thread(session.order, conf["domains"], plugins,
                                             cfg.api_bind, acme.HTTP_PORT, task.log)
    except AcmeError as exc:
        raise TaskFailed(str(exc)) from None
    except Exception as exc:       # the CA's answer (acme.messages.Error, ...)
        raise TaskFailed(f"ACME order failed: {str(exc).strip() or type(exc).__name__}"
                         ) from None
    task.log("Setting pveproxy certificate and key")
    try:
        ctx.services.certificates.set_custom(chain, key, force)
    except (CertificateError, PemError) as exc:
        raise TaskFailed(str(exc)) from None
    task.log("Restarting pveproxy")


@registry.register(
    "POST", "/nodes/{node}/certificates/acme/certificate", name="node_acme_order",
    proxyto="node", permission=privs("Sys.Modify", path="/nodes/{node}"),
    description="Order a new certificate from ACME-compatible CA (standalone http-01 "
                "validation on port 80 of the node).",
    parameters={"node": NODE,
                "force": Param(type="boolean", optional=True, default=False,
                               description="Overwrite existing custom certificate.")},
    returns=UPID_RETURN,
    cli=CliSpec(("acme", "cert", "order"), positional=("node",),
                help="Order the node's certificate from its ACME domains "
                     "(pvenode acme cert order)."),
)
async def node_acme_order(ctx: RequestContext, params: dict[str, Any]) -> str:
    force = bool(params.get("force"))
    if not force and ctx.services.certificates.custom_cert.exists():
        raise ParamError({"force": "Custom certificate exists but 'force' is not set."})
    conf = await _node_acme_conf(ctx)

    async def body(task: Task) -> None:
        session = await _session(ctx, task, conf["account"])
        await order_into_files(ctx, task, conf, session, force)

    return ctx.services.tasks.start("acmenewcert", "", ctx.userid, body)


async def renew(ctx: RequestContext, force: bool) -> str:
    """PVE's renew_certificate (the API's PUT and the daily renewal)."""
    certs = ctx.services.certificates
    if not certs.custom_cert.exists():
        raise ApiError(500, "No current (custom) certificate found, please order a new "
                            "certificate!")
    import time

    soon = certs.custom_expires_before(time.time() + acme.RENEW_WITHIN)
    if not soon and not force:
        raise ParamError({"force": "Certificate does not expire within the next 30 days, "
                                   "and 'force' is not set."})
    conf = await _node_acme_conf(ctx)
    old = certs.custom_pem()

    async def body(task: Task) -> None:
        session = await _session(ctx, task, conf["account"])
        await order_into_files(ctx, task, conf, session, True)
        task.log("Revoking old certificate")
        try:
            await asyncio.to_thread(session.revoke, old)
        except Exception as exc:
            task.warn(f"Revoke request to CA failed: {str(exc).strip()}")

    return ctx.services.tasks.start("acmerenew", "", ctx.userid, body)


@registry.register(
    "PUT", "/nodes/{node}/certificates/acme/certificate", name="node_acme_renew",
    proxyto="node", permission=privs("Sys.Modify", path="/nodes/{node}"),
    description="Renew existing certificate from CA.",
    parameters={"node": NODE,
                "force": Param(type="boolean", optional=True, default=False,
                               description="Force renewal even if expiry is more than 30 "
                                           "days away.")},
    returns=UPID_RETURN,
    cli=CliSpec(("acme", "cert", "renew"), positional=("node",),
                help="Renew the node's ACME certificate (pvenode acme cert renew)."),
)
async def node_acme_renew(ctx: RequestContext, params: dict[str, Any]) -> str:
    return await renew(ctx, bool(params.get("force")))


@registry.register(
    "DELETE", "/nodes/{node}/certificates/acme/certificate", name="node_acme_revoke",
    proxyto="node", permission=privs("Sys.Modify", path="/nodes/{node}"),
    description="Revoke existing certificate from CA.",
    parameters={"node": NODE}, returns=UPID_RETURN,
    cli=CliSpec(("acme", "cert", "revoke"), positional=("node",),
                help="Revoke the node's ACME certificate and remove it "
                     "(pvenode acme cert revoke)."),
)
async def node_acme_revoke(ctx: RequestContext, params: dict[str, Any]) -> str:
    conf = await _node_acme_conf(ctx)
    certs = ctx.services.certificates
    with _refused():
        cert = certs.custom_pem()

    async def body(task: Task) -> None:
        session = await _session(ctx, task, conf["account"])
        task.log("Revoking old certificate")
        try:
            await asyncio.to_thread(session.revoke, cert)
        except Exception as exc:
            if "Certificate is expired" not in str(exc):
                raise TaskFailed(f"Revoke request to CA failed: {str(exc).strip()}") from None
        task.log("Deleting certificate files")
        certs.delete_custom()
        task.log("Restarting pveproxy to revert to self-signed certificates")

    return ctx.services.tasks.start("acmerevoke", "", ctx.userid, body)


# ---------------------------------------------------------------- /cluster/acme


@registry.register(
    "GET", "/cluster/acme", name="cluster_acme_index",
    permission=AnyUser("PVE: user => 'all'"), description="ACMEAccount index.",
    returns=INDEX,
)
async def cluster_acme_index(ctx: RequestContext, params: dict[str, Any]) -> list:
    return [{"name": n} for n in ("account", "tos", "meta", "directories", "plugins")]


@registry.register(
    "GET", "/cluster/acme/account", name="acme_account_index",
    permission=AnyUser("PVE: user => 'all'"), description="ACMEAccount index.",
    returns=INDEX,
    cli=CliSpec(("acme", "account", "list"), formatter="table:name"),
)
async def acme_account_index(ctx: RequestContext, params: dict[str, Any]) -> list:
    return [{"name": n} for n in await AcmeConfig(_store(ctx)).account_names()]


@registry.register(
    "POST", "/cluster/acme/account", name="acme_account_register", permission=ROOT_ONLY,
    description="Register a new ACME account with CA.",
    parameters={"name": ACCOUNT_NAME,
                "contact": Param(format="email-list", max_length=4096,
                                 description="Contact email addresses."),
                "tos_url": Param(optional=True, max_length=1024,
                                 description="URL of CA TermsOfService - setting this "
                                             "indicates agreement."),
                "directory": DIRECTORY,
                "eab-kid": Param(optional=True, max_length=1024,
                                 description="Key Identifier for External Account Binding."),
                "eab-hmac-key": Param(optional=True, max_length=1024, secret=True,
                                      description="HMAC key for External Account Binding.")},
    returns=UPID_RETURN,
    cli=CliSpec(("acme", "account", "register"), positional=("name", "contact"),
                help="Register an ACME account (pvenode acme account register)."),
)
async def acme_account_register(ctx: RequestContext, params: dict[str, Any]) -> str:
    name = params.get("name") or "default"
    kid, hmac_key = params.get("eab-kid"), params.get("eab-hmac-key")
    if (kid is None) != (hmac_key is None):
        missing = "eab-hmac-key" if kid is not None else "eab-kid"
        raise ParamError({missing: "parameter is missing and it is required by "
                                   f"'{'eab-kid' if kid is not None else 'eab-hmac-key'}'"})
    config = AcmeConfig(_store(ctx, quorum=True))
    if await config.account(name) is not None:
        raise ParamError({"name": f"ACME account config file '{name}' already exists."})
    directory = params.get("directory") or acme.DEFAULT_DIRECTORY
    contact = acme.contact_urls(params["contact"])
    tos = params.get("tos_url")
    verify = _verify(ctx)

    async def body(task: Task) -> None:
        if await config.account(name) is not None:
            raise TaskFailed(f"ACME account config file '{name}' already exists.")
        task.log("Generating ACME account key..")
        key = await asyncio.to_thread(acme.new_account_key)
        record: dict[str, Any] = {"directory": directory, "key": key, "tos": tos}
        task.log("Registering ACME account..")
        try:
            session = await asyncio.to_thread(acme.Session, record, verify)
            eab = (str(kid), str(hmac_key)) if kid is not None else None
            location, account = await asyncio.to_thread(session.register, contact, tos, eab)
        except Exception as exc:
            raise TaskFailed(f"Registration failed: {str(exc).strip()}") from None
        record.update(location=location, account=account)
        if not await config.create_account(name, record):
            raise TaskFailed(f"ACME account config file '{name}' already exists.")
        task.log(f"Registration successful, account URL: '{location}'")

    return ctx.services.tasks.start("acmeregister", name, ctx.userid, body)


async def _update_account(ctx: RequestContext, name: str, kind: str,
                          contact: list[str] | None) -> str:
    config = AcmeConfig(_store(ctx, quorum=True))
    if await config.account(name) is None:
        raise ParamError({"name": f"ACME account config file '{name}' does not exist."})
    verify = _verify(ctx)

    async def body(task: Task) -> None:
        record = await config.account(name)
        if record is None:
            raise TaskFailed(f"ACME account config file '{name}' does not exist.")
        try:
            session = await asyncio.to_thread(acme.Session, record, verify)
            if kind == "deactivate":
                account = await asyncio.to_thread(session.deactivate)
            else:
                account = await asyncio.to_thread(session.update, contact)
        except Exception as exc:
            raise TaskFailed(str(exc).strip() or type(exc).__name__) from None
        record["account"] = account
        if kind != "deactivate":
            await config.put_account(name, record)
            return
        retired = await config.retire_account(name, record)
        if retired is None:
            task.warn(f"No free slot to rename deactivated account file '{name}', leaving "
                      "in place")
        else:
            task.log(f"Renaming account file from '{name}' to '{retired}'")

    return ctx.services.tasks.start(f"acme{kind}", name, ctx.userid, body)


ACCOUNT_RETURNS = {"type": "object", "properties": {
    "account": {"type": "object", "optional": 1},
    "directory": {"type": "string", "optional": 1},
    "location": {"type": "string", "optional": 1},
    "tos": {"type": "string", "optional": 1}}}


@registry.register(
    "GET", "/cluster/acme/account/{name}", name="acme_account_get", permission=ROOT_ONLY,
    description="Return existing ACME account information (never its key).",
    parameters={"name": ACCOUNT_NAME}, returns=ACCOUNT_RETURNS,
    cli=CliSpec(("acme", "account", "info"), positional=("name",)),
)
async def acme_account_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    name = params.get("name") or "default"
    record = await AcmeConfig(_store(ctx)).account(name)
    if record is None:
        raise ParamError({"name": f"ACME account config file '{name}' does not exist."})
    return {k: record[k] for k in ("account", "directory", "location", "tos")
            if record.get(k) is not None}


@registry.register(
    "PUT", "/cluster/acme/account/{name}", name="acme_account_update", permission=ROOT_ONLY,
    description="Update existing ACME account information with CA. Note: not specifying "
                "any new account information triggers a refresh.",
    parameters={"name": ACCOUNT_NAME,
                "contact": Param(format="email-list", optional=True, max_length=4096,
                                 description="Contact email addresses.")},
    returns=UPID_RETURN,
    cli=CliSpec(("acme", "account", "update"), positional=("name",)),
)
async def acme_account_update(ctx: RequestContext, params: dict[str, Any]) -> str:
    contact = acme.contact_urls(params.get("contact") or "")
    return await _update_account(ctx, params.get("name") or "default",
                                 "update" if contact else "refresh", contact or None)


@registry.register(
    "DELETE", "/cluster/acme/account/{name}", name="acme_account_deactivate",
    permission=ROOT_ONLY, description="Deactivate existing ACME account at CA.",
    parameters={"name": ACCOUNT_NAME}, returns=UPID_RETURN,
    cli=CliSpec(("acme", "account", "deactivate"), positional=("name",)),
)
async def acme_account_deactivate(ctx: RequestContext, params: dict[str, Any]) -> str:
    return await _update_account(ctx, params.get("name") or "default", "deactivate", None)


@registry.register(
    "GET", "/cluster/acme/tos", name="acme_tos", permission=AnyUser("PVE: user => 'all'"),
    description="Retrieve ACME TermsOfService URL from CA. Deprecated, please use "
                "/cluster/acme/meta.",
    parameters={"directory": DIRECTORY},
    returns={"type": "string", "optional": 1, "description": "ACME TermsOfService URL."},
    cli=CliSpec(("acme", "tos")),
)
async def acme_tos(ctx: RequestContext, params: dict[str, Any]) -> str | None:
    meta = await _meta(ctx, params)
    return meta.get("termsOfService")


async def _meta(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    with _refused():
        return await asyncio.to_thread(acme.directory_meta,
                                       params.get("directory") or acme.DEFAULT_DIRECTORY,
                                       _verify(ctx))


@registry.register(
    "GET", "/cluster/acme/meta", name="acme_meta", permission=privs("Sys.Audit"),
    description="Retrieve ACME Directory Meta Information (PVE checks Sys.Audit on "
                "'/nodes/{node}' without a node: inherited from '/').",
    parameters={"directory": DIRECTORY},
    returns={"type": "object", "properties": {
        "termsOfService": {"type": "string", "optional": 1},
        "externalAccountRequired": {"type": "boolean", "optional": 1},
        "website": {"type": "string", "optional": 1},
        "caaIdentities": {"type": "array", "items": {"type": "string"}, "optional": 1}}},
    cli=CliSpec(("acme", "meta")),
)
async def acme_meta(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return await _meta(ctx, params)


@registry.register(
    "GET", "/cluster/acme/directories", name="acme_directories",
    permission=AnyUser("PVE: user => 'all'"),
    description="Get named known ACME directory endpoints.",
    returns={"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "url": {"type": "string"}}}},
    cli=CliSpec(("acme", "directories"), formatter="table:name,url"),
)
async def acme_directories(ctx: RequestContext, params: dict[str, Any]) -> list:
    return [dict(d) for d in acme.DIRECTORIES]


# ---------------------------------------------------------------- plugins

PLUGIN_FIELDS = {
    "api": Param(optional=True, pattern=r"[A-Za-z0-9_]+", max_length=64,
                 description="API plugin name"),
    "data": Param(optional=True, max_length=32 * 1024,
                  description="DNS plugin data. (base64 encoded)"),
    "validation-delay": Param(type="integer", optional=True, minimum=0,
                              maximum=2 * 24 * 60 * 60,
                              description="Extra delay in seconds to wait before requesting "
                                          "validation. Allows to cope with a long TTL of DNS "
                                          "records."),
    "nodes": Param(optional=True, format="pve-node-list", max_length=4096,
                   description="List of cluster node names."),
    "disable": Param(type="boolean", optional=True, description="Flag to disable the config."),
}
PLUGIN_VIEW = {"type": "object", "properties": {
    "plugin": {"type": "string"}, "type": {"type": "string"},
    "digest": {"type": "string", "optional": 1},
    "has-data": {"type": "boolean", "optional": 1,
                 "description": "A dns plugin: whether its (write-only) data is set."},
    **{k: p.json_schema() for k, p in PLUGIN_FIELDS.items() if k != "data"}}}


def _plugin_values(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: params[k] for k in PLUGIN_FIELDS if params.get(k) is not None}
    if "data" in out:
        try:
            base64.b64decode(str(out["data"]), validate=True)
        except ValueError:
            raise ParamError({"data": "value is not base64 encoded"}) from None
    if "disable" in out:
        out["disable"] = int(bool(out["disable"]))
    return out


@registry.register(
    "GET", "/cluster/acme/plugins", name="acme_plugins_index", permission=privs("Sys.Modify"),
    description="ACME plugin index.",
    parameters={"type": Param(optional=True, enum=acme.PLUGIN_TYPES,
                              description="Only list ACME plugins of a specific type")},
    returns={"type": "array", "items": PLUGIN_VIEW},
    cli=CliSpec(("acme", "plugin", "list"), formatter="table:plugin,type,api"),
)
async def acme_plugins_index(ctx: RequestContext, params: dict[str, Any]) -> list:
    plugins = await AcmeConfig(_store(ctx)).plugins()
    return [plugins.api_view(pid) for pid in sorted(plugins.ids)
            if not params.get("type") or plugins.ids[pid]["type"] == params["type"]]


@registry.register(
    "GET", "/cluster/acme/plugins/{id}", name="acme_plugin_get", permission=privs("Sys.Modify"),
    description="Get ACME plugin configuration.",
    parameters={"id": PLUGIN_ID}, returns=PLUGIN_VIEW,
    cli=CliSpec(("acme", "plugin", "config"), positional=("id",)),
)
async def acme_plugin_get(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    plugins = await AcmeConfig(_store(ctx)).plugins()
    with _refused():
        return plugins.api_view(params["id"])


@registry.register(
    "POST", "/cluster/acme/plugins", name="acme_plugin_add", permission=privs("Sys.Modify"),
    description="Add ACME plugin configuration ('dns' plugins are stored only: binome "
                "validates with 'standalone' plugins).",
    parameters={"id": PLUGIN_ID,
                "type": Param(enum=acme.PLUGIN_TYPES, description="ACME challenge type."),
                **PLUGIN_FIELDS},
    cli=CliSpec(("acme", "plugin", "add"), positional=("type", "id")),
)
async def acme_plugin_add(ctx: RequestContext, params: dict[str, Any]) -> None:
    pid, ptype = params["id"], params["type"]
    values = _plugin_values(params)
    errors = acme.check_plugin_options(ptype, values, create=True)
    if errors:
        raise ParamError(errors)
    config = AcmeConfig(_store(ctx, quorum=True))

    def add(cur: acme.Plugins) -> dict[str, dict[str, Any]]:
        if pid in cur.ids:
            raise AcmeError(f"ACME plugin ID '{pid}' already exists")
        return {**cur.ids, pid: {"type": ptype, **values}}
    with _refused():
        await config.change_plugins(add)


@registry.register(
    "PUT", "/cluster/acme/plugins/{id}", name="acme_plugin_update",
    permission=privs("Sys.Modify"), description="Update ACME plugin configuration.",
    parameters={"id": PLUGIN_ID, **PLUGIN_FIELDS,
                "delete": Param(optional=True, max_length=4096,
                                description="A list of settings you want to delete."),
                "digest": Param(optional=True, max_length=64,
                                description="Prevent changes if current configuration file "
                                            "has a different digest.")},
    cli=CliSpec(("acme", "plugin", "set"), positional=("id",)),
)
async def acme_plugin_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    pid = params["id"]
    values = _plugin_values(params)
    delete = split_list(params.get("delete") or "")
    config = AcmeConfig(_store(ctx, quorum=True))

    def update(cur: acme.Plugins) -> dict[str, dict[str, Any]]:
        want = params.get("digest")
        if want and want != cur.digest:
            raise AcmeError("detected modified configuration - file changed by other user? "
                            "Try again.")
        conf = cur.ids.get(pid)
        if conf is None:
            raise AcmeError(f"ACME plugin ID '{pid}' does not exist")
        ptype = conf["type"]
        new = dict(conf)
        for key in delete:
            if key not in acme.PLUGIN_OPTIONS[ptype]:
                raise AcmeError(f"no such option '{key}'")
            if key in acme.REQUIRED.get(ptype, ()):
                raise AcmeError(f"unable to delete required option '{key}'")
            new.pop(key, None)
        errors = acme.check_plugin_options(ptype, values, create=False)
        if errors:
            raise PemError(errors)
        new.update(values)
        return {**cur.ids, pid: new}
    with _refused():
        await config.change_plugins(update)


@registry.register(
    "DELETE", "/cluster/acme/plugins/{id}", name="acme_plugin_delete",
    permission=privs("Sys.Modify"), description="Delete ACME plugin configuration.",
    parameters={"id": PLUGIN_ID},
    cli=CliSpec(("acme", "plugin", "remove"), positional=("id",)),
)
async def acme_plugin_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    pid = params["id"]
    config = AcmeConfig(_store(ctx, quorum=True))
    await config.change_plugins(lambda cur: {k: v for k, v in cur.ids.items() if k != pid})
