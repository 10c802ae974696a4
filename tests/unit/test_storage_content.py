"""Storage definitions' update rules (PVE's Config.pm update), the volumes a VM config
names, and the way of uploaded/downloaded files into a dir storage (PVE's Status.pm
upload and download-url, Nodes.pm query-url-metadata), against a real local HTTP server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from aiohttp import web

from binome.api.errors import ParamError
from binome.api.methods.storage_content import alloc_name, parse_alloc_size
from binome.guest.config import referenced_volids
from binome.storage import upload
from binome.storage.base import StorageConfig, StorageError
from binome.storage.definitions import definition_record, records_digest, updated_record
from binome.storage.dir import DirStorage

DIR = definition_record("data", "dir", path="/srv/data", content=("images", "iso"))
BACKUP = definition_record("bk", "binome-backup", content=("backup",), shared=True,
                           options={"server": "h", "datastore": "d", "username": "a@pam!t",
                                    "fingerprint": "AA"})


# ---------------------------------------------------------------- definitions

def test_update_sets_and_deletes_options():
    new = updated_record(DIR, {"content": "iso,snippets", "nodes": "n1", "disable": True},
                         [])
    assert (new["content"], new["nodes"], new["disable"]) == ("iso,snippets", "n1", 1)
    assert new["path"] == "/srv/data" and new["type"] == "dir"
    back = updated_record(new, {}, ["nodes", "disable", "content"])
    assert (back["nodes"], back["disable"], back["content"]) == ("", 0, "images,iso")
    assert DIR["content"] == "images,iso"          # the input is not changed


@pytest.mark.parametrize("changes,delete,text", [
    ({}, ["bogus"], "no such option 'bogus'"),
    ({}, ["path"], "unable to delete fixed option 'path'"),
    ({"nodes": "n1"}, ["nodes"], "cannot set and delete property 'nodes' at the same time!"),
    ({"path": "/x"}, [], "can't change value of fixed parameter 'path'"),
    ({"server": "x"}, [], "no such option 'server'"),
])
def test_update_refusals_are_pves(changes, delete, text):
    with pytest.raises(StorageError, match=f"^{text}$".replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        updated_record(DIR, changes, delete)


def test_backup_server_options():
    new = updated_record(BACKUP, {"port": 8008}, [])
    assert new["options"]["port"] == 8008 and new["options"]["server"] == "h"
    assert "port" not in updated_record(new, {}, ["port"])["options"]
    with pytest.raises(StorageError, match="unable to delete required option 'server'"):
        updated_record(BACKUP, {}, ["server"])
    with pytest.raises(StorageError, match="no such option 'content'"):
        updated_record(BACKUP, {"content": "iso"}, [])


def test_digest_covers_every_definition_in_any_order():
    a = records_digest([DIR, BACKUP])
    assert a == records_digest([BACKUP, DIR]) and len(a) == 40
    assert a != records_digest([DIR, updated_record(BACKUP, {"port": 1}, [])])


# ---------------------------------------------------------------- VM configs

def test_referenced_volids_cover_drives_unused_snapshots_pending():
    text = "\n".join([
        "memory: 64", "virtio0: data:100/vm-100-disk-0.raw,size=1G",
        "ide2: local:iso/boot.iso,media=cdrom", "ide3: none,media=cdrom",
        "unused0: data:100/vm-100-disk-3.raw", "efidisk0: file=rep:vm-100-disk-4,size=4M",
        "net0: virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0", "scsi1: bad,,value=",
        "", "[snap1]", "virtio1: other:100/vm-100-disk-1.qcow2",
        "", "[PENDING]", "scsi2: data:100/vm-100-disk-2.raw"])
    assert referenced_volids(text) == {
        "data:100/vm-100-disk-0.raw", "local:iso/boot.iso", "data:100/vm-100-disk-3.raw",
        "rep:vm-100-disk-4", "other:100/vm-100-disk-1.qcow2", "data:100/vm-100-disk-2.raw"}


# ---------------------------------------------------------------- allocate

def test_alloc_size_and_name():
    assert parse_alloc_size("4") == 4096
    assert parse_alloc_size("2M") == 2 << 20 and parse_alloc_size("1G") == 1 << 30
    assert alloc_name(100, "vm-100-disk-2.qcow2", None) == ("vm-100-disk-2", "qcow2")
    assert alloc_name(100, "vm-100-disk-0", "raw") == ("vm-100-disk-0", "raw")
    for args, param, text in [
        ((100, "vm-100-disk-0.raw", "qcow2"), "format", "different storage formats "
                                                        "(qcow2 != raw)"),
        ((100, "vm-101-disk-0", None), "filename", "illegal name 'vm-101-disk-0' - should "
                                                   "be 'vm-100-*'"),
        ((100, "vm-100-mine", None), "filename", "illegal name 'vm-100-mine' - binome's "
                                                 "disk names are 'vm-100-disk-<n>'")]:
        with pytest.raises(ParamError) as info:
            alloc_name(*args)
        assert info.value.errors == {param: text}
    with pytest.raises(ParamError) as info:
        parse_alloc_size("1T")
    assert info.value.errors == {"size": "unable to parse size '1T'"}


# ---------------------------------------------------------------- upload rules

def test_filename_normalized_as_pve():
    assert upload.normalize_content_filename("C:\\x\\my disk (1).iso") == "my_disk__1_.iso"
    assert upload.normalize_content_filename("../../etc/passwd\n") == "passwd"


@pytest.mark.parametrize("content,name,errors", [
    ("iso", "a.iso", {}), ("iso", "a.IMG", {}), ("vztmpl", "t.tar.zst", {}),
    ("snippets", "user.yaml", {}),
    ("iso", "a.txt", {"filename": "wrong file extension"}),
    ("iso", ".iso", {"filename": "wrong file extension"}),   # a name before the extension
    ("vztmpl", "t.tar.foo", {"filename": "wrong file extension"}),
    ("images", "a.raw", {"content": "upload content type 'images' not allowed"}),
])
def test_upload_targets(content, name, errors):
    assert upload.check_target(content, name) == errors


def test_checksum_parameters_require_each_other():
    sha = hashlib.sha256(b"x").hexdigest()
    assert upload.check_checksum(sha, "sha256") == {}
    assert upload.check_checksum(None, None) == {}
    assert "checksum" in upload.check_checksum(sha, None)
    assert "checksum-algorithm" in upload.check_checksum(None, "md5")
    assert upload.check_checksum(sha, "md5") == {
        "checksum": "value is not a md5 checksum (32 hex digits)"}


def test_target_dir_needs_a_dir_storage_with_the_content(tmp_path):
    store = DirStorage(StorageConfig("d", "dir", path=str(tmp_path), content=("iso",)))
    assert upload.target_dir(store, "iso") == tmp_path / "template" / "iso"
    with pytest.raises(StorageError, match="storage 'd' does not support 'snippets' content"):
        upload.target_dir(store, "snippets")
    other = DirStorage(StorageConfig("r", "replicated", content=("iso",)))
    with pytest.raises(StorageError, match="can't upload to storage type 'replicated'"):
        upload.target_dir(other, "iso")


async def test_incoming_file_renamed_only_when_verified(tmp_path):
    data = b"binome" * 100_000
    good = hashlib.sha256(data).hexdigest()
    store = DirStorage(StorageConfig("d", "dir", path=str(tmp_path),
                                     content=("iso", "snippets", "vztmpl")))
    directory = upload.target_dir(store, "iso")
    incoming = upload.IncomingFile(directory, "a.iso", "sha256")
    incoming.write(data[:1000])
    # while it is written, the hidden part file is not content
    assert await store.list("iso") == []
    incoming.write(data[1000:])
    incoming.commit(good.upper())
    assert (directory / "a.iso").read_bytes() == data
    assert [f.name for f in directory.iterdir()] == ["a.iso"]

    bad = upload.IncomingFile(directory, "b.iso", "sha256")
    bad.write(data)
    with pytest.raises(StorageError, match=f"^checksum mismatch: got '{good}' != expect "
                                           f"'{'0' * 64}'$"):
        bad.commit("0" * 64)
    assert sorted(f.name for f in directory.iterdir()) == ["a.iso"]   # nothing left

    for kind, name in (("snippets", "u.yaml"), ("vztmpl", "t.tar.gz")):
        f = upload.IncomingFile(upload.target_dir(store, kind), name)
        f.write(b"x")
        f.commit()
    listed = {v["volid"]: (v["content"], v["format"], v["size"]) for v in await store.list()}
    assert listed == {"d:iso/a.iso": ("iso", "iso", len(data)),
                      "d:snippets/u.yaml": ("snippets", "snippet", 1),
                      "d:vztmpl/t.tar.gz": ("vztmpl", "gz", 1)}
    assert store.path("d:vztmpl/t.tar.gz") == tmp_path / "template" / "cache" / "t.tar.gz"
    await store.free("d:snippets/u.yaml")
    assert not (tmp_path / "snippets" / "u.yaml").exists()


# ---------------------------------------------------------------- a real HTTP server

@pytest.fixture
async def http_server():
    payload = b"ISO!" * 50_000

    async def iso(request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload, content_type="application/x-iso9660-image")

    async def named(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"abc", headers={
            "Content-Disposition": 'attachment; filename="real name.iso"',
            "Content-Type": "application/octet-stream; charset=binary"})

    app = web.Application()
    app.router.add_get("/pub/boot.iso", iso)
    app.router.add_get("/dl", named)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]    # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", payload
    finally:
        await runner.cleanup()


async def test_url_metadata(http_server):
    base, payload = http_server
    assert await upload.url_metadata(f"{base}/pub/boot.iso?x=1", verify=True) == {
        "filename": "boot.iso", "size": len(payload), "mimetype": "application/x-iso9660-image"}
    assert await upload.url_metadata(f"{base}/dl", verify=True) == {
        "filename": "real name.iso", "size": 3, "mimetype": "application/octet-stream"}
    with pytest.raises(StorageError, match=r"^invalid server response: '404 Not Found'$"):
        await upload.url_metadata(f"{base}/missing", verify=True)


async def test_download_streams_and_verifies(http_server, tmp_path: Path):
    base, payload = http_server
    incoming = upload.IncomingFile(tmp_path, "boot.iso", "md5")
    assert await upload.download(f"{base}/pub/boot.iso", incoming, verify=True) == len(payload)
    incoming.commit(hashlib.md5(payload).hexdigest())
    assert (tmp_path / "boot.iso").read_bytes() == payload
    failed = upload.IncomingFile(tmp_path, "x.iso")
    with pytest.raises(StorageError, match="download failed: 404 Not Found"):
        await upload.download(f"{base}/nothing", failed, verify=True)
    failed.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.iso"]


# ------------------------------------------------------------ copy (PVE's imgcopy)

def test_copy_resolves_volume_ids_as_pve() -> None:
    from binome.api.methods.storage_content import real_volume_id

    assert real_volume_id("local", "100/vm-100-disk-0.raw", "volume") == \
        "local:100/vm-100-disk-0.raw"
    assert real_volume_id("local", "local:100/vm-100-disk-0.raw", "target") == \
        "local:100/vm-100-disk-0.raw"
    for storage, volume, text in (("local", "other:100/vm-100-disk-0.raw",
                                   "storage ID mismatch (other != local)"),
                                  (None, "100/vm-100-disk-0.raw",
                                   "no storage specified - incomplete volume ID")):
        with pytest.raises(ParamError) as info:
            real_volume_id(storage, volume, "target")
        assert info.value.errors == {"target": text}


def test_copy_volume_writes_the_data_and_leaves_nothing_on_failure(tmp_path) -> None:
    import asyncio

    from binome.storage.base import StorageConfig, StorageError
    from binome.storage.copy import copy_volume
    from binome.storage.dir import DirStorage

    a = DirStorage(StorageConfig("a", "dir", path=str(tmp_path / "a")))
    b = DirStorage(StorageConfig("b", "dir", path=str(tmp_path / "b")))
    src = asyncio.run(a.alloc(100, 1 << 20, "raw"))
    with open(a.path(src), "r+b") as f:
        f.seek(4096)
        f.write(b"binome copy check")
    lines: list[str] = []
    made = asyncio.run(copy_volume(a, src, b, "b:101/vm-101-disk-3.qcow2", lines.append))
    assert made == "b:101/vm-101-disk-3.qcow2" and lines
    raw = tmp_path / "out.raw"
    import subprocess
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(b.path(made)), str(raw)],
                   check=True)
    data = raw.read_bytes()
    assert len(data) == 1 << 20 and data[4096:4113] == b"binome copy check"
    # an existing target is refused; a source that is no disk image too
    with pytest.raises(StorageError, match="already exists"):
        asyncio.run(copy_volume(a, src, b, made))
    with pytest.raises(StorageError):
        asyncio.run(copy_volume(a, "a:iso/x.iso", b, "b:101/vm-101-disk-4.raw"))
    assert sorted(p.name for p in (tmp_path / "b" / "images" / "101").iterdir()) == [
        "vm-101-disk-3.qcow2"]
