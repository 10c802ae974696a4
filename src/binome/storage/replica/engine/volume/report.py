"""What a volume reports: its status dict and its /proc/drbd lines. Reads only."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from binome.storage.replica.core import format as fmt

if TYPE_CHECKING:
    from binome.storage.replica.engine.volume.volume import Volume

log = logging.getLogger("binome.replica")

def out_of_sync_kib(vol: Volume) -> int:
    if vol.bitmap is None:
        return 0
    return vol.bitmap.weight * vol.config.bm_block_size // 1024


def status(vol: Volume) -> dict[str, Any]:
    s = vol.state
    c = vol.counters
    meta = vol.meta
    link = vol.link
    pe = ep = 0
    if link is not None:
        pe = link.pending_count()
        ep = link.epochs_in_flight()
    ap = vol.nbd.inflight() if vol.nbd is not None else 0
    cfg = vol.config
    return {
        "name": vol.name,
        "size": vol.size,
        "role": str(s.role),
        "peer_role": str(s.peer),
        "cstate": str(s.conn),
        "disk": str(s.disk),
        "peer_disk": str(s.pdsk),
        "suspended": s.susp,
        "fencing": cfg.fencing,
        "fence": "needed" if s.susp else None,
        "fenced_by": vol.fenced_by,
        "paused": {"user": vol.user_paused,
                   "peer": bool(link is not None and link.peer_paused)},
        "verify": vol.verify_result,
        "split_brain": vol.split_brain,
        "io_error": vol.io_error,
        "protocol": cfg.protocol if cfg.has_net else "C",
        "settings": cfg.settings(),
        "has_net": cfg.has_net,
        "node": cfg.node,
        "peer_node": cfg.peer_node,
        "gi": str(meta.sb.gi) if meta else None,
        "flags": int(meta.sb.flags) if meta else None,
        "crashed_primary": vol.crashed_primary,
        "out_of_sync_kib": out_of_sync_kib(vol),
        "bitmap_bits": vol.bitmap.weight if vol.bitmap else 0,
        "al_hot": len(vol.al.hot()) if vol.al else 0,
        "open_count": vol.open_count,
        "socket": cfg.socket,
        "backing": cfg.backing,
        "peer": peer_status(vol),
        "counters": {"ns": c.ns // 1024, "nr": c.nr // 1024, "dw": c.dw // 1024,
                     "dr": c.dr // 1024, "al": c.al, "bm": c.bm, "lo": c.lo,
                     "pe": pe, "ua": c.ua, "ap": ap, "ep": ep},
    }


def peer_status(vol: Volume) -> dict[str, Any] | None:
    link = vol.link
    if link is None:
        return None
    out: dict[str, Any] = {"address": vol.config.peer_address, "node": vol.config.peer_node,
                           "protocol": vol.config.protocol, "last_error": link.last_error,
                           "peer_gi": str(link.peer_gi), "conflicts": link.conflicts,
                           "last_resync": link.last_resync}
    rs = link.resync or link.verify
    if rs is not None and vol.bitmap is not None:
        # "sync" is also an online verify's progress ("verify": true), as in /proc/drbd.
        out["sync"] = rs.progress(vol.bitmap.weight, vol.config.bm_block_size,
                                  vol.config.resync_rate)
    return out


def proc_drbd(vol: Volume, minor: int) -> str:
    """The /proc/drbd lines of this volume (`format.proc_volume`)."""
    return fmt.proc_volume(status(vol), minor)
