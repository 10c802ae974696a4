"""The resync rate controllers (rsctl, pure) against a simulated link, and the block digests
of online verify and checksum-based resync (csum)."""

from __future__ import annotations

import pytest

from binome.storage.replica.core import csum, rsctl
from binome.storage.replica.core.rsctl import STEP, Plan, RateSettings, controller_step

MiB = 1 << 20


def simulate(s: RateSettings, bandwidth: float, seconds: float, latency_steps: int = 1):
    """A link that delivers at most `bandwidth` bytes/s, FIFO, after `latency_steps`.

    Returns per-step (requested, received, in_flight) after each controller step.
    """
    plan = Plan.empty(s.steps)
    queue: list[list[float]] = []         # [bytes, step it may arrive from]
    received = 0
    in_flight = 0
    out = []
    for step in range(int(seconds / STEP)):
        req, plan = controller_step(s, plan, received, in_flight)
        queue.append([req, step + latency_steps])
        in_flight += req
        budget = bandwidth * STEP
        received = 0
        while queue and budget > 0 and queue[0][1] <= step:
            take = min(queue[0][0], budget)
            queue[0][0] -= take
            budget -= take
            received += take
            if queue[0][0] <= 0:
                queue.pop(0)
        in_flight -= received
        out.append((req, received, in_flight))
    return out


def test_first_step_plans_the_configured_rate():
    s = RateSettings(resync_rate=10 * MiB, c_plan_ahead=2.0, c_delay_target=1.0)
    req, plan = controller_step(s, Plan.empty(s.steps), 0, 0)
    assert req == pytest.approx(10 * MiB * STEP, rel=1e-6)
    assert len(plan.slots) == 20
    # the rest of the plan (19 more steps of the same) is still ahead
    assert plan.total == pytest.approx(19 * MiB, rel=1e-6)


def test_fill_target_keeps_that_much_in_flight_and_saturates_the_link():
    s = RateSettings(resync_rate=1 * MiB, c_plan_ahead=1.0, c_fill_target=4 * MiB,
                     c_max_rate=1000 * MiB)
    steps = simulate(s, bandwidth=20 * MiB, seconds=20)
    tail = steps[-50:]
    rate = sum(r for _, r, _ in tail) / (len(tail) * STEP)
    assert rate == pytest.approx(20 * MiB, rel=0.05)
    assert sum(f for _, _, f in tail) / len(tail) == pytest.approx(4 * MiB, rel=0.15)


def test_delay_target_keeps_the_queue_delay_near_the_target():
    s = RateSettings(resync_rate=2 * MiB, c_plan_ahead=2.0, c_delay_target=0.5,
                     c_max_rate=1000 * MiB)
    bandwidth = 8 * MiB
    steps = simulate(s, bandwidth=bandwidth, seconds=40)
    tail = steps[-100:]
    in_flight = sum(f for _, _, f in tail) / len(tail)
    # delay of what is in flight at the link's rate: about c_delay_target
    assert in_flight / bandwidth == pytest.approx(0.5, rel=0.25)
    assert sum(r for _, r, _ in tail) / (len(tail) * STEP) == pytest.approx(bandwidth, rel=0.05)


def test_c_max_rate_caps_every_step():
    s = RateSettings(resync_rate=100 * MiB, c_plan_ahead=1.0, c_fill_target=64 * MiB,
                     c_max_rate=3 * MiB)
    steps = simulate(s, bandwidth=1000 * MiB, seconds=10)
    assert max(r for r, _, _ in steps) <= 3 * MiB * STEP
    rate = sum(r for _, r, _ in steps[-50:]) / (50 * STEP)
    assert rate == pytest.approx(3 * MiB, rel=0.05)


def test_too_much_in_flight_requests_nothing():
    s = RateSettings(c_plan_ahead=1.0, c_fill_target=1 * MiB)
    req, _ = controller_step(s, Plan.empty(s.steps), 0, 50 * MiB)
    assert req == 0


def test_fixed_controller_delay():
    assert rsctl.fixed_delay(0, 10 * MiB, 0.1) == 0
    assert rsctl.fixed_delay(MiB, 3 * MiB, 1.0) == pytest.approx(2.0)
    assert rsctl.fixed_delay(MiB, MiB, 2.0) == 0


