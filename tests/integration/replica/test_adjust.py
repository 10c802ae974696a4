"""`adjust` on two real engines: settings of an existing volume changed live.

A resync rate raised during a resync visibly speeds it up; allow-two-primaries
turned on while connected (one side Primary) lets the other promote; the
protocol changed while writes stream (each write carries the ack it wants);
refusals (bad values, DRBD's state rules, a peer refusal) change nothing on
either side; settings changed while disconnected meet at the next handshake.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from binome.lab.nbd_client import NbdClient
from binome.storage.replica.engine import control
from tests.integration.replica.pairs import (
    MiB,
    connected,
    in_sync,
    log_of,
    synced_pair,
    wait_for,
)


def settings(engine) -> dict:
    return engine.call("status", name="r0")["settings"]


def on_disk(engine) -> dict:
    return json.loads((engine.state_dir / "volumes" / "r0" / "volume.json").read_text())


def oos_rate(engine, seconds: float) -> float:
    """Bytes/s by which the out-of-sync count fell over `seconds` (a resync's speed)."""
    before = engine.call("status", name="r0")["out_of_sync_kib"]
    t0 = time.monotonic()
    time.sleep(seconds)              # the measurement window
    after = engine.call("status", name="r0")["out_of_sync_kib"]
    return (before - after) * 1024 / (time.monotonic() - t0)


def test_rate_change_speeds_up_a_running_resync(pair):
    pair.create(size="32M", resync_rate=1 * MiB)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, lambda s: s["cstate"] == "SyncTarget" and s["peer"]["sync"]["done"] > 1)
    slow = oos_rate(pair.b, 1.5)
    assert slow <= 1.4 * MiB, f"{slow / MiB:.2f} MiB/s at a 1 MiB/s limit"
    # The SyncTarget paces: adjusting it changes the running resync at its next step.
    res = pair.b.call("adjust", name="r0", resync_rate=16 * MiB)
    assert res["changed"] == {"resync_rate": [1 * MiB, 16 * MiB]}
    assert res["peer"]["sync"]["want_kib"] == 16 * 1024
    t0 = time.monotonic()
    fast = oos_rate(pair.b, 1.0)
    st = wait_for(pair.b, in_sync, timeout=30)
    took = time.monotonic() - t0
    assert fast >= 3 * slow or took < 2.5, (fast, slow, took)
    # a local setting: the peer's stays as it was, the new one is persisted here
    assert settings(pair.a)["resync_rate"] == 1 * MiB
    assert on_disk(pair.b)["resync_rate"] == 16 * MiB and st["settings"]["resync_rate"] == 16 * MiB
    wait_for(pair.a, in_sync)
    assert pair.identical()
    print(f"resync 1 MiB/s: measured {slow / MiB:.2f} MiB/s; after adjust to 16 MiB/s: "
          f"{fast / MiB:.2f} MiB/s, rest done in {took:.2f} s")


def test_dynamic_controller_switched_on_live(pair):
    pair.create(size="32M", resync_rate=1 * MiB)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, lambda s: s["cstate"] == "SyncTarget" and s["peer"]["sync"]["done"] > 1)
    slow = oos_rate(pair.b, 1.0)
    pair.b.call("adjust", name="r0", c_plan_ahead=1.0, c_fill_target=2 * MiB,
                c_max_rate=12 * MiB)
    fast = oos_rate(pair.b, 1.0)
    assert fast >= 2.5 * slow or pair.b.call("status", name="r0")["out_of_sync_kib"] == 0, \
        (slow, fast)
    assert fast <= 12 * MiB * 1.3
    wait_for(pair.b, in_sync, timeout=30)


