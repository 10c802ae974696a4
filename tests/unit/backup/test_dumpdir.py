"""PVE vzdump archive names and the dump/ directory of a dir storage."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from binome.backup.dumpdir import DumpDir, DumpDirError, archive_name, parse_archive_name
from binome.backup.prune import Mark, PruneOptions


def test_name_round_trip() -> None:
    name = archive_name("qemu", 100, datetime(2026, 12, 5, 20, 0, 0))
    assert name == "vzdump-qemu-100-2026_12_05-20_00_00.vma.zst"
    archive = parse_archive_name(name)
    assert archive.vmid == 100 and archive.time == datetime(2026, 12, 5, 20)
    assert archive.volid("local") == "local:backup/" + name
    assert archive.basename == "vzdump-qemu-100-2026_12_05-20_00_00"


@pytest.mark.parametrize("bad", [
    "vzdump-qemu-100-2026_12_05-20_00_00.vma.zst.tmp", "vzdump-qemu-x-2026_12_05-20_00_00.vma",
    "notes.txt", "vzdump-qemu-100-2026_12_05.vma",
])
def test_bad_names(bad: str) -> None:
    with pytest.raises(DumpDirError):
        parse_archive_name(bad)


def test_list_protect_prune(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    names = [archive_name("qemu", 100, datetime(2026, 12, day, 20)) for day in range(1, 6)]
    for name in names:
        (dump / name).write_bytes(b"x")
    (dump / (names[4][:-8] + ".log")).write_text("log")
    (dump / "vzdump-qemu-100-2026_12_06-20_00_00.vma.dat").write_bytes(b"partial")
    (dump / (archive_name("qemu", 101, datetime(2026, 12, 1)))).write_bytes(b"y")
    store = DumpDir(tmp_path, "local")
    assert [a.name for a in store.archives(100)] == names
    first = store.archives(100)[0]
    store.set_protected(first, True)
    with pytest.raises(DumpDirError, match="protected"):
        store.remove(first)
    marks = store.prune(100, PruneOptions(keep_last=2))
    assert marks[first.volid("local")] is Mark.PROTECTED
    assert [a.name for a in store.archives(100)] == [names[0], names[3], names[4]]
    assert len(store.archives(101)) == 1
