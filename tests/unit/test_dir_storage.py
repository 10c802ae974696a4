"""The `dir` storage backend (image files in a tmp dir; qemu-img for qcow2, copy, resize)."""

import asyncio
import shutil

import pytest

from binome.storage.base import (
    StorageConfig,
    StorageError,
    VolumeSource,
    is_base_volname,
    linked_base,
    parse_image_volname,
    split_volid,
)
from binome.storage.dir import DirStorage

MiB = 1 << 20

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img not installed")


@pytest.fixture
def store(tmp_path):
    return DirStorage(StorageConfig("local", "dir", path=str(tmp_path)))


def image(tmp_path, vmid, n, fmt="raw"):
    return tmp_path / "images" / str(vmid) / f"vm-{vmid}-disk-{n}.{fmt}"


# ---------------------------------------------------------------- alloc
async def test_alloc_raw_creates_sparse_file_of_exact_size(store, tmp_path):
    size = 64 * MiB + 4096
    volid = await store.alloc(100, size)
    assert volid == "local:100/vm-100-disk-0.raw"
    path = image(tmp_path, 100, 0)
    assert path.is_file()
    st = path.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < MiB         # sparse: nothing written
    with open(path, "rb") as f:
        assert f.read(4096) == bytes(4096)
    assert await store.size(volid) == size
    assert store.path(volid) == path


async def test_successive_allocs_number_disks_and_reuse_gaps(store, tmp_path):
    vols = [await store.alloc(100, MiB) for _ in range(3)]
    assert vols == [f"local:100/vm-100-disk-{n}.raw" for n in range(3)]
    await store.free(vols[1])
    assert not image(tmp_path, 100, 1).exists()
    assert await store.alloc(100, MiB) == "local:100/vm-100-disk-1.raw"
    assert await store.alloc(100, MiB) == "local:100/vm-100-disk-3.raw"
    # numbering is per vmid
    assert await store.alloc(101, MiB) == "local:101/vm-101-disk-0.raw"


async def test_alloc_explicit_name_and_duplicate(store):
    volid = await store.alloc(100, MiB, name="vm-100-disk-7")
    assert volid == "local:100/vm-100-disk-7.raw"
    with pytest.raises(StorageError, match="already exists"):
        await store.alloc(100, MiB, name="vm-100-disk-7")


async def test_alloc_rejects_bad_format_and_size(store, tmp_path):
    with pytest.raises(StorageError, match="unsupported format"):
        await store.alloc(100, MiB, "vmdk")
    for size in (0, -1):
        with pytest.raises(StorageError, match="positive"):
            await store.alloc(100, size)
    assert list(tmp_path.glob("images/*/*")) == []


@needs_qemu_img
async def test_alloc_qcow2_reports_virtual_size(store, tmp_path):
    volid = await store.alloc(200, 256 * MiB, "qcow2")
    assert volid == "local:200/vm-200-disk-0.qcow2"
    path = image(tmp_path, 200, 0, "qcow2")
    assert path.read_bytes()[:4] == b"QFI\xfb"
    assert path.stat().st_size < 256 * MiB
    assert await store.size(volid) == 256 * MiB
    assert store.source(volid) == VolumeSource(str(path), "qcow2")


# ---------------------------------------------------------------- copy / resize / free
@needs_qemu_img
async def test_copy_makes_identical_independent_file(store, tmp_path):
    src = await store.alloc(100, 4 * MiB)
    src_path = image(tmp_path, 100, 0)
    with open(src_path, "r+b") as f:
        f.seek(MiB)
        f.write(b"binome-data" * 100)
    await store.alloc(300, MiB)                   # vmid 300 already has disk-0
    dst = await store.copy(src, 300)
    assert dst == "local:300/vm-300-disk-1.raw"
    dst_path = image(tmp_path, 300, 1)
    assert dst_path.read_bytes() == src_path.read_bytes()
    assert await store.size(dst) == 4 * MiB
    # independent: changing the source does not change the copy
    with open(src_path, "r+b") as f:
        f.write(b"changed")
    assert dst_path.read_bytes()[:7] == bytes(7)
    assert src_path.read_bytes()[:7] == b"changed"


@needs_qemu_img
async def test_copy_to_other_format(store, tmp_path):
    src = await store.alloc(100, 2 * MiB)
    dst = await store.copy(src, 101, "qcow2")
    assert dst == "local:101/vm-101-disk-0.qcow2"
    assert await store.size(dst) == 2 * MiB


async def test_copy_missing_volume(store):
    with pytest.raises(StorageError, match="does not exist"):
        await store.copy("local:100/vm-100-disk-0.raw", 101)


