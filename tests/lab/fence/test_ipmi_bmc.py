"""IPMI fencing against the simulated BMC over a real network (namespaces, UDP, RMCP+).

The fence client (``binome.fence.ipmi``) powers a lab node off through its BMC (every
process in the node's namespace dies, and "off" is confirmed), reads its status, powers
it on again (the power-on command runs again), and fails cleanly, with a reason, for a
wrong password, a BMC process that died, and incident 3 of docs/incidents.md: the node lost power
and its BMC with it (nothing answers at all). ``ipmitool``, when installed, checks that
the simulated BMC speaks real IPMI (interop beyond pyghmi talking to pyghmi).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import textwrap
import time

import pytest

from binome.fence.device import make_device
from binome.fence.ipmi import IpmiFence
from binome.lab.bmc import BmcProcess, NodePower
from tests.lab.fence.conftest import BMC_IP, BMC_PORT, BMC_USER, FenceLab


def ipmi(lab: FenceLab, *, password: str | None = None, timeout: float = 5.0) -> IpmiFence:
    return IpmiFence(BMC_IP, port=BMC_PORT, username=BMC_USER,
                     password=password if password is not None else lab.password,
                     timeout=timeout)


async def test_power_off_kills_the_node_and_is_confirmed(node_on: FenceLab, bmc) -> None:
    before = node_on.node_pids()
    assert len(before) >= 3  # sh + two sleeps
    fence = ipmi(node_on)
    status = await fence.status()
    assert (status.ok, status.state) == (True, "on"), status
    result = await fence.power_off()
    assert result.ok and result.state == "off", result
    assert result.detail.endswith("power off confirmed")
    # Confirmed off means really off: nothing runs in the node's namespace any more.
    assert node_on.node_pids() == []
    status = await fence.status()
    assert (status.ok, status.state) == (True, "off"), status
    again = await fence.power_off()
    assert again.ok and "already off" in again.detail, again
    print(f"\nIPMI power off + confirm: {result.duration * 1000:.0f} ms")


async def test_power_on_runs_the_power_on_command(node_on: FenceLab, bmc) -> None:
    fence = ipmi(node_on)
    assert (await fence.power_off()).ok
    boots = node_on.boot_count()
    result = await fence.power_on()
    # "on" counts the power-on command on its way into the namespace (`ip netns exec`
    # before its setns, BmcProcess's NodePower.pids): from here it is in there soon
    assert result.ok and result.state == "on", result
    for _ in range(500):  # the command's first act is to log the boot
        if node_on.node_pids() and node_on.boot_count() == boots + 1:
            break
        await asyncio.sleep(0.01)
    assert node_on.node_pids()
    assert node_on.boot_count() == boots + 1
    status = await fence.status()
    assert status.state == "on", status


async def test_fence_through_a_config_and_reboot(node_on: FenceLab, bmc: BmcProcess) -> None:
    device = make_device({"type": "ipmi", "ip": BMC_IP, "port": BMC_PORT,
                          "username": BMC_USER, "password_file": str(bmc.password_file),
                          "timeout": 5})
    assert "password" not in json.dumps(device.describe())
    fenced = await device.fence("node")
    assert fenced.ok and fenced.state == "off", fenced
    assert node_on.node_pids() == []
    boots = node_on.boot_count()
    old = set(node_on.node_pids())
    rebooted = await device.reboot()
    assert rebooted.ok and rebooted.state == "on", rebooted
    assert node_on.node_pids() and not old & set(node_on.node_pids())
    for _ in range(500):
        if node_on.boot_count() == boots + 1:
            break
        await asyncio.sleep(0.01)
    assert node_on.boot_count() == boots + 1


async def test_wrong_password_is_refused_quickly(node_on: FenceLab, bmc) -> None:
    before = set(node_on.node_pids())
    result = await ipmi(node_on, password="not-the-password").power_off()
    assert not result.ok and result.state is None, result
    assert "incorrect password" in result.detail
    assert result.duration < 2.0
    assert "not-the-password" not in result.detail
    assert set(node_on.node_pids()) == before  # nothing was powered off


async def test_power_off_timing(node_on: FenceLab, bmc) -> None:
    """Figures for the report (no assertion on speed beyond the timeout)."""
    fence = ipmi(node_on)
    offs = []
    for _ in range(5):
        on = await fence.power_on()
        assert on.ok, on
        off = await fence.power_off()
        assert off.ok, off
        offs.append(off.duration)
    print(f"\nIPMI power off + confirm over 5 runs: median {statistics.median(offs) * 1000:.0f} "
          f"ms, max {max(offs) * 1000:.0f} ms")


async def test_dead_bmc_process_fails_fast(node_on: FenceLab, bmc: BmcProcess) -> None:
    before = set(node_on.node_pids())
    bmc.kill()  # the BMC's host still answers ICMP: the port is closed
    result = await ipmi(node_on).power_off()
    assert not result.ok and result.state is None, result
    assert "port is closed" in result.detail
    assert result.duration < 1.0
    assert set(node_on.node_pids()) == before


async def test_node_and_bmc_lost_power_together(node_on: FenceLab, bmc: BmcProcess) -> None:
    """Incident 3 (docs/incidents.md): the node lost power, its BMC with it. Nothing answers."""
    lab = node_on.lab
    bmc.kill()
    lab.link_down("bmc", "mgmt")  # a powerless BMC does not even send ICMP
    try:
        NodePower(node_on.node_ns, ["true"]).off()  # the node lost power as well
        start = time.monotonic()
        result = await ipmi(node_on, timeout=2.0).fence("node")
        elapsed = time.monotonic() - start
        assert not result.ok and result.state is None, result
        assert "no answer from the BMC" in result.detail
        assert 1.9 <= elapsed < 3.5
        print(f"\ncase 3: fence failed after {elapsed:.2f}s: {result.detail}")
    finally:
        lab.link_up("bmc", "mgmt")


async def test_fencing_from_a_peer_namespace(node_on: FenceLab, bmc) -> None:
    """The CRM fences from another node's namespace (IPv6 off there, as in every lab host)."""
    code = textwrap.dedent(f"""
        import asyncio, json, sys
        from binome.fence.ipmi import IpmiFence
        password = sys.stdin.readline().rstrip("\\n")  # the secret never goes on argv
        fence = IpmiFence({BMC_IP!r}, port={BMC_PORT}, username={BMC_USER!r},
                          password=password, timeout=5)
        print(json.dumps(asyncio.run(fence.status()).to_dict()))
    """)
    peer = node_on.lab.host("peer")
    proc = await asyncio.create_subprocess_exec(
        *peer.exec_argv([sys.executable, "-c", code]), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(f"{node_on.password}\n".encode()), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["ok"] and result["state"] == "on", result


@pytest.mark.skipif(shutil.which("ipmitool") is None,
                    reason="ipmitool not installed (Debian package ipmitool)")
async def test_ipmitool_talks_to_the_simulated_bmc(node_on: FenceLab, bmc: BmcProcess) -> None:
    async def ipmitool(*args: str) -> tuple[int, str]:
        # -f: the password from a 0600 file, not on the command line.
        proc = await asyncio.create_subprocess_exec(
            "ipmitool", "-I", "lanplus", "-H", BMC_IP, "-p", str(BMC_PORT), "-U", BMC_USER,
            "-f", str(bmc.password_file), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode()

    rc, out = await ipmitool("power", "status")
    assert (rc, out.strip()) == (0, "Chassis Power is on"), out
    rc, out = await ipmitool("power", "off")
    assert rc == 0 and "Down/Off" in out, out
    rc, out = await ipmitool("power", "status")
    assert (rc, out.strip()) == (0, "Chassis Power is off"), out
    assert node_on.node_pids() == []
    rc, out = await ipmitool("power", "on")
    assert rc == 0 and "Up/On" in out, out
    # the power-on command runs in the BMC's background: the node's processes follow
    for _ in range(100):
        if node_on.node_pids():
            break
        await asyncio.sleep(0.1)
    assert node_on.node_pids()
    # Only cipher suite 3 is offered; asking for 17 is refused cleanly, not hung.
    rc, out = await ipmitool("-C", "17", "power", "status")
    assert rc != 0 and "no matching cipher suite" in out, out
