"""This node's record of the cluster it belongs to (``<state>/cluster.json``).

It is what a restarted daemon needs before it can reach etcd: the cluster name
and the etcd bootstrap parameters. Everything else lives in etcd.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from binome import durable

STATES = ("creating", "joining", "member")


@dataclass
class Membership:
    cluster_name: str
    state: str
    initial_cluster: str
    token: str
    member_id: int = 0
    nodeid: int = 0
    role: str = "node"
    peer_client_urls: tuple[str, ...] = ()

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["peer_client_urls"] = list(self.peer_client_urls)
        durable.write_json(path, data)

    @classmethod
    def load(cls, path: Path) -> Membership | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        data["peer_client_urls"] = tuple(data.get("peer_client_urls", ()))
        return cls(**data)
