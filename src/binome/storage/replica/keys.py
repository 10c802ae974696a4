"""Transitional alias of the volume records' keys, now owned by `node.records` (issue 10).

Only for the modules another branch rewrites at the same time (ha/): they
import this path until the merge re-points them to
`binome.storage.replica.node.records`; then this file goes.
"""

from binome.storage.replica.node.records import (
    PORTS,
    ROOT,
    SECRETS,
    VOLUMES,
    config,
    fencing,
    parse,
    port,
    prefix,
    secret,
    state,
)

__all__ = ["PORTS", "ROOT", "SECRETS", "VOLUMES", "config", "fencing", "parse", "port",
           "prefix", "secret", "state"]
