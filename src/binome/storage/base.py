"""The storage backend interface every storage type implements.

Guest code only ever talks to this interface: allocate, free, resize, the
source QEMU should open (a path or an NBD URI), list content, status. The
`dir` backend implements it now; the `replicated` backend (the volume engine)
plugs in behind the same interface.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from binome.errors import BinomeError

CONTENT_TYPES = ("images", "iso", "backup", "rootdir", "vztmpl", "snippets")


class StorageError(BinomeError):
    """A storage operation failed; the message is for the administrator."""


@dataclass(frozen=True)
class VolumeSource:
    """How QEMU opens a volume."""

    source: str            # a file path or an NBD URI
    format: str | None     # raw | qcow2 | None (NBD: the export is raw)


@dataclass(frozen=True)
class StorageConfig:
    storage: str
    type: str
    path: str = ""
    content: tuple[str, ...] = ("images", "iso")
    shared: bool = False
    nodes: tuple[str, ...] = ()        # empty: all nodes
    disable: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        data: dict[str, Any] = {"storage": self.storage, "type": self.type,
                                "content": ",".join(self.content),
                                "shared": int(self.shared)}
        if self.path:
            data["path"] = self.path
        if self.nodes:
            data["nodes"] = ",".join(self.nodes)
        if self.disable:
            data["disable"] = 1
        data.update(self.options)
        return data

    def available_on(self, node: str) -> bool:
        return not self.nodes or node in self.nodes


def split_volid(volid: str) -> tuple[str, str]:
    storage, sep, volname = volid.partition(":")
    if not sep or not storage or not volname:
        raise StorageError(f"unable to parse volume ID '{volid}'")
    return storage, volname


_IMAGE_RE = re.compile(r"^(\d+)/((?:vm|base)-(\d+)-disk-(\d+))\.(raw|qcow2)$")


def parse_image_volname(volname: str) -> tuple[int, str, str]:
    """'100/vm-100-disk-0.raw' -> (100, 'vm-100-disk-0', 'raw')."""
    m = _IMAGE_RE.match(volname)
    if not m:
        raise StorageError(f"unable to parse image volume name '{volname}'")
    return int(m.group(1)), m.group(2), m.group(5)


class Storage(ABC):
    def __init__(self, config: StorageConfig) -> None:
        self.config = config

    @property
    def id(self) -> str:
        return self.config.storage

    @abstractmethod
    async def alloc(self, vmid: int, size: int, fmt: str = "raw",
                    name: str | None = None) -> str:
        """Create a volume for `vmid`; returns its volid."""

    @abstractmethod
    async def free(self, volid: str) -> None: ...

    @abstractmethod
    async def resize(self, volid: str, size: int) -> None: ...

    @abstractmethod
    async def copy(self, volid: str, vmid: int, fmt: str | None = None) -> str:
        """Full copy of a volume for another guest; returns the new volid."""

    @abstractmethod
    def source(self, volid: str) -> VolumeSource: ...

    @abstractmethod
    async def size(self, volid: str) -> int: ...

    @abstractmethod
    async def list(self, content: str | None = None,
                   vmid: int | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def status(self) -> dict[str, Any]: ...
