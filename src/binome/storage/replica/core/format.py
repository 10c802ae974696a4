"""Text views of volume status dicts (pure): DRBD 8.4's /proc/drbd and DRBD 9's `drbdadm status`.

The engine's `status` command (and the API, which relays it) returns one dict
per volume; these functions render them the way DRBD users read them, so the
same eyes and the same regexes work (DRBD 8.4's `/proc/drbd`, `drbdadm status`):

    version: binome-replica 0.1 (api:1/proto:1)
     0: cs:SyncSource ro:Primary/Secondary ds:UpToDate/Inconsistent C r-----
        ns:5120 nr:0 dw:128 dr:5248 al:3 bm:1 lo:0 pe:8 ua:0 ap:0 ep:1 wo:f oos:11264
        [=====>..............] sync'ed: 31.3% (11264/16384)K
        finish: 0:00:02 speed: 5,120 (5,120) K/sec

    vm-100-disk-0 role:Primary
      disk:UpToDate
      n2 role:Secondary
        replication:SyncSource peer-disk:Inconsistent done:31.25

The six flags are DRBD's: r/s (running / I/O suspended), a (resync-after
dependency: never here), p (paused by the peer), u (paused by the user), the
blocking cause (`n`: waiting on the network, i.e. on fencing), s (AL updates
suspended: never here). The CLI registers `volume_status` as a formatter.
"""

from __future__ import annotations

from typing import Any

VERSION = "0.1"

# DRBD 9 splits 8.4's connection state: the connection, then the replication state.
_CONNECTING = {"WFConnection", "WFReportParams", "Unconnected", "Timeout", "BrokenPipe",
               "NetworkFailure", "ProtocolError", "TearDown"}
_REPLICATION = {"StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID",
                "SyncSource", "SyncTarget", "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT",
                "Ahead", "Behind"}


def _flags(st: dict[str, Any]) -> str:
    paused = st.get("paused") or {}
    susp = bool(st.get("suspended"))
    return "".join(("s" if susp else "r", "-", "p" if paused.get("peer") else "-",
                    "u" if paused.get("user") else "-", "n" if susp else "-", "-"))


def sync_lines(sync: dict[str, Any], verify: bool = False) -> list[str]:
    """DRBD's two progress lines (drbd_syncer_progress)."""
    total = max(int(sync.get("total_kib", 0)), 0)
    left = max(int(sync.get("left_kib", 0)), 0)
    res = min(1000, max(0, int(float(sync.get("done", 0.0)) * 10)))   # per mille, as DRBD
    x = res // 50
    bar = "=" * max(x - 1, 0) + ">" + "." * (20 - x)
    unit, scale = ("M", 1024) if total >= 1024 * 1024 else ("K", 1)
    what = "verified" if verify else "sync'ed"
    line1 = (f"\t[{bar}] {what}:{res // 10:3d}.{res % 10}% "
             f"({left // scale}/{total // scale}){unit}")
    eta = sync.get("eta_s")
    if eta is None:
        finish = "--:--:--"
    else:
        eta = int(eta)
        finish = f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
    line2 = (f"\tfinish: {finish} speed: {int(sync.get('speed_kib', 0)):,} "
             f"({int(sync.get('avg_kib', sync.get('speed_kib', 0))):,})")
    if sync.get("want_kib"):
        line2 += f" want: {int(sync['want_kib']):,}"
    line2 += " K/sec"
    if sync.get("stalled"):
        line2 += " (stalled)"
    return [line1, line2]


def proc_volume(st: dict[str, Any], minor: int) -> str:
    """The /proc/drbd lines of one volume."""
    if st.get("cstate") == "Unconfigured":
        return f"{minor:2d}: cs:Unconfigured"
    c = st.get("counters") or {}
    proto = st.get("protocol") or "C"
    lines = [
        f"{minor:2d}: cs:{st['cstate']} ro:{st['role']}/{st['peer_role']} "
        f"ds:{st['disk']}/{st['peer_disk']} {proto} {_flags(st)}",
        "    " + " ".join(f"{k}:{c.get(k, 0)}" for k in
                          ("ns", "nr", "dw", "dr", "al", "bm", "lo", "pe", "ua", "ap", "ep"))
        + f" wo:f oos:{st.get('out_of_sync_kib', 0)}",
    ]
    sync = (st.get("peer") or {}).get("sync")
    if sync is not None:
        lines += sync_lines(sync, verify=bool(sync.get("verify")))
    return "\n".join(lines)