@needs_qemu_img
async def test_resize_grows_raw_and_qcow2(store):
    raw = await store.alloc(100, 2 * MiB)
    await store.resize(raw, 8 * MiB)
    assert await store.size(raw) == 8 * MiB
    q = await store.alloc(100, 2 * MiB, "qcow2")
    await store.resize(q, 16 * MiB)
    assert await store.size(q) == 16 * MiB


def _qemu(*argv: str) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True)


def _killed_writer(path) -> int:
    """qemu-io writes into the image and kills itself (SIGKILL) with it open."""
    import subprocess

    return subprocess.run(["qemu-io", "-c", "write 0 64k", "-c", "sigraise 9", str(path)],
                          capture_output=True).returncode


def _bitmaps(path) -> list[tuple[str, list[str]]]:
    import json
    import subprocess

    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     check=True, capture_output=True, text=True).stdout)
    return [(b["name"], b["flags"]) for b in info["format-specific"]["data"].get("bitmaps", [])]


@needs_qemu_img
async def test_resize_and_rollback_drop_the_backups_dirty_bitmaps(store, tmp_path):
    """A backup's persistent bitmap left `in-use` by a QEMU that died with the image open
    makes qemu-img refuse a resize, and any bitmap a rollback: the backups' go first
    (the next backup is full)."""
    q = await store.alloc(100, 4 * MiB, "qcow2")
    path = image(tmp_path, 100, 0, "qcow2")
    _qemu("qemu-img", "bitmap", "--add", str(path), "binome-backup-a")
    # a writer killed with the image open (qemu-io's own SIGKILL)
    assert _killed_writer(path) == -9
    assert _bitmaps(path) == [("binome-backup-a", ["in-use", "auto"])]
    await store.resize(q, 8 * MiB)
    assert await store.size(q) == 8 * MiB and _bitmaps(path) == []

    await store.snapshot(q, "s1")
    _qemu("qemu-img", "bitmap", "--add", str(path), "binome-backup-b")
    await store.rollback_snapshot(q, "s1")
    assert _bitmaps(path) == []


async def test_resize_missing_volume(store):
    with pytest.raises(StorageError, match="does not exist"):
        await store.resize("local:100/vm-100-disk-0.raw", 8 * MiB)


async def test_free_removes_file_and_empty_vmid_dir(store, tmp_path):
    a = await store.alloc(100, MiB)
    b = await store.alloc(100, MiB)
    await store.free(a)
    assert not image(tmp_path, 100, 0).exists()
    assert (tmp_path / "images" / "100").is_dir()       # still holds disk-1
    await store.free(b)
    assert not (tmp_path / "images" / "100").exists()
    assert (tmp_path / "images").is_dir()
    await store.free(b)                                  # freeing twice is harmless


async def test_free_iso_keeps_iso_dir(store, tmp_path):
    src = tmp_path / "vmlinuz"
    src.write_bytes(b"kernel")
    volid = store.import_iso(src)
    assert volid == "local:iso/vmlinuz"
    await store.free(volid)
    assert not (tmp_path / "template" / "iso" / "vmlinuz").exists()
    assert (tmp_path / "template" / "iso").is_dir()


# ---------------------------------------------------------------- source / path
async def test_source_of_existing_volumes(store, tmp_path):
    volid = await store.alloc(100, MiB)
    assert store.source(volid) == VolumeSource(str(image(tmp_path, 100, 0)), "raw")
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    iso = store.import_iso(kernel, "vmlinuz-6.1")
    assert iso == "local:iso/vmlinuz-6.1"
    assert store.source(iso) == VolumeSource(str(tmp_path / "template/iso/vmlinuz-6.1"), "raw")


@pytest.mark.parametrize("volid", ["local:100/vm-100-disk-0.raw", "local:iso/missing.iso"])
def test_source_of_missing_volume(store, volid):
    with pytest.raises(StorageError, match="does not exist"):
        store.source(volid)


@pytest.mark.parametrize("volid", [
    "local:iso/../x", "local:iso/..", "local:iso/.", "local:iso/", "local:iso/a/b",
    "local:../../etc/passwd", "local:100/../../etc/passwd", "local:100/vm-100-disk-0",
    "local:100/vm-100-disk-0.vmdk", "local:vm-100-disk-0.raw", "local",
])
def test_path_rejects_bad_or_traversing_volnames(store, volid):
    with pytest.raises(StorageError):
        store.path(volid)
    with pytest.raises(StorageError):
        store.source(volid)


@pytest.mark.parametrize("volid", ["other:100/vm-100-disk-0.raw", "other:iso/x.iso",
                                   "LOCAL:iso/x.iso"])
def test_path_rejects_foreign_storage(store, volid):
    with pytest.raises(StorageError, match="not on storage 'local'"):
        store.path(volid)


