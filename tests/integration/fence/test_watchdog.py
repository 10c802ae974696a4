"""The self-fence supervisor as a real detached process, against real dummy guests.

A "guest" here is a ``sleep`` process whose pid and start time are written to
``<run_dir>/<vmid>.json`` in the guest runtime's format, which is all the supervisor
reads. Checked: it fires after the deadline and not before (its own record and the
test's observation), the daemon's death (SIGKILL of its whole process group) does
not disarm it, disarm and re-arm work, a reused pid is never killed, SIGTERM is
refused while armed, a fire stays in force until a real renewal, the hardware
watchdog protocol (on a stand-in file), and one supervisor per state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.fence.watchdog import (
    EXIT_ALREADY_RUNNING,
    MODULE,
    HardwareWatchdog,
    Watchdog,
    WatchdogStatus,
)
from binome.guest.process import proc_stat
from tests.integration.fence.helpers import kill_quietly, pid_alive, wait_until

INTERVAL = 0.1


@dataclass
class Dummy:
    vmid: int
    popen: subprocess.Popen[bytes]
    start_ticks: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        self.popen.poll()  # reap it once killed (we are its parent)
        return pid_alive(self.pid)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "qemu"
    d.mkdir()
    return d


@pytest.fixture
def guests(run_dir: Path) -> Iterator[Callable[..., Dummy]]:
    """Factory of dummy guests; every one is killed and reaped at the end."""
    made: list[Dummy] = []

    def make(vmid: int, *, ticks_offset: int = 0, record_ticks: bool = True) -> Dummy:
        popen = subprocess.Popen(["sleep", "1000"])
        st = proc_stat(popen.pid)
        assert st is not None
        dummy = Dummy(vmid, popen, st.start_ticks)
        made.append(dummy)
        # The fields binome.guest.runtime writes (spec reduced to what matters here).
        record = {"vmid": vmid, "spec": {"vmid": vmid}, "argv": ["sleep", "1000"], "taps": [],
                  "pid": popen.pid,
                  "start_ticks": st.start_ticks + ticks_offset if record_ticks else None,
                  "wrapper_pid": None, "requested": None, "started_at": time.time()}
        (run_dir / f"{vmid}.json").write_text(json.dumps(record))
        return dummy

    try:
        yield make
    finally:
        for d in made:
            kill_quietly(d.pid)
            d.popen.wait()


@pytest.fixture
async def watchdogs(tmp_path: Path) -> AsyncIterator[Callable[..., Watchdog]]:
    """Factory of Watchdog clients; their supervisors are stopped (or killed) at the end."""
    made: list[Watchdog] = []

    def make(name: str = "wd", **kwargs) -> Watchdog:
        kwargs.setdefault("device", "none")
        w = Watchdog(tmp_path / f"{name}.state", tmp_path / f"{name}.pid", **kwargs)
        made.append(w)
        return w

    try:
        yield make
    finally:
        for w in made:
            pid = w.running_pid()
            try:
                await w.stop(timeout=3)
            except Exception:
                kill_quietly(pid)
            if pid is not None:
                await wait_until(lambda p=pid: not pid_alive(p), "supervisor gone", timeout=5)


async def watch_death(dummy: Dummy, timeout: float) -> tuple[float, float]:
    """Poll until ``dummy`` dies: (last time it was seen alive, first time seen dead)."""
    limit = time.monotonic() + timeout
    last_alive = time.monotonic()
    while True:
        before = time.monotonic()
        if not dummy.alive():
            return last_alive, time.monotonic()
        last_alive = before  # it was alive at some instant after `before`
        if before > limit:
            raise AssertionError(f"VM {dummy.vmid} (pid {dummy.pid}) not killed in {timeout}s")
        await asyncio.sleep(0.002)


async def fired(w: Watchdog, kills: int = 1) -> WatchdogStatus:
    """The status once the supervisor has recorded the fire (it writes the report after
    confirming the deaths, so the test may see a guest die a few ms earlier)."""
    await wait_until(lambda: len(w.read_status().killed) >= kills, "fire recorded", timeout=5)
    return w.read_status()


async def stays_alive_until(dummies: list[Dummy], until: float) -> None:
    while time.monotonic() < until:
        for d in dummies:
            assert d.alive(), f"VM {d.vmid} killed early ({until - time.monotonic():.3f}s left)"
        await asyncio.sleep(0.005)


async def test_fires_after_the_deadline_and_not_before(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    g100, g101 = guests(100), guests(101)
    other = guests(200)  # a guest that is not HA: not listed, never touched
    await w.ensure_running()
    deadline = time.monotonic() + 1.0
    await w.arm(deadline, [100, 101], run_dir)
    status = await w.status()
    assert status.armed and not status.fired and status.deadline == deadline
    assert 0 < status.remaining <= 1.0
    last_alive, seen_dead = await watch_death(g100, timeout=5)
    await wait_until(lambda: not g101.alive(), "VM 101 killed", timeout=2)
    assert last_alive >= deadline - 0.02, "killed before its deadline"
    status = await fired(w, kills=2)
    assert status.fired and status.armed
    assert status.fired_at >= deadline and status.late >= 0
    assert {(k["vmid"], k["pid"]) for k in status.killed} == {(100, g100.pid), (101, g101.pid)}
    assert all(k["dead"] for k in status.killed)
    assert other.alive()
    assert g100.popen.wait(timeout=5) == -signal.SIGKILL   # reaped: it may be a zombie still
    print(f"\nwatchdog: fired {status.late * 1000:.1f} ms after the deadline "
          f"(supervisor's clock); death seen by the test {(seen_dead - deadline) * 1000:.1f} ms "
          "after it")
    log_text = w.log_file.read_text()
    assert "SELF-FENCE" in log_text and f"VM 100 (pid {g100.pid})" in log_text


CLIENT = textwrap.dedent("""
    import asyncio, sys, time
    from binome.fence.watchdog import Watchdog

    async def main():
        state, pidfile, run_dir, delay = sys.argv[1:5]
        w = Watchdog(state, pidfile, device="none")
        await w.ensure_running()
        await w.arm(time.monotonic() + float(delay), [100], run_dir)
        print("armed", flush=True)
        await asyncio.Event().wait()  # a daemon: lives until killed

    asyncio.run(main())
