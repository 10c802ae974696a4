"""Parameter declarations shared by several methods."""

from binome.api.schema import Param

NODE = Param(format="pve-node", description="The cluster node name ('localhost': this node).")
UPID = Param(description="The task's unique ID (UPID).", max_length=256)
