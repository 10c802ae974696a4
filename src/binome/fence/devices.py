"""The nodes' fence device records in etcd (`/binome/ha/fence/<node>`): the one module that
reads and writes them, and builds a stored record from an administrator's settings.

A stored record is exactly what :func:`binome.fence.device.make_device` takes (the CRM's
fencer builds the device from it); :func:`build_record` validates one before anything is
written, naming each bad setting (:class:`FenceRecordError`). The password is
**write-only**: stored in etcd (readable only by the cluster's members), never returned
(:func:`public_record` replaces it by ``has_password: 1``), never put in an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from binome.errors import BinomeError
from binome.fence.device import FenceConfigError, FenceDevice, make_device
from binome.schema import Param, PropertyString, is_host_address
from binome.store import keys

if TYPE_CHECKING:
    from binome.store.client import Store

TYPES = ("ipmi", "agent")
# the stored keys per type (make_device's), besides type and password
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "ipmi": ("ip", "port", "username", "timeout", "action"),
    "agent": ("agent", "options", "timeout", "confirm", "action")}
SETTINGS = ("type", "ip", "port", "username", "password", "timeout", "agent", "options",
            "confirm", "action")
#: what fencing does to the node (`fence_ipmilan`'s and Pacemaker's stonith-action):
#: reboot = off, confirmed (the proof), then on; off = left off
ACTIONS = ("reboot", "off")
DEFAULT_ACTION = "reboot"
# a fence agent's options: any `key=value` (its own names), values as text
AGENT_OPTIONS = PropertyString(keys={}, additional=Param(max_length=1024),
                               key_pattern=r"[A-Za-z0-9_-]+")
_MISSING = "property is missing and it is not optional"


class FenceRecordError(ValueError):
    """Settings that make no valid record; `errors` maps each setting to its problem
    (never a secret)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class FenceDeviceError(BinomeError):
    """A missing, duplicate, concurrently changed or invalid stored record."""


def fence_action(cfg: Mapping[str, Any]) -> str:
    """The record's fence action (`reboot` when not set)."""
    action = cfg.get("action") or DEFAULT_ACTION
    return action if action in ACTIONS else DEFAULT_ACTION


def parse_agent_options(text: str) -> dict[str, str]:
    """`ip=10.0.0.1,lanplus=1` -> {'ip': '10.0.0.1', 'lanplus': '1'}; ValueError if malformed."""
    return {k: str(v) for k, v in AGENT_OPTIONS.parse(text).items()}


def build_record(old: Mapping[str, Any] | None, settings: Mapping[str, Any],
                 delete: Sequence[str] = ()) -> dict[str, Any]:
    """The record to store: `old` (None on create) changed by `settings` (typed values;
    None: not given) less `delete`. FenceRecordError naming every bad setting."""
    kind = settings.get("type") or (old or {}).get("type")
    if kind is None:
        raise FenceRecordError({"type": _MISSING})
    if old and settings.get("password") is None and old.get("password") \
            and kind != old.get("type"):
        # a type change keeps the password: the secret stays where it was given
        settings = {**settings, "password": old["password"]}
    errors: dict[str, str] = {}
    if settings.get("action") is not None and settings["action"] not in ACTIONS:
        errors["action"] = f"value '{settings['action']}' does not have a value in the " \
                           f"enumeration '{', '.join(ACTIONS)}'"
    for name in TYPE_KEYS["ipmi" if kind == "agent" else "agent"]:
        if settings.get(name) is not None and name not in TYPE_KEYS[kind]:
            errors[name] = f"not a parameter of a {kind} fence device"
    for name in delete:
        if name not in TYPE_KEYS[kind] or name in ("ip", "username", "agent"):
            errors["delete"] = f"cannot delete '{name}'"
    if errors:
        raise FenceRecordError(errors)
    cfg: dict[str, Any] = {}
    if old and old.get("type") == kind:
        cfg = {k: v for k, v in old.items() if k not in delete}
    cfg["type"] = kind
    for name in TYPE_KEYS[kind]:
        if settings.get(name) is not None:
            cfg[name] = settings[name]
    if isinstance(cfg.get("options"), str):
        try:
            cfg["options"] = parse_agent_options(cfg["options"])
        except ValueError as exc:
            raise FenceRecordError({"options": str(exc)}) from None
    if "timeout" in cfg:
        cfg["timeout"] = float(cfg["timeout"])
    if settings.get("password") is not None:
        cfg["password"] = settings["password"]
    if kind == "ipmi":
        ip = cfg.get("ip")
        if ip is not None and not is_host_address(ip):
            errors["ip"] = f"invalid address '{ip}'"
        for name in ("ip", "username", "password"):
            if not cfg.get(name) and name not in errors:
                errors[name] = _MISSING
    elif not cfg.get("agent"):
        errors["agent"] = _MISSING
    if errors:
        raise FenceRecordError(errors)
    try:
        device = make_device(cfg)
    except FenceConfigError as exc:
        # its messages start with the key at fault and never hold the secret
        msg = str(exc)
        key = msg.split(":", 1)[0].strip()
        if key not in SETTINGS:
            key = next((k for k in ("options", "password", "timeout", "agent")
                        if k.rstrip("s") in msg), "type")
        raise FenceRecordError({key: msg}) from None
    if kind == "agent" and device.resolve() is None:   # type: ignore[attr-defined]
        raise FenceRecordError({"agent": f"unknown fence agent '{cfg['agent']}' (not found "
                                         "in PATH, /usr/sbin or /sbin on this node)"})
    return cfg


