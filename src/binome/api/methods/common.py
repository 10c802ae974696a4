"""Parameter declarations and repository access shared by several method modules.

The repositories below the API own their etcd keys; this is the one place that hands
them the cluster's store (there is none outside a cluster: a 500 then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from binome.access.model import AccessConfig, ValidationError
from binome.access.ops import AccessError
from binome.access.repository import AccessConflict, Change
from binome.access.roles import RoleError
from binome.access.service import AuthRefused
from binome.api.errors import ApiError, ParamError
from binome.fence.devices import FenceDevices
from binome.ha.config import HaConfig
from binome.schema import Param
from binome.storage.definitions import StorageDefinitions

if TYPE_CHECKING:
    from binome.api.context import RequestContext

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
