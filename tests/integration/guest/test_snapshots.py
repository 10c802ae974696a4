"""VM snapshots through the API (proxmoxer) and the CLI, with real QEMU and qcow2 disks.

Data A is written, a snapshot taken, data B written, the VM rolled back, and A
read again: for a stopped VM (the disk read and written by `qemu-io` on the
host, the snapshot work done by `qemu-img`) and for a running one (the guest
itself writes its disk and a file in its RAM, through its serial console; the
snapshot work done by its QEMU over QMP), with and without RAM (`vmstate`).
The snapshot tree is checked in the config sections and in `GET .../snapshot`;
bad requests get PVE's answers and change nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, Cluster, Node
from tests.integration.test_vm_api import wait_task


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    from binome.lab.image import build_image

    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io is not installed (qemu-utils)")
    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    for src, name in ((image.kernel, "vmlinuz"), (image.initrd, "initrd.gz")):
        if not (iso / name).exists():
            shutil.copyfile(src, iso / name)
    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=30)


def task_ok(px, upid: str) -> None:
    status = wait_task(px, upid)
    if status["exitstatus"] != "OK":
        log = "\n".join(e["t"] for e in px.nodes("n1").tasks(upid).log.get(limit=500))
        raise AssertionError(f"task failed: {status['exitstatus']}\n{log}")


@pytest.fixture
def vm(px, cluster: Cluster) -> Iterator[int]:
    """A VM on n1 with a 4 MiB qcow2 disk (virtio0), stopped; destroyed after the test."""
    from binome.lab.image import build_image

    vmid = int(px.cluster.nextid.get())
    task_ok(px, px.nodes("n1").qemu.post(
        vmid=vmid, name=f"snap{vmid}", memory=128, cores=1,
        virtio0="local:0.00390625,format=qcow2", kernel="local:iso/vmlinuz",
        initrd="local:iso/initrd.gz", append=build_image().cmdline(), vga="serial0"))
    try:
        yield vmid
    finally:
        node = px.nodes("n1").qemu(vmid)
        if node.status.current.get()["status"] == "running":
            wait_task(px, node.status.stop.post())
        node.config.put(delete="lock")
        wait_task(px, node.delete())


def disk_path(cluster: Cluster, vmid: int) -> Path:
    return (cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid)
            / f"vm-{vmid}-disk-0.qcow2")


def qemu_io(path: Path, command: str) -> str:
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def holds_pattern(path: Path, byte: int) -> bool:
    return "Pattern verification failed" not in qemu_io(path, f"read -P {byte} 0 64k")


def image_snapshots(path: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(path)],
                         capture_output=True, text=True, check=True)
    return [line.split()[1] for line in out.stdout.splitlines()[2:]]


def tree(px, vmid: int) -> dict[str, str | None]:
    """{snapshot or 'current': its parent}, from GET .../snapshot."""
    return {s["name"]: s.get("parent") for s in px.nodes("n1").qemu(vmid).snapshot.get()}


def test_stopped_vm_snapshot_tree_rollback_and_delete(px, cluster: Cluster, vm: int) -> None:
    from proxmoxer import ResourceException

    q = px.nodes("n1").qemu(vm)
    path = disk_path(cluster, vm)
    qemu_io(path, "write -P 0x41 0 64k")                     # data A
    task_ok(px, q.snapshot.post(snapname="first", description="data A"))
    qemu_io(path, "write -P 0x42 0 64k")                     # data B
    q.config.put(memory=96)
    task_ok(px, q.snapshot.post(snapname="second"))
    assert tree(px, vm) == {"first": None, "second": "first", "current": "second"}
    assert image_snapshots(path) == ["first", "second"]
    first = q.snapshot("first").config.get()
    assert first["memory"] == 128 and first["description"] == "data A"
    assert first["snaptime"] > 0 and "lock" not in first
    assert q.config.get()["memory"] == 96
    assert q.config.get(snapshot="first")["memory"] == 128
    # PVE's layout in the stored config: [name] sections after the current config
    text = stored_config(cluster, vm)
    current, _, sections = text.partition("\n[first]\n")
    assert "parent: second" in current and "#data A" in sections
    assert "\n[second]\n" in sections and "parent: first" in sections.split("[second]")[1]

    # rollback to a snapshot that is not the latest (PVE allows it): disk and config
    task_ok(px, q.snapshot("first").rollback.post())
    assert holds_pattern(path, 0x41)
    config = q.config.get()
    assert config["memory"] == 128 and config["parent"] == "first" and "lock" not in config
    assert q.status.current.get()["status"] == "stopped"

    # a snapshot taken now hangs under 'first', beside 'second'
    task_ok(px, q.snapshot.post(snapname="third"))
    assert tree(px, vm) == {"first": None, "second": "first", "third": "first",
                            "current": "third"}

    # deleting 'first' re-parents its children (to first's parent: none)
    task_ok(px, q.snapshot("first").delete())
    assert tree(px, vm) == {"second": None, "third": None, "current": "third"}
    assert image_snapshots(path) == ["second", "third"]
    task_ok(px, q.snapshot("second").rollback.post())
    assert holds_pattern(path, 0x42)

    # PUT .../config changes the description only
    q.snapshot("second").config.put(description="data B")
    assert q.snapshot("second").config.get()["description"] == "data B"

    # bad requests: PVE's answers, nothing changed
    digest = q.config.get()["digest"]
    refusals = [
        ({"snapname": "1bad"}, 400, "invalid configuration ID"),
        ({"snapname": "x" * 41}, 400, "40 characters"),
        ({"snapname": "current"}, 500, "snapshot name 'current' (reserved name)"),
        ({"snapname": "second"}, 500, "snapshot name 'second' already used"),
        ({"snapname": "ok", "vmstate": "maybe"}, 400, "type check"),
        ({"snapname": "ok", "bogus": 1}, 400, "property is not defined in schema"),
    ]
    for params, status, text in refusals:
        with pytest.raises(ResourceException) as exc:
            q.snapshot.post(**params)
        assert exc.value.status_code == status, (params, exc.value)
        assert text in str(exc.value), (params, exc.value)
    for call in (q.snapshot("nope").rollback.post, q.snapshot("nope").delete,
                 q.snapshot("nope").config.get):
        with pytest.raises(ResourceException, match="snapshot 'nope' does not exist"):
            call()
    assert q.config.get()["digest"] == digest
    assert image_snapshots(path) == ["second", "third"]

    # the CLI (qm's verbs)
    n1 = cluster["n1"]
    n1.cli("vm", "snapshot", str(vm), "fourth", "--description", "from the cli")
    assert "fourth" in n1.cli("vm", "listsnapshot", str(vm)).stdout
    n1.cli("vm", "rollback", str(vm), "third")
    n1.cli("vm", "delsnapshot", str(vm), "fourth")
    assert [s["name"] for s in n1.json("vm", "listsnapshot", str(vm))] == [
        "second", "third", "current"]
    assert image_snapshots(path) == ["second", "third"]


def test_raw_disks_and_locked_vms_are_refused(px, cluster: Cluster, vm: int) -> None:
    from proxmoxer import ResourceException

    q = px.nodes("n1").qemu(vm)
    q.config.put(virtio1="local:0.00390625")          # raw: dir storage's default format
    digest = q.config.get()["digest"]
    with pytest.raises(ResourceException, match="snapshot feature is not available") as exc:
        q.snapshot.post(snapname="s1")
    assert exc.value.status_code == 500
    raw = q.config.get()["virtio1"].split(",")[0]
    # force: the volume is freed at once (without it, it would stay as unused0)
    q.config.put(delete="virtio1", force=1)
    assert not disk_path(cluster, vm).with_name(raw.rsplit("/", 1)[1]).exists()
    assert not any(k.startswith("unused") for k in q.config.get())
    task_ok(px, q.snapshot.post(snapname="s1"))
    assert q.config.get()["digest"] != digest
    # a VM locked by an operation that died half-way: PVE's "VM is locked"
    store_lock(cluster, vm, "backup")
    with pytest.raises(ResourceException, match=r"VM is locked \(backup\)"):
        q.snapshot.post(snapname="s2")
    with pytest.raises(ResourceException, match=r"VM is locked \(backup\)"):
        q.snapshot("s1").delete()
    q.config.put(delete="lock")

    # a disk added after the snapshot survives a rollback as an unused volume (PVE),
    # which deleting its key removes
    q.config.put(virtio1="local:0.00390625,format=qcow2")
    added = q.config.get()["virtio1"].split(",")[0]
    task_ok(px, q.snapshot("s1").rollback.post())
    config = q.config.get()
    assert "virtio1" not in config and config["unused0"] == added
    volume = disk_path(cluster, vm).with_name(added.rsplit("/", 1)[1])
    assert volume.exists()
    q.config.put(delete="unused0")
    assert not volume.exists() and "unused0" not in q.config.get()

    task_ok(px, q.snapshot("s1").delete())
    assert tree(px, vm) == {"current": None}


def stored_config(cluster: Cluster, vmid: int) -> str:
    """The VM's config text as stored in the cluster store."""
    import asyncio

    async def run() -> str:
        store = cluster.raw_store("n1")
        try:
            return str((await store.get(f"/binome/config/nodes/n1/qemu/{vmid}.conf")).value)
        finally:
            await store.close()

    return asyncio.run(run())


