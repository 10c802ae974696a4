"""Handler rules (pure): DRBD's handler names, the environment a handler gets, validation.

What the engine runs on events is `engine.handlers.run`; this module holds the
parts a volume's configuration needs to be checked and the environment
computed without running anything (see `engine/handlers.py` for the semantics).
"""

from __future__ import annotations

from dataclasses import dataclass

# DRBD 8.4's handler names (drbd.conf(5), "handlers"); what the engine runs is
# documented in docs/replicated-volumes.md ("Handlers").
HANDLERS = frozenset({
    "pri-on-incon-degr", "pri-lost-after-sb", "pri-lost", "local-io-error", "fence-peer",
    "unfence-peer", "initial-split-brain", "split-brain", "before-resync-target",
    "before-resync-source", "after-resync-target", "out-of-sync",
})
MAX_OUTPUT = 64 * 1024
DEFAULT_TIMEOUT = 60.0
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class HandlerResult:
    handler: str
    configured: bool
    exit_code: int          # the command's exit status; -9 when killed at the timeout
    output: str = ""
    timed_out: bool = False


def _af(address: str) -> str:
    return "ipv6" if address.startswith("[") or address.count(":") > 1 else "ipv4"


def _host(address: str) -> str:
    return address.rpartition(":")[0].strip("[]") if address else ""


def handler_env(*, volume: str, backing: str, meta: str, conf: str, node: str = "",
                peer_node: str = "", address: str = "", peer_address: str = "",
                handler: str = "") -> dict[str, str]:
    """The environment a handler gets (module docstring); no secret ever goes in."""
    env = {
        "PATH": SAFE_PATH, "LANG": "C.UTF-8",
        "DRBD_RESOURCE": volume, "DRBD_VOLUME": "0", "BINOME_VOLUME": volume,
        "BINOME_HANDLER": handler, "DRBD_BACKING_DEV": backing, "DRBD_META_DEV": meta,
        "DRBD_CONF": conf,
    }
    if node:
        env["DRBD_MY_NODE"] = node
    if address:
        env["DRBD_MY_ADDRESS"] = _host(address)
        env["DRBD_MY_AF"] = _af(address)
    if peer_node:
        env["DRBD_PEER_NODE"] = peer_node
    if peer_address:
        env["DRBD_PEERS"] = _host(peer_address)
        env["DRBD_PEER_ADDRESS"] = _host(peer_address)
        env["DRBD_PEER_AF"] = _af(peer_address)
    return env


def validate(handlers: object, timeout: object) -> None:
    """Raise ValueError for an unknown handler name, a non-string command or a bad timeout."""
    if not isinstance(handlers, dict):
        raise ValueError("handlers must be an object {handler: command}")
    for name, cmd in handlers.items():
        if name not in HANDLERS:
            raise ValueError(f"unknown handler {name!r} (known: {', '.join(sorted(HANDLERS))})")
        if not isinstance(cmd, str) or not cmd.strip() or "\0" in cmd:
            raise ValueError(f"handler {name}: the command must be a non-empty string")
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise ValueError("handler_timeout must be between 0 and 3600 seconds")
