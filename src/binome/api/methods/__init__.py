"""API method declarations, one module per area; importing this package registers them all."""

from binome.api.methods import (  # noqa: F401
    access,
    access_acl,
    access_users,
    cluster,
    console,
    domains,
    fence,
    ha,
    nodes,
    pools,
    qemu,
    storage,
    tasks,
    tfa,
    version,
    volumes,
    vzdump,
)
