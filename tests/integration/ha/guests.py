"""Helpers shared by the HA integration tests: guest processes by pid, the tiny guest
image in each node's `local` storage, the proxmoxer client, and a cleanup that stops
what outlives a daemon by design (QEMU, watchdog supervisors)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from tests.integration.harness import PASSWORD, Cluster, Node


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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
    """Guests first, then the daemons, then the supervisors (they outlive a daemon stop)."""
    for node in c.nodes.values():
        for pidfile in (node.state_dir / "run" / "qemu").glob("*.pid"):
            kill_pid(qemu_pid(node, int(pidfile.stem)))
    c.stop()
    for pid in watchdog_supervisors(c.root):
        kill_pid(pid)


def api(node: Node):
    from proxmoxer import ProxmoxAPI

    return ProxmoxAPI(node.address, user="admin@pve", password=PASSWORD, verify_ssl=False,
                      timeout=60)


def service(node: Node, sid: str) -> dict:
    return next((e for e in node.json("ha", "status") if e.get("sid") == sid), {})
