"""Transitional alias of `node.volumes` (VolumeService moved there in issue 10).

Only for the modules another branch rewrites at the same time (guest/, ha/,
storage/replicated.py): they import this path until the merge re-points them
to `binome.storage.replica.node.volumes` / `core.views`; then this file goes.
"""

from binome.storage.replica.core.views import CONNECTED_STATES, effective_disk_states
from binome.storage.replica.node.volumes import VolumeFailure, VolumeService

__all__ = ["CONNECTED_STATES", "VolumeFailure", "VolumeService", "effective_disk_states"]
