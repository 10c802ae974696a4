"""VM management through the API as Proxmox clients drive it (proxmoxer), with real QEMU.

The guests here have no NIC (no namespaces needed): they boot the tiny image's
kernel, which is enough for lifecycle, config and status semantics. Networking
and HTTP checks live in tests/lab/test_vm.py.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from tests.integration.harness import PASSWORD, Cluster, wait_for


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    from binome.lab.image import build_image

    image = build_image()
    for name in ("n1", "n2"):
        iso = cluster[name].state_dir / "storage" / "local" / "template" / "iso"
        iso.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image.kernel, iso / "vmlinuz")
        shutil.copyfile(image.initrd, iso / "initrd.gz")
    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=30)


def wait_task(px, upid: str) -> dict:
    from proxmoxer.tools import Tasks

    status = Tasks.blocking_status(px, upid, timeout=120, polling_interval=0.2)
    assert status is not None, f"task {upid} did not finish"
    return status


def test_proxmoxer_lifecycle(px, cluster: Cluster) -> None:
    from proxmoxer import ResourceException

    vmid = int(px.cluster.nextid.get())
    assert vmid >= 100
    node = px.nodes("n1")
    upid = node.qemu.post(vmid=vmid, name="api-vm", memory=64, cores=1, sockets=1,
                          virtio0="local:1", kernel="local:iso/vmlinuz",
                          initrd="local:iso/initrd.gz", vga="serial0",
                          description="line one\nline two", onboot=0)
    assert wait_task(px, upid)["exitstatus"] == "OK"
    config = node.qemu(vmid).config.get()
    assert config["memory"] == 64 and isinstance(config["cores"], int)
    assert config["description"] == "line one\nline two"
    assert config["virtio0"].startswith(f"local:{vmid}/vm-{vmid}-disk-0.raw")
    # the id is now taken: nextid moves on, and checking it explicitly is a 400
    assert int(px.cluster.nextid.get()) != vmid
    with pytest.raises(ResourceException) as exc:
        px.cluster.nextid.get(vmid=vmid)
    assert exc.value.status_code == 400 and "already exists" in str(exc.value.errors)
    # PUT config is synchronous (null), POST config is a task; delete= removes keys
    assert node.qemu(vmid).config.put(cores=2, delete="description") is None
    assert "description" not in node.qemu(vmid).config.get()
    assert wait_task(px, node.qemu(vmid).config.post(memory=96))["exitstatus"] == "OK"
    pending = {p["key"]: p["value"] for p in node.qemu(vmid).pending.get()}
    assert pending["memory"] == 96 and pending["cores"] == 2
    # a stale digest is refused and changes nothing
    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).config.put(memory=128, digest="0" * 40)
    assert "modified" in exc.value.content
    assert node.qemu(vmid).config.get()["memory"] == 96

    upid = node.qemu(vmid).status.start.post()
    assert wait_task(px, upid)["exitstatus"] == "OK"
    current = node.qemu(vmid).status.current.get()
    assert current["status"] == "running" and current["maxmem"] == 96 * 1024 * 1024
    assert current["cpus"] == 2 and current["ha"] == {"managed": 0}
    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).status.start.post()
    assert exc.value.content == f"VM {vmid} already running"
    # visible from n2: status through n2's API (proxied) and in /cluster/resources
    from proxmoxer import ProxmoxAPI

    px2 = ProxmoxAPI(cluster["n2"].address, user="admin@pve", password=PASSWORD,
                     verify_ssl=False, timeout=30)
    assert px2.nodes("n1").qemu(vmid).status.current.get()["status"] == "running"
    entry = wait_for(lambda: [r for r in px2.cluster.resources.get(type="vm")
                              if r["vmid"] == vmid and r["status"] == "running"], 15,
                     "VM running in n2's /cluster/resources")[0]
    assert entry["node"] == "n1" and entry["name"] == "api-vm"

    upid = node.qemu(vmid).status.stop.post()
    assert wait_task(px, upid)["exitstatus"] == "OK"
    assert node.qemu(vmid).status.current.get()["status"] == "stopped"
    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).status.shutdown.post(forceStop=1, timeout=5)
    assert exc.value.content == f"VM {vmid} not running"

    # bpg's delete flow: destroy, then poll status/current until it errors
    upid = node.qemu(vmid).delete(purge=1, **{"destroy-unreferenced-disks": 1})
    assert wait_task(px, upid)["exitstatus"] == "OK"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            node.qemu(vmid).status.current.get()
        except ResourceException as e:
            assert e.status_code == 500 and "does not exist" in e.content
            break
        time.sleep(0.2)
    else:
        raise AssertionError("status/current still answers after destroy")


def test_vmid_is_unique_across_nodes(px, cluster: Cluster) -> None:
    from proxmoxer import ResourceException

    vmid = int(px.cluster.nextid.get())
    upid = px.nodes("n2").qemu.post(vmid=vmid, name="on-n2", memory=64)
    assert wait_task(px, upid)["exitstatus"] == "OK"
    with pytest.raises(ResourceException) as exc:
        px.nodes("n1").qemu.post(vmid=vmid, name="clash", memory=64)
    assert "already exists on node 'n2'" in exc.value.content
    # n1's config directory does not know it: PVE's "does not exist" message
    with pytest.raises(ResourceException) as exc:
        px.nodes("n1").qemu(vmid).config.get()
    assert exc.value.content == (f"Configuration file 'nodes/n1/qemu-server/{vmid}.conf' "
                                 f"does not exist")
    assert wait_task(px, px.nodes("n2").qemu(vmid).delete())["exitstatus"] == "OK"


def _volume_sha(px, volid: str, node: str = "n1") -> tuple[str, str | None]:
    """(sha256 of the volume's data read as raw, through any backing chain; its backing
    file) of a volume on `node`."""
    import hashlib
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    info = px.nodes(node).storage("local").content(volid.split(",")[0]).get()
    meta = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                      info["path"]], check=True, capture_output=True,
                                     text=True).stdout)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "image.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", info["format"], "-O", "raw",
                        info["path"], str(raw)], check=True, capture_output=True)
        return hashlib.sha256(raw.read_bytes()).hexdigest(), meta.get("backing-filename")


def test_template_and_linked_clone(px, cluster: Cluster) -> None:
    """PVE's template and linked clone on `dir` storage: the template's disk becomes the
    read-only base image `base-N-disk-0`, a clone (linked by default for a template)
    a qcow2 backed by it, named `N/base-N-disk-0.qcow2/M/vm-M-disk-0.qcow2`; the clone
    boots, the base cannot go while it is used, and a disk move or a backup of the clone
    reads through the base (the copy holds the template's data), and so does a live
    migration with local disks."""
    import subprocess

    from proxmoxer import ResourceException

    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    wait_task(px, node.qemu.post(vmid=vmid, name="tmpl", memory=64,
                                 virtio0="local:0.0625,format=qcow2",
                                 kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                 vga="serial0"))
    path = node.storage("local").content(f"local:{vmid}/vm-{vmid}-disk-0.qcow2").get()["path"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", path],
                   check=True, capture_output=True)
    data, _ = _volume_sha(px, f"local:{vmid}/vm-{vmid}-disk-0.qcow2")
    assert node.qemu(vmid).feature.get(feature="clone")["hasFeature"] == 0
    assert wait_task(px, node.qemu(vmid).template.post())["exitstatus"] == "OK"
    base = f"local:{vmid}/base-{vmid}-disk-0.qcow2"
    assert node.qemu(vmid).config.get()["virtio0"].split(",")[0] == base
    assert node.qemu(vmid).feature.get(feature="clone") == {"hasFeature": 1, "nodes": ["n1"]}

    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).status.start.post()
    assert "template" in exc.value.content
    newid = int(px.cluster.nextid.get())
    upid = node.qemu(vmid).clone.post(newid=newid, name="from-tmpl")
    assert wait_task(px, upid)["exitstatus"] == "OK"
    full_id = mig = None
    try:
        clone = node.qemu(newid).config.get()
        assert clone["name"] == "from-tmpl" and "template" not in clone
        linked = f"local:{vmid}/base-{vmid}-disk-0.qcow2/{newid}/vm-{newid}-disk-0.qcow2"
        assert clone["virtio0"].split(",")[0] == linked
        assert _volume_sha(px, linked) == (data, f"../{vmid}/base-{vmid}-disk-0.qcow2")
        content = {c["volid"]: c for c in node.storage("local").content.get(content="images")}
        assert content[linked]["parent"] == f"../{vmid}/base-{vmid}-disk-0.qcow2"
        assert content[linked]["vmid"] == newid and "parent" not in content[base]
        assert wait_task(px, node.qemu(newid).status.start.post())["exitstatus"] == "OK"
        assert node.qemu(newid).status.current.get()["status"] == "running"
        wait_task(px, node.qemu(newid).status.stop.post())

        # PVE's refusals: a linked clone of a VM that is no template, `storage` with
        # `full=0`; the template's base image while a linked clone reads it
        with pytest.raises(ResourceException) as exc:
            node.qemu(newid).clone.post(newid=newid + 1, full=0)
        assert exc.value.content == (f"Linked clone feature is not supported for '{linked}' "
                                     f"(virtio0)")
        with pytest.raises(ResourceException) as exc:
            node.qemu(vmid).clone.post(newid=newid + 1, full=0, storage="local")
        assert exc.value.content == "parameter 'storage' not allowed for linked clones"
        status = wait_task(px, node.qemu(vmid).delete())
        assert status["exitstatus"] == (f"base volume '{base}' is still in use by "
                                        f"linked cloned")
        with pytest.raises(ResourceException) as exc:
            node.storage("local").content(base).delete()
        assert exc.value.status_code == 500
        assert node.qemu(vmid).config.get()["virtio0"].split(",")[0] == base

        # a running linked clone migrated live with its local disk: QEMU's mirror copies
        # it whole, read through its base
        mig = int(px.cluster.nextid.get())
        assert wait_task(px, node.qemu(vmid).clone.post(newid=mig))["exitstatus"] == "OK"
        assert wait_task(px, node.qemu(mig).status.start.post())["exitstatus"] == "OK"
        upid = node.qemu(mig).migrate.post(target="n2", online=1, **{"with-local-disks": 1})
        assert wait_task(px, upid)["exitstatus"] == "OK"
        assert px.nodes("n2").qemu(mig).status.current.get()["status"] == "running"
        wait_task(px, px.nodes("n2").qemu(mig).status.stop.post())
        migrated = px.nodes("n2").qemu(mig).config.get()["virtio0"].split(",")[0]
        assert migrated == f"local:{mig}/vm-{mig}-disk-0.qcow2"
        assert _volume_sha(px, migrated, "n2") == (data, None)
        assert wait_task(px, px.nodes("n2").qemu(mig).delete())["exitstatus"] == "OK"
        # a backup of the linked clone, restored: the template's data
        if "bk" not in {s["storage"] for s in px.storage.get()}:
            px.storage.post(storage="bk", type="dir", content="backup", nodes="n1",
                            path=str(cluster["n1"].state_dir / "backups"))
        upid = node.vzdump.post(vmid=str(newid), storage="bk")
        assert wait_task(px, upid)["exitstatus"] == "OK"
        (archive,) = [b["volid"] for b in node.storage("bk").content.get(content="backup")
                      if b["vmid"] == newid]
        full_id = int(px.cluster.nextid.get())
        assert wait_task(px, node.qemu.post(vmid=full_id, archive=archive, storage="local",
                                            unique=1))["exitstatus"] == "OK"
        restored = node.qemu(full_id).config.get()["virtio0"]
        assert _volume_sha(px, restored) == (data, None)
        wait_task(px, node.qemu(full_id).delete())
        node.storage("bk").content(archive).delete()
        # a full clone of the template: an image of its own
        assert wait_task(px, node.qemu(vmid).clone.post(newid=full_id, full=1)
                         )["exitstatus"] == "OK"
        copy = node.qemu(full_id).config.get()["virtio0"].split(",")[0]
        assert copy == f"local:{full_id}/vm-{full_id}-disk-0.qcow2"
        assert _volume_sha(px, copy) == (data, None)

        # moving the linked clone's disk flattens it: the new image has no backing file
        upid = node.qemu(newid).move_disk.post(disk="virtio0", storage="local",
                                                format="raw", delete=1)
        assert wait_task(px, upid)["exitstatus"] == "OK"
        moved = node.qemu(newid).config.get()["virtio0"].split(",")[0]
        assert moved == f"local:{newid}/vm-{newid}-disk-1.raw"   # beside disk-0 meanwhile
        assert _volume_sha(px, moved) == (data, None)
        # no linked clone left: the template can move; on the other node its disk is a
        # plain image until converted again (PVE's `disk`); then it goes, base and all
        wait_task(px, node.qemu(newid).delete())
        with pytest.raises(ResourceException) as exc:
            node.qemu(vmid).template.post()
        assert exc.value.content == "you can't convert a template to a template"
        assert wait_task(px, node.qemu(vmid).migrate.post(target="n2"))["exitstatus"] == "OK"
        there = px.nodes("n2").qemu(vmid)
        assert there.config.get()["virtio0"].split(",")[0] == \
            f"local:{vmid}/vm-{vmid}-disk-0.qcow2"
        assert there.feature.get(feature="clone")["hasFeature"] == 0
        assert wait_task(px, there.template.post(disk="virtio0"))["exitstatus"] == "OK"
        assert there.config.get()["virtio0"].split(",")[0] == base
        assert there.feature.get(feature="clone")["hasFeature"] == 1
        assert _volume_sha(px, base, "n2") == (data, None)
        assert wait_task(px, there.delete())["exitstatus"] == "OK"
    finally:
        for gone in (newid, full_id, mig, vmid):
            if gone is not None:
                with contextlib.suppress(ResourceException):
                    wait_task(px, node.qemu(gone).delete())
    content = node.storage("local").content.get(content="images")
    assert not {c["vmid"] for c in content} & {vmid, newid, full_id, mig}


def test_unlock_after_an_operation_died_half_way(px, cluster: Cluster) -> None:
    import asyncio

    from proxmoxer import ResourceException

    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    wait_task(px, node.qemu.post(vmid=vmid, name="locked", memory=64))

    async def plant_lock() -> None:   # what a daemon killed mid-clone leaves behind
        store = cluster.raw_store("n1")
        key = f"/binome/config/nodes/n1/qemu/{vmid}.conf"
        text = (await store.get(key)).value
        await store.put(key, text + "lock: clone\n")
        await store.close()

    asyncio.run(plant_lock())
    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).config.put(memory=96)
    assert "locked (clone)" in exc.value.content
    status = wait_task(px, node.qemu(vmid).delete())
    assert "locked" in status["exitstatus"]
    node.qemu(vmid).config.put(delete="lock")            # qm unlock
    assert "lock" not in node.qemu(vmid).config.get()
    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).config.put(lock="migrate")     # 'lock' can be deleted, never set
    assert exc.value.status_code == 400
    assert wait_task(px, node.qemu(vmid).delete())["exitstatus"] == "OK"


def test_feature_check_and_volume_info(px) -> None:
    """PVE's `GET .../feature`, as Telmate's provider asks it before a snapshot or clone,
    and a volume's attributes (`GET .../content/{volume}`, read by bpg's provider)."""
    from proxmoxer import ResourceException

    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    wait_task(px, node.qemu.post(vmid=vmid, name="feat", memory=64,
                                 virtio0="local:1,format=qcow2", kernel="local:iso/vmlinuz",
                                 initrd="local:iso/initrd.gz", vga="serial0"))
    try:
        # local dir storage: snapshots (qcow2) and full copies, on this node only
        assert node.qemu(vmid).feature.get(feature="snapshot") == {"hasFeature": 1,
                                                                   "nodes": ["n1"]}
        assert node.qemu(vmid).feature.get(feature="copy")["hasFeature"] == 1
        assert node.qemu(vmid).feature.get(feature="clone")["hasFeature"] == 0
        volid = f"local:{vmid}/vm-{vmid}-disk-0.qcow2"
        info = node.storage("local").content(volid).get()
        assert (info["format"], info["size"]) == ("qcow2", 1 << 30)
        assert info["path"].endswith(f"/images/{vmid}/vm-{vmid}-disk-0.qcow2")
        assert isinstance(info["used"], int) and 0 < info["used"] < 1 << 30
        # a name on the storage works as the full volume ID does
        assert node.storage("local").content(f"{vmid}/vm-{vmid}-disk-0.qcow2").get() == info
        with pytest.raises(ResourceException) as gone:
            node.storage("local").content(f"local:{vmid}/vm-{vmid}-disk-7.qcow2").get()
        assert gone.value.status_code == 500 and "no format" in gone.value.content
        # a raw disk added: no snapshots any more
        node.qemu(vmid).config.put(virtio1="local:1")
        assert node.qemu(vmid).feature.get(feature="snapshot")["hasFeature"] == 0
        # bad input: PVE's 400 naming the parameter; a missing snapshot: PVE's 500
        with pytest.raises(ResourceException) as bad:
            node.qemu(vmid).feature.get(feature="linked")
        assert bad.value.status_code == 400 and "feature" in bad.value.errors
        with pytest.raises(ResourceException) as missing:
            node.qemu(vmid).feature.get(feature="snapshot", snapname="nope")
        assert missing.value.status_code == 500
        assert "snapshot 'nope' does not exist" in missing.value.content
    finally:
        wait_task(px, node.qemu(vmid).delete())
