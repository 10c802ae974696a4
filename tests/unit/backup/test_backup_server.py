"""The backup server's protocol with its real client over real HTTPS (one process, a
server thread): dedup and incremental uploads, restore, the pinned fingerprint, tokens,
index checks, GC against a running backup, and restore from the directory alone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from argon2 import PasswordHasher

from binome.backup.chunkstore import encode_blob
from binome.backup.crypt import CryptConfig, CryptError, new_key_file
from binome.backup.datastore import SnapshotRef
from binome.backup.dumpstore import GUEST_CONFIG, DumpStore, backup_name
from binome.backup.index import FixedIndex
from binome.backup.prune import PruneOptions
from binome.backup.reader import restore_image
from binome.backup.remote import (
    BackupServerClient,
    FingerprintMismatch,
    RemoteDumpStore,
    RemoteError,
    normalize_fingerprint,
)
from binome.backup.server import (
    BackupServer,
    TokenStore,
    create_datastore,
    ensure_certificate,
    ensure_data_dir,
    tls_context,
)
from binome.backup.server_main import main as server_main
from binome.backup.writer import BackupStats, backup_image

CHUNK = 64 * 1024
TOKEN = "backup@pbs!cluster"


@dataclass
class Running:
    server: BackupServer
    data_dir: Path
    port: int
    fingerprint: str
    secret: str

    def client(self, **changes: str) -> BackupServerClient:
        args = {"datastore": "main", "token_id": TOKEN, "secret": self.secret,
                "fingerprint": self.fingerprint, **changes}
        return BackupServerClient("127.0.0.1", self.port, args["datastore"],
                                  args["token_id"], args["secret"], args["fingerprint"])

    def store(self, **changes: str) -> RemoteDumpStore:
        return RemoteDumpStore(self.client(**changes), "pbs1")

    def local(self) -> DumpStore:
        return DumpStore(self.data_dir / "datastores" / "main", "main")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "server"
    ensure_data_dir(data_dir)
    fingerprint = ensure_certificate(data_dir)
    create_datastore(data_dir, "main")
    # argon2 at its lowest cost: the hashing is argon2's, the checks are what is tested
    tokens = TokenStore(data_dir, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    secret = tokens.create(TOKEN)
    server = BackupServer(data_dir, gc_grace=0, tokens=tokens)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop = asyncio.Event()

    async def run() -> None:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls_context(data_dir))
        await site.start()
        port.append(runner.addresses[0][1])
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(10), "server did not start"
    try:
        yield Running(server, data_dir, port[0], fingerprint, secret)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _image(path: Path, chunks: int = 6) -> Path:
    path.write_bytes(b"".join(bytes([i + 1]) * CHUNK for i in range(chunks)) + b"tail")
    return path


def _backup(store: RemoteDumpStore, source: Path, when: int, **kwargs: object):
    writer = store.begin("vm", "100", when)
    writer.add_file(GUEST_CONFIG, b"name: web\nmemory: 64\n")
    stats = backup_image(writer, "drive-virtio0.img.fidx", source, chunk_size=CHUNK,
                         **kwargs)  # type: ignore[arg-type]
    return writer.commit(notes="nightly"), stats


def test_backup_dedup_list_and_restore_through_the_server(running: Running,
                                                          tmp_path: Path) -> None:
    store = running.store()
    source = _image(tmp_path / "disk.raw")
    ref, first = _backup(store, source, 1_700_000_000)
    assert first.chunks_new == 7 and first.chunks_reused == 0
    # the same disk again: every chunk is known, nothing is uploaded
    again, second = _backup(store, source, 1_700_000_100)
    assert second.chunks_new == 0 and second.chunks_reused == 7 and second.bytes_stored == 0
    assert store.snapshots() == [ref, again]
    (entry, _) = store.listing("100")
    assert entry["name"] == backup_name(ref) and entry["notes"] == "nightly"
    assert entry["size"] == source.stat().st_size
    assert store.guest_config(ref) == "name: web\nmemory: 64\n"
    # the server's directory is a plain DumpStore: the same backups, the same names
    assert running.local().snapshots() == [ref, again]
    restored = tmp_path / "restored.raw"
    stats = restore_image(store, ref, "drive-virtio0.img.fidx", restored)  # type: ignore[arg-type]
    assert restored.read_bytes() == source.read_bytes()
    assert stats.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()


def test_incremental_backup_uploads_only_the_dirty_chunks(running: Running,
                                                          tmp_path: Path) -> None:
    store = running.store()
    source = _image(tmp_path / "disk.raw")
    ref, _ = _backup(store, source, 1_700_000_000)
    previous = store.read_index(ref, "drive-virtio0.img.fidx")
    with open(source, "r+b") as disk:          # the guest changes chunk 2
        disk.seek(2 * CHUNK + 10)
        disk.write(b"changed")
    before = running.server.authenticated_requests
    ref2, stats = _backup(store, source, 1_700_000_100, previous=previous,
                          dirty=[(2 * CHUNK + 10, 7)])
    assert stats.incremental and stats.full_reason is None
    assert stats.bytes_read == CHUNK and stats.chunks_new == 1
    # begin, the batch 'missing', one 'contains' and one upload, config, index, commit
    assert running.server.authenticated_requests - before == 7
    restored = tmp_path / "restored.raw"
    restore_image(store, ref2, "drive-virtio0.img.fidx", restored)  # type: ignore[arg-type]
    assert restored.read_bytes() == source.read_bytes()


def test_a_wrong_fingerprint_sends_nothing(running: Running) -> None:
    wrong = normalize_fingerprint("ab" * 32)
    store = running.store(fingerprint=wrong)
    with pytest.raises(FingerprintMismatch, match="does not match the configured"):
        store.snapshots()
    with pytest.raises(FingerprintMismatch):
        store.begin("vm", "100")
    assert running.server.authenticated_requests == 0
    assert running.local().staging_dirs() == []


def test_tokens_are_checked_and_never_stored_in_clear(running: Running) -> None:
    with pytest.raises(RemoteError, match="authentication failure"):
        running.store(secret="not-the-secret").snapshots()
    with pytest.raises(RemoteError, match="authentication failure"):
        running.store(token_id="root@pam!other").snapshots()
    stored = (running.data_dir / "tokens.json").read_text()
    assert running.secret not in stored and json.loads(stored)[TOKEN].startswith("$argon2")
    assert oct((running.data_dir / "tokens.json").stat().st_mode)[-3:] == "600"
    assert running.secret not in repr(running.client())
    assert running.store().snapshots() == []


def test_unknown_datastore_and_bad_input_are_clear_errors(running: Running) -> None:
    with pytest.raises(RemoteError, match="datastore 'other' does not exist"):
        running.store(datastore="other").snapshots()
    client = running.client()
    with pytest.raises(RemoteError, match="bad chunk digest"):
        client.request("POST", "/chunks/missing", json_body={"digests": ["zz"]})
    with pytest.raises(RemoteError, match="no such backup writer"):
        client.request("PUT", "/writer/nope/chunk/" + "00" * 32, body=b"x")


def test_an_index_naming_absent_chunks_or_a_corrupt_chunk_is_refused(
        running: Running) -> None:
    store = running.store()
    writer = store.begin("vm", "100", 1_700_000_000)
    with pytest.raises(RemoteError, match="does not hold"):
        writer.add_index("drive-virtio0.img.fidx",
                         FixedIndex(size=CHUNK, chunk_size=CHUNK, digests=[b"\1" * 32]))
    with pytest.raises(RemoteError, match=r"CRC mismatch|does not match"):
        store.chunks.insert(b"\2" * 32, b"\x31\xb9\x58\x42\x6f\xb6\xa3\x7f" + b"\0" * 20)
    writer.abort()
    assert store.snapshots() == [] and running.local().staging_dirs() == []


def test_gc_keeps_the_chunks_of_a_backup_being_written(running: Running,
                                                       tmp_path: Path) -> None:
    store = running.store()
    local = running.local()
    old, _ = _backup(store, _image(tmp_path / "old.raw", chunks=2), 1_700_000_000)
    old_index = store.read_index(old, "drive-virtio0.img.fidx")
    # every chunk on disk looks old, as after days of no backups
    for path in local.chunks.base.rglob("*"):
        if path.is_file():
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    # a backup starts: it reuses the old backup's chunks (asked with 'missing') and
    # uploads a new one; meanwhile the old backup is pruned and GC runs
    writer = store.begin("vm", "100", 1_700_000_100)
    assert store.chunks.missing(old_index.digests) == []
    fresh = _image(tmp_path / "new.raw", chunks=1)
    backup_image(writer, "drive-virtio0.img.fidx", fresh, chunk_size=CHUNK)
    store.remove(old)
    lines: list[str] = []
    store.collect_garbage(lines.append)
    assert "Removed chunks: 0" in lines, lines
    for digest in old_index.digests:
        assert local.chunks.contains(digest)
    writer.commit()
    # once no backup references them and none is being written, GC frees them
    store.remove(store.snapshots()[0])
    for path in local.chunks.base.rglob("*"):
        if path.is_file():
            os.utime(path, (time.time() - 3600, time.time() - 3600))
    lines.clear()
    store.collect_garbage(lines.append)
    assert "Disk chunks: 0" in lines, lines


def test_prune_verify_and_protection_on_the_server(running: Running, tmp_path: Path) -> None:
    store = running.store()
    source = _image(tmp_path / "disk.raw", chunks=2)
    refs = [_backup(store, source, 1_700_000_000 + i * 86_400)[0] for i in range(3)]
    store.set_protected(refs[0], True)
    marks = store.prune_group("vm", "100", PruneOptions(keep_last=1), dry_run=True)
    assert [str(marks[r]) for r in refs] == ["protected", "remove", "keep"]
    assert store.snapshots() == refs
    store.prune_group("vm", "100", PruneOptions(keep_last=1))
    assert store.snapshots() == [refs[0], refs[2]]
    with pytest.raises(RemoteError, match="protected"):
        store.remove(refs[0])
    # a flipped byte in a chunk is found by verify and the backup marked failed
    digest = store.read_index(refs[2], "drive-virtio0.img.fidx").digests[0]
    path = running.local().chunks.path(digest)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    lines: list[str] = []
    failed = store.verify_backups([refs[2]], lines.append)
    assert failed == [backup_name(refs[2])]
    (entry,) = [e for e in store.listing("100") if e["name"] == backup_name(refs[2])]
    assert entry["verification"]["state"] == "failed"


def test_a_restarted_server_drops_unfinished_backups(running: Running) -> None:
    store = running.store()
    store.begin("vm", "100", 1_700_000_000)
    assert len(running.local().staging_dirs()) == 1
    BackupServer(running.data_dir).drop_stale_staging()
    assert running.local().staging_dirs() == []
    assert running.local().oldest_writer_start() is None


def test_restore_from_the_server_directory_alone(running: Running, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = _image(tmp_path / "disk.raw")
    ref, _ = _backup(running.store(), source, 1_700_000_000)
    data = ["--data-dir", str(running.data_dir)]
    assert server_main([*data, "list", "--datastore", "main"]) == 0
    assert f"{backup_name(ref)}  size={source.stat().st_size}  disks=virtio0" in (
        capsys.readouterr().out)
    out = tmp_path / "out.raw"
    assert server_main([*data, "restore-file", "--datastore", "main",
                        f"pbs1:backup/{backup_name(ref)}", "virtio0", str(out)]) == 0
    assert out.read_bytes() == source.read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() in capsys.readouterr().out
    conf = tmp_path / "100.conf"
    assert server_main([*data, "restore-file", "--datastore", "main", backup_name(ref),
                        "config", str(conf)]) == 0
    assert conf.read_text() == "name: web\nmemory: 64\n"
    assert server_main([*data, "restore-file", "--datastore", "main", backup_name(ref),
                        "scsi1", str(out)]) == 1
    assert "has no disk 'scsi1' (it has: virtio0)" in capsys.readouterr().err


def test_a_writer_whose_client_went_away_is_aborted(running: Running) -> None:
    store = running.store()
    writer = store.begin("vm", "100", 1_700_000_000)
    assert running.local().oldest_writer_start() is not None     # GC holds back for it
    assert running.server.reap_idle_sessions(idle=900) == []     # just used: kept
    assert running.server.reap_idle_sessions(idle=900, now=time.monotonic() + 901) == [
        backup_name(writer.ref)]
    assert running.local().staging_dirs() == []
    assert running.local().oldest_writer_start() is None
    with pytest.raises(RemoteError, match="idle too long"):
        writer.commit()
    usage = store.status()
    assert usage["total"] > 0 and 0 <= usage["used"] <= usage["total"]


async def test_the_binome_backup_storage_lists_and_changes_backups(running: Running,
                                                                   tmp_path: Path) -> None:
    from binome.storage.backup_server import BackupServerStorage
    from binome.storage.base import StorageConfig, StorageError

    config = StorageConfig("pbs1", "binome-backup", content=("backup",), shared=True,
                           options={"server": "127.0.0.1", "port": running.port,
                                    "datastore": "main", "username": TOKEN,
                                    "fingerprint": running.fingerprint})
    storage = BackupServerStorage(config, "n1", running.secret)
    ref, _ = await asyncio.to_thread(_backup, storage.backup_store(),
                                     _image(tmp_path / "disk.raw", chunks=2), 1_700_000_000)
    volid = f"pbs1:backup/{backup_name(ref)}"
    (entry,) = await storage.list("backup", 100)
    assert entry == {"volid": volid, "content": "backup", "format": "binome",
                     "size": 2 * CHUNK + 4, "ctime": 1_700_000_000, "vmid": 100,
                     "subtype": "qemu", "protected": 0, "notes": "nightly"}
    assert await storage.list("images") == [] and await storage.list("backup", 101) == []
    await storage.set_backup_attributes(volid, notes="kept", protected=True)
    (entry,) = await storage.list()
    assert entry["notes"] == "kept" and entry["protected"] == 1
    with pytest.raises(StorageError, match="protected"):
        await storage.free(volid)
    await storage.set_backup_attributes(volid, protected=False)
    await storage.free(volid)
    assert await storage.list() == []
    status = await storage.status()
    assert status["active"] == 1 and status["total"] > 0
    with pytest.raises(StorageError, match="holds backups only"):
        await storage.alloc(100, 1 << 20)
    # no secret stored, or a server that is not there: clear errors, inactive status
    with pytest.raises(StorageError, match="no token secret"):
        await BackupServerStorage(config, "n1", None).list()
    gone = StorageConfig("pbs2", "binome-backup", content=("backup",),
                         options={**config.options, "port": 1})
    assert (await BackupServerStorage(gone, "n1", running.secret).status())["active"] == 0
    with pytest.raises(StorageError, match="cannot connect to backup server"):
        await BackupServerStorage(gone, "n1", running.secret).list()


MARKER = b"GUEST-PLAINTEXT-MARKER:"


def _secret_image(path: Path, chunks: int = 4) -> Path:
    path.write_bytes(b"".join(MARKER * (CHUNK // len(MARKER)) + bytes([i]) * (
        CHUNK % len(MARKER)) for i in range(chunks)))
    return path


def _encrypted_backup(store: RemoteDumpStore, source: Path, when: int,
                      **kwargs: object) -> tuple[SnapshotRef, BackupStats]:
    writer = store.begin("vm", "100", when)
    assert writer.crypt is store.crypt is not None
    writer.add_file(GUEST_CONFIG, encode_blob(b"name: secret-web\n", store.crypt))
    stats = backup_image(writer, "drive-virtio0.img.fidx", source, chunk_size=CHUNK,
                         **kwargs)  # type: ignore[arg-type]
    return writer.commit(), stats


def test_encrypted_backups_through_the_server(running: Running, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    key_text, crypt = new_key_file()
    store = RemoteDumpStore(running.client(), "pbs1", crypt)
    source = _secret_image(tmp_path / "disk.raw")
    ref, first = _encrypted_backup(store, source, 1_700_000_000)
    assert first.chunks_new == 4
    # the server holds ciphertext only: neither the disk's data nor the config
    for path in running.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes() and b"secret-web" not in path.read_bytes()
    (entry,) = store.listing("100")
    assert entry["crypt-fingerprint"] == crypt.fingerprint
    assert store.guest_config(ref) == "name: secret-web\n"
    restored = tmp_path / "restored.raw"
    restore_image(store, ref, "drive-virtio0.img.fidx", restored,
                  crypt=crypt)
    assert restored.read_bytes() == source.read_bytes()
    # the same key deduplicates, and an incremental backup reuses the previous index
    previous = store.read_index(ref, "drive-virtio0.img.fidx")
    ref2, again = _encrypted_backup(RemoteDumpStore(running.client(), "pbs1", crypt), source,
                                    1_700_000_100, previous=previous, dirty=[(0, 1)])
    assert again.incremental and again.chunks_new == 0 and again.bytes_read == CHUNK
    # the server's verify works on ciphertext (CRC and presence: it has no key)
    lines: list[str] = []
    assert store.verify_backups([ref, ref2], lines.append) == []
    # wrong key, no key: refused before anything is read
    with pytest.raises(CryptError, match="wrong key"):
        RemoteDumpStore(running.client(), "pbs1",
                        CryptConfig.generate()[0]).authenticated_manifest(ref)
    with pytest.raises(CryptError, match="no encryption key"):
        running.store().authenticated_manifest(ref)
    with pytest.raises(CryptError, match="guest config"):
        running.store().guest_config(ref)
    # restore from the server's directory alone needs the key file
    data = ["--data-dir", str(running.data_dir)]
    out = tmp_path / "out.raw"
    assert server_main([*data, "restore-file", "--datastore", "main", backup_name(ref),
                        "virtio0", str(out)]) == 1
    assert "no encryption key" in capsys.readouterr().err and not out.exists()
    keyfile = tmp_path / "pbs1.enc"
    keyfile.write_text(key_text)
    assert server_main([*data, "restore-file", "--datastore", "main", backup_name(ref),
                        "virtio0", str(out), "--keyfile", str(keyfile)]) == 0
    assert out.read_bytes() == source.read_bytes()
    conf = tmp_path / "100.conf"
    assert server_main([*data, "restore-file", "--datastore", "main", backup_name(ref),
                        "config", str(conf), "--keyfile", str(keyfile)]) == 0
    assert conf.read_text() == "name: secret-web\n"
    # the server rewrites the manifest (drops the signature, claims it is plain):
    # a storage with the key refuses it
    manifest = running.local().snapshot_dir(ref) / "index.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(dict(doc, signature=None)))
    with pytest.raises(CryptError, match="signature mismatch"):
        RemoteDumpStore(running.client(), "pbs1", crypt).authenticated_manifest(ref)
    manifest.write_text(json.dumps({**doc, "crypt-fingerprint": None, "signature": None}))
    with pytest.raises(CryptError, match="is not encrypted"):
        RemoteDumpStore(running.client(), "pbs1", crypt).guest_config(ref)
    manifest.write_text(json.dumps(doc))
    # ... or serves the newer backup's index as the older's: not the signed one
    older_index = running.local().snapshot_dir(ref) / "drive-virtio0.img.fidx"
    with open(source, "r+b") as disk:
        disk.write(b"changed")
    ref3, _ = _encrypted_backup(store, source, 1_700_000_200)
    older_index.write_bytes(
        (running.local().snapshot_dir(ref3) / "drive-virtio0.img.fidx").read_bytes())
    with pytest.raises(CryptError, match="does not match the signed manifest"):
        RemoteDumpStore(running.client(), "pbs1", crypt).read_index(
            ref, "drive-virtio0.img.fidx")
    # a commit with a malformed signature is refused by the server
    writer = store.begin("vm", "100", 1_700_000_300)
    with pytest.raises(RemoteError, match="bad crypt-fingerprint or signature"):
        store.client.request("POST", f"/writer/{writer.writer_id}/commit",
                             json_body={"crypt-fingerprint": crypt.fingerprint,
                                        "signature": "zz"})


async def test_the_storage_key_file(running: Running, tmp_path: Path) -> None:
    from binome.storage.backup_server import BackupServerStorage, write_key_file
    from binome.storage.base import StorageConfig, StorageError

    key_text, crypt = new_key_file()
    config = StorageConfig("vault", "binome-backup", content=("backup",), shared=True,
                           options={"server": "127.0.0.1", "port": running.port,
                                    "datastore": "main", "username": TOKEN,
                                    "fingerprint": running.fingerprint,
                                    "encryption-key": crypt.fingerprint})
    key_dir = tmp_path / "priv" / "storage"
    storage = BackupServerStorage(config, "n2", running.secret, key_dir)
    # the definition says encrypted, this node has no key: refused, never plain
    with pytest.raises(StorageError, match="node 'n2' has no key file"):
        storage.backup_store()
    path = write_key_file(key_dir, "vault", key_text)
    assert path.stat().st_mode & 0o777 == 0o600 and key_dir.stat().st_mode & 0o777 == 0o700
    store = storage.backup_store()
    assert store.crypt is not None and store.crypt.fingerprint == crypt.fingerprint
    ref, _ = await asyncio.to_thread(_encrypted_backup, store,
                                     _secret_image(tmp_path / "d.raw", 1), 1_700_000_000)
    (entry,) = await storage.list("backup")
    assert entry["encrypted"] == crypt.fingerprint
    assert key_text not in str(entry) and str(crypt) not in str(entry)
    write_key_file(key_dir, "vault", new_key_file()[0])     # another key in its place
    with pytest.raises(StorageError, match="not the storage's"):
        storage.backup_store()
    # listing and notes need no key
    assert len(await storage.list("backup")) == 1
    await storage.set_backup_attributes(f"vault:backup/{backup_name(ref)}", notes="n")