def test_allow_two_primaries_turned_on_while_connected(pair):
    synced_pair(pair)
    with pytest.raises(control.ControlError, match=r"\(-1\) Multiple primaries not allowed"):
        pair.b.call("primary", name="r0")
    res = pair.a.call("adjust", name="r0", allow_two_primaries=True)
    assert res["changed"] == {"allow_two_primaries": [False, True]}
    # applied on both engines (the peer first, over the link), persisted on both
    for e in (pair.a, pair.b):
        assert settings(e)["allow_two_primaries"] is True
        assert on_disk(e)["allow_two_primaries"] is True
    assert "adjusted by the peer: allow_two_primaries False -> True" in log_of(pair.b)
    st = pair.b.call("primary", name="r0")
    assert st["role"] == "Primary" and st["peer_role"] == "Primary"
    assert st["cstate"] == "Connected"

    async def both_write() -> None:
        ca = await NbdClient.connect(pair.a.call("status", name="r0")["socket"], "r0")
        cb = await NbdClient.connect(pair.b.call("status", name="r0")["socket"], "r0")
        try:
            await ca.write(0, b"A" * 65536)
            await cb.write(1 * MiB, b"B" * 65536)
            await asyncio.gather(ca.flush(), cb.flush())
        finally:
            await ca.close()
            await cb.close()

    asyncio.run(both_write())
    wait_for(pair.a, in_sync)
    assert pair.identical()
    # Clearing it (or changing the protocol) while both are Primary is refused; nothing
    # changes on either side.
    before = (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b))
    with pytest.raises(control.ControlError, match="Can not clear allow_two_primaries") as e:
        pair.b.call("adjust", name="r0", allow_two_primaries=False)
    assert e.value.code == "ESTATE"
    with pytest.raises(control.ControlError, match="requires protocol C") as e:
        pair.a.call("adjust", name="r0", protocol="B")
    assert e.value.code == "EINVAL"
    assert (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b)) == before
    # one Primary again: it may be cleared
    pair.b.call("secondary", name="r0")
    pair.b.call("adjust", name="r0", allow_two_primaries=False)
    assert settings(pair.a)["allow_two_primaries"] is False
    with pytest.raises(control.ControlError, match=r"\(-1\) Multiple primaries not allowed"):
        pair.b.call("primary", name="r0")


def test_protocol_changed_while_writes_stream(pair):
    """Writes in flight across each protocol change all complete: each P_DATA says which
    ack its sender waits for; the replicas end equal."""
    synced_pair(pair)
    sock = pair.a.call("status", name="r0")["socket"]
    oracle = bytearray(16 * MiB)

    async def run() -> int:
        c = await NbdClient.connect(sock, "r0")
        done = 0
        stop = asyncio.Event()

        async def writer() -> None:
            nonlocal done
            while not stop.is_set():
                batch = []
                for _ in range(16):
                    off = int.from_bytes(os.urandom(3), "big") % (16 * MiB // 4096) * 4096
                    data = os.urandom(4096)
                    oracle[off:off + 4096] = data
                    batch.append(c.write(off, data))
                await asyncio.gather(*batch)
                done += len(batch)

        task = asyncio.ensure_future(writer())
        try:
            for proto in ("A", "B", "C", "B", "A", "C"):
                await asyncio.sleep(0.3)
                res = await asyncio.to_thread(pair.a.call, "adjust", name="r0", protocol=proto)
                assert res["settings"]["protocol"] == proto
                assert (await asyncio.to_thread(pair.b.call, "status", name="r0")
                        )["settings"]["protocol"] == proto
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            async with asyncio.timeout(20):       # a write waiting for a lost ack hangs
                await task
            await c.flush()
            await c.close()
        return done

    n = asyncio.run(run())
    assert n > 50
    st = pair.a.call("status", name="r0")
    assert st["cstate"] == "Connected" and st["protocol"] == "C"
    wait_for(pair.a, in_sync)
    assert pair.data(pair.a) == bytes(oracle) == pair.data(pair.b)


def test_refusals_change_nothing(pair):
    synced_pair(pair)
    before = (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b))
    for bad, match in (({"resync_rate": -1}, "must be positive"),
                       ({"csums_alg": "md4"}, "unknown algorithm"),
                       ({"verify_alg": "nope"}, "unknown algorithm"),
                       ({"c_min_rate": 8 * MiB, "c_max_rate": 4 * MiB}, "must not exceed"),
                       ({"c_max_rate": 0}, "c_max_rate must be positive"),
                       ({"protocol": "D"}, "protocol must be"),
                       ({"size": 1}, "not an adjustable setting"),
                       ({"secret": "x"}, "not an adjustable setting")):
        with pytest.raises(control.ControlError, match=match) as e:
            pair.a.call("adjust", name="r0", **bad)
        assert e.value.code == "EINVAL", bad
    # A verify runs: its algorithm cannot change (on either side).
    pair.a.call("adjust", name="r0", resync_rate=1 * MiB)      # verify at 1 MiB/s: slow
    pair.a.call("verify", name="r0")
    wait_for(pair.b, lambda s: s["cstate"] == "VerifyT")
    mid = (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b))
    with pytest.raises(control.ControlError, match="while online verify runs"):
        pair.a.call("adjust", name="r0", verify_alg="md5")
    with pytest.raises(control.ControlError, match="while online verify runs"):
        pair.b.call("adjust", name="r0", verify_alg="md5")
    pair.a.call("verify-stop", name="r0")
    wait_for(pair.a, connected)
    assert (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b)) == mid
    assert {k: v for k, v in mid[0].items() if k != "resync_rate"} == \
        {k: v for k, v in before[0].items() if k != "resync_rate"}