def public_record(node: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record as administrators see it: no secret, ever."""
    out: dict[str, Any] = {"node": node, "type": cfg.get("type")}
    for name in TYPE_KEYS.get(str(cfg.get("type")), ()):
        if name in cfg:
            value = cfg[name]
            if name == "options":
                value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
            elif name == "confirm":
                value = int(bool(value))
            out[name] = value
    out["action"] = fence_action(cfg)
    out["has_password"] = int(bool(cfg.get("password") or cfg.get("password_file")))
    return out


def device_nodes(stored_keys: Iterable[str]) -> set[str]:
    """The nodes with a fence device record among `stored_keys` (keys of a snapshot of
    etcd, such as the HA Env's range over `/binome/ha/`), whatever the record holds."""
    return {k[len(keys.HA_FENCE):] for k in stored_keys if k.startswith(keys.HA_FENCE)}


class FenceDevices:
    """The stored fence device records, on one store client."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def records(self) -> dict[str, dict[str, Any]]:
        """{node: record} of every node with a device."""
        return {e.key[len(keys.HA_FENCE):]: e.value
                for e in await self.store.get_prefix(keys.HA_FENCE) if isinstance(e.value, dict)}

    async def find(self, node: str) -> dict[str, Any] | None:
        """The node's record, or None if it has none (the CRM's fencer: no device, so
        the watchdog guarantee alone)."""
        cfg = await self.store.get_value(keys.ha_fence(node))
        return cfg if isinstance(cfg, dict) else None

    async def record(self, node: str) -> dict[str, Any]:
        """The node's record; FenceDeviceError if it has none."""
        cfg = await self.store.get_value(keys.ha_fence(node))
        if not isinstance(cfg, dict):
            raise FenceDeviceError(f"no fence device configured for node '{node}'")
        return cfg

    async def create(self, node: str, record: Mapping[str, Any]) -> None:
        def mutate(doc: Any) -> dict[str, Any]:
            if doc:
                raise FenceDeviceError(f"node '{node}' already has a fence device (use set)")
            return dict(record)

        await self.store.update(keys.ha_fence(node), mutate)

    async def replace(self, node: str, old: Mapping[str, Any],
                      record: Mapping[str, Any]) -> None:
        """Store `record` if the stored one is still `old` (what it was built from)."""
        def mutate(doc: Any) -> dict[str, Any]:
            if doc != old:
                raise FenceDeviceError("fence device changed meanwhile - try again")
            return dict(record)

        await self.store.update(keys.ha_fence(node), mutate)

    async def overwrite(self, node: str, record: Mapping[str, Any]) -> None:
        """Store `record` whatever is stored (a test lab wiring its BMCs); administrators
        go through `create` and `replace`, which refuse a concurrent change."""
        await self.store.put(keys.ha_fence(node), dict(record))

    async def remove(self, node: str) -> None:
        if await self.store.get(keys.ha_fence(node)) is None:
            raise FenceDeviceError(f"no fence device configured for node '{node}'")
        await self.store.delete(keys.ha_fence(node))

    async def device(self, node: str) -> FenceDevice:
        """The node's device, built from its record; FenceDeviceError if none or invalid."""
        cfg = await self.record(node)
        try:
            return make_device(cfg)
        except FenceConfigError as exc:
            raise FenceDeviceError(f"fence device of '{node}' is invalid: {exc}") from None
