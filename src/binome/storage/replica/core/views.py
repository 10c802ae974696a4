"""Pure views of the volume records: what a copy's state means to the cluster (no I/O).

The records themselves (etcd keys, reads, compare-and-swap) belong to
`node.records`; these functions read the dicts they return, so the HA manager,
the API and the daemon fold them the same way.
"""

from __future__ import annotations

from typing import Any

from binome.storage.replica.core.config import ADJUSTABLE

# The connection states in which the peer is there (connected, resyncing, verifying).
CONNECTED_STATES = ("Connected", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
                    "WFSyncUUID", "SyncSource", "SyncTarget", "VerifyS", "VerifyT",
                    "PausedSyncS", "PausedSyncT", "Ahead", "Behind")


def record_settings(rec: dict[str, Any]) -> dict[str, Any]:
    """The adjustable engine settings a volume record asks for (keys it does not carry
    keep the engine's defaults: records written before `adjust` existed)."""
    return {k: rec[k] for k in ADJUSTABLE if rec.get(k) is not None}


def effective_disk_states(view: dict[str, Any]) -> dict[str, str]:
    """node -> disk state of each copy, as the HA manager must read them (pure).

    `view` is `VolumeService.cluster_view()`: a node's published disk state,
    except that a copy recorded Outdated in the fencing key is Outdated whatever
    its last report said (a dead node never heard it was fenced), and a node
    that published nothing is DUnknown. Only UpToDate copies may be promoted.
    """
    out: dict[str, str] = {}
    for node in view["config"].get("nodes", {}):
        st = view["states"].get(node) or {}
        disk = str(st.get("disk") or "DUnknown") if st.get("up", True) else "DUnknown"
        out[node] = "Outdated" if node in view["outdated"] else disk
    return out
