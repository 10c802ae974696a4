"""Metadata file format: double-buffered, checksummed slots survive a torn write."""

import os

import pytest

from binome.storage.replica.core.activity_log import EMPTY
from binome.storage.replica.core.states import MetaFlags
from binome.storage.replica.core.uuids import GenerationIds
from binome.storage.replica.engine import meta as m


@pytest.fixture
def mfile(tmp_path):
    path = tmp_path / "meta"
    m.MetaFile.create(path, m.Superblock(size=64 << 20, al_nr_extents=61))
    f = m.MetaFile.open(path)
    yield f
    f.close()


def test_superblock_round_trip():
    sb = m.Superblock(size=1 << 30, flags=MetaFlags.CONSISTENT | MetaFlags.AL_CLEAN,
                      gi=GenerationIds(0xABC1, 0xDEF0, (1, 2)), device_uuid=99, seq=7)
    raw = sb.encode()
    assert len(raw) == m.SB_SLOT and m.Superblock.decode(raw) == sb


def test_corrupt_superblock_is_rejected():
    raw = bytearray(m.Superblock(size=4096).encode())
    raw[20] ^= 1
    assert m.Superblock.decode(bytes(raw)) is None


def test_fresh_metadata(mfile):
    assert mfile.sb.gi == GenerationIds(4) and mfile.sb.seq == 1
    assert mfile.bitmap.nbits == (64 << 20) // 4096 and mfile.bitmap.weight == 0
    assert mfile.al_table == [EMPTY] * 61
    assert os.path.getsize(mfile.path) == mfile.sb.file_size


def test_newest_valid_superblock_wins_and_torn_write_falls_back(mfile):
    gi = GenerationIds(0x1000)
    mfile.write_superblock(mfile.sb.with_(gi=gi))
    mfile.write_superblock(mfile.sb.with_(gi=GenerationIds(0x2000)))
    mfile.close()
    assert m.MetaFile.open(mfile.path).sb.gi == GenerationIds(0x2000)
    # Tear the newest slot (seq 3 lives in slot 1): the previous copy is used.
    fd = os.open(mfile.path, os.O_RDWR)
    os.pwrite(fd, b"\0" * 100, m.SB_SLOT + 30)
    os.close(fd)
    reopened = m.MetaFile.open(mfile.path)
    assert reopened.sb.gi == gi and reopened.sb.seq == 2
    reopened.close()


def test_al_table_and_bitmap_pages_persist(mfile):
    table = [EMPTY] * 61
    table[3] = 12
    mfile.write_al(table)
    mfile.bitmap.set_range(100, 200)
    mfile.write_bitmap_pages(mfile.bitmap.take_dirty_pages())
    mfile.close()
    again = m.MetaFile.open(mfile.path)
    assert again.al_table == table and list(again.bitmap.runs()) == [(100, 101)]
    again.close()


def test_torn_al_slot_falls_back_to_previous_table(mfile):
    first = [EMPTY] * 61
    first[0] = 1
    mfile.write_al(first)                       # seq 2
    second = list(first)
    second[1] = 2
    mfile.write_al(second)                      # seq 3, slot 1
    mfile.close()
    fd = os.open(mfile.path, os.O_RDWR)
    os.pwrite(fd, b"\x00" * 8, m.AL_OFFSET + mfile.sb.al_slot_size + 24)
    os.close(fd)
    again = m.MetaFile.open(mfile.path)
    assert again.al_table == first
    again.close()


def test_missing_metadata(tmp_path):
    with pytest.raises(m.MetaError, match="create the volume first"):
        m.MetaFile.open(tmp_path / "nope")
