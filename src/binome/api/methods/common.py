"""Parameter declarations and repository access shared by several method modules.

The repositories below the API own their etcd keys; this is the one place that hands
them the cluster's store (there is none outside a cluster: a 500 then).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import aiohttp

from binome.access.model import ROOT_USER, AccessConfig, ValidationError
from binome.access.ops import AccessError
from binome.access.repository import AccessConflict, Change
from binome.access.roles import RoleError
from binome.access.service import AuthRefused
from binome.api import auth
from binome.api.errors import ApiError, ParamError, PermissionDenied
from binome.fence.devices import FenceDevices
from binome.ha.config import HaConfig
from binome.schema import Param
from binome.storage.definitions import StorageDefinitions

if TYPE_CHECKING:
    from binome.api.context import RequestContext

T = TypeVar("T")
log = logging.getLogger("binome.api")

NODE = Param(format="pve-node", description="The cluster node name ('localhost': this node).")
UPID = Param(description="The task's unique ID (UPID).", max_length=256)


def require_quorum(ctx: RequestContext) -> None:
    """A 500 unless this node is in a cluster and has quorum (for changes)."""
    cluster = ctx.services.cluster
    if cluster.store is None:
        raise ApiError(500, "this node is not part of a cluster")
    if not cluster.view.quorate:
        raise ApiError(500, "cluster not ready - no quorum?")


def ha_config(ctx: RequestContext, *, quorum: bool = False) -> HaConfig:
    """The HA configuration; a 500 outside a cluster (or, with `quorum`, without quorum)."""
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return HaConfig(store)


def ha_config_if_clustered(ctx: RequestContext) -> HaConfig | None:
    """The HA configuration, or None on a node that is in no cluster (nothing is HA)."""
    store = ctx.services.cluster.store
    return None if store is None else HaConfig(store)


def fence_devices(ctx: RequestContext, *, quorum: bool = False) -> FenceDevices:
    """The fence device records; a 500 outside a cluster (or, with `quorum`, without it)."""
    if quorum:
        require_quorum(ctx)
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return FenceDevices(store)


def storage_definitions(ctx: RequestContext) -> StorageDefinitions:
    """The cluster's storage definitions; a 500 outside a cluster."""
    store = ctx.services.cluster.store
    if store is None:
        raise ApiError(500, "this node is not part of a cluster")
    return StorageDefinitions(store)


async def access_change(ctx: RequestContext, action: str,
                        op: Callable[[AccessConfig], AccessConfig]) -> Change:
    """Store an access change as the caller; bad input is a 400 naming the parameter,
    a refused change a 500 with PVE's text (nothing is written in either case)."""
    try:
        return await ctx.services.access.change(ctx.userid, action, op)
    except (ValidationError, RoleError) as exc:
        raise ParamError(dict(exc.errors)) from None
    except (AccessError, AuthRefused, AccessConflict) as exc:
        raise ApiError(500, str(exc)) from None


# `.../rrddata` of nodes, guests and storages: PVE's timeframes and consolidations
RRD_PARAMS = {"timeframe": Param(enum=("hour", "day", "week", "month", "year"),
                                 description="Time frame."),
              "cf": Param(optional=True, default="AVERAGE", enum=("AVERAGE", "MAX"),
                          description="Consolidation function.")}


async def from_other_nodes(
        ctx: RequestContext, what: str, timeout: float,
        fetch: Callable[[aiohttp.ClientSession, str, dict[str, str]], Awaitable[T]],
) -> dict[str, T]:
    """`fetch(http, node, headers)` on every other online node of the cluster at once, as
    root@pam (a ticket made with the cluster's key): a view PVE builds from every
    node's own files (tasks, notification deliveries). A node that fails or does not
    answer within `timeout` seconds is left out, with a warning naming `what`."""
    cluster = ctx.services.cluster
    others = sorted(name for name in cluster.node_records
                    if name != ctx.node and cluster.node_online(name)) \
        if cluster.is_member else []
    if not others:
        return {}
    key = await ctx.services.authkey()
    headers = {"Authorization": "PVEAuthCookie=" + auth.make_ticket(key, "root@pam")}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        results = await asyncio.gather(*(fetch(http, node, headers) for node in others),
                                       return_exceptions=True)
    out: dict[str, T] = {}
    for node, result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("%s: node %s left out: %s", what, node,
                        result or type(result).__name__)
            continue
        out[node] = result
    return out


async def reauth_user_for_user_modification(ctx: RequestContext, userid: str,
                                            password: str | None,
                                            param: str = "password") -> None:
    """PVE's RPCEnvironment::reauth_user_for_user_modification, before a change to a user's
    second factors or password: the user must exist; root@pam's may be changed by
    root@pam only (a 403 even for an administrator with User.Modify); anyone but root@pam
    confirms with their own current password in `param` (a stolen ticket alone must not
    replace a second factor or a password). Tokens never get here (allowtoken=0)."""
    access = ctx.services.access
    cfg = await access.config()
    if userid != ROOT_USER and userid not in cfg.users:
        raise ApiError(500, f"no such user ('{userid}')")
    if userid == ROOT_USER and ctx.userid != ROOT_USER:
        raise PermissionDenied()
    if ctx.userid == ROOT_USER:
        return
    if not password:
        raise ParamError({param: "password is required to modify user"})
    source = ctx.request.remote if ctx.request is not None and ctx.request.remote else "local"
    # the login limiter here too: a stolen ticket must not become a password oracle
    wait = access.limiter.retry_after(ctx.userid, source, access.now())
    if wait > 0:
        raise ApiError(500, access.limiter.message(wait))
    if not await access.verify_password(ctx.userid, password, auth.pam_authenticate):
        access.limiter.failure(ctx.userid, source, access.now())
        log.warning("user modification refused: wrong confirmation password of %s",
                    ctx.userid)
        raise ApiError(500, "authentication failure")
