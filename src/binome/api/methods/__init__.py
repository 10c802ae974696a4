"""API method declarations, one module per area; importing this package registers them all."""

from binome.api.methods import (  # noqa: F401
    access,
    cluster,
    console,
    fence,
    ha,
    nodes,
    pools,
    qemu,
    storage,
    tasks,
    version,
    volumes,
)
