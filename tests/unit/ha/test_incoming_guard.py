"""An HA guest migrated live onto a node runs there only under that node's armed watchdog
(`HaAgent.protect_incoming`, the guest service's incoming guard), and an HA start waits
for the supervisor to take the arm over (`HaAgent.watchdog_protects`).

The supervisor's report and the LRM's cached HA config are stand-ins here: what is
checked is the agent's decision and its bound. The real path: the lab's failback after a
power cycle (tests/lab/ha/test_rejoin_witness.py, scenario 3), the supervisor's own side
in tests/integration/fence/test_watchdog.py.
"""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import pytest

from binome.fence.watchdog import WatchdogStatus
from binome.guest.errors import GuestFailure
from binome.ha.agent import agent as agent_mod
from binome.ha.agent.agent import HaAgent
from binome.ha.env import EnvUnavailable
from binome.ha.model import RequestedState, ResourceConfig


class Supervisor:
    """The report as `Watchdog.read_status` gives it."""

    def __init__(self) -> None:
        self.armed_for: list[int] = []
        self.fired = False

    def read_status(self) -> WatchdogStatus:
        return WatchdogStatus(running=True, pid=1, armed=bool(self.armed_for),
                              deadline=time.monotonic() + 3, remaining=3.0,
                              fired=self.fired, vmids=list(self.armed_for))


class Env:
    def __init__(self, resources: dict[str, ResourceConfig] | None) -> None:
        self.resources = resources     # None: no quorum at the last refresh

    def read_resources(self) -> dict[str, ResourceConfig]:
        if self.resources is None:
            raise EnvUnavailable("n1: no quorum")
        return self.resources


def _agent(resources: dict[str, ResourceConfig] | None) -> Any:
    me = types.SimpleNamespace(node="n1", armed_sids=set(), watchdog=Supervisor(),
                               lrm_env=Env(resources), lrm=types.SimpleNamespace(
                                   state="wait_for_agent_lock"), wakes=0)

    def wake() -> None:
        me.wakes += 1
    me.wake = wake
    me.watchdog_protects = lambda vmid, timeout: HaAgent.watchdog_protects(me, vmid, timeout)
    return me


def _guard(me: Any, vmid: int = 100) -> Any:
    return HaAgent.protect_incoming(me, vmid)


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(agent_mod, "INCOMING_ARM_WAIT", 0.3)
    return 0.3


def test_a_guest_outside_ha_is_received_at_once() -> None:
    me = _agent({"vm:101": ResourceConfig("vm:101"),
                 "vm:100": ResourceConfig("vm:100", state=RequestedState.IGNORED)})
    for vmid in (100, 102):
        began = time.monotonic()
        asyncio.run(_guard(me, vmid))
        assert time.monotonic() - began < 0.05 and me.wakes == 0


def test_an_ha_guest_waits_for_the_arm_and_its_acknowledgement() -> None:
    me = _agent({"vm:100": ResourceConfig("vm:100")})

    async def scenario() -> float:
        guard = asyncio.ensure_future(_guard(me))
        await asyncio.sleep(0.1)
        assert not guard.done() and me.wakes > 0     # its round woken, not awaited idly
        me.armed_sids = {"vm:100"}          # the LRM armed: written, not yet read
        await asyncio.sleep(0.1)
        assert not guard.done()
        me.watchdog.fired = True            # read, but still latched on an older fire
        me.watchdog.armed_for = [100]
        await asyncio.sleep(0.1)
        assert not guard.done()
        me.watchdog.fired = False           # the supervisor took the new deadline
        began = time.monotonic()
        await guard
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 0.1


def test_an_ha_guest_is_refused_when_no_arm_comes(short_wait: float) -> None:
    me = _agent({"vm:100": ResourceConfig("vm:100")})
    me.armed_sids = {"vm:101"}
    me.watchdog.armed_for = [101]
    began = time.monotonic()
    with pytest.raises(GuestFailure, match=r"vm:100: the watchdog of n1 does not protect "
                                           r"it yet \(LRM wait_for_agent_lock\)"):
        asyncio.run(_guard(me))
    assert short_wait <= time.monotonic() - began < short_wait + 0.2


def test_without_the_ha_config_nothing_is_received(short_wait: float) -> None:
    me = _agent(None)
    me.armed_sids = {"vm:100"}
    me.watchdog.armed_for = [100]
    with pytest.raises(GuestFailure, match="HA state not read"):
        asyncio.run(_guard(me))


def test_an_ha_start_waits_for_the_supervisor_within_its_bound() -> None:
    me = _agent({})

    async def scenario() -> tuple[bool, bool]:
        refused = await HaAgent.watchdog_protects(me, 100, 0.1)
        asyncio.get_running_loop().call_later(0.05, lambda: me.watchdog.armed_for.append(100))
        return refused, await HaAgent.watchdog_protects(me, 100, 2.0)

    assert asyncio.run(scenario()) == (False, True)