def proc_drbd(statuses: list[dict[str, Any]]) -> str:
    out = [f"version: binome-replica {VERSION} (api:1/proto:1)"]
    out += [proc_volume(st, minor) for minor, st in enumerate(statuses)]
    return "\n".join(out) + "\n"


def _connection(cstate: str) -> str:
    if cstate in _CONNECTING:
        return "Connecting"
    if cstate in ("Connected", *_REPLICATION):
        return "Connected"
    return cstate               # StandAlone, Disconnecting, Unconfigured


def drbdadm_volume(st: dict[str, Any]) -> str:
    """DRBD 9's `drbdadm status` block of one volume (one resource, one peer)."""
    head = f"{st['name']} role:{st.get('role', 'Unknown')}"
    if st.get("suspended"):
        head += " suspended:fencing"
    lines = [head]
    if st.get("cstate") == "Unconfigured":
        lines.append("  disk:Diskless")
        return "\n".join(lines)
    lines.append(f"  disk:{st['disk']}")
    peer = st.get("peer") or {}
    peer_name = st.get("peer_node") or peer.get("node") or "peer"
    if not st.get("has_net", bool(peer)):
        return "\n".join(lines)
    conn = _connection(st["cstate"])
    if conn != "Connected":
        lines.append(f"  {peer_name} connection:{conn}")
        return "\n".join(lines)
    lines.append(f"  {peer_name} role:{st['peer_role']}")
    detail = "    "
    if st["cstate"] in _REPLICATION:
        detail += f"replication:{st['cstate']} "
    detail += f"peer-disk:{st['peer_disk']}"
    sync = peer.get("sync")
    if sync is not None:
        detail += f" done:{float(sync.get('done', 0.0)):.2f}"
    lines.append(detail)
    return "\n".join(lines)


def drbdadm_status(statuses: list[dict[str, Any]]) -> str:
    return "\n\n".join(drbdadm_volume(st) for st in statuses)


def volume_status(data: Any) -> str:
    """The CLI's `binome volume status` text: /proc/drbd view, then drbdadm view."""
    statuses = data if isinstance(data, list) else [data]
    if not statuses:
        return "no replicated volumes on this node"
    return proc_drbd(statuses) + "\n" + drbdadm_status(statuses)


def drbdsetup_show(data: Any) -> str:
    """`binome volume config NAME`: the effective settings in `drbdsetup show`'s syntax
    (DRBD 8.4's sections and units: rates in KiB/s, times in 1/10 s, fill in sectors)."""
    statuses = data if isinstance(data, list) else [data]
    out = []
    for st in statuses:
        s = st.get("settings") or {}

        def kib(v: Any) -> str:
            return f"{int(v) // 1024}k"

        net = [("protocol", s.get("protocol", st.get("protocol", "C"))),
               ("allow-two-primaries", "yes" if s.get("allow_two_primaries") else "no"),
               ("verify-alg", s.get("verify_alg") or '""'),
               ("csums-alg", s.get("csums_alg") or '""')]
        disk = [("resync-rate", kib(s.get("resync_rate", 0)), "bytes/second; 0: unlimited"),
                ("c-plan-ahead", round(float(s.get("c_plan_ahead", 0)) * 10),
                 "1/10 seconds; 0: fixed resync-rate"),
                ("c-delay-target", round(float(s.get("c_delay_target", 0)) * 10),
                 "1/10 seconds"),
                ("c-fill-target", f"{int(s.get('c_fill_target', 0)) // 512}s", "sectors"),
                ("c-max-rate", kib(s.get("c_max_rate", 0)), "bytes/second"),
                ("c-min-rate", kib(s.get("c_min_rate", 0)), "bytes/second")]
        lines = [f"resource {st.get('name')} {{", "    net {"]
        lines += [f"        {k:<24}{v};" for k, v in net]
        lines += ["    }", "    disk {"]
        lines += [f"        {k:<24}{v}; # {c}" for k, v, c in disk]
        lines += ["    }"]
        peer = st.get("peer") or {}
        if st.get("peer_node") or peer.get("address"):
            lines += [f"    connection {{ # {st.get('node', '')} - {st.get('peer_node', '')}",
                      f"        _peer_address           {peer.get('address', '')};", "    }"]
        lines.append("}")
        out.append("\n".join(lines))
    return "\n".join(out) if out else "no replicated volumes on this node"
