"""Drives as PVE over the API on a real node: a deleted disk becomes `unusedN` (its
volume kept), `unlink` frees unused volumes or forces a disk's removal, `protection`
refuses both with PVE's texts, destroy frees everything; an OVMF VM with an efidisk0
(allocated from the 4m vars template) and a tpmstate0 (swtpm) starts."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import requests

from tests.integration.harness import Cluster
from tests.integration.test_vm_providers import api, base, config, next_id, wait_task

__all__ = ["api"]   # the module-scoped admin@pve session fixture

FIRMWARE = "/usr/share/OVMF/OVMF_CODE_4M.fd"


def images(api: requests.Session, cluster: Cluster, vmid: int) -> dict[str, int]:
    r = api.get(f"{base(cluster)}/nodes/n1/storage/local/content",
                params={"content": "images"}, timeout=10)
    return {i["volid"]: i["size"] for i in r.json()["data"] if i.get("vmid") == vmid}


@pytest.mark.skipif(not (os.path.exists(FIRMWARE) and shutil.which("swtpm")),
                    reason="needs Debian's ovmf and swtpm (tools/setup-debian.sh)")
def test_unused_unlink_protection_efidisk_tpm(api, cluster: Cluster) -> None:
    vmid = next_id(api, cluster)
    url = f"{base(cluster)}/nodes/n1/qemu/{vmid}"
    r = api.post(f"{base(cluster)}/nodes/n1/qemu", timeout=30, data={
        "vmid": vmid, "name": "drives", "memory": 128, "bios": "ovmf", "vga": "none",
        "virtio0": "local:1", "scsi1": "local:1", "efidisk0": "local:1,efitype=4m",
        "tpmstate0": "local:1,version=v2.0"})
    assert r.status_code == 200, r.reason
    assert wait_task(api, cluster, r.json()["data"]) == "OK"
    conf = config(api, cluster, vmid)
    efi = re.fullmatch(rf"(local:{vmid}/vm-{vmid}-disk-\d+\.raw),efitype=4m,size=528K",
                       conf["efidisk0"])
    tpm = re.fullmatch(rf"(local:{vmid}/vm-{vmid}-disk-\d+\.raw),version=v2.0,size=4M",
                       conf["tpmstate0"])
    assert efi and tpm, conf
    vols = images(api, cluster, vmid)
    assert vols[efi.group(1)] == 540672          # the 4m vars template, copied in
    virtio0, scsi1 = conf["virtio0"].split(",")[0], conf["scsi1"].split(",")[0]
    assert set(vols) == {virtio0, scsi1, efi.group(1), tpm.group(1)}

    # OVMF with the VM's own vars volume and a TPM starts (and stops)
    assert wait_task(api, cluster, api.post(url + "/status/start", timeout=30)
                     .json()["data"]) == "OK"
    assert api.get(url + "/status/current", timeout=10).json()["data"]["status"] == "running"
    # qm sendkey: QEMU's monitor key names; anything else never reaches the monitor
    assert api.put(url + "/sendkey", data={"key": "shift"}, timeout=30).status_code == 200
    r = api.put(url + "/sendkey", data={"key": "nosuchkey"}, timeout=30)
    assert r.status_code == 500 and "nosuchkey" in r.json()["message"], r.text
    r = api.put(url + "/sendkey", data={"key": "a\ninfo"}, timeout=30)
    assert r.status_code == 400 and "key" in r.json()["errors"], r.text
    # a running VM's disk grows through QEMU (block_resize), a stopped one's on storage
    upid = api.put(url + "/resize", data={"disk": "virtio0", "size": "+64M"},
                   timeout=30).json()["data"]
    assert wait_task(api, cluster, upid) == "OK"
    log = api.get(f"{base(cluster)}/nodes/n1/tasks/{upid}/log", timeout=10).json()["data"]
    assert any("grown online" in line["t"] for line in log), log
    assert config(api, cluster, vmid)["virtio0"].endswith(",size=1088M")
    assert images(api, cluster, vmid)[virtio0] == (1024 + 64) << 20
    r = api.put(url + "/resize", data={"disk": "virtio0", "size": "1G"}, timeout=30)
    assert r.status_code == 400 and "size" in r.json()["errors"], r.text   # no shrinking
    assert wait_task(api, cluster, api.post(url + "/status/stop", timeout=30)
                     .json()["data"]) == "OK"
    assert wait_task(api, cluster, api.put(url + "/resize", timeout=30, data={
        "disk": "virtio0", "size": "+64M"}).json()["data"]) == "OK"
    assert images(api, cluster, vmid)[virtio0] == (1024 + 128) << 20

    # protection: no disk removal, no destroy, nothing changes (PVE's texts)
    assert api.put(url + "/config", data={"protection": 1}, timeout=30).status_code == 200
    r = api.put(url + "/config", data={"delete": "scsi1"}, timeout=30)
    assert (r.status_code, r.reason) == (500, "can't remove drive 'scsi1' - protection mode "
                                              "enabled")
    r = api.put(url + "/unlink", data={"idlist": "virtio0", "force": 1}, timeout=30)
    assert r.reason == "can't remove drive 'virtio0' - protection mode enabled"
    r = api.delete(url, timeout=30)
    assert r.reason == f"can't remove VM {vmid} - protection mode enabled"
    assert config(api, cluster, vmid)["scsi1"] == conf["scsi1"]
    assert api.put(url + "/config", data={"delete": "protection"}, timeout=30).ok

    # 'force' needs 'delete' (PVE's schema)
    r = api.put(url + "/config", data={"force": 1, "name": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["errors"] == {
        "delete": "missing property - 'force' requires this property"}

    # delete: the volume is kept as unused0; deleting unused0 frees it
    assert api.put(url + "/config", data={"delete": "scsi1"}, timeout=30).ok
    conf = config(api, cluster, vmid)
    assert "scsi1" not in conf and conf["unused0"] == scsi1
    assert scsi1 in images(api, cluster, vmid)
    assert api.put(url + "/unlink", data={"idlist": "unused0"}, timeout=30).ok
    assert "unused0" not in config(api, cluster, vmid)
    assert scsi1 not in images(api, cluster, vmid)
    # unlink with force frees the disk's volume at once
    assert api.put(url + "/unlink", data={"idlist": "virtio0", "force": 1}, timeout=30).ok
    conf = config(api, cluster, vmid)
    assert "virtio0" not in conf and not any(k.startswith("unused") for k in conf)
    assert virtio0 not in images(api, cluster, vmid)
    # 'cdrom' is PVE's alias of ide2 (media=cdrom added), in a set and in a delete
    assert api.put(url + "/config", data={"cdrom": "none"}, timeout=30).ok
    assert config(api, cluster, vmid)["ide2"] == "none,media=cdrom"
    assert api.put(url + "/config", data={"delete": "cdrom"}, timeout=30).ok
    assert "ide2" not in config(api, cluster, vmid)
    # the efidisk detached becomes unused0; destroy frees it and the TPM state too
    assert api.put(url + "/config", data={"delete": "efidisk0"}, timeout=30).ok
    assert config(api, cluster, vmid)["unused0"] == efi.group(1)
    assert wait_task(api, cluster, api.delete(url, timeout=30).json()["data"]) == "OK"
    assert images(api, cluster, vmid) == {}


def _storage(api: requests.Session, cluster: Cluster, name: str, content: str) -> None:
    r = api.get(f"{base(cluster)}/storage", timeout=10)
    if name not in {s["storage"] for s in r.json()["data"]}:
        r = api.post(f"{base(cluster)}/storage", timeout=10, data={
            "storage": name, "type": "dir", "content": content, "nodes": "n1",
            "path": str(cluster["n1"].state_dir / f"storage-{name}")})
        assert r.status_code == 200, r.reason


def _raw_digest(path: str, fmt: str) -> str:
    """sha256 of an image's guest-visible bytes (qemu-img's raw view of it)."""
    import hashlib
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".raw") as out:
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, out.name],
                       check=True, capture_output=True)
        return hashlib.sha256(open(out.name, "rb").read()).hexdigest()


def test_move_disk_stopped_format_change_to_another_vm_and_refusals(
        api, cluster: Cluster) -> None:
    """POST .../move_disk (and its alias move-disk) of stopped VMs: raw on `local` to
    qcow2 on another dir storage and back with delete=1, then the old volume (unused0)
    to another VM; the guest-visible bytes unchanged each time; PVE's refusals change
    nothing."""
    _storage(api, cluster, "mvdrv", "images")
    _storage(api, cluster, "mviso", "iso")
    a, b = next_id(api, cluster), 0
    images_dir = cluster["n1"].state_dir / "storage"
    r = api.post(f"{base(cluster)}/nodes/n1/qemu", timeout=30, data={
        "vmid": a, "name": "move-a", "memory": 64, "vga": "none",
        "scsi0": "local:0.0078125", "boot": "order=scsi0"})
    assert wait_task(api, cluster, r.json()["data"]) == "OK"
    try:
        b = next_id(api, cluster)
        r = api.post(f"{base(cluster)}/nodes/n1/qemu", timeout=30, data={
            "vmid": b, "name": "move-b", "memory": 64, "vga": "none",
            "ide2": "none,media=cdrom"})
        assert wait_task(api, cluster, r.json()["data"]) == "OK"
        url = f"{base(cluster)}/nodes/n1/qemu/{a}"
        conf = config(api, cluster, a)
        old = conf["scsi0"].split(",")[0]
        old_path = images_dir / "local" / "images" / str(a) / f"vm-{a}-disk-0.raw"
        assert old == f"local:{a}/vm-{a}-disk-0.raw" and old_path.exists()
        with open(old_path, "r+b") as f:                  # the guest's data
            f.write(os.urandom(8 << 20))
        digest = _raw_digest(str(old_path), "raw")

        # refusals: PVE's status and text, the config and the volumes untouched
        def refused(data: dict, status: int, text: str, alias: bool = False) -> None:
            path = "/move-disk" if alias else "/move_disk"
            r = api.post(url + path, data=data, timeout=30)
            assert r.status_code == status, (data, r.status_code, r.text)
            body = r.json()
            assert text in (r.reason + str(body.get("errors") or "")), (data, r.text)
            after = config(api, cluster, a)
            assert after["digest"] == conf["digest"], data
        both = "both 'storage' and 'target-vmid' missing, either needs to be set"
        refused({"disk": "scsi0"}, 400, both)
        refused({"disk": "scsi0", "storage": "mvdrv", "target-vmid": b}, 400,
                "either set 'storage' or 'target-vmid', but not both")
        refused({"disk": "scsi5", "storage": "mvdrv"}, 500, "disk 'scsi5' does not exist")
        refused({"disk": "bogus0", "storage": "mvdrv"}, 400, "enumeration", alias=True)
        refused({"disk": "scsi0", "storage": "local"}, 500,
                "you can't move to the same storage with same format")
        refused({"disk": "scsi0", "storage": "mviso"}, 400,
                "storage 'mviso' does not support vm images")
        refused({"disk": "scsi0", "storage": "nosuch"}, 500, "storage 'nosuch' does not exist")
        refused({"disk": "scsi0", "storage": "mvdrv", "digest": "0" * 40}, 500,
                "detected modified configuration")
        refused({"disk": "scsi0", "target-vmid": a}, 400,
                "must be different than source VMID to reassign disk")
        refused({"disk": "scsi0", "target-vmid": b, "target-disk": "ide2"}, 500,
                f"Target disk key 'ide2' is already in use for VM '{b}'")
        assert api.put(url + "/config", data={"protection": 1}, timeout=30).ok
        conf = config(api, cluster, a)
        refused({"disk": "scsi0", "target-vmid": b}, 500,
                "can't move disk 'scsi0' to another VM - protection mode enabled")
        assert api.put(url + "/config", data={"delete": "protection"}, timeout=30).ok
        assert images(api, cluster, a) == {old: 8 << 20}

        # a stopped VM: raw -> qcow2 on another storage (qemu-img convert, progress)
        r = api.post(url + "/move_disk", timeout=30,
                     data={"disk": "scsi0", "storage": "mvdrv", "format": "qcow2"})
        assert r.status_code == 200, r.text
        upid = r.json()["data"]
        assert f":qmmove:{a}:" in upid
        assert wait_task(api, cluster, upid) == "OK"
        log = [e["t"] for e in api.get(f"{base(cluster)}/nodes/n1/tasks/{upid}/log",
                                       params={"limit": 500}, timeout=10).json()["data"]]
        new = f"mvdrv:{a}/vm-{a}-disk-0.qcow2"
        assert f"allocated target volume '{new}'" in log, log
        assert any(line.startswith("transferred ") and "of 8.0 MiB (100.00%)" in line
                   for line in log), log
        assert f"adding source volume '{old}' as 'unused0' to config" in log, log
        conf = config(api, cluster, a)
        assert conf["scsi0"] == f"{new},size=8M" and conf["unused0"] == old
        assert conf["boot"] == "order=scsi0"
        new_path = images_dir.parent / "storage-mvdrv" / "images" / str(a) / \
            f"vm-{a}-disk-0.qcow2"
        assert _raw_digest(str(new_path), "qcow2") == digest
        # back to raw on local with delete=1 (the alias path): the qcow2 is freed
        upid = api.post(url + "/move-disk", timeout=30, data={
            "disk": "scsi0", "storage": "local", "format": "raw", "delete": 1}).json()["data"]
        assert wait_task(api, cluster, upid) == "OK"
        conf = config(api, cluster, a)
        back = conf["scsi0"].split(",")[0]
        assert back == f"local:{a}/vm-{a}-disk-1.raw" and conf["unused0"] == old
        assert not new_path.exists()
        assert _raw_digest(str(images_dir / "local" / "images" / str(a) /
                               f"vm-{a}-disk-1.raw"), "raw") == digest

        # the old volume (unused0) to the other VM as its scsi1: renamed for it
        upid = api.post(url + "/move_disk", timeout=30, data={
            "disk": "unused0", "target-vmid": b, "target-disk": "scsi1"}).json()["data"]
        assert f":qmmove:{a}-unused0>{b}-scsi1:" in upid
        assert wait_task(api, cluster, upid) == "OK"
        assert "unused0" not in config(api, cluster, a)
        moved = config(api, cluster, b)["scsi1"]
        assert moved == f"local:{b}/vm-{b}-disk-0.raw", moved
        assert not old_path.exists()
        assert _raw_digest(str(images_dir / "local" / "images" / str(b) /
                               f"vm-{b}-disk-0.raw"), "raw") == digest
    finally:
        for vmid in (a, b):
            if vmid:
                wait_task(api, cluster, api.delete(f"{base(cluster)}/nodes/n1/qemu/{vmid}",
                                                   timeout=30).json()["data"])
