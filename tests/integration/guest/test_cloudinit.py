"""Cloud-init through the API, proven inside a real guest.

A VM with a ``scsi1: local:cloudinit`` drive (the lab kernel has no AHCI driver, so
not PVE's default ``ide2``), ``ciuser``, ``cipassword``, ``sshkeys`` and a static
``ipconfig0`` on a bridge this test owns boots the tiny guest, whose /init reads the
NoCloud seed binome wrote: the test fetches the ssh key, hostname and instance-id
back over HTTP from the address the seed gave the guest.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD, Cluster, wait_for


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture
def bridge():
    """A bridge with the host's address on a /24 of its own (from the pid: concurrent
    sessions do not collide); removed even if the test fails."""
    pid = os.getpid()
    name = f"bci{pid % 100000}"
    net = f"100.{64 + pid % 64}.{(pid // 64) % 250}"
    _ip("link", "add", name, "type", "bridge")
    try:
        _ip("addr", "add", f"{net}.1/24", "dev", name)
        _ip("link", "set", name, "up")
        yield name, net
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def _ssh_key() -> str:
    """A well-formed ed25519 public key (type string + 32 bytes, as OpenSSH encodes it)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} ci-test@binome"


def _http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return reply.read().decode()


def _iso_label(volume: Path, tmp: Path) -> str:
    raw = tmp / "seed.iso"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(volume), str(raw)],
                   check=True, capture_output=True)
    with raw.open("rb") as f:
        f.seek(16 * 2048 + 40)            # the primary volume descriptor's volume id
        return f.read(32).decode().strip()


def test_cloudinit_seed_reaches_the_guest(cluster: Cluster, bridge, tmp_path: Path) -> None:
    from proxmoxer import ProxmoxAPI, ResourceException
    from proxmoxer.tools import Tasks

    from binome.lab.image import build_image

    br, net = bridge
    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.kernel, iso / "vmlinuz")
    shutil.copyfile(image.initrd, iso / "initrd.gz")
    px = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                    verify_ssl=False, timeout=30)

    def done(upid: str) -> str:
        status = Tasks.blocking_status(px, upid, timeout=120, polling_interval=0.2)
        assert status is not None, f"task {upid} did not finish"
        return str(status["exitstatus"])

    key = _ssh_key()
    encoded = urllib.parse.quote(key + "\n", safe="")
    node = px.nodes("n1")
    vmid = int(px.cluster.nextid.get())
    # the kernel command line sets no address: the guest takes it from its seed
    assert done(node.qemu.post(
        vmid=vmid, name="ci-guest", memory=128, kernel="local:iso/vmlinuz",
        initrd="local:iso/initrd.gz", append=image.cmdline(),
        net0=f"virtio=BC:24:11:CA:00:01,bridge={br}", scsi1="local:cloudinit",
        ciuser="admin", cipassword="s3cret-pw", sshkeys=encoded,
        ipconfig0=f"ip={net}.2/24,gw={net}.1", nameserver=f"{net}.1",
        searchdomain="example.test")) == "OK"
    try:
        vm = node.qemu(vmid)
        config = vm.config.get()
        assert config["scsi1"] == f"local:{vmid}/vm-{vmid}-cloudinit.qcow2,media=cdrom"
        assert config["cipassword"] == "**********"          # never the hash, never clear
        assert config["sshkeys"] == encoded                     # stored URL-encoded, as PVE
        assert "ciupgrade" not in config                        # no default stored
        user = vm.cloudinit.dump.get(type="user")
        assert "user: admin\n" in user and f"  - {key}\n" in user
        assert "s3cret-pw" not in user and "password: $5$" in user   # a SHA-256 crypt hash
        network = vm.cloudinit.dump.get(type="network")
        assert f"address: '{net}.2'" in network and f"gateway: '{net}.1'" in network
        meta = vm.cloudinit.dump.get(type="meta")
        assert meta.startswith("instance-id: ") and len(meta.strip()) == len("instance-id: ") + 40
        # bad values: PVE-style 400 naming each key, nothing changed
        with pytest.raises(ResourceException) as exc:
            vm.config.put(sshkeys="not%20a%20key", ipconfig0=f"ip=dhcp,gw={net}.1")
        assert exc.value.status_code == 400
        assert set(exc.value.errors) == {"sshkeys", "ipconfig0"}
        assert vm.config.get()["digest"] == config["digest"]
        pending = {p["key"]: p for p in vm.cloudinit.get()}
        assert pending["cipassword"]["value"] == "**********"
        assert pending["ciuser"]["value"] == "admin"

        # PUT .../cloudinit writes the drive: an ISO labelled cidata, as PVE's
        volume = (cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid)
                  / f"vm-{vmid}-cloudinit.qcow2")
        assert vm.cloudinit.put() is None
        assert _iso_label(volume, tmp_path) == "cidata"

        # a clone gets its own cloud-init drive, never the source's
        cloneid = int(px.cluster.nextid.get())
        assert done(vm.clone.post(newid=cloneid, name="ci-clone")) == "OK"
        cloned = node.qemu(cloneid).config.get()
        assert cloned["scsi1"] == f"local:{cloneid}/vm-{cloneid}-cloudinit.qcow2,media=cdrom"
        assert cloned["cipassword"] == "**********"
        assert done(node.qemu(cloneid).delete()) == "OK"
        assert not (cluster["n1"].state_dir / "storage" / "local" / "images"
                    / str(cloneid)).exists()

        assert done(vm.status.start.post()) == "OK"
        base = f"http://{net}.2"
        keys = wait_for(lambda: _http(f"{base}/ci/authorized_keys"), 60,
                        f"the guest serving its ssh keys at {base}")
        assert keys == key + "\n"
        assert _http(f"{base}/ci/hostname").strip() == "ci-guest"
        assert _http(f"{base}/ci/instance-id").strip() == meta.split()[1]
        assert done(vm.status.stop.post()) == "OK"
    finally:
        with_vm = [v for v in node.qemu.get() if int(v["vmid"]) == vmid]
        if with_vm and with_vm[0].get("status") == "running":
            done(node.qemu(vmid).status.stop.post())
        if with_vm:
            done(node.qemu(vmid).delete())
    # the destroy removed the cloud-init volume with the VM
    assert not (cluster["n1"].state_dir / "storage" / "local" / "images" / str(vmid)).exists()