async def test_foreign_storage_rejected_by_operations(store, tmp_path):
    await store.alloc(100, MiB)
    with pytest.raises(StorageError):
        await store.free("other:100/vm-100-disk-0.raw")
    assert image(tmp_path, 100, 0).exists()


def test_path_base_image(store, tmp_path):
    assert store.path("local:100/base-100-disk-0.qcow2") == \
        tmp_path / "images" / "100" / "base-100-disk-0.qcow2"


async def test_size_of_missing_volume_is_storage_error(store):
    with pytest.raises(StorageError):
        await store.size("local:100/vm-100-disk-0.raw")


# ---------------------------------------------------------------- list / status
async def test_list_filters_by_content_and_vmid(store, tmp_path):
    a = await store.alloc(100, MiB)
    b = await store.alloc(101, 2 * MiB)
    (tmp_path / "images" / "101" / "notes.txt").write_text("ignored")
    (tmp_path / "images" / "lost+found").mkdir()
    k = tmp_path / "k"
    k.write_bytes(b"123")
    iso = store.import_iso(k, "vmlinuz")

    everything = await store.list()
    assert [v["volid"] for v in everything] == [a, b, iso]
    by_id = {v["volid"]: v for v in everything}
    assert by_id[a]["content"] == "images" and by_id[a]["vmid"] == 100
    assert by_id[a]["format"] == "raw" and by_id[a]["size"] == MiB
    assert by_id[b]["size"] == 2 * MiB
    assert by_id[iso] | {"ctime": 0} == {"volid": iso, "format": "iso", "content": "iso",
                                         "size": 3, "ctime": 0}

    assert [v["volid"] for v in await store.list("images")] == [a, b]
    assert [v["volid"] for v in await store.list("iso")] == [iso]
    assert [v["volid"] for v in await store.list(vmid=101)] == [b]
    assert [v["volid"] for v in await store.list("images", vmid=100)] == [a]
    assert await store.list("iso", vmid=100) == []
    assert await store.list("backup") == []
    assert await store.list(vmid=999) == []


async def test_list_empty_storage(store):
    assert await store.list() == []


async def test_status(store, tmp_path):
    st = await store.status()
    assert st["total"] > 0
    assert 0 <= st["avail"] <= st["total"]
    assert 0 <= st["used"] <= st["total"]
    assert st["active"] == 1 and st["enabled"] == 1
    disabled = DirStorage(StorageConfig("local", "dir", path=str(tmp_path / "new"),
                                        disable=True))
    assert (await disabled.status())["enabled"] == 0
    assert (tmp_path / "new").is_dir()


def test_storage_config_to_api():
    cfg = StorageConfig("local", "dir", path="/srv", nodes=("a", "b"), disable=True)
    assert cfg.to_api() == {"storage": "local", "type": "dir", "content": "images,iso",
                            "shared": 0, "path": "/srv", "nodes": "a,b", "disable": 1}
    assert cfg.available_on("a") and not cfg.available_on("c")
    assert StorageConfig("x", "dir").available_on("anything")


# ---------------------------------------------------------------- volid helpers
def test_split_volid():
    assert split_volid("local:100/vm-100-disk-0.raw") == ("local", "100/vm-100-disk-0.raw")
    assert split_volid("local:iso/a:b") == ("local", "iso/a:b")


@pytest.mark.parametrize("volid", ["local", ":vol", "local:", ""])
def test_split_volid_errors(volid):
    with pytest.raises(StorageError, match="unable to parse volume ID"):
        split_volid(volid)


@pytest.mark.parametrize("volname, expected", [
    ("100/vm-100-disk-0.raw", (100, "vm-100-disk-0", "raw")),
    ("2000/base-2000-disk-12.qcow2", (2000, "base-2000-disk-12", "qcow2")),
    # a linked clone's volume names its base first (PVE's dir plugin)
    ("100/base-100-disk-0.qcow2/101/vm-101-disk-2.qcow2", (101, "vm-101-disk-2", "qcow2")),
    ("100/base-100-disk-1.raw/101/vm-101-disk-0.qcow2", (101, "vm-101-disk-0", "qcow2")),
])
def test_parse_image_volname(volname, expected):
    assert parse_image_volname(volname) == expected


@pytest.mark.parametrize("volname", [
    "vm-100-disk-0.raw", "100/vm-100-disk-0.vmdk", "100/vm-100-disk-0", "100/disk-0.raw",
    "100/vm-100-disk-x.raw", "abc/vm-100-disk-0.raw", "100/vm-100-disk-0.raw/x",
    "100/../vm-100-disk-0.raw", "iso/x.iso",
    # a base that is not a base image, a clone path that escapes
    "100/vm-100-disk-0.qcow2/101/vm-101-disk-0.qcow2",
    "100/base-100-disk-0.qcow2/../101/vm-101-disk-0.qcow2",
    "100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2/x",
])
def test_parse_image_volname_errors(volname):
    with pytest.raises(StorageError, match="unable to parse image volume name"):
        parse_image_volname(volname)


