"""The dirty bitmap and the activity log."""

import pytest

from binome.storage.replica.core.activity_log import EMPTY, ActivityLog
from binome.storage.replica.core.bitmap import PAGE, Bitmap


def test_set_bit_and_weight_and_dirty_page():
    bm = Bitmap(100_000)
    assert bm.set_bit(5) and not bm.set_bit(5)
    assert bm.weight == 1 and bm.test(5) and not bm.test(4)
    assert bm.dirty_pages == {0}
    bm.set_bit(PAGE * 8 + 1)
    assert bm.dirty_pages == {0, 1}


@pytest.mark.parametrize("first, last", [(0, 0), (3, 5), (7, 8), (0, 63), (13, 1000), (8, 15)])
def test_set_and_clear_ranges_match_a_naive_model(first, last):
    bm = Bitmap(2048)
    bm.set_bit(1)
    bm.set_bit(500)
    model = {1, 500}
    assert bm.set_range(first, last) == len(set(range(first, last + 1)) - model)
    model |= set(range(first, last + 1))
    assert set(bm.set_bits()) == model and bm.weight == len(model)
    cleared = bm.clear_range(2, 600)
    assert cleared == len({b for b in model if 2 <= b <= 600})
    model -= set(range(2, 601))
    assert set(bm.set_bits()) == model and bm.weight == len(model)


def test_byte_ranges_map_to_blocks():
    bm = Bitmap.for_size(1 << 20)          # 256 blocks of 4 KiB
    bm.set_bytes_range(4096, 4096)
    bm.set_bytes_range(8191 + 4096, 2)     # straddles blocks 2 and 3
    bm.set_bytes_range(100 * 4096 + 10, 0)
    assert list(bm.runs()) == [(1, 3)]


def test_runs():
    bm = Bitmap(64)
    for b in (0, 1, 2, 10, 63):
        bm.set_bit(b)
    assert list(bm.runs()) == [(0, 3), (10, 1), (63, 1)]


def test_tail_bits_never_set_and_out_of_range_refused():
    bm = Bitmap(10, data=b"\xff\xff")
    assert bm.weight == 10
    bm.clear_all()
    bm.set_all()
    assert bm.weight == 10
    with pytest.raises(IndexError):
        bm.set_range(5, 10)


def test_take_dirty_pages_snapshots_and_resets():
    bm = Bitmap(PAGE * 8 * 2)
    bm.set_range(0, 9)
    pages = bm.take_dirty_pages()
    assert list(pages) == [0] and pages[0][:2] == b"\xff\x03" and len(pages[0]) == PAGE
    assert not bm.dirty_pages
    assert Bitmap(bm.nbits, data=bm.to_bytes()).weight == 10


def test_al_begin_only_on_hot_extents():
    al = ActivityLog(nr_slots=4)
    assert not al.begin(0, 0)
    tx = al.prepare({0, 1})
    assert tx.added == {0, 1} and not tx.evicted
    al.commit(tx)
    assert al.begin(0, 1) and al.in_use(0)
    al.end(0, 1)
    assert not al.in_use(0)


def test_al_evicts_least_recently_used_idle_extent():
    al = ActivityLog(nr_slots=2)
    al.commit(al.prepare({1, 2}))
    al.begin(1, 1)
    al.end(1, 1)                  # 2 is now the least recently used
    tx = al.prepare({3})
    assert tx.evicted == {2} and tx.added == {3}
    assert not al.is_hot(2)       # leaves at once: no new bits may land in it
    al.commit(tx)
    assert sorted(al.hot()) == [1, 3] and sorted(al.table()) == [1, 3]


def test_al_never_evicts_extents_with_io_in_flight():
    al = ActivityLog(nr_slots=2)
    al.commit(al.prepare({1, 2}))
    al.begin(1, 2)
    assert al.prepare({3}) is None
    al.end(2, 2)
    assert al.prepare({3}).evicted == {2}


def test_al_restores_its_table():
    al = ActivityLog(nr_slots=3, table=[7, EMPTY, 9])
    assert sorted(al.hot()) == [7, 9] and al.begin(9, 9)
    assert al.extents_of(4 << 20, 1) == (1, 1)
    assert al.extents_of((4 << 20) - 1, 2) == (0, 1)
