"""Volume events in the shape of `drbdsetup events2` (pure, no I/O).

The engine's `events` stream carries one full status dict per state change
(`exists` for the volumes up when the stream starts, `change` afterwards,
`down`) and the handler calls (`call`, `response`). `EventTranslator` turns
that into DRBD's objects, and reports a change only for the objects whose
fields changed, as events2 does:

    exists resource name:r0 role:Primary suspended:no
    exists connection name:r0 conn-name:n2 connection:Connected role:Secondary
    exists device name:r0 volume:0 disk:UpToDate client:no open:yes
    exists peer-device name:r0 conn-name:n2 volume:0 replication:Established
           peer-disk:UpToDate resync-suspended:no          (one line)
    exists -
    change peer-device name:r0 conn-name:n2 volume:0 replication:SyncSource
           peer-disk:Inconsistent resync-suspended:no done:12.50   (one line)
    call helper name:r0 volume:0 helper:split-brain
    response helper name:r0 volume:0 helper:split-brain status:0
    destroy resource name:r0

Each event is a dict (`action`, `object`, then the fields in order, `time`):
the API streams them as JSON lines, `format_line` prints the text form.
Departures: a volume is its own resource (volume 0, no minor numbers), and
there is one peer, named by its node (`conn-name`). `done` is only present
during a resync.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from binome.storage.replica.core.format import _REPLICATION, _connection

OBJECTS = ("resource", "connection", "device", "peer-device")


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def objects_of(st: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The events2 objects of one volume status (connection objects only with a peer)."""
    name = st["name"]
    out: dict[str, dict[str, str]] = {
        "resource": {"name": name, "role": str(st.get("role", "Unknown")),
                     "suspended": "fencing" if st.get("suspended") else "no"},
    }
    if st.get("has_net"):
        peer = st.get("peer_node") or "peer"
        cstate = str(st.get("cstate", "StandAlone"))
        out["connection"] = {"name": name, "conn-name": peer,
                             "connection": _connection(cstate),
                             "role": str(st.get("peer_role", "Unknown"))}
    out["device"] = {"name": name, "volume": "0", "disk": str(st.get("disk", "Diskless")),
                     "client": "no", "open": _yes(st.get("open_count"))}
    if st.get("has_net"):
        cstate = str(st.get("cstate", "StandAlone"))
        replication = cstate if cstate in _REPLICATION else (
            "Established" if cstate == "Connected" else "Off")
        paused = st.get("paused") or {}
        susp = "user" if paused.get("user") else "peer" if paused.get("peer") else "no"
        pd = {"name": name, "conn-name": out["connection"]["conn-name"], "volume": "0",
              "replication": replication, "peer-disk": str(st.get("peer_disk", "DUnknown")),
              "resync-suspended": susp}
        sync = (st.get("peer") or {}).get("sync")
        if sync is not None and replication in _REPLICATION:
            pd["done"] = f"{float(sync.get('done', 0.0)):.2f}"
        out["peer-device"] = pd
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _event(action: str, obj: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"action": action, "object": obj, **fields, "time": _now()}


class EventTranslator:
    """Engine events in, events2 events out; remembers the last objects of each volume."""

    def __init__(self, volume: str | None = None) -> None:
        self.volume = volume            # only this volume (None: all)
        self._last: dict[str, dict[str, dict[str, str]]] = {}

    def feed(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        name = ev.get("name")
        if not isinstance(name, str) or (self.volume is not None and name != self.volume):
            return []
        kind = ev.get("event")
        if kind in ("exists", "change") and isinstance(ev.get("status"), dict):
            new = objects_of(ev["status"])
            old = self._last.get(name)
            self._last[name] = new
            if kind == "exists":
                return [_event("exists", o, new[o]) for o in OBJECTS if o in new]
            if old is None:
                return [_event("create", o, new[o]) for o in OBJECTS if o in new]
            out = []
            for o in OBJECTS:
                if o in new and new[o] != old.get(o):
                    out.append(_event("change" if o in old else "create", o, new[o]))
                elif o not in new and o in old:
                    out.append(_event("destroy", o, {"name": name}))
            return out
        if kind == "down":
            old = self._last.pop(name, None) or {}
            return [_event("destroy", o, {k: v for k, v in old[o].items()
                                          if k in ("name", "conn-name", "volume")})
                    for o in reversed(OBJECTS) if o in old]
        if kind == "call" and isinstance(ev.get("helper"), str):
            return [_event("call", "helper", {"name": name, "volume": "0",
                                              "helper": ev["helper"]})]
        if kind == "response" and isinstance(ev.get("helper"), str):
            return [_event("response", "helper", {"name": name, "volume": "0",
                                                  "helper": ev["helper"],
                                                  "status": str(ev.get("status"))})]
        return []

    def snapshot(self, statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`events2 --now`: the current state as `exists` events, then `exists -`."""
        out: list[dict[str, Any]] = []
        for st in statuses:
            if st.get("cstate") == "Unconfigured":
                continue
            out.extend(self.feed({"event": "exists", "name": st.get("name"), "status": st}))
        out.append(end_of_snapshot())
        return out


def end_of_snapshot() -> dict[str, Any]:
    return {"action": "exists", "object": "-", "time": _now()}


def format_line(ev: dict[str, Any], *, timestamps: bool = False) -> str:
    """The events2 text line of one event."""
    head = f"{ev['action']} {ev['object']}"
    if timestamps and ev.get("time"):
        head = f"{ev['time']} {head}"
    fields = " ".join(f"{k}:{v}" for k, v in ev.items()
                      if k not in ("action", "object", "time"))
    return f"{head} {fields}" if fields else head
