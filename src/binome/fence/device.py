"""The common fence device interface, and building a device from a node's fence config.

Owns :class:`FenceDevice` (what the HA manager calls, whatever the hardware) and
:func:`make_device` (validation of the config dict stored for a node, including where
its secret comes from). Two kinds exist:

``{"type": "ipmi", "ip": "10.0.0.11", "port": 623, "username": "admin",
"password": "...", "timeout": 5}``
    IPMI over LAN through pyghmi (:class:`~binome.fence.ipmi.IpmiFence`).

``{"type": "agent", "agent": "fence_ipmilan", "options": {"ip": "10.0.0.11",
"username": "admin", "lanplus": true}, "password": "...", "timeout": 30,
"confirm": true}``
    any ``fence_*`` agent over the stdin protocol (:class:`~binome.fence.agent.AgentFence`).

Either kind takes the secret as ``password`` or as ``password_file`` (a file that
must not be readable by group or others: mode 0600). Error messages name the key
at fault and never repeat a secret; :meth:`FenceDevice.describe` never contains one.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from binome.fence.result import FenceResult

__all__ = ["FenceConfigError", "FenceDevice", "FenceResult", "load_secret", "make_device"]


class FenceConfigError(ValueError):
    """A fence config is invalid (the message names the key, never a secret)."""


@runtime_checkable
class FenceDevice(Protocol):
    """Power control of one node. No method raises for a device that misbehaves:
    failures are results with ``ok=False`` and a reason."""

    kind: str

    async def power_off(self, confirm: bool = True) -> FenceResult: ...

    async def power_on(self, confirm: bool = True) -> FenceResult: ...

    async def status(self) -> FenceResult: ...

    async def reboot(self) -> FenceResult: ...

    async def fence(self, node: str) -> FenceResult:
        """Power ``node`` off and confirm it is off: ``ok`` is the proof the CRM needs."""
        ...

    def describe(self) -> dict[str, Any]:
        """The configuration without secrets."""
        ...


# `action` (reboot|off) is what the CRM's fencer does with the device, not the device's
_COMMON_KEYS = {"type", "password", "password_file", "timeout", "action"}
_KEYS = {
    "ipmi": _COMMON_KEYS | {"ip", "port", "username"},
    "agent": _COMMON_KEYS | {"agent", "options", "confirm"},
}


def load_secret(path: str | Path) -> str:
    """The first line of a secret file, refusing one readable by group or others."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise FenceConfigError(f"password_file {p}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise FenceConfigError(f"password_file {p}: mode {mode:04o} lets others read it; "
                               "chmod 600")
    try:
        text = p.read_text()
    except OSError as exc:
        raise FenceConfigError(f"password_file {p}: {exc.strerror or exc}") from None
    secret = text.split("\n", 1)[0].rstrip("\r")
    if not secret:
        raise FenceConfigError(f"password_file {p}: empty")
    return secret


def _password(config: Mapping[str, Any], required: bool) -> str | None:
    if "password" in config and "password_file" in config:
        raise FenceConfigError("give password or password_file, not both")
    if "password_file" in config:
        return load_secret(config["password_file"])
    password = config.get("password")
    if password is None:
        if required:
            raise FenceConfigError("password (or password_file) is required")
        return None
    if not isinstance(password, str) or not password:
        raise FenceConfigError("password: must be a non-empty string")
    return password


def _timeout(config: Mapping[str, Any], default: float) -> float:
    value = config.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise FenceConfigError("timeout: must be a positive number of seconds")
    return float(value)


def make_device(config: Mapping[str, Any]) -> FenceDevice:
    """Build the fence device a config describes; FenceConfigError if it is invalid."""
    if not isinstance(config, Mapping):
        raise FenceConfigError("fence config must be a mapping")
    kind = config.get("type")
    if kind not in _KEYS:
        raise FenceConfigError(f"type: {kind!r} is not a fence device type "
                               f"(want one of {', '.join(sorted(_KEYS))})")
    unknown = sorted(set(config) - _KEYS[kind])
    if unknown:
        raise FenceConfigError(f"{unknown[0]}: unknown key for a {kind} fence device")
    try:
        if kind == "ipmi":
            from binome.fence.ipmi import DEFAULT_PORT, DEFAULT_TIMEOUT, IpmiFence

            for key in ("ip", "username"):
                if not isinstance(config.get(key), str) or not config[key]:
                    raise FenceConfigError(f"{key}: required (a non-empty string)")
            port = config.get("port", DEFAULT_PORT)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise FenceConfigError("port: must be an integer 1-65535")
            return IpmiFence(config["ip"], port=port, username=config["username"],
                             password=_password(config, required=True) or "",
                             timeout=_timeout(config, DEFAULT_TIMEOUT))
        from binome.fence.agent import DEFAULT_TIMEOUT as AGENT_TIMEOUT
        from binome.fence.agent import AgentFence

        agent = config.get("agent")
        if not isinstance(agent, str) or not agent:
            raise FenceConfigError("agent: required (a fence agent name such as "
                                   "fence_ipmilan, or a path)")
        options = config.get("options", {})
        if not isinstance(options, Mapping):
            raise FenceConfigError("options: must be a mapping of agent options")
        confirm = config.get("confirm", True)
        if not isinstance(confirm, bool):
            raise FenceConfigError("confirm: must be true or false")
        return AgentFence(agent, options=options, password=_password(config, required=False),
                          timeout=_timeout(config, AGENT_TIMEOUT), confirm=confirm)
    except FenceConfigError:
        raise
    except ValueError as exc:  # the classes' own checks (their messages hold no secret)
        raise FenceConfigError(str(exc)) from None
