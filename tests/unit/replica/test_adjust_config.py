"""`adjust`'s pure parts: VolumeConfig.adjusted (types, unknown keys, validation), the
API's unit conversion and cross-parameter checks, the drbdsetup-show view."""

from __future__ import annotations

import pytest

from binome.api.methods.volumes import _engine_settings, _setting_errors
from binome.storage.replica.core.config import ADJUSTABLE, ConfigError, VolumeConfig
from binome.storage.replica.core.format import drbdsetup_show


def cfg(**kw) -> VolumeConfig:
    base = dict(name="v1", size=1 << 20, backing="/x/data", meta="/x/meta", socket="/x/s",
                node="a", peer_node="b", address="127.0.0.1:1", peer_address="127.0.0.1:2",
                secret="s")
    return VolumeConfig(**{**base, **kw})


def test_adjusted_types_and_validation() -> None:
    c = cfg()
    new = c.adjusted({"resync_rate": "4096", "allow_two_primaries": 1, "c_plan_ahead": 2,
                      "csums_alg": "sha256"})
    assert new.resync_rate == 4096 and new.allow_two_primaries is True
    assert new.c_plan_ahead == 2.0 and isinstance(new.c_plan_ahead, float)
    assert new.settings()["csums_alg"] == "sha256" and set(new.settings()) == set(ADJUSTABLE)
    assert c.resync_rate == 0                       # the original is untouched
    with pytest.raises(ConfigError, match="size: not an adjustable setting"):
        c.adjusted({"size": 2})
    with pytest.raises(ConfigError, match="allow_two_primaries: invalid value"):
        c.adjusted({"allow_two_primaries": "maybe"})
    with pytest.raises(ConfigError, match="requires protocol C"):
        c.adjusted({"allow_two_primaries": True, "protocol": "A"})
    with pytest.raises(ConfigError, match="must not exceed c_max_rate"):
        c.adjusted({"c_min_rate": 2 << 20, "c_max_rate": 1 << 20})
    with pytest.raises(ConfigError, match="unknown algorithm"):
        c.adjusted({"verify_alg": "md4"})


def test_api_units_and_cross_checks() -> None:
    assert _engine_settings({"resync-rate": 2048, "c-plan-ahead": 20, "c-delay-target": 5,
                             "c-fill-target": 1024, "csums-alg": "none",
                             "allow-two-primaries": 1, "volume": "v1"}) == {
        "resync_rate": 2 << 20, "c_plan_ahead": 2.0, "c_delay_target": 0.5,
        "c_fill_target": 1 << 20, "csums_alg": "", "allow_two_primaries": True}
    # the record's values count: only the parameter given is blamed
    assert _setting_errors({"allow_two_primaries": True}, {"protocol": "B"}) == {
        "protocol": "allow-two-primaries requires protocol C (the protocol would be B)"}
    assert list(_setting_errors({"protocol": "A"}, {"allow_two_primaries": True})) == [
        "allow-two-primaries"]
    assert list(_setting_errors({"c_max_rate": 1 << 20}, {"c_min_rate": 2 << 20})) == [
        "c-min-rate"]
    assert list(_setting_errors({"c_min_rate": 2 << 20}, {"c_max_rate": 1 << 20})) == [
        "c-max-rate"]
    assert list(_setting_errors({}, {"c_plan_ahead": 1.0, "c_delay_target": 0.0})) == [
        "c-plan-ahead"]
    assert _setting_errors({"protocol": "C"}, {"allow_two_primaries": True}) == {}


def test_drbdsetup_show_view() -> None:
    st = {"name": "v1", "node": "a", "peer_node": "b", "peer": {"address": "10.0.0.2:7789"},
          "settings": cfg(resync_rate=2 << 20, c_plan_ahead=2.0,
                          allow_two_primaries=True).settings()}
    text = drbdsetup_show(st)
    assert text.startswith("resource v1 {")
    assert "        allow-two-primaries     yes;" in text
    assert "        resync-rate             2048k; # bytes/second; 0: unlimited" in text
    assert "        c-plan-ahead            20; # 1/10 seconds; 0: fixed resync-rate" in text
    assert "        c-max-rate              102400k; # bytes/second" in text
    assert '        csums-alg               "";' in text
    assert "_peer_address           10.0.0.2:7789;" in text
