"""The Proxmox UPID codec (pure): `UPID:node:PID:PSTART:STARTTIME:type:id:user:`.

Hex fields are uppercase, eight digits (pstart may need nine), and the trailing
colon is mandatory: proxmoxer requires exactly nine ':'-separated segments.
In binome the PID field is a per-node task serial (tasks are coroutines of one
daemon, not processes) and PSTART the daemon's start time in clock ticks, so
the pair is unique per node across daemon restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-F]{8}):"
    r"(?P<pstart>[0-9A-F]{8,9}):(?P<starttime>[0-9A-F]{8}):(?P<type>[^:\s]+):"
    r"(?P<id>[^:\s/]*):(?P<user>[^:\s]+):$"
)


class InvalidUpid(ValueError):
    pass


@dataclass(frozen=True)
class Upid:
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?", self.node):
            raise InvalidUpid(f"invalid UPID field node: {self.node!r}")
        for name in ("type", "user"):
            value = getattr(self, name)
            if not value or ":" in value or any(c.isspace() for c in value):
                raise InvalidUpid(f"invalid UPID field {name}: {value!r}")
        if ":" in self.id or "/" in self.id or any(c.isspace() for c in self.id):
            raise InvalidUpid(f"invalid UPID field id: {self.id!r}")

    def __str__(self) -> str:
        return (f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
                f"{self.type}:{self.id}:{self.user}:")

    @classmethod
    def parse(cls, text: str) -> Upid:
        m = _UPID_RE.fullmatch(text)
        if not m:
            raise InvalidUpid(f"unable to parse worker upid '{text}'")
        return cls(m["node"], int(m["pid"], 16), int(m["pstart"], 16), int(m["starttime"], 16),
                   m["type"], m["id"], m["user"])

    def to_dict(self) -> dict[str, Any]:
        return {"upid": str(self), "node": self.node, "pid": self.pid, "pstart": self.pstart,
                "starttime": self.starttime, "type": self.type, "id": self.id, "user": self.user}
