"""The KVM probe: on this machine KVM hangs real kernels, so the decision must be TCG,
quickly, with the probe's QEMU gone; the positive path is proven under TCG."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from binome.guest import accel as accel_mod
from binome.guest.accel import ACCEL_CACHE, cached_accel, probe_kvm, resolve_accel
from binome.guest.process import is_alive
from binome.guest.runtime import QemuRuntime
from binome.guest.spec import LaunchSpec

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed")


@needs_qemu
async def test_probe_decides_tcg_here_fast_and_caches(tmp_path: Path) -> None:
    started = time.monotonic()
    decision = await resolve_accel(tmp_path)
    took = time.monotonic() - started
    print(f"\nKVM probe: {decision.accel} in {took:.1f}s ({decision.reason})")
    assert decision.accel == "tcg"
    assert took <= 10.0
    if decision.probe_pid is not None:
        assert not is_alive(decision.probe_pid)  # killed by pid and reaped
    record = json.loads((tmp_path / ACCEL_CACHE).read_text())
    assert record["accel"] == "tcg" and record["reason"] == decision.reason
    assert record["host"]["kernel_release"]

    # cached: no second probe
    started = time.monotonic()
    again = await resolve_accel(tmp_path)
    assert again.accel == "tcg" and time.monotonic() - started < 0.5
    rt = QemuRuntime(tmp_path)
    assert await rt.accel() == "tcg"
    assert "tcg" in rt.argv(LaunchSpec(vmid=100, name="x", memory_mb=64))


@needs_qemu
async def test_probe_recognises_a_booting_kernel(tmp_path: Path) -> None:
    """Same probe under TCG: the marker is found, so "tcg" above is not a blind default."""
    if accel_mod._probe_kernel() is None:
        pytest.skip("no kernel to probe with (lab image not built, nothing in /boot)")
    decision = await probe_kvm(timeout=60.0, accel="tcg")
    assert decision.accel == "tcg"
    assert "reached" in decision.reason, decision.reason
    assert decision.probe_pid is not None and not is_alive(decision.probe_pid)


def test_cache_is_ignored_for_another_host_identity(tmp_path: Path) -> None:
    (tmp_path / ACCEL_CACHE).write_text(json.dumps({
        "accel": "kvm", "reason": "old", "host": {"kernel_release": "0.0-other", "qemu": {}},
    }))
    assert cached_accel(tmp_path) is None
    # without a valid cache, argv() falls back to TCG rather than probing synchronously
    argv = QemuRuntime(tmp_path).argv(LaunchSpec(vmid=100, name="x", memory_mb=64))
    assert argv[argv.index("-accel") + 1] == "tcg"
