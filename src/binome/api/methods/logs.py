"""Node log methods: PVE's `/nodes/{node}/syslog` and `/nodes/{node}/journal`, serving the
node's binomed and etcd logs (read by the daemon's log reader, `RequestContext.services.logs`).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from binome.api.context import RequestContext
from binome.api.errors import ParamError, param_error
from binome.api.methods.common import NODE
from binome.api.registry import WithTotal, privs, registry
from binome.api.schema import Param

# PVE's syslog since/until: a local date-time string
DATE_TIME = r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?"
CURSOR = Param(optional=True, max_length=128, pattern=r"s=(binomed|etcd);t=\d{1,20};i=\d{1,9}",
               description="A cursor returned by an earlier call.")
SYSLOG = privs("Sys.Syslog", path="/nodes/{node}")


def _local_time(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return time.mktime(datetime.fromisoformat(text).timetuple())
    except ValueError:
        raise param_error(name, f"invalid date-time '{text}'") from None


@registry.register(
    "GET", "/nodes/{node}/syslog", name="syslog", permission=SYSLOG, proxyto="node",
    description="Read the node's service log (binomed and etcd, merged in time order).",
    parameters={
        "node": NODE,
        "start": Param(type="integer", optional=True, default=0, minimum=0,
                       description="Start line number."),
        "limit": Param(type="integer", optional=True, default=50, minimum=0,
                       description="Max. number of lines (0: 50)."),
        "since": Param(optional=True, pattern=DATE_TIME,
                       description="Display all log since this date-time string."),
        "until": Param(optional=True, pattern=DATE_TIME,
                       description="Display all log until this date-time string."),
        "service": Param(optional=True, max_length=128,
                         description="Service ID: binomed or etcd (default: both)."),
    },
    returns={"type": "array", "items": {"type": "object",
                                        "properties": {"n": {"type": "integer"},
                                                       "t": {"type": "string"}}}},
)
async def syslog(ctx: RequestContext, params: dict[str, Any]) -> WithTotal:
    total, lines = await ctx.services.logs.read_syslog(
        start=params["start"], limit=params["limit"],
        since=_local_time("since", params.get("since")),
        until=_local_time("until", params.get("until")), service=params.get("service"))
    return WithTotal(lines, total)


@registry.register(
    "GET", "/nodes/{node}/journal", name="journal", permission=SYSLOG, proxyto="node",
    description="Read the node's service journal (binomed and etcd): the first line is the "
                "cursor of the first entry, the last line the cursor of the last one.",
    parameters={
        "node": NODE,
        "since": Param(type="integer", optional=True, minimum=0,
                       description="Display all log since this UNIX epoch. Conflicts with "
                                   "'startcursor'."),
        "until": Param(type="integer", optional=True, minimum=0,
                       description="Display all log until this UNIX epoch. Conflicts with "
                                   "'endcursor'."),
        "lastentries": Param(type="integer", optional=True, minimum=0,
                             description="Limit to the last X lines."),
        "startcursor": CURSOR,
        "endcursor": CURSOR,
    },
    returns={"type": "array", "items": {"type": "string"}},
)
async def journal(ctx: RequestContext, params: dict[str, Any]) -> list[str]:
    conflicts = {}
    if "since" in params and "startcursor" in params:
        conflicts["startcursor"] = "conflicts with 'since'"
    if "until" in params and "endcursor" in params:
        conflicts["endcursor"] = "conflicts with 'until'"
    if conflicts:
        raise ParamError(conflicts)
    return await ctx.services.logs.read_journal(
        since=params.get("since"), until=params.get("until"),
        lastentries=params.get("lastentries"), startcursor=params.get("startcursor"),
        endcursor=params.get("endcursor"))