""")


async def test_killing_the_daemon_does_not_disarm(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    dummy = guests(100)
    # The daemon stand-in: its own process (group) that starts and arms the supervisor.
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(w.state_file), str(w.pidfile), str(run_dir), "2.0",
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        line = await asyncio.wait_for(client.stdout.readline(), 15)
        assert line == b"armed\n"
        status = await w.status()
        assert status.running and status.armed
        deadline = status.deadline
        sup = status.pid
        assert os.getsid(sup) == sup != os.getsid(client.pid)  # a session of its own
        os.killpg(client.pid, signal.SIGKILL)  # the daemon and its whole process group
        await client.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(client.pid, signal.SIGKILL)
        await client.wait()
    assert w.running_pid() == sup
    assert (await w.status()).armed
    await stays_alive_until([dummy], deadline - 0.02)
    last_alive, _ = await watch_death(dummy, timeout=5)
    assert last_alive >= deadline - 0.02
    assert (await fired(w)).fired


async def test_disarm_before_the_deadline_kills_nothing(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    dummy = guests(100)
    deadline = time.monotonic() + 0.6
    await w.arm(deadline, [100], run_dir)
    await w.disarm()
    status = await w.status()
    assert status.running and not status.armed and not status.fired
    await stays_alive_until([dummy], deadline + 5 * INTERVAL)
    status = await w.status()
    assert not status.fired and status.killed == [] and status.last_fire is None


async def test_rearm_moves_the_deadline(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    dummy = guests(100)
    first = time.monotonic() + 0.8
    await w.arm(first, [100], run_dir)
    await stays_alive_until([dummy], first - 0.4)
    second = time.monotonic() + 1.0  # a renewal: the new deadline is later
    await w.arm(second, [100], run_dir)
    await stays_alive_until([dummy], second - 0.02)  # well past the first deadline
    last_alive, _ = await watch_death(dummy, timeout=5)
    assert last_alive >= second - 0.02
    status = await fired(w)
    assert status.fired and status.fired_at >= second


async def test_reused_pid_is_never_killed(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    real = guests(100)
    reused = guests(101, ticks_offset=1)  # its pid now belongs to another process
    unknown = guests(102, record_ticks=False)  # no start time and not a QEMU
    deadline = time.monotonic() + 0.5
    await w.arm(deadline, [100, 101, 102, 103], run_dir)  # 103 has no runtime record
    await watch_death(real, timeout=5)
    status = await fired(w)
    assert [k["vmid"] for k in status.killed] == [100]
    skipped = {s["vmid"]: s for s in status.skipped}
    assert skipped[101]["result"] == "not killed" and "pid reused" in skipped[101]["detail"]
    assert skipped[102]["result"] == "not killed"
    assert skipped[103]["result"] == "not running"
    # Still in force (armed, expired) for a few rounds: the impostors are never touched.
    await stays_alive_until([reused, unknown], time.monotonic() + 5 * INTERVAL)


async def test_sigterm_is_refused_while_armed(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    dummy = guests(100)
    deadline = time.monotonic() + 1.0
    await w.arm(deadline, [100], run_dir)
    pid = w.running_pid()
    os.kill(pid, signal.SIGTERM)
    await wait_until(lambda: "refusing to stop" in w.log_file.read_text(), "SIGTERM refused")
    assert w.running_pid() == pid
    await watch_death(dummy, timeout=5)
    await w.disarm()
    os.kill(pid, signal.SIGTERM)  # disarmed: now it stops
    await wait_until(lambda: w.running_pid() is None, "supervisor exits", timeout=5)


async def test_a_fire_stays_in_force_until_a_real_renewal(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    first = guests(100)
    await w.arm(time.monotonic() + 0.3, [100], run_dir)
    await watch_death(first, timeout=5)
    # A confused daemon restarts the guest without having renewed: killed again.
    second = guests(100)
    await watch_death(second, timeout=5)
    status = await fired(w, kills=2)
    assert status.fired and [k["pid"] for k in status.killed] == [first.pid, second.pid]
    # A renewal (deadline in the future) releases the latch: the guest may run again.
    await w.arm(time.monotonic() + 30, [100], run_dir)
    await wait_until(lambda: not w.read_status().fired, "fire latch released", timeout=3)
    third = guests(100)
    await stays_alive_until([third], time.monotonic() + 5 * INTERVAL)
    status = await w.status()
    assert status.armed and not status.fired
    assert status.last_fire is not None and status.last_fire["killed"][0]["pid"] == first.pid


async def test_a_fire_is_new_once_even_while_its_latch_outlives_the_next_arm(
        watchdogs, guests, run_dir) -> None:
    """The daemon's "the watchdog fired" (`new_fire`, issue 16). The LRM handles a fire,
    arms again later (a recovery onto this node) and asks again before the supervisor's
    next tick has read the new deadline: the report still shows the old fire, which is
    not a new one. A guest killed again under the latch, and a later fire, are new."""
    w = watchdogs()
    first = guests(100)
    await w.arm(time.monotonic() + 0.3, [100], run_dir)
    await watch_death(first, timeout=5)
    await fired(w)
    assert w.new_fire() and not w.new_fire()
    second = guests(100)   # started before any renewal: killed again, a new kill
    await watch_death(second, timeout=5)
    await fired(w, kills=2)
    assert w.new_fire() and not w.new_fire()
    pid = w.running_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)   # not scheduled yet (a loaded machine)
    try:
        w.arm_sync(time.monotonic() + 30, [100], run_dir)
        assert w.read_status().fired   # the old latch, as the LRM used to read it
        assert not w.new_fire()
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: not w.read_status().fired, "fire latch released", timeout=3)
    third = guests(100)
    await stays_alive_until([third], time.monotonic() + 3 * INTERVAL)
    assert not w.new_fire()
    w.arm_sync(time.monotonic() + 0.3, [100], run_dir)   # no renewal: a new fire
    await watch_death(third, timeout=5)
    await wait_until(lambda: w.read_status().fired, "new fire recorded", timeout=5)
    assert w.new_fire() and not w.new_fire()


async def test_a_new_life_releases_the_fire_it_inherited(watchdogs, guests, run_dir) -> None:
    """The lab's failback after a power cycle (issue 16): the node's daemon died armed for
    VM 100; its next life's supervisor found that armed state expired and fired (killing
    nothing: the guest had died with the node), then stayed latched, killing VM 100
    whenever it ran. The next live migration of VM 100 onto the node, resumed before the
    node's LRM had armed, was killed and restarted: a new instance. The new life releases
    the inherited fire before it ever arms; `protects` tells an armed, live deadline
    covering a guest from a latched or expired one."""
    old_life = watchdogs()
    old_life.arm_sync(time.monotonic() - 5, [100], run_dir)   # expired before this life
    w = watchdogs()        # the new daemon's handle on the same files: no fire seen yet
    await w.ensure_running()
    await wait_until(lambda: w.read_status().fired, "fire on the stale state", timeout=3)
    assert not w.read_status().protects(100)
    held = guests(100)     # e.g. migrated in before the LRM armed: the latch kills it
    await watch_death(held, timeout=5)
    await fired(w)
    released = w.release_inherited_fire()
    assert released is not None and [k["pid"] for k in released.killed] == [held.pid]
    assert w.release_inherited_fire() is None   # released once, before the tick clears it
    await wait_until(lambda: not w.read_status().fired and not w.read_status().armed,
                     "latch released", timeout=3)
    assert w.release_inherited_fire() is None and not w.new_fire()
    migrated = guests(100)
    await stays_alive_until([migrated], time.monotonic() + 5 * INTERVAL)
    await w.arm(time.monotonic() + 30, [100], run_dir)
    await wait_until(lambda: w.read_status().protects(100), "arm acknowledged", timeout=3)
    assert not w.read_status().protects(101)


async def test_state_from_another_boot_is_not_an_arm(watchdogs, guests, run_dir) -> None:
    w = watchdogs()
    dummy = guests(100)
    await w.ensure_running()
    w.state_file.write_text(json.dumps({
        "armed": True, "deadline": time.monotonic() - 10, "vmids": [100],
        "qemu_run_dir": str(run_dir), "boot_id": "00000000-not-this-boot"}))
    await stays_alive_until([dummy], time.monotonic() + 5 * INTERVAL)
    assert not (await w.status()).armed


async def test_hardware_watchdog_protocol(watchdogs, guests, run_dir, tmp_path) -> None:
    # No /dev/watchdog here: a plain file stands in and records every write.
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    w = watchdogs(device=str(device))
    dummy = guests(100)
    await w.arm(time.monotonic() + 0.6, [100], run_dir)
    assert (await w.status()).hardware == str(device)
    await wait_until(lambda: device.read_bytes().count(b"\0") >= 2, "petting")
    await watch_death(dummy, timeout=5)
    await fired(w)
    pets_at_fire = device.read_bytes()
    # Expired: no more petting (a real watchdog would now reset the machine).
    await stays_alive_until([], time.monotonic() + 5 * INTERVAL)
    assert device.read_bytes() == pets_at_fire
    assert set(pets_at_fire) == {0}
    await w.disarm()
    assert device.read_bytes() == pets_at_fire + b"V"  # the magic close
    assert (await w.status()).hardware is None


async def test_one_supervisor_per_state_file(watchdogs, tmp_path) -> None:
    w = watchdogs()
    pid = await w.ensure_running()
    # A restarted daemon (new client object) finds the running one through the pidfile.
    again = Watchdog(w.state_file, w.pidfile, device="none")
    assert again.running_pid() == pid
    assert await again.ensure_running() == pid
    # A second supervisor on the same files gives up (the first holds the pidfile lock).
    second = await asyncio.create_subprocess_exec(*w.argv(), stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == EXIT_ALREADY_RUNNING, err
    assert w.running_pid() == pid
    # The pidfile alone does not make a pid ours: the cmdline must match too.
    w.pidfile.write_text(f"{os.getpid()}\n")
    assert w.running_pid() is None
    w.pidfile.write_text(f"{pid}\n")
    assert MODULE in " ".join(w.argv())


def test_hardware_petting_stops_one_device_timeout_before_the_deadline(tmp_path) -> None:
    # With a known device timeout, the last pet leaves the hardware to reset the
    # machine by the deadline, even if the supervisor died right after petting.
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    hw = HardwareWatchdog(str(device))
    assert hw.open()
    try:
        assert hw.effective_timeout is None  # a plain file answers no ioctl
        now = time.monotonic()
        hw.pet_until(now + 0.5, now)
        assert device.read_bytes() == b"\0"  # unknown timeout: petted up to the deadline
        hw.effective_timeout = 1
        hw.pet_until(now + 0.5, now)  # a reset 1 s from now would come after the deadline
        assert device.read_bytes() == b"\0"
        hw.pet_until(now + 2.0, now)
        assert device.read_bytes() == b"\0\0"
    finally:
        hw.close_clean()
    assert device.read_bytes() == b"\0\0V"
