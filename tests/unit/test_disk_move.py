"""Disk moves (PVE's move_disk): the pure checks and config changes of a move to another
storage and of a reassign to another VM, the mirror job's QMP arguments and progress
lines, and the dir storage's rename for a reassign (real files)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from binome.guest.configs import VmConfig
from binome.guest.disk_move import (
    MovePlan,
    MoveRefused,
    _uncancellable,
    check_move,
    check_reassign,
    in_use_elsewhere,
    moved_config,
    with_volid,
    without_drive,
)
from binome.guest.errors import GuestError
from binome.guest.qemu_mirror import (
    cache_options,
    progress_line,
    render_duration,
    target_blockdev,
)
from binome.storage.base import StorageConfig, StorageError
from binome.storage.dir import DirStorage
from binome.units import render_bytes

CONF = {"name": "vm", "memory": 512, "boot": "order=scsi0;net0",
        "scsi0": "local:100/vm-100-disk-0.qcow2,cache=writeback,size=4G",
        "scsi1": "local:100/vm-100-disk-1.raw,size=1G",
        "ide2": "local:iso/x.iso,media=cdrom",
        "efidisk0": "local:100/vm-100-disk-2.raw,efitype=4m,size=528K",
        "tpmstate0": "local:100/vm-100-disk-3.raw,size=4M,version=v2.0",
        "unused0": "local:100/vm-100-disk-4.raw",
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0"}


def move(config: dict[str, Any] | None = None, *, key: str = "scsi0",
         storage: str = "other", fmt: str | None = None, delete: bool = False,
         running: bool = False, snapshots: dict[str, dict[str, Any]] | None = None,
         want_digest: str | None = None, old_format: str = "qcow2",
         content: tuple[str, ...] = ("images",),
         formats: tuple[str, ...] = ("raw", "qcow2")) -> MovePlan:
    return check_move(100, dict(CONF if config is None else config), snapshots or {},
                      "abc", key=key, storage=storage, fmt=fmt, delete=delete,
                      want_digest=want_digest, running=running, old_format=old_format,
                      target_content=content, target_formats=formats)


def test_a_stopped_vms_disk_is_copied_and_a_running_ones_mirrored() -> None:
    plan = move()
    assert (plan.old_volid, plan.storage, plan.format, plan.online) == (
        "local:100/vm-100-disk-0.qcow2", "other", "qcow2", False)
    assert move(running=True).online
    # an unusedN volume is never QEMU's: copied even while the VM runs
    assert not move(key="unused0", running=True).online


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"config": {**CONF, "lock": "backup"}}, "VM is locked (backup)"),
    ({"want_digest": "other"}, "detected modified configuration - file changed by other "
                               "user? Try again."),
    ({"key": "scsi9"}, "disk 'scsi9' does not exist"),
    ({"key": "ide2"}, "you can't move a cdrom"),
    ({"storage": "local"}, "you can't move to the same storage with same format"),
    ({"storage": "local", "fmt": "qcow2"}, "you can't move to the same storage with same "
                                           "format"),
    ({"key": "tpmstate0", "running": True}, "cannot move TPM state while VM is running"),
    ({"key": "efidisk0", "running": True}, "binome moves an EFI disk only while the VM is "
                                           "stopped"),
])
def test_refusals_with_pve_texts(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(MoveRefused) as exc:
        move(**kwargs)
    assert str(exc.value).startswith(text)
    assert exc.value.param is None            # PVE dies: a 500


def test_a_storage_without_images_is_a_parameter_error() -> None:
    with pytest.raises(MoveRefused, match="storage 'other' does not support vm images") \
            as exc:
        move(content=("iso", "backup"))
    assert exc.value.param == "storage"


def test_same_storage_with_a_format_change_is_a_move() -> None:
    plan = move(storage="local", fmt="raw")
    assert plan.format == "raw" and plan.storage == "local"


def test_cloudinit_and_empty_drives() -> None:
    conf = {**CONF, "ide0": "local:100/vm-100-cloudinit.qcow2,media=cdrom",
            "ide1": "none,media=cdrom"}
    with pytest.raises(MoveRefused, match="cloud-init drive"):
        move(conf, key="ide0")
    with pytest.raises(MoveRefused, match="disk 'ide1' has no associated volume"):
        move(conf, key="ide1")


def test_format_resolution_as_pves_resolve_format_hint() -> None:
    # no format: the source's is the hint, kept if the target can hold it
    assert move().format == "qcow2" and not move().warnings
    assert move(formats=("raw",)).format == "raw"         # replicated: raw only
    assert not move(formats=("raw",)).warnings
    plan = move(fmt="vmdk")                               # PVE's enum, not dir's here
    assert plan.format == "raw"
    assert plan.warnings == ("format 'vmdk' is not supported by the target storage "
                             "'other' - using 'raw' instead",)


def test_snapshots_keep_the_source_and_warn() -> None:
    snaps = {"s1": {"scsi0": "local:100/vm-100-disk-0.qcow2,size=4G"}}
    plan = move(snapshots=snaps)
    assert plan.snapshotted
    assert "moving disk with snapshots, snapshots will not be moved!" in plan.warnings
    with pytest.raises(MoveRefused, match="you can't move a disk with snapshots and "
                                          "delete the source"):
        move(snapshots=snaps, delete=True)
    # another drive on the same volume counts too; the moved key itself does not
    assert not in_use_elsewhere(CONF, {}, "scsi0", "local:100/vm-100-disk-0.qcow2")
    conf = {**CONF, "virtio3": "local:100/vm-100-disk-0.qcow2"}
    assert in_use_elsewhere(conf, {}, "scsi0", "local:100/vm-100-disk-0.qcow2")


def test_moved_config_keeps_options_and_the_old_volume_as_unused() -> None:
    plan = move()
    new, unused = moved_config(CONF, plan, "other:vm-100-disk-0", 4 << 30)
    assert new["scsi0"] == "other:vm-100-disk-0,cache=writeback,size=4G"
    assert unused == "unused1" and new["unused1"] == "local:100/vm-100-disk-0.qcow2"
    assert new["boot"] == CONF["boot"]
    # delete=1: no unusedN; a `format` option goes (the new volume has its own)
    conf = {**CONF, "scsi1": "local:100/vm-100-disk-1.raw,format=raw,size=1G"}
    plan = move(conf, key="scsi1", delete=True, old_format="raw")
    new, unused = moved_config(conf, plan, "other:100/vm-100-disk-5.qcow2", None)
    assert unused is None and new["scsi1"] == "other:100/vm-100-disk-5.qcow2,size=1G"
    assert not any(k.startswith("unused") and v == conf["scsi1"] for k, v in new.items())
    # an unusedN moves as a bare volid
    new, unused = moved_config(CONF, move(key="unused0"), "other:vm-100-disk-9", 1)
    assert new["unused0"] == "other:vm-100-disk-9"
    assert new[unused] == "local:100/vm-100-disk-4.raw"


def vm(vmid: int, config: dict[str, Any], snapshots: dict | None = None,
       digest: str = "d") -> VmConfig:
    return VmConfig(vmid, "n1", dict(config), digest, 1, snapshots or {})


def reassign(source: VmConfig | None = None, target: VmConfig | None = None, *,
             key: str = "scsi1", target_key: str | None = None, running: bool = False,
             digest: str | None = None, target_digest: str | None = None):
    return check_reassign(100, source or vm(100, CONF), target or vm(101, {"memory": 64}),
                          key=key, target_key=target_key or key, digest=digest,
                          target_digest=target_digest, source_running=running)


def test_reassign_plans() -> None:
    plan = reassign()
    assert plan.volid == "local:100/vm-100-disk-1.raw"
    assert plan.value == "local:100/vm-100-disk-1.raw,size=1G"
    assert reassign(target_key="unused3").value == "local:100/vm-100-disk-1.raw"
    assert reassign(key="unused0", running=True).value == "local:100/vm-100-disk-4.raw"
    assert with_volid("virtio2", plan.value, "local:101/vm-101-disk-0.raw") == \
        "local:101/vm-101-disk-0.raw,size=1G"
    assert with_volid("unused2", "local:100/x.raw", "local:101/y.raw") == "local:101/y.raw"


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"source": vm(100, {**CONF, "lock": "snapshot"})}, "VM is locked (snapshot)"),
    ({"target": vm(101, {"lock": "backup"})}, "VM is locked (backup)"),
    ({"target": vm(101, {"template": 1})}, "Can't move disks from or to template VMs"),
    ({"digest": "x"}, "VM 100: detected modified configuration"),
    ({"target_digest": "x"}, "VM 101: detected modified configuration"),
    ({"key": "scsi7"}, "Disk 'scsi7' for VM '100' does not exist"),
    ({"target": vm(101, {"scsi1": "local:101/vm-101-disk-0.raw"})},
     "Target disk key 'scsi1' is already in use for VM '101'"),
    ({"key": "ide2"}, "CD drive contents can't be moved to another VM"),
    ({"source": vm(100, CONF, {"s": {"scsi1": CONF["scsi1"]}})},
     "Can't move disk used by a snapshot to another VM"),
    ({"running": True}, "Cannot move disk to another VM while the source VM is running - "
                        "detach first"),
    ({"source": vm(100, {**CONF, "protection": 1})},
     "can't move disk 'scsi1' to another VM - protection mode enabled"),
    ({"key": "scsi0", "target_key": "tpmstate0"},
     "failed to parse source disk for target disk format"),
])
def test_reassign_refusals(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(MoveRefused) as exc:
        reassign(**kwargs)
    assert str(exc.value).startswith(text), str(exc.value)


def test_the_source_loses_the_drive_and_its_boot_entry() -> None:
    new, in_order = without_drive(CONF, "scsi0")
    assert "scsi0" not in new and in_order and new["boot"] == "order=net0"
    new, in_order = without_drive(CONF, "scsi1")
    assert not in_order and new["boot"] == CONF["boot"]


def test_pve_progress_lines_and_units() -> None:
    assert render_bytes(512) == "512.0 B" and render_bytes(3 << 30) == "3.0 GiB"
    assert render_bytes(512, whole_bytes=True) == "512 B"   # vzdump's task log
    assert render_bytes(1536, whole_bytes=True) == "1.5 KiB"
    assert [render_duration(s) for s in (0, 5, 65, 7203)] == ["0s", "5s", "1m 5s",
                                                             "2h 0m 3s"]
    info = {"device": "drive-scsi0", "len": 4 << 30, "offset": 1 << 30, "status": "running"}
    assert progress_line("drive-scsi0", info, 3.2) == \
        "drive-scsi0: transferred 1.0 GiB of 4.0 GiB (25.00%) in 3s"
    done = {**info, "offset": 4 << 30, "status": "ready", "ready": True}
    assert progress_line("drive-scsi0", done, 4).endswith("(100.00%) in 4s, ready")
    assert progress_line("drive-scsi0", {"len": 0}, 1) is None


def test_mirror_targets_as_blockdev_add_arguments() -> None:
    assert cache_options("none") == {"direct": True, "no-flush": False}
    assert cache_options("unsafe") == {"direct": False, "no-flush": True}
    file = target_blockdev("mv-scsi0-1", "/s/images/100/vm-100-disk-1.raw", "raw", "none")
    assert file["driver"] == "raw" and file["node-name"] == "mv-scsi0-1"
    assert file["file"]["driver"] == "file"
    assert file["file"]["filename"] == "/s/images/100/vm-100-disk-1.raw"
    nbd = target_blockdev("mv-scsi0-2", "nbd+unix:///vm-100-disk-1?socket=/run/e/v.sock",
                          None, "writeback")
    assert nbd["driver"] == "raw"
    assert nbd["file"] == {"driver": "nbd", "export": "vm-100-disk-1",
                           "server": {"type": "unix", "path": "/run/e/v.sock"}}
    assert nbd["cache"]["direct"] is False
    # another node's export (a live migration's local disk)
    tcp = target_blockdev("mv-scsi0-3", "nbd://127.9.0.2:40123/drive-scsi0", "raw", "none")
    assert tcp["file"] == {"driver": "nbd", "export": "drive-scsi0",
                           "server": {"type": "inet", "host": "127.9.0.2", "port": "40123"}}
    with pytest.raises(GuestError, match="unsupported NBD source"):
        target_blockdev("mv-scsi0-4", "nbd://host-without-port/x", "raw", "none")


def test_what_follows_the_commit_point_survives_a_cancel() -> None:
    async def scenario() -> tuple[list[str], bool]:
        done: list[str] = []

        async def switch() -> str:
            await asyncio.sleep(0.05)
            done.append("switched")
            return "ok"

        async def body() -> bool:
            result, cancelled = await _uncancellable(switch())
            assert result == "ok"
            return cancelled

        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.01)
        task.cancel()
        return done, await task

    done, cancelled = asyncio.run(scenario())
    assert done == ["switched"] and cancelled


def test_dir_rename_hands_the_image_to_another_vm(tmp_path: Path) -> None:
    store = DirStorage(StorageConfig("local", "dir", path=str(tmp_path)), "n1")

    async def scenario() -> None:
        a = await store.alloc(100, 1 << 20, "qcow2")
        await store.alloc(101, 1 << 20, "raw")           # 101 has disk-0 already
        assert store.volume_format(a) == "qcow2"
        assert store.resolve_format("vmdk") == "raw" and store.resolve_format("qcow2") == \
            "qcow2"
        new = await store.rename_volume(a, 101)
        assert new == "local:101/vm-101-disk-1.qcow2"
        assert store.path(new).exists() and not store.path(a).exists()
        assert not (tmp_path / "images" / "100").exists()   # emptied: removed
        with pytest.raises(StorageError, match="does not exist"):
            await store.rename_volume(a, 102)

    asyncio.run(scenario())


@pytest.mark.parametrize("text, gone", [
    ("Failed to find node with node-name='mv-scsi0-0-1'", True),   # QEMU 7.2
    ("Node 'mv-scsi0-0-1' not found", True),
    ("Node mv-scsi0-0-1 is in use", False)])
async def test_detach_of_a_node_already_gone_is_fine(text: str, gone: bool) -> None:
    """A failed mirror's target is closed when the job is dismissed; the cancel that
    follows detaches it again (QEMU's refusal for a node gone is not an error)."""
    from binome.guest import qemu_mirror
    from binome.guest.errors import GuestError

    class Qmp:
        async def command(self, name: str, args: dict | None = None) -> dict:
            assert name == "blockdev-del" and args == {"node-name": "mv-scsi0-0-1"}
            raise GuestError(f"VM 100 qmp command 'blockdev-del' failed - {text}")

    if gone:
        await qemu_mirror.detach(Qmp(), "mv-scsi0-0-1")  # type: ignore[arg-type]
    else:
        with pytest.raises(GuestError, match="in use"):
            await qemu_mirror.detach(Qmp(), "mv-scsi0-0-1")  # type: ignore[arg-type]
