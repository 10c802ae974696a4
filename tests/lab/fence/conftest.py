"""Fixtures for the fencing lab: a node, its simulated BMC and a peer on a management LAN.

Topology (lab network ``mgmt``, 198.19.60.0/24; the root namespace is .254)::

    node  (198.19.60.1)  the machine: a dummy process tree; the BMC powers it off/on
    bmc   (198.19.60.2)  the node's BMC: ``python -m binome.lab.bmc`` in its own namespace
    peer  (198.19.60.3)  another cluster node, fencing from its own namespace

The BMC lives outside the node's namespace (a power-off kills everything inside it),
like a real BMC on its own management port. Everything is torn down by the lab
(processes in the namespaces included) even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.lab.bmc import BmcProcess, netns_pids, start_bmc
from binome.lab.topology import Lab, NetworkSpec

SUBNET = "198.19.60.0/24"
BMC_IP = "198.19.60.2"
BMC_PORT = 623
BMC_USER = "admin"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reasons = []
    if os.geteuid() != 0:
        reasons.append("lab tests need root (network namespaces)")
    if shutil.which("ip") is None:
        reasons.append("iproute2 (ip) is not installed")
    if reasons:
        for item in items:
            if Path(str(item.fspath)).parent == here:
                item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@dataclass
class FenceLab:
    lab: Lab
    work: Path
    password: str
    boots: Path  # one line per run of the power-on command

    @property
    def node_ns(self) -> str:
        return self.lab.host("node").netns

    def node_pids(self) -> list[int]:
        return netns_pids(self.node_ns)

    def power_on_argv(self) -> list[str]:
        # The node "boots": logs it, then runs its services (two sleeps) until powered off.
        return ["sh", "-c", f"echo up >> {self.boots}; sleep 1000 & sleep 1000 & wait"]

    def boot_count(self) -> int:
        return len(self.boots.read_text().splitlines()) if self.boots.exists() else 0

    def start_bmc(self, name: str = "bmc") -> BmcProcess:
        return start_bmc(netns=self.node_ns, address=BMC_IP, port=BMC_PORT, user=BMC_USER,
                         password=self.password, power_on_argv=self.power_on_argv(),
                         workdir=self.work, name=name,
                         bmc_netns=self.lab.host("bmc").netns)


@pytest.fixture(scope="module")
def fence_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FenceLab]:
    work = tmp_path_factory.mktemp("fence-lab")
    lab = Lab(["node", "bmc", "peer"], [NetworkSpec("mgmt", SUBNET)])
    with lab:
        yield FenceLab(lab, work, secrets.token_urlsafe(12), work / "boots")
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def node_on(fence_lab: FenceLab) -> FenceLab:
    """The node powered on (its process tree running), whatever the previous test left."""
    if not fence_lab.node_pids():
        fence_lab.lab.host("node").spawn(fence_lab.power_on_argv())
        deadline = time.monotonic() + 10
        while len(fence_lab.node_pids()) < 3:  # sh and its two sleeps, inside the namespace
            assert time.monotonic() < deadline, "node processes did not start"
            time.sleep(0.01)
    return fence_lab


@pytest.fixture
def bmc(node_on: FenceLab) -> Iterator[BmcProcess]:
    """The node's simulated BMC, killed (by pid) after the test."""
    proc = node_on.start_bmc()
    try:
        yield proc
    finally:
        proc.kill()
