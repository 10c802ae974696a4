"""The etcd member supervisor: restart at once, back off while it crash-loops, forget
old crashes after a stable run (a soak left the delay at its 10 s cap after a few
spread-out kills, and the next kill self-fenced the node)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path

import pytest

from binome.store import member
from binome.store.member import EtcdMember, MemberSpec, restart_delay

pytestmark = pytest.mark.unit


def test_first_restart_is_immediate_and_crash_loops_back_off_to_a_cap():
    delays = [restart_delay(None, 1.0)]
    for _ in range(10):
        delays.append(restart_delay(delays[-1], 1.0))
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == member.RESTART_DELAY_MAX


def test_a_stable_run_resets_the_delay():
    assert restart_delay(member.RESTART_DELAY_MAX, member.STABLE_RUN) == 0.1
    assert restart_delay(member.RESTART_DELAY_MAX, member.STABLE_RUN - 1) == \
        member.RESTART_DELAY_MAX


def test_the_supervisor_restarts_a_real_process_with_those_delays(tmp_path: Path,
                                                                  monkeypatch):
    """A real child that exits at once, then one that runs past a (shortened) stable
    run: the pause after the long run is the minimum again."""
    monkeypatch.setattr(member, "STABLE_RUN", 0.5)
    spec = MemberSpec("m1", tmp_path / "data", "https://127.0.0.1:1", "https://127.0.0.1:2",
                      tmp_path / "ca", tmp_path / "c", tmp_path / "k")
    m = EtcdMember(spec, tmp_path / "run", tmp_path / "etcd.log")
    spawns: list[float] = []
    # the 4th run lasts past STABLE_RUN; every other run exits at once
    script = tmp_path / "child.sh"
    script.write_text(f'n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > '
                      f'{tmp_path}/n; [ "$n" = 3 ] && sleep 0.7; exit 1\n')

    async def run() -> None:
        real_spawn = m._spawn
        six = asyncio.Event()

        async def spawn() -> None:
            spawns.append(time.monotonic())
            if len(spawns) >= 6:
                six.set()
            await real_spawn()

        m._spawn = spawn   # type: ignore[method-assign]
        m._argv = ["sh", str(script)]
        await m._spawn()
        m._supervisor = asyncio.create_task(m._supervise())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(six.wait(), 10)
        await m.stop(timeout=2)

    asyncio.run(run())
    assert len(spawns) >= 6, spawns
    gaps = [b - a for a, b in itertools.pairwise(spawns)]
    # runs 1-3 exit at once: 0.1, 0.2, 0.4 s; run 4 runs 0.7 s (stable) then 0.1 s again
    assert gaps[0] < 0.35 and 0.15 < gaps[1] < 0.5 and 0.35 < gaps[2] < 0.8
    assert 0.7 < gaps[3] < 1.4, gaps   # 0.7 s run + 0.1 s pause, not 0.7 + 0.8
    assert m.restarts >= 5