def test_linked_base_and_is_base():
    assert linked_base("100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2") == \
        (100, "base-100-disk-0.qcow2")
    assert linked_base("100/base-100-disk-0.qcow2") is None
    assert linked_base("101/vm-101-disk-0.qcow2") is None
    assert is_base_volname("100/base-100-disk-0.qcow2")
    assert not is_base_volname("100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2")
    assert is_base_volname("100/base-100-disk-0.qcow2/101/base-101-disk-0.qcow2")


# ---------------------------------------------------------------- templates, linked clones
@needs_qemu_img
async def test_template_base_linked_clone_and_refusals(store, tmp_path):
    """PVE's dir create_base / clone_image / vdisk_free: the base is renamed and made
    read-only, a linked clone is a qcow2 backed by '../<vmid>/<base>', reads the base's
    data, is listed with `parent`, and the base cannot be freed while it is used."""
    import re

    def qemu_io(path, command: str) -> str:
        import subprocess
        return subprocess.run(["qemu-io", "-c", command, str(path)], check=True,
                              capture_output=True, text=True).stdout

    vol = await store.alloc(100, 4 * MiB, "qcow2")
    path = store.path(vol)
    await asyncio.to_thread(qemu_io, path, "write -P 0x5a 0 64k")
    assert not store.can_link(vol)
    with pytest.raises(StorageError, match="clone_image only works on base images"):
        await store.clone_image(vol, 101)
    base = await store.create_base(vol)
    assert base == "local:100/base-100-disk-0.qcow2"
    assert not path.exists()
    assert (store.path(base).stat().st_mode & 0o777) == 0o444
    assert store.can_link(base)
    with pytest.raises(StorageError, match="create_base not possible with base image"):
        await store.create_base(base)
    # a new disk of the template does not reuse the base's number
    assert await store.alloc(100, MiB) == "local:100/vm-100-disk-1.raw"
    linked = await store.clone_image(base, 101)
    assert linked == "local:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2"
    assert store.path(linked) == tmp_path / "images" / "101" / "vm-101-disk-0.qcow2"
    assert await store.size(linked) == 4 * MiB
    out = await asyncio.to_thread(qemu_io, store.path(linked), "read -P 0x5a 0 64k")
    assert "read 65536/65536" in out
    second = await store.clone_image(base, 101)
    assert second == "local:100/base-100-disk-0.qcow2/101/vm-101-disk-1.qcow2"
    listed = {e["volid"]: e for e in await store.list("images")}
    assert listed[linked]["parent"] == "../100/base-100-disk-0.qcow2"
    assert listed[linked]["vmid"] == 101 and listed[linked]["format"] == "qcow2"
    assert "parent" not in listed[base]
    assert await store.base_users(base) == [linked, second]
    assert await store.base_users(linked) == []
    with pytest.raises(StorageError, match=re.escape(
            "base volume '100/base-100-disk-0.qcow2' is still in use by linked clones")):
        await store.free(base)
    # a full copy of a linked clone reads through its base: an image of its own
    copy = await store.copy(linked, 102)
    assert "parent" not in {e["volid"]: e for e in await store.list("images")}[copy]
    out = await asyncio.to_thread(qemu_io, store.path(copy), "read -P 0x5a 0 64k")
    assert "read 65536/65536" in out
    with pytest.raises(StorageError, match="read-only base image"):
        await store.resize(base, 8 * MiB)
    # a linked clone's own snapshots, resize and rollback touch only its image
    await store.snapshot(linked, "s1")
    await asyncio.to_thread(qemu_io, store.path(linked), "write -P 0x11 0 64k")
    await store.resize(linked, 8 * MiB)
    await store.rollback_snapshot(linked, "s1")
    out = await asyncio.to_thread(qemu_io, store.path(linked), "read -P 0x5a 0 64k")
    assert "read 65536/65536" in out
    assert await store.snapshots(base) == []
    await store.delete_snapshot(linked, "s1")
    # handed to another VM, a linked clone keeps naming its base
    moved = await store.rename_volume(second, 103)
    assert moved == "local:100/base-100-disk-0.qcow2/103/vm-103-disk-0.qcow2"
    with pytest.raises(StorageError, match="does not support moving"):
        await store.rename_volume(base, 103)
    await store.free(linked)
    await store.free(moved)
    assert await store.base_users(base) == []
    await store.free(base)
    assert not store.path(base).exists()
