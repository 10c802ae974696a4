"""Notifications, PVE 8's /cluster/notifications API (pve-manager
PVE/API2/Cluster/Notifications.pm): the index, every target, a target's test, the
endpoints per type (sendmail, smtp, gotify, webhook) and the matchers, with PVE's
parameters and permissions (on /mapping/notifications).

The configuration is owned by `binome.notify.repository` through the node's
`NotificationService`; this module checks parameters, calls it and shapes the answer.
Secrets (smtp password, gotify token, webhook secret values) are accepted on create and
update and never returned: a GET shows a webhook secret's name only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from binome.access.permission import And, AnyUser, Or
from binome.api.context import RequestContext
from binome.api.errors import ApiError, ParamError
from binome.api.methods.common import NODE, from_other_nodes, require_quorum
from binome.api.registry import CliSpec, privs, registry
from binome.api.schema import Param
from binome.notify.config import (
    TARGET_TYPES,
    ConfigError,
    Entry,
    NotificationConfig,
    public_view,
    update_entry,
    validate_entry,
)
from binome.notify.events import CATALOGUE
from binome.notify.repository import DigestMismatch, NotifyConflict
from binome.notify.senders import DeliveryError
from binome.notify.service import NotConfigured, NotificationService

log = logging.getLogger(__name__)

BASE = "/cluster/notifications"
MAPPING = "/mapping/notifications"
MODIFY = privs("Mapping.Modify", path=MAPPING)
AUDIT = Or(MODIFY, privs("Mapping.Audit", path=MAPPING))
USE = Or(MODIFY, privs("Mapping.Audit", path=MAPPING), privs("Mapping.Use", path=MAPPING))
# creating or changing an endpoint makes the cluster reach out to the network
ENDPOINT_WRITE = And(MODIFY, Or(privs("Sys.Audit", "Sys.Modify"), privs("Sys.AccessNetwork")))

CONFIGID = r"[A-Za-z][A-Za-z0-9_\-]*"
NAME = Param(pattern=CONFIGID, max_length=32, description="The name of the endpoint.")


def _list(description: str, item: Param | None = None) -> Param:
    return Param(type="array", optional=True, items=item or Param(max_length=4096),
                 description=description)


COMMON = {
    "comment": Param(optional=True, max_length=4096, description="Comment"),
    "disable": Param(type="boolean", optional=True, description="Disable this target"),
}
MAIL = {
    "mailto": _list("List of email recipients"),
    "mailto-user": _list("List of users", Param(format="pve-userid")),
    "from-address": Param(optional=True, max_length=256, description="`From` address for "
                                                                     "the mail"),
    "author": Param(optional=True, max_length=256, description="Author of the mail"),
}
PROPERTIES: dict[str, dict[str, Param]] = {
    "sendmail": {"name": NAME, **MAIL, **COMMON},
    "smtp": {
        "name": NAME, **MAIL, **COMMON,
        "server": Param(max_length=256, description="The address of the SMTP server."),
        "port": Param(type="integer", optional=True, minimum=1, maximum=65535,
                      description="The port to be used. Defaults to 465 for TLS based "
                                  "connections, 587 for STARTTLS based connections and port "
                                  "25 for insecure plain-text connections."),
        "mode": Param(optional=True, enum=("insecure", "starttls", "tls"), default="tls",
                      description="Determine which encryption method shall be used for the "
                                  "connection."),
        "username": Param(optional=True, max_length=256,
                          description="Username for SMTP authentication"),
        "password": Param(optional=True, secret=True, max_length=1024,
                          description="Password for SMTP authentication (write-only)"),
        "from-address": Param(max_length=256, description="`From` address for the mail"),
    },
    "gotify": {
        "name": NAME, **COMMON,
        "server": Param(max_length=1024, description="Server URL"),
        "token": Param(secret=True, max_length=1024, description="Secret token "
                                                                 "(write-only)"),
    },
    "webhook": {
        "name": NAME, **COMMON,
        "url": Param(max_length=4096, description="Server URL"),
        "method": Param(enum=("post", "put", "get"), description="HTTP method"),
        "header": _list("HTTP headers to set. These have to be formatted as a property "
                        "string in the format name=<name>,value=<base64 of value>"),
        "body": Param(optional=True, max_length=65536, description="HTTP body, base64 "
                                                                   "encoded"),
        "secret": _list("Secrets to set. These have to be formatted as a property string "
                        "in the format name=<name>,value=<base64 of value> (write-only)"),
    },
    "matcher": {
        "name": Param(pattern=CONFIGID, max_length=32, description="Name of the matcher."),
        "match-field": _list("Metadata fields to match (regex or exact match). Must be in "
                             "the form (regex|exact):<field>=<value>"),
        "match-severity": _list("Notification severities to match"),
        "match-calendar": _list("Match notification timestamp"),
        "target": _list("Targets to notify on match", Param(pattern=CONFIGID)),
        "mode": Param(optional=True, enum=("all", "any"), default="all",
                      description="Choose between 'all' and 'any' for when multiple "
                                  "properties are specified"),
        "invert-match": Param(type="boolean", optional=True,
                              description="Invert match of the whole matcher"),
        "comment": Param(optional=True, max_length=4096, description="Comment"),
        "disable": Param(type="boolean", optional=True, description="Disable this matcher"),
    },
}
DIGEST = Param(optional=True, max_length=64, pattern="[A-Fa-f0-9]{1,64}",
               description="Prevent changes if current configuration file has a different "
                           "digest. This can be used to prevent concurrent modifications.")
# repeated (PVE's array) or, as older clients send it, a comma list
DELETE = _list("A list of settings you want to delete.",
               Param(pattern=rf"{CONFIGID}(,{CONFIGID})*", max_length=1024))


def _optional(props: dict[str, Param]) -> dict[str, Param]:
    """PVE's make_properties_optional, without the defaults (an update changes only what
    it is given)."""
    out = {}
    for key, p in props.items():
        if key == "name":
            out[key] = p
        else:
            out[key] = Param(type=p.type, description=p.description, optional=True,
                             enum=p.enum, pattern=p.pattern, format=p.format,
                             minimum=p.minimum, maximum=p.maximum, max_length=p.max_length,
                             secret=p.secret, items=p.items)
    return out


def _service(ctx: RequestContext) -> NotificationService:
    return ctx.services.notifications


def _shown(entry: Entry, config: NotificationConfig) -> dict[str, Any]:
    """An entry as PVE shows it: no secret value, booleans as 0/1, its origin."""
    out = {k: (int(v) if isinstance(v, bool) else v) for k, v in public_view(entry).items()
           if k != "type"}    # listed per type
    out["origin"] = config.origin(entry.name)
    return out


async def _snapshot(ctx: RequestContext) -> Any:
    try:
        return await _service(ctx).snapshot()
    except NotConfigured as exc:
        raise ApiError(500, str(exc)) from None


def _not_found(kind: str, name: str) -> ApiError:
    what = "matcher" if kind == "matcher" else "endpoint"
    return ApiError(404, f"{what} '{name}' not found")


def _entry_of(config: NotificationConfig, kind: str, name: str) -> Entry:
    entry = config.entries.get(name)
    if entry is None or entry.type != kind:
        raise _not_found(kind, name)
    return entry


async def _change(ctx: RequestContext, action: str,
                  operation: Callable[[NotificationConfig], None],
                  digest: str | None = None) -> None:
    require_quorum(ctx)
    try:
        await _service(ctx).change(ctx.userid, action, operation, digest=digest)
    except ConfigError as exc:
        raise ParamError(dict(exc.errors)) from None
    except DigestMismatch as exc:
        raise ApiError(400, str(exc)) from None
    except (NotConfigured, NotifyConflict) as exc:
        raise ApiError(500, str(exc)) from None


def _options(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in ("name", "delete", "digest")}


# -- index, targets, matcher fields -------------------------------------------------------

@registry.register(
    "GET", BASE, name="notifications_index",
    permission=AnyUser("none: a fixed list of subdirectories, as PVE"),
    description="Index for notification-related API endpoints.",
    returns={"type": "array"},
)
async def notifications_index(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    return [{"name": n} for n in ("endpoints", "matchers", "targets", "matcher-fields",
                                  "matcher-field-values", "history")]


@registry.register(
    "GET", f"{BASE}/endpoints", name="notification_endpoints_index",
    permission=AnyUser("none: a fixed list of endpoint types, as PVE"),
    description="Index for all available endpoint types.", returns={"type": "array"},
)
async def endpoints_index(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    return [{"name": t} for t in sorted(TARGET_TYPES)]


@registry.register(
    "GET", f"{BASE}/targets", name="notification_targets", permission=USE,
    description="Returns a list of all entities that can be used as notification targets.",
    returns={"type": "array"},
    cli=CliSpec(("notification", "target", "list"),
                formatter="table:name,type,disable,origin,comment"),
)
async def targets(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    config = (await _snapshot(ctx)).config
    out = []
    for entry in sorted(config.targets(), key=lambda e: e.name):
        item: dict[str, Any] = {"name": entry.name, "type": entry.type,
                                "origin": config.origin(entry.name),
                                "disable": int(entry.disabled)}
        if entry.options.get("comment"):
            item["comment"] = entry.options["comment"]
        out.append(item)
    return out


@registry.register(
    "POST", f"{BASE}/targets/{{name}}/test", name="notification_target_test", permission=USE,
    description="Send a test notification to a provided target.",
    parameters={"name": Param(pattern=CONFIGID, max_length=32,
                              description="Name of the target.")},
    cli=CliSpec(("notification", "target", "test"), positional=("name",)),
)
async def test_target(ctx: RequestContext, params: dict[str, Any]) -> None:
    name = params["name"]
    config = (await _snapshot(ctx)).config
    entry = config.entries.get(name)
    if entry is None or entry.type not in TARGET_TYPES:
        raise ApiError(404, f"target '{name}' does not exist")
    try:
        await _service(ctx).test_target(name)
    except DeliveryError as exc:   # the sender's text never holds a secret
        raise ApiError(500, f"could not notify via target(s): {name}: {exc}") from None


# -- delivery history (binome-specific: PVE keeps none) ------------------------------------

HISTORY_FILTERS = {
    "limit": Param(type="integer", optional=True, default=50, minimum=1, maximum=1000,
                   description="Max. number of deliveries (newest first)."),
    "target": Param(pattern=CONFIGID, max_length=32, optional=True,
                    description="Only deliveries to this target."),
    "status": Param(enum=("pending", "retrying", "delivered", "failed", "interrupted"),
                    optional=True,
                    description="Only deliveries in this state."),
}
HISTORY_RETURNS = {"type": "array", "items": {"type": "object", "properties": {
    "id": {"type": "integer"}, "node": {"type": "string"},
    "time": {"type": "number", "description": "When the message was routed to the target."},
    "target": {"type": "string"}, "target_type": {"type": "string"},
    "title": {"type": "string"}, "severity": {"type": "string"}, "type": {"type": "string"},
    "events": {"type": "integer", "description": "Events grouped into this message."},
    "status": {"type": "string", "enum": ["pending", "retrying", "delivered", "failed",
                                          "interrupted"]},
    "attempts": {"type": "integer"},
    "error": {"type": "string", "optional": True,
              "description": "The last failed attempt's reason, one line."},
    "updated": {"type": "number", "optional": True}}}}
#: how long the cluster-wide history waits for another node's answer
REMOTE_TIMEOUT = 5.0


def _filtered(entries: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in entries
            if params.get("target") in (None, e.get("target"))
            and params.get("status") in (None, e.get("status"))]


@registry.register(
    "GET", "/nodes/{node}/notifications/history", name="node_notification_history",
    permission=AUDIT, proxyto="node",
    description="The notifications this node sent (each event is sent by one node), per "
                "target: delivered, retrying or failed, with the last failure's reason. "
                "The newest 200 deliveries, kept in a file of the node across restarts "
                "(a delivery a restart cut short is `interrupted`).",
    parameters={"node": NODE, **HISTORY_FILTERS}, returns=HISTORY_RETURNS,
)
async def node_history(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    entries = [{**e, "node": ctx.node} for e in ctx.services.notifications.history()]
    return _filtered(entries, params)[:params.get("limit") or 50]


async def _remote_history(ctx: RequestContext, http: aiohttp.ClientSession, node: str,
                          headers: dict[str, str], params: dict[str, Any]) -> list[Any]:
    base = await ctx.services.node_api_url(node)
    query = {k: str(v) for k, v in params.items() if k in HISTORY_FILTERS and v is not None}
    async with http.get(f"{base}/api2/json/nodes/{node}/notifications/history",
                        params=query, headers=headers,
                        ssl=ctx.services.cluster_ssl_context()) as resp:
        if resp.status != 200:
            raise aiohttp.ClientError(f"HTTP {resp.status} {resp.reason}")
        return list((await resp.json(content_type=None)).get("data") or [])


@registry.register(
    "GET", f"{BASE}/history", name="notification_history", permission=AUDIT,
    description="Notification deliveries of every online node, newest first: per message "
                "and target, delivered, retrying or failed, with the last failure's reason "
                "and time. A node that does not answer is left out.",
    parameters=HISTORY_FILTERS, returns=HISTORY_RETURNS,
    cli=CliSpec(("notification", "history"),
                formatter="table:time,node,target,status,attempts,title,error"),
)
async def cluster_history(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    entries = _filtered([{**e, "node": ctx.node}
                         for e in ctx.services.notifications.history()], params)
    remote = await from_other_nodes(
        ctx, "notification history", REMOTE_TIMEOUT,
        lambda http, node, headers: _remote_history(ctx, http, node, headers, params))
    for result in remote.values():
        entries.extend(result)
    entries.sort(key=lambda e: (-float(e.get("time") or 0), str(e.get("node"))))
    return entries[:params.get("limit") or 50]


@registry.register(
    "GET", f"{BASE}/matcher-fields", name="notification_matcher_fields", permission=AUDIT,
    description="Returns known notification metadata fields", returns={"type": "array"},
)
async def matcher_fields(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    names = {"type", "hostname", "job-id", "kind"}
    for kind in CATALOGUE.values():
        names.update(f.replace("_", "-") for f in kind.required)
    return [{"name": n} for n in sorted(names)]


@registry.register(
    "GET", f"{BASE}/matcher-field-values", name="notification_matcher_field_values",
    permission=AUDIT, returns={"type": "array"},
    description="Returns known notification metadata fields and their known values",
)
async def matcher_field_values(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    values = [{"field": "type", "value": t}
              for t in sorted({k.type for k in CATALOGUE.values()})]
    values += [{"field": "kind", "value": k} for k in sorted(CATALOGUE)]
    values += [{"field": "hostname", "value": n}
               for n in sorted(ctx.services.cluster.node_records)]
    return values


# -- endpoints, per type ------------------------------------------------------------------

def _register_endpoint_type(kind: str) -> None:
    props = PROPERTIES[kind]
    path = f"{BASE}/endpoints/{kind}"

    @registry.register(
        "GET", path, name=f"notification_{kind}_list", permission=AUDIT,
        description=f"Returns a list of all {kind} endpoints", returns={"type": "array"},
        cli=CliSpec(("notification", "endpoint", kind, "list"),
                    formatter="table:name,origin,disable,comment"),
    )
    async def list_endpoints(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
        config = (await _snapshot(ctx)).config
        return [_shown(e, config) for e in sorted(config.targets(), key=lambda e: e.name)
                if e.type == kind]

    @registry.register(
        "GET", f"{path}/{{name}}", name=f"notification_{kind}_read", permission=AUDIT,
        description=f"Return a specific {kind} endpoint", returns={"type": "object"},
        parameters={"name": NAME},
        cli=CliSpec(("notification", "endpoint", kind, "show"), positional=("name",)),
    )
    async def read_endpoint(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
        snap = await _snapshot(ctx)
        out = _shown(_entry_of(snap.config, kind, params["name"]), snap.config)
        out["digest"] = snap.digest
        return out

    @registry.register(
        "POST", path, name=f"notification_{kind}_create", permission=ENDPOINT_WRITE,
        description=f"Create a new {kind} endpoint", parameters=props,
        cli=CliSpec(("notification", "endpoint", kind, "add"), positional=("name",)),
    )
    async def create_endpoint(ctx: RequestContext, params: dict[str, Any]) -> None:
        name = params["name"]
        try:
            entry = validate_entry(kind, name, _options(params))
        except ConfigError as exc:
            raise ParamError(dict(exc.errors)) from None
        await _change(ctx, f"create notification endpoint '{name}' ({kind})",
                      lambda cfg: cfg.add(entry))

    @registry.register(
        "PUT", f"{path}/{{name}}", name=f"notification_{kind}_update",
        permission=ENDPOINT_WRITE, description=f"Update existing {kind} endpoint",
        parameters={**_optional(props), "delete": DELETE, "digest": DIGEST},
        cli=CliSpec(("notification", "endpoint", kind, "set"), positional=("name",)),
    )
    async def update_endpoint(ctx: RequestContext, params: dict[str, Any]) -> None:
        await _update(ctx, kind, params)

    @registry.register(
        "DELETE", f"{path}/{{name}}", name=f"notification_{kind}_delete", permission=MODIFY,
        description=f"Remove {kind} endpoint", parameters={"name": NAME},
        cli=CliSpec(("notification", "endpoint", kind, "delete"), positional=("name",)),
    )
    async def delete_endpoint(ctx: RequestContext, params: dict[str, Any]) -> None:
        await _delete(ctx, kind, params["name"])


async def _update(ctx: RequestContext, kind: str, params: dict[str, Any]) -> None:
    name = params["name"]
    label = "matcher" if kind == "matcher" else "endpoint"

    def operation(cfg: NotificationConfig) -> None:
        entry = _entry_of(cfg, kind, name)
        delete = [key for item in params.get("delete") or [] for key in item.split(",")]
        cfg.replace(update_entry(entry, _options(params), delete))

    await _change(ctx, f"update notification {label} '{name}'", operation,
                  digest=params.get("digest"))


async def _delete(ctx: RequestContext, kind: str, name: str) -> None:
    label = "matcher" if kind == "matcher" else "endpoint"

    def operation(cfg: NotificationConfig) -> None:
        _entry_of(cfg, kind, name)
        cfg.delete(name)

    await _change(ctx, f"delete notification {label} '{name}'", operation)


for _kind in TARGET_TYPES:
    _register_endpoint_type(_kind)


# -- matchers -----------------------------------------------------------------------------

MATCHER_NAME = PROPERTIES["matcher"]["name"]


@registry.register(
    "GET", f"{BASE}/matchers", name="notification_matchers", permission=USE,
    description="Returns a list of all matchers", returns={"type": "array"},
    cli=CliSpec(("notification", "matcher", "list"),
                formatter="table:name,mode,target,disable,origin,comment"),
)
async def matchers(ctx: RequestContext, params: dict[str, Any]) -> list[Any]:
    config = (await _snapshot(ctx)).config
    return [_shown(m, config) for m in sorted(config.matchers(), key=lambda e: e.name)]


@registry.register(
    "GET", f"{BASE}/matchers/{{name}}", name="notification_matcher_read", permission=AUDIT,
    description="Return a specific matcher", returns={"type": "object"},
    parameters={"name": MATCHER_NAME},
    cli=CliSpec(("notification", "matcher", "show"), positional=("name",)),
)
async def matcher_read(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    snap = await _snapshot(ctx)
    out = _shown(_entry_of(snap.config, "matcher", params["name"]), snap.config)
    out["digest"] = snap.digest
    return out


@registry.register(
    "POST", f"{BASE}/matchers", name="notification_matcher_create", permission=MODIFY,
    description="Create a new matcher", parameters=PROPERTIES["matcher"],
    cli=CliSpec(("notification", "matcher", "add"), positional=("name",)),
)
async def matcher_create(ctx: RequestContext, params: dict[str, Any]) -> None:
    name = params["name"]
    try:
        entry = validate_entry("matcher", name, _options(params))
    except ConfigError as exc:
        raise ParamError(dict(exc.errors)) from None
    await _change(ctx, f"create notification matcher '{name}'", lambda cfg: cfg.add(entry))


@registry.register(
    "PUT", f"{BASE}/matchers/{{name}}", name="notification_matcher_update", permission=MODIFY,
    description="Update existing matcher",
    parameters={**_optional(PROPERTIES["matcher"]), "delete": DELETE, "digest": DIGEST},
    cli=CliSpec(("notification", "matcher", "set"), positional=("name",)),
)
async def matcher_update(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _update(ctx, "matcher", params)


@registry.register(
    "DELETE", f"{BASE}/matchers/{{name}}", name="notification_matcher_delete",
    permission=MODIFY, description="Remove matcher", parameters={"name": MATCHER_NAME},
    cli=CliSpec(("notification", "matcher", "delete"), positional=("name",)),
)
async def matcher_delete(ctx: RequestContext, params: dict[str, Any]) -> None:
    await _delete(ctx, "matcher", params["name"])
