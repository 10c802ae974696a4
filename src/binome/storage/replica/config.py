"""Volume configuration: what `create` records, validated, stored as JSON per volume.

The engine keeps `<state>/volumes/<name>/volume.json` next to the volume's
metadata (`meta`) and, by default, its backing file (`data.img`). The NBD
socket defaults to `<state>/nbd/<name>.sock` (unix socket paths are limited
to 107 bytes, so the socket directory can be set separately).

Replication settings (peer address, protocol, shared secret, after-sb
policies) join this record in the next increment.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from binome.storage.replica.states import Fencing

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SOCKET_PATH = 107


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
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise ConfigError(f"NBD socket path too long ({self.socket})")
        Fencing(self.fencing)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> VolumeConfig:
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

    @classmethod
    def load(cls, path: Path) -> VolumeConfig:
        return cls.from_dict(json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string with a K/M/G/T suffix (powers of 1024)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ConfigError(f"invalid size {value!r}")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m[2].upper()]
    return int(m[1]) * mult
