"""Real QEMU with a VM's own EFI vars volume (efidisk0) and a TPM (tpmstate0 + swtpm):
OVMF boots from Debian's firmware and writes its variables into the volume, the TPM is
QEMU's tpm-emulator on a real swtpm, and swtpm stops with the guest; the same QEMU has
the rng0, audio0, watchdog and ivshmem devices, allow-ksm=0 and numaN nodes, so QEMU
accepts those options."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from binome.guest.lifecycle import OVMF_FOR_EFIDISK
from binome.guest.paths import GuestPaths
from binome.guest.process import is_alive
from binome.guest.runtime import QemuRuntime
from binome.guest.spec import LaunchSpec
from binome.guest.tpm import stop_swtpm, swtpm_pid

CODE, TEMPLATE = OVMF_FOR_EFIDISK[("4m", False)]
pytestmark = pytest.mark.skipif(
    not (Path(CODE).exists() and shutil.which("swtpm") and shutil.which("swtpm_setup")),
    reason="needs Debian's ovmf, swtpm and swtpm-tools (tools/setup-debian.sh)")


async def test_ovmf_with_efidisk_and_swtpm(tmp_path: Path) -> None:
    efivars = tmp_path / "vm-100-disk-1.raw"
    shutil.copyfile(TEMPLATE, efivars)
    tpm_state = tmp_path / "vm-100-disk-2.raw"
    tpm_state.write_bytes(b"\0" * (4 << 20))
    rt = QemuRuntime(tmp_path / "run", accel="tcg")
    spec = LaunchSpec(vmid=100, name="uefi", memory_mb=128, vga="none", ovmf_code=CODE,
                      efivars_source=str(efivars), efivars_format="raw",
                      tpm_state=str(tpm_state), tpm_version="v2.0",
                      # PVE's rng0, audio0, watchdog and allow-ksm=0 in the same QEMU
                      rng=("/dev/urandom", 1024, 1000), audio="ich9-intel-hda",
                      watchdog="i6300esb", watchdog_action="reset", mem_merge=False,
                      # and two explicit guest NUMA nodes, one bound to host node 0
                      cores=2, numa=True, numa_nodes=((0, "0", 64, "0", "bind"),
                                                      (1, "1", 64, None, None)),
                      # and PVE's ivshmem file, removed at stop
                      ivshmem_size_mb=1, ivshmem_name=f"binome-test-{os.getpid()}")
    shm = Path(f"/dev/shm/pve-shm-binome-test-{os.getpid()}")
    paths = GuestPaths(tmp_path / "run", 100)
    try:
        await rt.start(spec)
        tpm_pid = swtpm_pid(paths)
        assert tpm_pid is not None
        tpms = await rt.command(100, "query-tpm")
        assert [(t["model"], t["options"]["type"]) for t in tpms] == [("tpm-tis", "emulator")]
        peripherals = {p["name"] for p in await rt.command(
            100, "qom-list", {"path": "/machine/peripheral"})}
        assert {"rng0", "audiodev0-hda", "audiodev0-codec0", "watchdog0"} <= peripherals
        memdevs = {m["id"]: m for m in await rt.command(100, "query-memdev")}
        assert (memdevs["ram-node0"]["host-nodes"], memdevs["ram-node0"]["policy"]) == (
            [0], "bind")
        assert memdevs["ram-node1"]["size"] == 64 << 20
        assert memdevs["ivshmem"]["share"] and shm.stat().st_size == 1 << 20
        # OVMF writes its variables (boot entries, ...) into the efidisk, not a copy
        template = Path(TEMPLATE).read_bytes()
        deadline = time.monotonic() + 60
        while efivars.read_bytes() == template:
            assert time.monotonic() < deadline, "OVMF never wrote the efidisk"
            await asyncio.sleep(0.5)
        assert not paths.efivars.exists()
        await rt.stop(100)
        deadline = time.monotonic() + 10
        while is_alive(tpm_pid):
            assert time.monotonic() < deadline, "swtpm outlived the guest"
            await asyncio.sleep(0.1)
        assert not paths.tpm_socket.exists()
        assert not shm.exists()
        # swtpm_setup manufactured a TPM 2.0 in the state volume
        assert tpm_state.read_bytes().strip(b"\0")
    finally:
        if rt.is_running(100):
            await rt.stop(100)
        await stop_swtpm(paths)
        shm.unlink(missing_ok=True)
        await rt.close()
