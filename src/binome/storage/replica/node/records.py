"""etcd keys of the replicated volumes (kept here: the volume engine's package owns them).

    /binome/volumes/<vol>/config          the volume's desired state (record below)
    /binome/volumes/<vol>/fencing         {"outdated": {node: {"by", "time", "reason"}}}
    /binome/volumes/<vol>/state/<node>    what <node>'s engine reports (for the HA manager)
    /binome/volume-secrets/<vol>          {"secret": hex}: the replication secret, write-only
    /binome/volume-ports/<port>           {"volume": vol}: one replication port per volume

The secret lives outside `/binome/volumes/` so that listing the volumes (the
API, the HA manager) can never carry it. A volume's keys are under
`/binome/volumes/<vol>/` (the trailing slash keeps `vm-1-disk-1` apart from
`vm-1-disk-10`).
"""

from __future__ import annotations

ROOT = "/binome"
VOLUMES = f"{ROOT}/volumes/"
SECRETS = f"{ROOT}/volume-secrets/"
PORTS = f"{ROOT}/volume-ports/"


def prefix(vol: str) -> str:
    return f"{VOLUMES}{vol}/"


def config(vol: str) -> str:
    return f"{VOLUMES}{vol}/config"


def fencing(vol: str) -> str:
    return f"{VOLUMES}{vol}/fencing"


def state(vol: str, node: str) -> str:
    return f"{VOLUMES}{vol}/state/{node}"


def secret(vol: str) -> str:
    return f"{SECRETS}{vol}"


def port(number: int) -> str:
    return f"{PORTS}{number}"


def parse(key: str) -> tuple[str, str, str | None] | None:
    """(volume, "config" | "fencing" | "state", node or None) of a key under VOLUMES."""
    if not key.startswith(VOLUMES):
        return None
    parts = key[len(VOLUMES):].split("/")
    if len(parts) == 2 and parts[1] in ("config", "fencing"):
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[1] == "state":
        return parts[0], "state", parts[2]
    return None
