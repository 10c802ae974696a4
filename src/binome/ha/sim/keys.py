"""Key names in the simulator's virtual etcd (mirroring `binome.store.keys`' HA keys)."""

from __future__ import annotations

MANAGER_STATUS = "ha/manager_status"
MANAGER_LOCK = "ha/manager_lock"
RESOURCES = "ha/resources"
GROUPS = "ha/groups"
SETTINGS = "ha/settings"
COMMANDS = "ha/commands/"
LRM = "ha/lrm/"
ALIVE = "alive/"


def lrm(node: str) -> str:
    return f"{LRM}{node}"


def config(sid: str) -> str:
    return f"config/{sid}"


def alive(node: str) -> str:
    return f"{ALIVE}{node}"


def command(seq: int) -> str:
    return f"{COMMANDS}{seq:08d}"
