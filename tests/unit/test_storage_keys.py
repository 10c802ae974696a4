"""A binome-backup storage's key file sent by another node: kept only when it is the key
whose fingerprint the storage's definition records; sent only to guest-hosting nodes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from binome.backup.crypt import new_key_file
from binome.storage.base import StorageConfig, StorageError
from binome.storage.manager import StorageManager


def _manager(tmp_path: Path, configs: list[StorageConfig],
             nodes: dict[str, dict[str, Any]] | None = None) -> StorageManager:
    cluster: Any = SimpleNamespace(store=None, node_records=nodes or {})
    manager = StorageManager("n2", tmp_path, cluster)

    async def listed() -> list[StorageConfig]:
        return configs

    manager.configs = listed  # type: ignore[method-assign]
    return manager


def test_only_the_storages_own_key_is_kept(tmp_path: Path) -> None:
    key_text, crypt = new_key_file()
    other_text, _ = new_key_file()
    vault = StorageConfig("vault", "binome-backup", content=("backup",),
                          options={"encryption-key": crypt.fingerprint})
    plain = StorageConfig("plain", "binome-backup", content=("backup",))
    manager = _manager(tmp_path, [vault, plain, StorageConfig("d", "dir", path="/x")])
    path = tmp_path / "priv" / "storage" / "vault.enc"
    for storage, text, error in (("vault", other_text, "is not storage 'vault''s"),
                                 ("vault", "not json", "not a key file"),
                                 ("plain", key_text, "has no encryption key"),
                                 ("d", key_text, "not a binome-backup storage"),
                                 ("gone", key_text, "does not exist")):
        with pytest.raises(StorageError, match=error):
            asyncio.run(manager.receive_encryption_key(storage, text))
        assert not path.exists()
    asyncio.run(manager.receive_encryption_key("vault", key_text))
    assert path.read_text() == key_text
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "priv" / "storage").stat().st_mode & 0o777 == 0o700
    assert manager.encryption_key_text("vault") == key_text
    assert manager.encryption_key_text("plain") is None


def test_recipients_are_the_other_guest_hosting_nodes_of_the_storage(tmp_path: Path) -> None:
    nodes = {"n1": {"role": "node"}, "n2": {"role": "node"}, "n3": {},
             "w": {"role": "witness"}}
    everywhere = StorageConfig("a", "binome-backup", content=("backup",))
    pinned = StorageConfig("b", "binome-backup", content=("backup",), nodes=("n2", "n3"))
    manager = _manager(tmp_path, [everywhere, pinned], nodes)
    assert asyncio.run(manager.key_recipients("a")) == ["n1", "n3"]
    assert asyncio.run(manager.key_recipients("b")) == ["n3"]
