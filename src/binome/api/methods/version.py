"""GET /version: a PVE 8.x-compatible version report (clients gate features on it)."""

from __future__ import annotations

from typing import Any

from binome import __version__
from binome.access.permission import AnyUser
from binome.api.context import RequestContext
from binome.api.registry import CliSpec, registry

PVE_COMPAT_VERSION = "8.4.1"


@registry.register(
    "GET", "/version", name="version", permission=AnyUser("PVE: user => 'all'"),
    description="API version details: the PVE release we are compatible with, and binome's own.",
    returns={"type": "object", "properties": {"version": {"type": "string"},
                                              "release": {"type": "string"},
                                              "repoid": {"type": "string"}}},
    cli=CliSpec(("version",)),
)
async def version(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    return {"version": PVE_COMPAT_VERSION, "release": PVE_COMPAT_VERSION.rsplit(".", 1)[0],
            "repoid": "b1a0e000", "product": "binome", "binome": __version__}
