"""The floor of a live migration's client gap on this machine: QEMU alone, no binome.

Issue 16 asks where a migration's client-visible gap goes. `bench/migration.py
--floor N` calls this after its binome runs: the HA guest is stopped, and the very
QEMU command line binome ran it with (read from /proc/PID/cmdline of the running
guest, so the machine type, CPU, NIC model, kernel and its IP address are the same)
is started again by hand on the same lab nodes, without its disk (the tiny guest
answers pings from its initrd) and without binome: the taps are made by hand on
the nodes' VM bridge, the migration is driven over QMP only, with binome's own
capabilities and parameters (auto-converge, events, `downtime-limit`,
`max-bandwidth`, `announce-initial` 0), and the target is resumed (`cont`) the
moment its MIGRATION event says completed. What is left of the gap is QEMU's
stop-and-copy, a new TCG process starting cold and the ping period: the part
binome cannot shorten. Its difference with binome's gap is what binome's
switch-over (the config moving through etcd, the quorum read, the API call that
resumes the target) costs.

The QEMU processes are ours: stopped by pid, their taps and run directory
removed, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from qemu.qmp import QMPClient

VM_BRIDGE = "vmbr0"
MIGRATE_MAX_BANDWIDTH = 1 << 30


def floor_argv(argv: list[str], run_dir: str, floor_dir: str) -> list[str]:
    """binome's argv of a running guest, made to run apart: every path under the guest's
    run directory moved under `floor_dir`, its disks left out (drives, blockdevs and the
    devices that use them), no `-incoming`/`-S`/`-daemonize`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        opt = argv[i]
        val = argv[i + 1] if i + 1 < len(argv) else None
        if opt in ("-S", "-daemonize"):
            i += 1
            continue
        if opt == "-incoming":
            i += 2
            continue
        if val is not None and opt in ("-drive", "-blockdev"):
            i += 2
            continue
        if val is not None and opt == "-device" and "drive=" in val:
            i += 2
            continue
        out.append(opt.replace(run_dir, floor_dir))
        i += 1
    return out


def tap_of(argv: list[str]) -> str:
    for i, opt in enumerate(argv[:-1]):
        if opt == "-netdev" and argv[i + 1].startswith("tap,"):
            for part in argv[i + 1].split(","):
                if part.startswith("ifname="):
                    return part.split("=", 1)[1]
    raise RuntimeError("the guest's argv has no tap netdev")


def option_value(argv: list[str], opt: str) -> str:
    return argv[argv.index(opt) + 1]


