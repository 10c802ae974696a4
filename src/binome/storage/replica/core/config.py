"""Volume configuration: what `create` records, validated, stored as JSON per volume.

Pure: no I/O (`engine.config_file` reads and writes it). The engine keeps
`<state>/volumes/<name>/volume.json` next to the volume's
metadata (`meta`) and, by default, its backing file (`data.img`). The NBD
socket defaults to `<state>/nbd/<name>.sock` (unix socket paths are limited
to 107 bytes, so the socket directory can be set separately).

The network part (DRBD's `net` section) is optional: without `address` the
volume stays StandAlone. With it, `address` is where this node's engine
listens or connects from ("host:port" on the replication network),
`peer_address` the peer's, `secret` the shared secret (HMAC challenge), and
`node`/`peer_node` the two node names (`discard-node-NAME` refers to them).
The rest of DRBD's `net`/`disk` options kept here: `allow_two_primaries`
(protocol C only), `verify_alg`/`csums_alg` (`csum.ALGORITHMS`), and the
resync rate controller's `resync_rate` and `c_*` settings (`rsctl`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from binome.storage.replica.core import handler_rules
from binome.storage.replica.core.csum import ALGORITHMS
from binome.storage.replica.core.handshake import RrConflict
from binome.storage.replica.core.rsctl import RateSettings
from binome.storage.replica.core.splitbrain import parse_policy
from binome.storage.replica.core.states import Fencing

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SOCKET_PATH = 107

# What `adjust` may change on an existing volume (DRBD's `drbdadm adjust` of the
# `disk`/`net` options). LOCAL ones are this side's business (the resync controller of
# the side that pulls); SHARED ones are compared in P_PROTOCOL, so while connected they
# are renegotiated with the peer over the link (P_STATE `adjust`), as DRBD 8.4's
# P_PROTOCOL_UPDATE does.
LOCAL_OPTIONS = ("resync_rate", "c_plan_ahead", "c_fill_target", "c_delay_target",
                 "c_max_rate", "c_min_rate")
SHARED_OPTIONS = ("protocol", "allow_two_primaries", "verify_alg", "csums_alg")
ADJUSTABLE = LOCAL_OPTIONS + SHARED_OPTIONS


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class VolumeConfig:
    name: str
    size: int
    backing: str
    meta: str
    socket: str
    bm_block_size: int = 4096
    al_extents: int = 1237
    al_extent_size: int = 4 * 1024 * 1024
    fencing: str = Fencing.DONT_CARE.value
    # net
    node: str = ""
    peer_node: str = ""
    address: str = ""
    peer_address: str = ""
    secret: str = ""
    protocol: str = "C"
    after_sb_0pri: str = "disconnect"
    after_sb_1pri: str = "disconnect"
    after_sb_2pri: str = "disconnect"
    always_asbp: bool = False
    rr_conflict: str = "disconnect"
    allow_two_primaries: bool = False
    resync_rate: int = 0          # bytes/s the SyncTarget pulls; 0 = as fast as possible
    connect_int: float = 10.0     # seconds between connection attempts (DRBD: connect-int)
    ping_int: float = 10.0        # seconds between keepalive pings (DRBD: ping-int)
    ping_timeout: float = 5.0     # extra silence tolerated before the link is declared dead
    max_epoch_size: int = 2048    # writes per epoch before a barrier closes it
    verify_alg: str = "sha256"    # online verify digest (DRBD: verify-alg; csum.ALGORITHMS)
    csums_alg: str = ""           # checksum-based resync digest; "" = send every block
    # The dynamic resync controller (rsctl); c_plan_ahead 0 = fixed `resync_rate`.
    c_plan_ahead: float = 0.0     # seconds
    c_fill_target: int = 0        # bytes in flight; 0 = aim at c_delay_target
    c_delay_target: float = 1.0   # seconds
    c_max_rate: int = 100 << 20   # bytes/s
    c_min_rate: int = 0           # bytes/s while application I/O is active; 0 = no throttle
    # DRBD's `handlers` section: {handler name: shell command} (handlers.py)
    handlers: dict[str, str] = field(default_factory=dict)
    handler_timeout: float = handler_rules.DEFAULT_TIMEOUT
    # DRBD's `on-io-error`: detach (continue Diskless, served by the peer) or pass_on
    on_io_error: str = "detach"

    @property
    def has_net(self) -> bool:
        return bool(self.address)

    def rate_settings(self) -> RateSettings:
        return RateSettings(resync_rate=self.resync_rate, c_plan_ahead=self.c_plan_ahead,
                            c_fill_target=self.c_fill_target,
                            c_delay_target=self.c_delay_target, c_max_rate=self.c_max_rate,
                            c_min_rate=self.c_min_rate)

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"invalid volume name {self.name!r}")
        if self.size <= 0 or self.size % 4096:
            raise ConfigError("size must be a positive multiple of 4096 bytes")
        for what, value in (("bm_block_size", self.bm_block_size),
                            ("al_extent_size", self.al_extent_size)):
            if value < 4096 or value & (value - 1):
                raise ConfigError(f"{what} must be a power of two >= 4096")
        if self.al_extent_size < self.bm_block_size:
            raise ConfigError("al_extent_size must not be smaller than bm_block_size")
        if not 7 <= self.al_extents <= 65534:
            raise ConfigError("al_extents must be between 7 and 65534 (DRBD's limits)")
        # the path as the kernel sees it: bytes (fsencode), not characters
        if len(self.socket.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
            raise ConfigError(f"NBD socket path too long ({self.socket})")
        Fencing(self.fencing)
        try:
            handler_rules.validate(self.handlers, self.handler_timeout)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.on_io_error not in ("detach", "pass_on"):
            raise ConfigError("on_io_error must be detach or pass_on")
        if self.has_net:
            self._validate_net()

    def _validate_net(self) -> None:
        for what in ("address", "peer_address"):
            split_address(getattr(self, what))
        if self.address == self.peer_address:
            raise ConfigError("address and peer_address must differ")
        if not self.secret:
            raise ConfigError("a replicated volume needs a shared secret")
        if self.protocol not in ("A", "B", "C"):
            raise ConfigError("protocol must be A, B or C")
        if self.allow_two_primaries and self.protocol != "C":
            # Both sides write: only protocol C acknowledges a write once the peer
            # applied it, which concurrent writes from two primaries need (DRBD's rule).
            raise ConfigError(f"allow-two-primaries requires protocol C (not {self.protocol})")
        try:
            for n in (0, 1, 2):
                parse_policy(getattr(self, f"after_sb_{n}pri"), n, my_name=self.node,
                             peer_name=self.peer_node)
            RrConflict(self.rr_conflict)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if (min(self.connect_int, self.ping_int, self.ping_timeout) <= 0
                or self.max_epoch_size < 1 or self.resync_rate < 0):
            raise ConfigError("connect_int, ping_int, ping_timeout, max_epoch_size and "
                              "resync_rate must be positive")
        for what in ("verify_alg", "csums_alg"):
            alg = getattr(self, what)
            if alg and alg not in ALGORITHMS:
                raise ConfigError(f"{what}: unknown algorithm {alg!r} "
                                  f"(one of {', '.join(ALGORITHMS)})")
        if (min(self.c_plan_ahead, self.c_fill_target, self.c_delay_target, self.c_min_rate) < 0
                or self.c_max_rate <= 0):
            raise ConfigError("c_plan_ahead, c_fill_target, c_delay_target and c_min_rate "
                              "must not be negative, c_max_rate must be positive")
        if self.c_min_rate > self.c_max_rate:
            raise ConfigError(f"c_min_rate ({self.c_min_rate}) must not exceed c_max_rate "
                              f"({self.c_max_rate})")
        if self.c_plan_ahead and not self.c_fill_target and not self.c_delay_target:
            raise ConfigError("the dynamic resync controller needs c_fill_target or "
                              "c_delay_target")

    def settings(self) -> dict[str, Any]:
        """The adjustable settings as they are (status, `drbdsetup show`)."""
        return {k: getattr(self, k) for k in ADJUSTABLE}

    def adjusted(self, changes: dict[str, Any]) -> VolumeConfig:
        """This configuration with `changes` (ADJUSTABLE keys only) applied, validated."""
        unknown = set(changes) - set(ADJUSTABLE)
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: not an adjustable setting (one of "
                              f"{', '.join(ADJUSTABLE)})")
        typed: dict[str, Any] = {}
        for key, value in changes.items():
            kind = type(getattr(self, key))
            try:
                if kind is bool:
                    if value not in (True, False, 0, 1, "0", "1", "true", "false"):
                        raise ValueError(value)
                    typed[key] = value in (True, 1, "1", "true")
                elif kind is int:
                    typed[key] = int(value)
                elif kind is float:
                    typed[key] = float(value)
                else:
                    typed[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: invalid value {value!r}") from None
        cfg = replace(self, **typed)
        cfg.validate()
        return cfg

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown volume settings: {', '.join(sorted(unknown))}")
        try:
            cfg = cls(**data)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        cfg.validate()
        return cfg


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with a K/M/G/T suffix (powers of 1024)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ConfigError(f"invalid size {value!r}")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m[2].upper()]
    return int(m[1]) * mult


def split_address(text: str) -> tuple[str, int]:
    """("host", port) from "host:port" (IPv6 as "[::1]:7789")."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid address {text!r} (expected host:port)")
    return host.strip("[]"), int(port)
