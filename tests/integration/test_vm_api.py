"""VM management through the API as Proxmox clients drive it (proxmoxer), with real QEMU.

The guests here have no NIC (no namespaces needed): they boot the tiny image's
kernel, which is enough for lifecycle, config and status semantics. Networking
and HTTP checks live in tests/lab/test_vm.py.
"""

from __future__ import annotations

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


def test_template_and_clone(px) -> None:
    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    wait_task(px, node.qemu.post(vmid=vmid, name="tmpl", memory=64, virtio0="local:1",
                                 kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                                 vga="serial0"))
    assert wait_task(px, node.qemu(vmid).template.post())["exitstatus"] == "OK"
    from proxmoxer import ResourceException

    with pytest.raises(ResourceException) as exc:
        node.qemu(vmid).status.start.post()
    assert "template" in exc.value.content
    newid = int(px.cluster.nextid.get())
    upid = node.qemu(vmid).clone.post(newid=newid, name="from-tmpl")
    assert wait_task(px, upid)["exitstatus"] == "OK"
    clone = node.qemu(newid).config.get()
    assert clone["name"] == "from-tmpl" and "template" not in clone
    assert clone["virtio0"].startswith(f"local:{newid}/")
    assert wait_task(px, node.qemu(newid).status.start.post())["exitstatus"] == "OK"
    assert node.qemu(newid).status.current.get()["status"] == "running"
    wait_task(px, node.qemu(newid).status.stop.post())
    # storage content lists both disks
    content = node.storage("local").content.get(content="images")
    assert {c["vmid"] for c in content} >= {vmid, newid}
    wait_task(px, node.qemu(newid).delete())
    wait_task(px, node.qemu(vmid).delete())
    content = node.storage("local").content.get(content="images")
    assert not {c["vmid"] for c in content} & {vmid, newid}


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
