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
