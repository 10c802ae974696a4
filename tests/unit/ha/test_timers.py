"""HA timers: safe defaults and validated relations, each error naming its key."""

from __future__ import annotations

import pytest

from binome.config import ConfigError
from binome.ha.timers import HaTimers


def test_defaults_are_valid_and_seconds_scale():
    t = HaTimers().validate()
    assert t.self_fence_deadline < t.lease_ttl - t.safety_margin
    assert t.lease_ttl <= 10 and t.fence_delay <= 5
    # a stall its watchdog survives never gets a power cycle (issue 16)
    assert t.fence_delay >= t.self_fence_deadline


@pytest.mark.parametrize("overrides, key", [
    ({"self_fence_deadline": 4.5}, "self_fence_deadline"),            # not < ttl - margin
    ({"self_fence_deadline": 4.0}, "self_fence_deadline"),            # equal is not enough
    ({"self_fence_deadline": 1.5}, "self_fence_deadline"),            # <= keepalive + lrm round
    ({"keepalive_interval": 2.0}, "keepalive_interval"),              # > ttl / 3
    ({"fence_delay": 1.0}, "fence_delay"),                            # < 2 x keepalive
    ({"fence_delay": 3.0}, "fence_delay"),                            # < self-fence deadline
    ({"fence_retry": 1.0}, "fence_retry"),                            # < fence_timeout
    ({"manager_round": 0}, "manager_round"),
    ({"lease_ttl": -1}, "lease_ttl"),
])
def test_invalid_relations_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"ha\.timers\.{key}"):
        HaTimers.from_dict(overrides)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match=r"ha\.timers\.lease_tll"):
        HaTimers.from_dict({"lease_tll": 5})


def test_consistent_longer_timers_are_accepted():
    t = HaTimers.from_dict({"lease_ttl": 30, "self_fence_deadline": 20, "safety_margin": 5,
                            "keepalive_interval": 5, "lrm_round": 5, "fence_delay": 20})
    assert t.lease_ttl == 30
