"""Cluster resource mappings over HTTPS on the shared cluster, as bpg's provider drives
them (`proxmox/cluster/mapping`: form bodies with a repeated `map`, `check-node` on the
list), then a VM started on n1 with a USB mapping: QEMU runs with the `usb-host` device
although nothing is plugged in, as the monitor's `info usb` shows; USB hot-plug into
the running VM (added, changed, removed; a failing one stays pending); PVE's storage
copy (`POST .../content/{volume}`) of a disk image on n1; and the VM's destroy with and
without `destroy-unreferenced-disks`."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.integration.access.client import Api, wait_task
from tests.integration.harness import PASSWORD, Cluster, wait_for

PARAMS = "Parameter verification failed."


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Api:
    return Api(cluster, "admin@pve", PASSWORD)


def stored_ids(admin: Api, kind: str) -> set[str]:
    return {m["id"] for m in admin.ok("GET", f"/cluster/mapping/{kind}")}


def test_mapping_crud_permissions_and_a_vm_with_a_usb_mapping(admin: Api,
                                                             cluster: Cluster) -> None:
    sfx = uuid.uuid4().hex[:6]
    cam, other, share = f"cam{sfx}", f"other{sfx}", f"share{sfx}"
    assert admin.ok("GET", "/cluster/mapping") == [{"name": "dir"}, {"name": "pci"},
                                                   {"name": "usb"}]
    version = admin.ok("GET", "/cluster/status")[0]["version"]
    # bpg's CreateRequestBody: id, description, map repeated (url.Values)
    admin.ok("POST", "/cluster/mapping/usb", id=cam, description="webcam",
             map=["node=n1,id=1d6b:9999", "node=n2,id=1d6b:9999,path=1-1"])
    admin.ok("POST", "/cluster/mapping/usb", id=other, map=["node=n1,id=046d:0825"])
    wait_for(lambda: admin.ok("GET", "/cluster/status")[0]["version"] >= version + 2, 10,
             "the config version bumped by each write")
    log = admin.ok("GET", "/cluster/log", max=50)
    assert any(f"usb mapping '{cam}' created by admin@pve" in e["msg"] for e in log)
    got = admin.ok("GET", f"/cluster/mapping/usb/{cam}")
    assert got["type"] == "usb" and got["description"] == "webcam"
    assert got["map"] == ["node=n1,id=1d6b:9999", "node=n2,id=1d6b:9999,path=1-1"]
    digest = got["digest"]
    # bad input: a 400 per parameter, nothing stored
    before = stored_ids(admin, "usb")
    r = admin.call("POST", "/cluster/mapping/usb", id=f"bad{sfx}",
                   map=["node=n1,id=xyz"], mdev=1)
    assert r.status_code == 400 and set(r.json()["errors"]) == {"map", "mdev"}
    r = admin.call("POST", "/cluster/mapping/usb", id=f"bad{sfx}")
    assert r.status_code == 400 and set(r.json()["errors"]) == {"map"}
    r = admin.call("POST", "/cluster/mapping/usb", id=cam, map=["node=n1,id=1d6b:9999"])
    assert r.status_code == 500
    assert r.reason == f"create hardware mapping failed: usb ID '{cam}' already defined"
    assert stored_ids(admin, "usb") == before
    # update: a stale digest is refused; map must be given again (PVE's check_config)
    admin.ok("PUT", f"/cluster/mapping/usb/{cam}", map=["node=n1,id=1d6b:9999"],
             delete="description", digest=digest)
    r = admin.call("PUT", f"/cluster/mapping/usb/{cam}", map=["node=n1,id=1d6b:9999"],
                   description="x", digest=digest)
    assert r.status_code == 500 and "detected modified configuration" in r.reason
    r = admin.call("PUT", f"/cluster/mapping/usb/{cam}", map=["node=n1,id=1d6b:9999"],
                   delete="map")
    assert r.reason == "update hardware mapping failed: unable to delete required option 'map'"
    assert "description" not in admin.ok("GET", f"/cluster/mapping/usb/{cam}")
    # check-node: n1 has no such device (an error), n2 no entry (a warning): asked of n1,
    # the n2 check is proxied there; USB names the list 'errors'
    listed = {m["id"]: m for m in admin.ok("GET", "/cluster/mapping/usb", **{
        "check-node": "n1"})}
    assert listed[cam]["errors"] == [{"severity": "error", "message": (
        "Invalid configuration: usb device '1d6b:9999' not found")}]
    listed = {m["id"]: m for m in admin.ok("GET", "/cluster/mapping/usb", **{
        "check-node": "n2"})}
    assert listed[cam]["errors"] == [{"severity": "warning",
                                      "message": "No mapping for node n2."}]
    # a directory mapping: n1's path must exist there; PCI/Dir name the list 'checks'
    r = admin.call("POST", "/cluster/mapping/dir", id=share, map=["node=n1,path=/nowhere"])
    assert r.status_code == 500 and r.reason == "Path /nowhere does not exist"
    admin.ok("POST", "/cluster/mapping/dir", id=share,
             map=["node=n1,path=/tmp", "node=n2,path=/nowhere"])
    listed = {m["id"]: m for m in admin.ok("GET", "/cluster/mapping/dir", **{
        "check-node": "n1"})}
    assert listed[share]["checks"] == []

    # a user with Mapping.Use on one mapping and VM rights on one VM
    user, pw = f"map{sfx}@pve", "map-user-secret"
    admin.ok("POST", "/access/users", userid=user, password=pw)
    vmid = int(admin.ok("GET", "/cluster/nextid"))
    admin.ok("PUT", "/access/acl", path=f"/mapping/usb/{cam}", users=user,
             roles="PVEMappingUser")
    admin.ok("PUT", "/access/acl", path=f"/vms/{vmid}", users=user, roles="PVEVMAdmin")
    mine = Api(cluster, user, pw)
    assert [m["id"] for m in mine.ok("GET", "/cluster/mapping/usb")] == [cam]
    assert mine.call("GET", f"/cluster/mapping/usb/{other}").status_code == 403
    assert mine.call("POST", "/cluster/mapping/usb", id=f"x{sfx}",
                     map=["node=n1,id=1d6b:0001"]).status_code == 403
    assert mine.call("PUT", f"/cluster/mapping/usb/{cam}",
                     map=["node=n1,id=1d6b:0001"]).status_code == 403

    for name in ("n1",):
        iso = cluster[name].state_dir / "storage" / "local" / "template" / "iso"
        iso.mkdir(parents=True, exist_ok=True)
        from binome.lab.image import build_image
        image = build_image()
        shutil.copyfile(image.kernel, iso / "vmlinuz")
        shutil.copyfile(image.initrd, iso / "initrd.gz")
    wait_task(admin, admin.ok("POST", "/nodes/n1/qemu", vmid=vmid, name="usb-vm",
                              memory=64, kernel="local:iso/vmlinuz", ostype="l26",
                              initrd="local:iso/initrd.gz", vga="serial0"))
    try:
        # Mapping.Use on the mapping, then it must exist
        r = mine.call("PUT", f"/nodes/n1/qemu/{vmid}/config", usb1=f"mapping={other}")
        assert r.status_code == 403 and f"/mapping/usb/{other}" in r.text
        r = admin.call("PUT", f"/nodes/n1/qemu/{vmid}/config", usb1=f"mapping=none{sfx}")
        assert r.status_code == 400
        assert r.json()["errors"] == {"usb1": f"usb mapping 'none{sfx}' does not exist"}
        r = mine.call("PUT", f"/nodes/n1/qemu/{vmid}/config", usb1="host=1d6b:0002")
        assert r.status_code == 500 and "only root can set 'usb1'" in r.reason
        mine.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", usb0=f"mapping={cam}")
        conf = admin.ok("GET", f"/nodes/n1/qemu/{vmid}/config")
        assert conf["usb0"] == f"mapping={cam}" and "usb1" not in conf

        wait_task(admin, admin.ok("POST", f"/nodes/n1/qemu/{vmid}/status/start"))
        info = admin.ok("POST", f"/nodes/n1/qemu/{vmid}/monitor", command="info usb")
        # usb0 on the xhci's port 2 (port 1 is the tablet's, none here: vga serial0)
        assert "Port 2, Speed 1.5 Mb/s, Product USB Host Device, ID: usb0" in info, info

        # USB hot-plug (PVE's default hotplug has `usb`, ostype l26): usb1 is plugged
        # into the running guest at port 3 and is in the config, not pending
        def usb_now() -> str:
            return str(admin.ok("POST", f"/nodes/n1/qemu/{vmid}/monitor",
                                command="info usb"))

        def product(dev: str) -> str:
            return str(admin.ok("POST", f"/nodes/n1/qemu/{vmid}/monitor",
                                command=f"qom-get /machine/peripheral/{dev} productid"))

        def pending_rows() -> dict[str, dict]:
            return {r["key"]: r for r in admin.ok("GET", f"/nodes/n1/qemu/{vmid}/pending")}

        admin.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", usb1=f"mapping={other}")
        assert "Port 3, Speed 1.5 Mb/s, Product USB Host Device, ID: usb1" in usb_now()
        assert pending_rows()["usb1"] == {"key": "usb1", "value": f"mapping={other}"}
        assert "2085" in product("usb1")                       # 046d:0825
        # changed: unplugged and plugged again, the same id and port, the new device
        admin.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", usb1=f"mapping={cam}")
        assert "ID: usb1" in usb_now() and "39321" in product("usb1")    # 0x9999
        assert pending_rows()["usb1"] == {"key": "usb1", "value": f"mapping={cam}"}
        # deleted: gone from QEMU and from the config at once
        admin.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", delete="usb1")
        assert "ID: usb1" not in usb_now() and "ID: usb0" in usb_now()
        assert "usb1" not in pending_rows()
        # no entry for the node: a hot-plug fails and stays pending with PVE's text, a
        # new usbN is not plugged, a changed one keeps its running device
        admin.ok("PUT", f"/cluster/mapping/usb/{cam}", map=["node=n2,id=1d6b:9999"])
        r = admin.call("PUT", f"/nodes/n1/qemu/{vmid}/config", usb2=f"mapping={cam}",
                       usb0=f"mapping={cam},usb3=1")
        assert r.status_code == 400, r.text
        problem = f"hotplug problem - USB device mapping not found for '{cam}'"
        assert r.json()["errors"] == {"usb0": problem, "usb2": problem}
        assert pending_rows()["usb2"] == {"key": "usb2", "pending": f"mapping={cam}"}
        assert pending_rows()["usb0"] == {"key": "usb0", "value": f"mapping={cam}",
                                          "pending": f"mapping={cam},usb3=1"}
        assert "ID: usb2" not in usb_now() and "ID: usb0" in usb_now()
        admin.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", revert="usb0,usb2")
        assert not {"usb2"} & set(pending_rows())
        assert "pending" not in pending_rows()["usb0"]
        wait_task(admin, admin.ok("POST", f"/nodes/n1/qemu/{vmid}/status/stop"))
        # no entry for the node: the start fails with PVE's text
        upid = admin.ok("POST", f"/nodes/n1/qemu/{vmid}/status/start")
        status = f"/nodes/n1/tasks/{upid}/status"
        wait_for(lambda: admin.ok("GET", status)["status"] == "stopped", 30, "start task")
        assert admin.ok("GET", status)["exitstatus"] == (
            f"USB device mapping not found for '{cam}'")
        # PVE's storage copy (root@pam's: the CLI on the node's socket), through the
        # storage interface: the data arrives, a second copy onto it is refused
        disk = admin.ok("POST", "/nodes/n1/storage/local/content", vmid=vmid,
                        filename=f"vm-{vmid}-disk-0.raw", size="1024")
        images = cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid)
        with open(images / f"vm-{vmid}-disk-0.raw", "r+b") as f:
            f.seek(8192)
            f.write(b"copied by imgcopy")
        target = f"{vmid}/vm-{vmid}-disk-1.raw"
        out = cluster["n1"].cli("storage", "copy", "local", disk, target).stdout
        assert f"copied {disk} to local:{target}" in out, out
        copied = (images / f"vm-{vmid}-disk-1.raw").read_bytes()
        assert len(copied) == 1 << 20 and copied[8192:8209] == b"copied by imgcopy"
        again = cluster["n1"].cli("storage", "copy", "local", disk, target, check=False)
        assert again.returncode != 0 and "already exists" in again.stdout + again.stderr
        # the VM's disks now, so that its destroy frees them; a third volume named for
        # the VM but not in its config stays by default (PVE 7+: destroy-unreferenced-
        # disks is off) and goes with it
        admin.ok("PUT", f"/nodes/n1/qemu/{vmid}/config", virtio0=disk,
                 virtio1=f"local:{target}")
        loose = admin.ok("POST", "/nodes/n1/storage/local/content", vmid=vmid,
                         filename=f"vm-{vmid}-disk-2.raw", size="1024")
        # purge takes the VM out of backup jobs (PVE's remove_vmid_from_backup_jobs): a
        # job left with no VM goes
        for job, vmids in ((f"keep{sfx}", f"{vmid},999999"), (f"only{sfx}", str(vmid))):
            admin.ok("POST", "/cluster/backup", id=job, vmid=vmids, storage="local",
                     schedule="sun 01:00", enabled=0)
        upid = admin.ok("DELETE", f"/nodes/n1/qemu/{vmid}", purge=1)
        wait_task(admin, upid)
        assert sorted(p.name for p in images.iterdir()) == [f"vm-{vmid}-disk-2.raw"]
        assert admin.ok("GET", f"/cluster/backup/keep{sfx}")["vmid"] == "999999"
        assert admin.call("GET", f"/cluster/backup/only{sfx}").status_code == 400
        log = "\n".join(line["t"] for line in admin.ok("GET", f"/nodes/n1/tasks/{upid}/log"))
        assert f"removed backup job 'only{sfx}' (it had only VM {vmid})" in log, log
        wait_task(admin, admin.ok("POST", "/nodes/n1/qemu", vmid=vmid, memory=64,
                                  scsi0="local:0.001"))
        assert admin.ok("GET", f"/nodes/n1/qemu/{vmid}/config")["scsi0"].startswith(
            f"local:{vmid}/vm-{vmid}-disk-0.raw")
        upid = admin.ok("DELETE", f"/nodes/n1/qemu/{vmid}",
                        **{"destroy-unreferenced-disks": 1})
        wait_task(admin, upid)
        log = "\n".join(line["t"] for line in admin.ok("GET", f"/nodes/n1/tasks/{upid}/log"))
        assert f"removed unreferenced volume {loose}" in log, log
    finally:
        if admin.call("GET", f"/nodes/n1/qemu/{vmid}/status/current").status_code == 200:
            if admin.ok("GET", f"/nodes/n1/qemu/{vmid}/status/current")["status"] == \
                    "running":
                wait_task(admin, admin.ok("POST", f"/nodes/n1/qemu/{vmid}/status/stop"))
            wait_task(admin, admin.ok("DELETE", f"/nodes/n1/qemu/{vmid}", purge=1))
        admin.call("DELETE", f"/cluster/backup/keep{sfx}")
        admin.call("DELETE", f"/cluster/backup/only{sfx}")
        admin.ok("DELETE", f"/access/users/{user}")
    # the CLI of the same methods
    assert cam in {m["id"] for m in cluster["n1"].json("mapping", "usb", "list")}
    for kind, mid in (("usb", cam), ("usb", other), ("dir", share)):
        admin.ok("DELETE", f"/cluster/mapping/{kind}/{mid}")
    admin.ok("DELETE", f"/cluster/mapping/usb/{cam}")     # PVE: not an error
    assert not {cam, other} & stored_ids(admin, "usb")
    assert not (cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid)).exists()