def store_lock(cluster: Cluster, vmid: int, lock: str) -> None:
    """Set a config lock as a concurrent operation holds it (in the cluster store)."""
    import asyncio

    async def run() -> None:
        store = cluster.raw_store("n1")
        key = f"/binome/config/nodes/n1/qemu/{vmid}.conf"
        try:
            text = str((await store.get(key)).value)
            await store.put(key, f"lock: {lock}\n{text}")
        finally:
            await store.close()

    asyncio.run(run())


class Console:
    """The guest's serial console shell (one client at a time), driven line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.serial = 0

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(self.path))
            self.sock.settimeout(0.5)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _exchange(self, line: bytes, want: list[str], timeout: float, resend: float | None
                  ) -> str:
        """Send `line` (again every `resend` seconds if given) until every marker of
        `want` has come back; all text received."""
        deadline = time.monotonic() + timeout
        buf = b""
        sent = -1e9
        while time.monotonic() < deadline:
            try:
                sock = self._connect()
                if (resend is not None and time.monotonic() - sent > resend) or sent < 0:
                    sock.sendall(b"\x15" + line)   # ^U first: drop a half-typed line
                    sent = time.monotonic()
                chunk = sock.recv(65536)
                if not chunk:
                    self.close()
                buf += chunk
            except (TimeoutError, OSError):
                continue
            text = buf.decode(errors="replace")
            if all(w in text for w in want):
                return text
        raise AssertionError(f"no answer from the guest console to {line!r}: {buf[-500:]!r}")

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run `command` in the guest's shell once it answers; its output. The markers are
        computed by the shell, so the echoed command line never matches them."""
        self.serial += 1
        n = self.serial
        self._exchange(f"echo @@$(({n}))R\n".encode(), [f"@@{n}R"], timeout, resend=3.0)
        begin, end = f"@@{n}B", f"@@{n}E"
        text = self._exchange(f"echo @@$(({n}))B; {command}; echo @@$(({n}))E\n".encode(),
                              [begin, end], timeout, resend=None)
        out = text[text.index(begin) + len(begin):text.index(end)]
        return out.replace("\r", "").strip()


