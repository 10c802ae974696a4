"""Key names in the simulator's virtual etcd (mirroring `binome.store.keys`' HA keys)."""

from __future__ import annotations

MANAGER_STATUS = "ha/manager_status"
MANAGER_LOCK = "ha/manager_lock"
RESOURCES = "ha/resources"
GROUPS = "ha/groups"
RULES = "ha/rules"
SETTINGS = "ha/settings"
COMMANDS = "ha/commands/"
LRM = "ha/lrm/"
FENCE_CONFIRM = "ha/fence_confirm/"   # <node>: FenceConfirmation JSON (the admin's word)
ALIVE = "alive/"


def lrm(node: str) -> str:
    return f"{LRM}{node}"


def config(sid: str) -> str:
    return f"config/{sid}"


def alive(node: str) -> str:
    return f"{ALIVE}{node}"


def fence_confirm(node: str) -> str:
    return f"{FENCE_CONFIRM}{node}"


def command(seq: int) -> str:
    return f"{COMMANDS}{seq:08d}"
