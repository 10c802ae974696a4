"""Crash cleanup of a dump store: the staging directory of a backup that never committed
is found and removed with its writer mark; committed backups are untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from binome.backup.datastore import DatastoreError
from binome.backup.dumpstore import DumpStore


def test_stale_staging_removed_with_its_writer_mark(tmp_path: Path) -> None:
    store = DumpStore(tmp_path, "local")
    done = store.begin("vm", "100", 1_000_000)
    done.add_file("qemu-server.conf", b"name: a\n")
    ref = done.commit()
    crashed = store.begin("vm", "100", 2_000_000)
    crashed.add_file("qemu-server.conf", b"name: a\n")
    assert store.staging_dirs() == [crashed.staging]
    assert store.oldest_writer_start() is not None      # GC would hold chunks back
    store.remove_staging(crashed.staging)
    assert store.staging_dirs() == [] and not crashed.staging.exists()
    assert store.oldest_writer_start() is None
    assert store.snapshots() == [ref]
    with pytest.raises(DatastoreError):
        store.remove_staging(tmp_path / "dump" / "vzdump-qemu-100-x.binome")