def test_csums_alg_refused_during_a_resync(pair):
    pair.create(size="32M", resync_rate=1 * MiB)
    wait_for(pair.a, connected)
    pair.a.call("primary", name="r0", force=True)
    wait_for(pair.b, lambda s: s["cstate"] == "SyncTarget")
    before = (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b))
    for e in (pair.a, pair.b):
        with pytest.raises(control.ControlError, match="csums-alg while resync is in progress"):
            e.call("adjust", name="r0", csums_alg="sha256")
    assert (settings(pair.a), settings(pair.b), on_disk(pair.a), on_disk(pair.b)) == before


def test_concurrent_adjusts_never_diverge(pair):
    """Both sides ask at once: a side whose own request waits refuses the peer's, so
    either both are refused or they apply in one order; the two never end different."""
    synced_pair(pair)
    outcomes = []
    for i in range(5):
        pa, pb = ("A", "B") if i % 2 else ("B", "A")

        async def both(pa: str = pa, pb: str = pb) -> list:
            return await asyncio.gather(
                asyncio.to_thread(pair.a.call, "adjust", name="r0", protocol=pa),
                asyncio.to_thread(pair.b.call, "adjust", name="r0", protocol=pb),
                return_exceptions=True)

        res = asyncio.run(both())
        outcomes.append(tuple(type(r).__name__ for r in res))
        assert settings(pair.a)["protocol"] == settings(pair.b)["protocol"]
        assert on_disk(pair.a)["protocol"] == on_disk(pair.b)["protocol"]
        assert pair.a.call("status", name="r0")["cstate"] == "Connected"
    print("concurrent adjust outcomes:", outcomes)


def test_disconnected_changes_meet_at_the_next_handshake(pair):
    synced_pair(pair)
    pair.a.call("disconnect", name="r0")
    pair.b.call("disconnect", name="r0")
    pair.a.call("adjust", name="r0", csums_alg="sha256", verify_alg="md5")
    pair.a.call("connect", name="r0")
    pair.b.call("connect", name="r0")
    st = wait_for(pair.b, lambda s: s["cstate"] == "StandAlone"
                  and "incompatible" in (s["peer"] or {}).get("last_error", ""))
    assert "verify-alg" in st["peer"]["last_error"] or "csums-alg" in st["peer"]["last_error"]
    # the other side adjusted too: the link that gave up on the mismatch connects again
    pair.b.call("adjust", name="r0", csums_alg="sha256", verify_alg="md5")
    pair.a.call("connect", name="r0")     # DRBD: StandAlone stays until told to connect
    wait_for(pair.a, in_sync, timeout=30)
    wait_for(pair.b, in_sync, timeout=30)
    assert settings(pair.a)["csums_alg"] == settings(pair.b)["csums_alg"] == "sha256"


def test_adjust_of_a_volume_that_is_down(pair):
    pair.create(size="8M", up=False)
    res = pair.a.call("adjust", name="r0", c_plan_ahead=2.0, c_min_rate=1 * MiB)
    assert res["cstate"] == "Unconfigured"
    assert res["changed"] == {"c_plan_ahead": [0.0, 2.0], "c_min_rate": [0, 1 * MiB]}
    assert on_disk(pair.a)["c_plan_ahead"] == 2.0
    dry = pair.a.call("adjust", name="r0", c_plan_ahead=3.0, dry_run=True)
    assert dry["changed"] == {"c_plan_ahead": [2.0, 3.0]} and on_disk(pair.a)["c_plan_ahead"] == 2.0
    st = pair.a.call("up", name="r0")
    assert st["settings"]["c_plan_ahead"] == 2.0
