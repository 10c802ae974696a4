"""Resync rate control with two real engines: the fixed rate and the dynamic controller's
c-max-rate really bound the measured resync speed, pause/resume still work under them, and
c-min-rate throttles a resync while the application writes."""

from __future__ import annotations

import asyncio
import os
import time

from binome.lab.nbd_client import NbdClient
from tests.integration.replica.pairs import MiB, connected, in_sync, wait_for

SIZE = 16 * MiB


def syncing(st: dict) -> bool:
    return st["cstate"] in ("SyncTarget", "PausedSyncT")


def timed_full_sync(pair, **kw) -> tuple[float, dict]:
    pair.create(size="16M", **kw)
    wait_for(pair.a, connected)
    t0 = time.monotonic()
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, in_sync, timeout=60)
    elapsed = time.monotonic() - t0
    wait_for(pair.a, in_sync)
    assert pair.identical()
    return elapsed, pair.b.call("status", name="r0")["peer"]["last_resync"]


def test_fixed_rate_bounds_the_resync_and_pause_resume_work(pair):
    rate = 4 * MiB                    # 16 MiB: 4 s
    pair.create(size="16M", resync_rate=rate)
    wait_for(pair.a, connected)
    t0 = time.monotonic()
    pair.a.call("primary", name="r0", force=True)
    # progress, rate and ETA while it runs
    st = wait_for(pair.b, lambda s: syncing(s) and s["peer"]["sync"]["done"] > 20)
    sync = st["peer"]["sync"]
    assert sync["want_kib"] == rate // 1024 and sync["eta_s"] is not None
    # pause: nothing moves; resume: it goes on
    pair.b.call("pause-sync", name="r0")
    left = wait_for(pair.b, lambda s: s["cstate"] == "PausedSyncT")["out_of_sync_kib"]
    time.sleep(1.0)              # the observation window of "nothing moves"
    paused = pair.b.call("status", name="r0")
    assert paused["cstate"] == "PausedSyncT"
    # what was in flight at the pause may still land (at most one window), nothing more
    assert left - paused["out_of_sync_kib"] <= 8 * 1024
    held = paused["out_of_sync_kib"]
    time.sleep(0.5)
    assert pair.b.call("status", name="r0")["out_of_sync_kib"] == held
    pair.b.call("resume-sync", name="r0")
    wait_for(pair.b, in_sync, timeout=60)
    elapsed = time.monotonic() - t0
    wait_for(pair.a, in_sync)
    assert pair.identical()
    last = pair.b.call("status", name="r0")["peer"]["last_resync"]
    assert last["total_kib"] == SIZE // 1024 and last["paused_s"] >= 1.0
    active = last["seconds"] - last["paused_s"]
    speed = SIZE / active
    # the bound: never faster than the rate (10 % for timer granularity); not far slower
    assert speed <= rate * 1.1, f"{speed / MiB:.2f} MiB/s at a {rate / MiB} MiB/s limit"
    assert speed >= rate * 0.5, f"{speed / MiB:.2f} MiB/s at a {rate / MiB} MiB/s limit"
    assert elapsed >= SIZE / rate + 1.0 - 0.3
    print(f"fixed 4 MiB/s: {speed / MiB:.2f} MiB/s over {active:.2f} s active "
          f"(+{last['paused_s']} s paused)")


def test_dynamic_controller_respects_c_max_rate(pair):
    cap = 4 * MiB
    elapsed, last = timed_full_sync(pair, resync_rate=1 * MiB, c_plan_ahead=1.0,
                                    c_fill_target=1 * MiB, c_max_rate=cap)
    speed = SIZE / last["seconds"]
    assert speed <= cap * 1.1, f"{speed / MiB:.2f} MiB/s at c-max-rate {cap / MiB} MiB/s"
    assert speed >= cap * 0.4, f"{speed / MiB:.2f} MiB/s at c-max-rate {cap / MiB} MiB/s"
    print(f"dynamic, c-max-rate 4 MiB/s: {speed / MiB:.2f} MiB/s ({elapsed:.2f} s)")


def test_c_min_rate_throttles_the_resync_while_the_application_writes(pair):
    pair.create(size="16M", c_min_rate=1 * MiB)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, in_sync)
    # B misses 8 MiB of writes, then resyncs them while A's application keeps writing
    pair.b.call("disconnect", name="r0")
    sock = pair.a.call("status", name="r0")["socket"]

    async def scenario() -> float:
        c = await NbdClient.connect(sock, "r0")
        try:
            for i in range(8):
                await c.write(i * MiB, os.urandom(MiB))
            await asyncio.to_thread(pair.b.call, "connect", name="r0")
            t0 = time.monotonic()
            i = 0
            # about 2.5 MiB/s of application writes to the upper half while it resyncs
            while not (await asyncio.to_thread(pair.b.call, "status", name="r0"))[
                    "cstate"] == "Connected":
                await c.write(8 * MiB + (i % 128) * 65536, os.urandom(65536))
                await asyncio.sleep(0.02)
                i += 1
                assert time.monotonic() - t0 < 60
            return time.monotonic() - t0
        finally:
            await c.close()

    elapsed = asyncio.run(scenario())
    wait_for(pair.b, in_sync)
    wait_for(pair.a, in_sync)
    assert pair.identical()
    last = pair.b.call("status", name="r0")["peer"]["last_resync"]
    assert last["total_kib"] >= 8 * 1024     # (+ writes marked during the bitmap exchange)
    # 8 MiB at about 1 MiB/s: several seconds (unthrottled it takes well under one)
    assert last["throttled_s"] > 1.0 and elapsed > 4.0, (elapsed, last)
    assert SIZE / 2 / last["seconds"] <= 1.3 * MiB
    print(f"c-min-rate 1 MiB/s under writes: 8 MiB in {last['seconds']:.2f} s")