class FloorNode:
    """One lab node's hand-run QEMU: its tap on the VM bridge, its process, its QMP."""

    def __init__(self, name: str, netns: str, address: str, argv: list[str],
                 run_dir: str, tap: str) -> None:
        self.name, self.netns, self.address = name, netns, address
        self.dir = Path(tempfile.mkdtemp(prefix=f"binome-floor-{name}-"))
        self.argv = floor_argv(argv, run_dir, str(self.dir))
        self.qmp_path = option_value(self.argv, "-qmp").split(",")[0].removeprefix("unix:")
        self.tap = tap
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None

    def _ns(self, *cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.netns, *cmd], check=True,
                       capture_output=True)

    async def start(self, incoming: bool) -> None:
        # the previous QEMU's socket is left behind: wait for the new one's
        Path(self.qmp_path).unlink(missing_ok=True)
        self._ns("ip", "tuntap", "add", "dev", self.tap, "mode", "tap")
        self._ns("ip", "link", "set", "dev", self.tap, "master", VM_BRIDGE)
        self._ns("ip", "link", "set", "dev", self.tap, "up")
        argv = [*self.argv, *(["-S", "-incoming", "defer"] if incoming else [])]
        errors = self.dir / "qemu.stderr"
        with errors.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.netns, *argv, stdout=asyncio.subprocess.DEVNULL,
                stderr=err, start_new_session=True)
        deadline = time.monotonic() + 20
        while not Path(self.qmp_path).exists():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floor QEMU on {self.name} did not start: "
                                   f"{errors.read_text(errors='replace')}")
            await asyncio.sleep(0.02)
        self.qmp = QMPClient(f"floor-{self.name}")
        await self.qmp.connect(self.qmp_path)

    async def cmd(self, name: str, args: dict[str, Any] | None = None) -> Any:
        assert self.qmp is not None
        return await self.qmp.execute(name, args or {})

    async def stop(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await self.qmp.disconnect()
            self.qmp = None
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.kill()      # our own process, by its pid
            await asyncio.wait_for(self.proc.wait(), 10)
            self.proc = None
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ns("ip", "link", "del", "dev", self.tap)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


async def migrate_once(source: FloorNode, target: FloorNode, downtime_ms: int) -> int:
    """One live migration source -> target, the target resumed on its completion event;
    QEMU's reported downtime (ms). The source is stopped after."""
    await target.start(incoming=True)
    await target.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True}]})
    await target.cmd("migrate-set-parameters", {"announce-initial": 0})
    await target.cmd("migrate-incoming", {"uri": f"tcp:{target.address}:0"})
    info: dict[str, Any] = await target.cmd("query-migrate")
    port = next(a["port"] for a in info["socket-address"] if a.get("type") == "inet")
    assert target.qmp is not None
    with target.qmp.listener("MIGRATION") as events:
        await source.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "auto-converge", "state": True},
            {"capability": "events", "state": True}]})
        await source.cmd("migrate-set-parameters", {
            "downtime-limit": downtime_ms, "max-bandwidth": MIGRATE_MAX_BANDWIDTH})
        await source.cmd("migrate", {"uri": f"tcp:{target.address}:{port}"})
        async def completed() -> None:
            async for event in events:
                data = cast(dict[str, Any], event["data"])
                status = data.get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"floor migration {status}")
        await asyncio.wait_for(completed(), 120)
    await target.cmd("cont")
    downtime = 0
    for _ in range(100):
        done = await source.cmd("query-migrate")
        if done.get("status") == "completed":
            downtime = int(done.get("downtime", 0))
            break
        await asyncio.sleep(0.02)
    await source.stop()
    return downtime


async def run_floor(nodes: list[FloorNode], runs: int, downtime_ms: int,
                    answering: Callable[[float], bool],
                    gap: Callable[[float, float], tuple[float, int]],
                    report: Callable[[str], None]) -> list[dict[str, Any]]:
    """Boot the guest on nodes[0], then `runs` migrations back and forth; per run the
    client gap (`gap(t0, t1)`: longest silence, pings lost) and QEMU's downtime."""
    out: list[dict[str, Any]] = []
    try:
        await nodes[0].start(incoming=False)
        await nodes[0].cmd("cont")
        deadline = time.monotonic() + 180
        while not answering(time.time() - 0.2):
            if time.monotonic() > deadline:
                raise RuntimeError("the hand-run guest never answered pings")
            await asyncio.sleep(0.1)
        here = 0
        for i in range(1, runs + 1):
            source, target = nodes[here], nodes[1 - here]
            await asyncio.sleep(2)
            t0 = time.time()
            qemu_ms = await migrate_once(source, target, downtime_ms)
            deadline = time.monotonic() + 30
            while not answering(time.time() - 0.2):
                if time.monotonic() > deadline:
                    raise RuntimeError("the guest did not answer after its floor migration")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            silence, lost = gap(t0, time.time())
            run = {"from": source.name, "to": target.name, "gap_ms": round(silence * 1000),
                   "lost_pings": lost, "qemu_downtime_ms": qemu_ms}
            out.append(run)
            report(f"  QEMU alone {i}: {source.name}->{target.name}: longest silence "
                   f"{run['gap_ms']} ms ({lost} pings unanswered), QEMU downtime {qemu_ms} ms")
            here = 1 - here
    finally:
        for node in nodes:
            await node.stop()
            node.cleanup()
    return out
