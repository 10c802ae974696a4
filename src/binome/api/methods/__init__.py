"""API method declarations, one module per area; importing this package registers them all."""

from binome.api.methods import access, cluster, nodes, tasks, version  # noqa: F401
