"""Helpers shared by the HA integration tests: guest processes by pid, the tiny guest
image in each node's `local` storage, the proxmoxer client, and a cleanup that stops
what outlives a daemon by design (QEMU, watchdog supervisors)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import _nets, _require_tools
from tests.integration.harness import PASSWORD, Cluster, Node, make_cluster, wait_for
from tests.integration.harness import _alive as _process_alive


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    return pid is not None and _process_alive(pid)


def qemu_pid(node: Node, vmid: int) -> int | None:
    pid = _pid(node.state_dir / "run" / "qemu" / f"{vmid}.pid")
    return pid if _alive(pid) else None


def kill_pid(pid: int | None) -> None:
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def install_guest_image(c: Cluster, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
    """The tiny guest's kernel and initrd as `local:iso/vmlinuz` / `local:iso/initrd.gz`."""
    from binome.lab.image import build_image

    image = build_image()
    for name in nodes:
        iso = c[name].state_dir / "storage" / "local" / "template" / "iso"
        iso.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.kernel, iso / "vmlinuz")
        shutil.copyfile(image.initrd, iso / "initrd.gz")


def watchdog_supervisors(root: Path) -> list[int]:
    """The watchdog supervisors of a cluster's nodes, found by their state path
    (not by pidfile: a concurrent pytest session may have pruned our base temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"binome.fence.watchdog" in cmd and any(str(root).encode() in a for a in cmd):
            pids.append(int(proc.name))
    return pids


def stop_cluster_and_guests(c: Cluster) -> None:
    """Guests first, then the daemons, then the supervisors and the volume engines (they
    outlive a daemon stop)."""
    from tests.integration.replica.test_daemon_volumes import kill_engine

    for node in c.nodes.values():
        for pidfile in (node.state_dir / "run" / "qemu").glob("*.pid"):
            kill_pid(qemu_pid(node, int(pidfile.stem)))
    try:
        c.stop()
    finally:
        for pid in watchdog_supervisors(c.root):
            kill_pid(pid)
        for node in c.nodes.values():
            kill_engine(node)


def api(node: Node):
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(node.address, user="admin@pve", password=PASSWORD, verify_ssl=False,
                      timeout=60)


def service(node: Node, sid: str) -> dict:
    return next((e for e in node.json("ha", "status") if e.get("sid") == sid), {})


def takes_services(view: Node, name: str) -> bool:
    """The CRM (as `view` reads it) may place services on `name` now: its node is online
    and its LRM in `active` mode (an LRM without services stays idle, as ha-manager's, so
    its state is not asked). A node that is merely quorate again may not be yet: a
    migration asked before that is refused (logged, not queued), as ha-manager does."""
    return any(e.get("node") == name
               and e.get("mode") in (None, "active") and e.get("node_state") == "online"
               for e in view.json("ha", "status") if e.get("type") == "lrm")


def guest_cluster(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Cluster]:
    """A loopback 2-node + witness cluster with the tiny guest image on n1 and n2, for
    a module fixture (`yield from`); guests, daemons and supervisors stopped after."""
    _require_tools()
    c = make_cluster(tmp_path_factory.mktemp(name), next(_nets))
    try:
        install_guest_image(c)
        yield c
    finally:
        stop_cluster_and_guests(c)


def sigterm_and_wait(node: Node, timeout: float) -> float:
    """Stop binomed the way systemd does (SIGTERM); wait for it to exit; the seconds."""
    assert node.proc is not None
    t0 = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: node.proc.poll() is not None, timeout, f"{node.name}'s binomed to exit")
    took = time.monotonic() - t0
    node.kill()   # reaps it and waits for its etcd
    return took


def remove_ha_guest(n1: Node, n2: Node, sid: str, vmid: int, fence: bool = False) -> None:
    """After a test: the HA resource (and n1's fence device) removed through n2, the
    guest's QEMU killed wherever it runs, n1's daemon running again."""
    n2.cli("ha", "remove", sid, check=False)
    if fence:
        n2.cli("fence", "remove", "n1", check=False)
    kill_pid(qemu_pid(n1, vmid))
    kill_pid(qemu_pid(n2, vmid))
    if not n1.running:
        n1.start()
