"""Fixtures for the guest runtime lab tests: the node (lab + bridges) and a shared guest."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binome.lab.image import ImageBuildError, build_image
from tests.lab.guest.harness import (
    AgentError,
    Node,
    destroy_node,
    guest_ip,
    make_node,
    wait_http,
)

REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "qemu-nbd", "ip", "bridge")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reasons = []
    if os.geteuid() != 0:
        reasons.append("lab tests need root (network namespaces, taps)")
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        reasons.append(f"missing tools: {', '.join(missing)}")
    if reasons:
        for item in items:
            if Path(str(item.fspath)).parent == here:
                item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    try:
        image = build_image()
    except ImageBuildError as exc:
        pytest.skip(f"guest image unavailable: {exc}")
    work = tmp_path_factory.mktemp("guest")
    n = make_node(work, image)
    try:
        yield n
    finally:
        try:
            destroy_node(n)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class SharedGuest:
    vmid: int
    ip: str
    pid: int
    disk: Path
    boot_seconds: float


@pytest.fixture(scope="module")
def shared(node: Node) -> Iterator[SharedGuest]:
    """VM 100, booted once for the tests that do not end it: NIC on vmbr0, virtio0 disk."""
    vmid = 100
    disk = node.work / "vm100-disk0.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "16M"], check=True)
    pid = node.start(vmid, disks=[{"bus": "virtio", "index": 0, "source": str(disk),
                                   "format": "raw", "cache": "none"}], boot=["virtio0", "net0"])
    start_seconds = node.agent.last_elapsed
    boot = wait_http(guest_ip(vmid), f"vm{vmid}")
    print(f"\nVM {vmid}: start() {start_seconds:.2f}s, start to HTTP {boot:.2f}s")
    try:
        yield SharedGuest(vmid, guest_ip(vmid), pid, disk, boot)
    finally:
        if node.agent.call("is_running", vmid=vmid):
            try:
                node.agent.call("stop", vmid=vmid)
            except AgentError:
                pass  # destroy_node kills it by pid