def test_c_min_rate_throttles_only_while_the_application_is_busy():
    s = RateSettings(c_min_rate=1 * MiB)
    busy = rsctl.APP_ACTIVE_BYTES + 1
    assert rsctl.step_budget(s, None, busy) == int(MiB * STEP)      # fixed: capped
    assert rsctl.step_budget(s, 10 * MiB, busy) == int(MiB * STEP)  # dynamic: capped
    assert rsctl.step_budget(s, 1000, busy) == 1000                 # already below
    assert rsctl.step_budget(s, None, 0) is None                    # the application is idle
    assert rsctl.step_budget(s, 5000, 0) == 5000
    assert rsctl.step_budget(RateSettings(c_min_rate=0), None, busy) is None


@pytest.mark.parametrize("alg", csum.ALGORITHMS)
def test_digests_find_exactly_the_differing_blocks(alg):
    block = 4096
    a = bytearray(b"x" * (10 * block + 100))          # the last block is short
    b = bytearray(a)
    b[3 * block + 7] ^= 1
    b[10 * block + 99] ^= 1
    digests = csum.block_digests(alg, a, block)
    assert len(digests) == 11 * csum.digest_fn(alg)[1]
    assert csum.differing_blocks(alg, b, block, digests) == [3, 10]
    assert csum.differing_blocks(alg, a, block, digests) == []
    with pytest.raises(ValueError):
        csum.differing_blocks(alg, a + bytes(block), block, digests)


def test_masks_and_unknown_algorithms():
    mask = csum.mask_of([0, 9, 255], 256)
    assert len(mask) == 32 and mask[0] == 1 and mask[1] == 2
    assert csum.mask_indexes(mask, 256) == [0, 9, 255]
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        csum.digest_fn("crc32c")


def test_config_validates_algorithms_and_controller_settings():
    from binome.storage.replica.core.config import ConfigError, VolumeConfig

    base = dict(name="v", size=4096, backing="/x", meta="/m", socket="/s",
                address="127.0.0.1:1", peer_address="127.0.0.1:2", secret="s")
    VolumeConfig(**base, verify_alg="md5", csums_alg="sha256", c_plan_ahead=2.0).validate()
    for bad, match in (({"verify_alg": "crc32c"}, "verify_alg: unknown algorithm"),
                       ({"csums_alg": "nope"}, "csums_alg: unknown algorithm"),
                       ({"c_plan_ahead": 1.0, "c_delay_target": 0}, "needs c_fill_target"),
                       ({"c_max_rate": 0}, "c_max_rate must be positive"),
                       ({"allow_two_primaries": True, "protocol": "A"},
                        r"allow-two-primaries requires protocol C \(not A\)")):
        with pytest.raises(ConfigError, match=match):
            VolumeConfig(**{**base, **bad}).validate()
    s = VolumeConfig(**base, resync_rate=5, c_plan_ahead=2.0).rate_settings()
    assert s.dynamic and s.steps == 20 and s.resync_rate == 5


def test_subtract_ranges_for_concurrent_dual_primary_writes():
    from binome.storage.replica.engine.peer.replication import subtract_ranges

    assert subtract_ranges(0, 100, []) == [(0, 100)]
    assert subtract_ranges(0, 100, [(0, 100)]) == []
    assert subtract_ranges(0, 100, [(-50, 150)]) == []
    assert subtract_ranges(0, 100, [(10, 20)]) == [(0, 10), (20, 80)]
    # unsorted, overlapping, touching the ends
    assert subtract_ranges(0, 100, [(60, 70), (0, 5), (15, 30), (25, 40), (95, 100)]) == \
        [(5, 10), (40, 20), (70, 25)]
    assert subtract_ranges(4096, 8192, [(8192, 9000)]) == [(4096, 4096)]


def test_dynamic_controller_starts_without_a_resync_rate():
    s = RateSettings(resync_rate=0, c_plan_ahead=1.0, c_fill_target=MiB, c_max_rate=10 * MiB)
    req, _ = controller_step(s, Plan.empty(s.steps), 0, 0)
    assert req == pytest.approx(10 * MiB * STEP, rel=1e-6)
    steps = simulate(s, bandwidth=5 * MiB, seconds=10)
    assert sum(r for _, r, _ in steps[-30:]) / (30 * STEP) == pytest.approx(5 * MiB, rel=0.1)
