"""The self-fence supervisor's view of a guest (`binome.fence.guests`) matches the guest runtime's.

The fence package does not import the guest package; these tests pin the contract they
share: where the runtime record and QEMU's pidfile are, and what "alive, and the same
process" means.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from binome.fence import guests
from binome.guest.paths import GuestPaths
from binome.guest.process import is_alive, proc_stat

pytestmark = pytest.mark.unit


def test_fence_finds_the_files_the_guest_runtime_writes(tmp_path: Path) -> None:
    paths = GuestPaths(tmp_path, 104)
    assert guests.guest_record(tmp_path, 104) == paths.state
    assert guests.guest_pidfile(tmp_path, 104) == paths.pidfile


def test_fence_and_guest_agree_on_process_identity() -> None:
    me = os.getpid()
    stat = proc_stat(me)
    assert stat is not None
    for ticks in (None, stat.start_ticks, stat.start_ticks + 1):
        assert guests.is_alive(me, ticks) == is_alive(me, ticks)
    assert not guests.is_guest_qemu(me, Path("/nonexistent.pid"))


def test_kill_guest_without_a_record_kills_nothing(tmp_path: Path) -> None:
    assert guests.kill_guest(tmp_path, 104) == {
        "vmid": 104, "result": "not running", "detail": "no runtime record"}
    guests.guest_record(tmp_path, 104).write_text(
        f'{{"pid": {os.getpid()}, "start_ticks": 1}}')
    result = guests.kill_guest(tmp_path, 104)   # this very process, but not its start time
    assert result["result"] == "not killed" and "pid reused" in result["detail"]