def guest_write(console: Console, disk: str, ram: str) -> None:
    console.run(f"printf '{disk}' > /dev/vda && sync && echo '{ram}' > /tmp/marker")


def guest_read(console: Console) -> tuple[str, str]:
    """(the disk's first bytes read from the device, not the page cache; /tmp/marker)."""
    disk = console.run("echo 3 > /proc/sys/vm/drop_caches; head -c 6 /dev/vda")
    ram = console.run("cat /tmp/marker 2>/dev/null || echo none")
    return disk, ram


def test_running_vm_snapshots_with_and_without_ram(px, cluster: Cluster, vm: int) -> None:
    q = px.nodes("n1").qemu(vm)
    path = disk_path(cluster, vm)
    task_ok(px, q.status.start.post())
    console = Console(cluster["n1"].state_dir / "run" / "qemu" / f"{vm}.serial")
    try:
        guest_write(console, "DATA-A", "RAM-A")
        task_ok(px, q.snapshot.post(snapname="disks"))                  # no RAM
        guest_write(console, "DATA-B", "RAM-B")
        t0 = time.monotonic()
        task_ok(px, q.snapshot.post(snapname="withram", vmstate=1))
        print(f"snapshot with RAM of a running 128 MiB guest: {time.monotonic() - t0:.1f}s")
        assert q.status.current.get()["status"] == "running"
        guest_write(console, "DATA-C", "RAM-C")
        listing = {s["name"]: s for s in q.snapshot.get()}
        assert listing["disks"]["vmstate"] == 0 and listing["withram"]["vmstate"] == 1
        assert listing["current"]["running"] == 1
        assert q.snapshot("withram").config.get()["vmstate"].startswith(f"local:{vm}/")
        assert image_snapshots(path) == ["disks", "withram"]

        # RAM snapshot: the guest resumes where it was, disk and memory
        pid_before = qemu_pid(cluster["n1"], vm)
        console.close()
        task_ok(px, q.snapshot("withram").rollback.post())
        assert q.status.current.get()["status"] == "running"
        assert qemu_pid(cluster["n1"], vm) != pid_before
        assert guest_read(console) == ("DATA-B", "RAM-B")

        # disk-only snapshot of a running guest: stopped, rolled back, booted (start=1)
        console.close()
        task_ok(px, q.snapshot("disks").rollback.post(start=1))
        assert q.status.current.get()["status"] == "running"
        assert guest_read(console) == ("DATA-A", "none")

        # deleted while running: QEMU drops it from the image it has open
        task_ok(px, q.snapshot("withram").delete())
        assert image_snapshots(path) == ["disks"]
        assert tree(px, vm) == {"disks": None, "current": "disks"}
    finally:
        console.close()


def qemu_pid(node: Node, vmid: int) -> int | None:
    try:
        return int((node.state_dir / "run" / "qemu" / f"{vmid}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def test_ansible_proxmox_snap(px, cluster: Cluster, vm: int, tmp_path: Path) -> None:
    """community.proxmox.proxmox_snap, unchanged: create (then again: no change), roll
    back, remove (then again: no change), with an API token as its users run it."""
    from tests.integration.access.test_ansible import run_play

    token = f"snap{vm}"
    secret = px.access.users("admin@pve").token(token).post(privsep=0)["value"]
    path = disk_path(cluster, vm)
    try:
        qemu_io(path, "write -P 0x41 0 64k")
        snap = {"vmid": vm, "snapname": "ansible", "description": "from ansible",
                "timeout": 60}
        first = run_play(cluster, tmp_path, "admin@pve", (token, secret), [
            ("community.proxmox.proxmox_snap", {**snap, "state": "present"}),
            ("community.proxmox.proxmox_snap", {**snap, "state": "present"})])
        assert [r.get("failed", False) for r in first] == [False, False], first
        assert [r["changed"] for r in first] == [True, False]
        assert q_config(px, vm, "ansible")["description"] == "from ansible"
        qemu_io(path, "write -P 0x42 0 64k")
        second = run_play(cluster, tmp_path, "admin@pve", (token, secret), [
            ("community.proxmox.proxmox_snap", {**snap, "state": "rollback"}),
            ("community.proxmox.proxmox_snap", {**snap, "state": "absent"}),
            ("community.proxmox.proxmox_snap", {**snap, "state": "absent"})])
        assert [r.get("failed", False) for r in second] == [False] * 3, second
        assert [r["changed"] for r in second] == [True, True, False]
        assert holds_pattern(path, 0x41)
        assert tree(px, vm) == {"current": None} and image_snapshots(path) == []
    finally:
        px.access.users("admin@pve").token(token).delete()


def q_config(px, vmid: int, snapname: str) -> dict:
    return px.nodes("n1").qemu(vmid).snapshot(snapname).config.get()


def test_failures_half_way_leave_what_pve_leaves(px, cluster: Cluster, vm: int) -> None:
    """A create that fails on its second disk undoes the first and leaves no section
    and no lock; a delete that fails keeps `lock: snapshot-delete` until the
    administrator unlocks and forces it (PVE's recovery)."""
    q = px.nodes("n1").qemu(vm)
    q.config.put(virtio1="local:0.00390625,format=qcow2")
    first = disk_path(cluster, vm)
    second = first.with_name(q.config.get()["virtio1"].split(",")[0].rsplit("/", 1)[1])
    subprocess.run(["qemu-img", "snapshot", "-c", "clash", str(second)], check=True)
    digest = q.config.get()["digest"]
    status = wait_task(px, q.snapshot.post(snapname="clash"))
    assert "snapshot 'clash' already exists in volume" in status["exitstatus"]
    assert image_snapshots(first) == [] and image_snapshots(second) == ["clash"]
    assert q.config.get()["digest"] == digest and tree(px, vm) == {"current": None}

    task_ok(px, q.snapshot.post(snapname="s1"))
    subprocess.run(["qemu-img", "snapshot", "-d", "s1", str(second)], check=True)
    status = wait_task(px, q.snapshot("s1").delete())
    assert status["exitstatus"] != "OK"
    assert q.config.get()["lock"] == "snapshot-delete"
    assert q.snapshot("s1").config.get()["snapstate"] == "delete"
    # virtio0's part was done and left the section; only virtio1 is still in it
    assert "virtio0" not in q.snapshot("s1").config.get() and image_snapshots(first) == []
    q.config.put(delete="lock")
    status = wait_task(px, q.snapshot("s1").delete(force=1))
    assert status["exitstatus"] == "WARNINGS: 1"       # virtio1 had no 's1' any more
    assert tree(px, vm) == {"current": None} and "lock" not in q.config.get()


def test_rollback_privileges_are_pves(px, cluster: Cluster, vm: int) -> None:
    """VM.Snapshot.Rollback alone may roll back but not snapshot, and starting after the
    rollback needs VM.PowerMgmt too (API2/Qemu.pm rollback)."""
    from proxmoxer import ProxmoxAPI, ResourceException

    role, user, password = f"SnapRb{vm}", f"snaprb{vm}@pve", "rollback-only-1"
    px.access.roles.post(roleid=role, privs="VM.Audit,VM.Snapshot.Rollback")
    px.access.users.post(userid=user, password=password)
    try:
        px.access.acl.put(path=f"/vms/{vm}", roles=role, users=user)
        task_ok(px, px.nodes("n1").qemu(vm).snapshot.post(snapname="s1"))
        mine = ProxmoxAPI(cluster["n1"].address, user=user, password=password,
                          verify_ssl=False, timeout=30).nodes("n1").qemu(vm)
        for call in (lambda: mine.snapshot.post(snapname="s2"),
                     lambda: mine.snapshot("s1").rollback.post(start=1),
                     lambda: mine.snapshot("s1").delete()):
            with pytest.raises(ResourceException) as exc:
                call()
            assert exc.value.status_code == 403
        task_ok(px, mine.snapshot("s1").rollback.post())
        assert mine.snapshot("s1").config.get()["snaptime"] > 0
        assert px.nodes("n1").qemu(vm).status.current.get()["status"] == "stopped"
    finally:
        px.access.users(user).delete()
        px.access.roles(role).delete()
