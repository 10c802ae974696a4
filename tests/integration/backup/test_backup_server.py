"""The disaster drill: a backup server outlives the whole cluster.

A real `binome-backup-server` process serves a datastore over HTTPS. Cluster A (a real
etcd + binomed node) adds it as a `binome-backup` storage, backs up a running guest
(full, then incremental through the dirty bitmap: only the changed chunk is read and
sent), and is then destroyed completely (processes stopped, state directory deleted).
A fresh cluster B adds the same storage, lists the backups, restores the guest and gets
the disk's bytes as they were at the backup's instant; prune, verify and GC run there.
A storage with a wrong fingerprint fails with a clear error and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.backup.test_vzdump import (
    DISK,
    DISK_MIB,
    Console,
    create_vm,
    fill_disk,
    image_path,
    sha256_of,
    task_log,
    wait_shell,
    wait_task,
)
from tests.integration.conftest import _nets, _require_tools
from tests.integration.harness import PASSWORD, Cluster, wait_for

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None
                                or shutil.which("qemu-nbd") is None,
                                reason="QEMU (qemu-system-x86, qemu-utils) is not installed")

SERVER = Path(sys.executable).parent / "binome-backup-server"
TOKEN = "backup@pbs!drill"
VMID = 950


@dataclass
class BackupServerProcess:
    data_dir: Path
    port: int
    fingerprint: str
    secret: str
    log: Path

    def storage_params(self, **changes: object) -> dict[str, object]:
        return {"storage": "offsite", "type": "binome-backup", "server": "127.0.0.1",
                "port": self.port, "datastore": "main", "username": TOKEN,
                "password": self.secret, "fingerprint": self.fingerprint, **changes}

    def cli(self, *args: str) -> str:
        return subprocess.run([str(SERVER), "--data-dir", str(self.data_dir), *args],
                              check=True, capture_output=True, text=True).stdout


@pytest.fixture
def backup_server(tmp_path: Path) -> Iterator[BackupServerProcess]:
    data_dir = tmp_path / "backup-server"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*args: str) -> str:
        return subprocess.run([str(SERVER), "--data-dir", str(data_dir), *args], check=True,
                              capture_output=True, text=True).stdout

    fingerprint = run("init").split("fingerprint: ")[1].strip()
    run("datastore-create", "main")
    created = run("token-create", TOKEN)
    secret = re.search(r"^secret: (\S+)$", created, re.M)
    assert secret is not None, created
    log = tmp_path / "backup-server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([str(SERVER), "--data-dir", str(data_dir), "serve",
                                    "--listen", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "listening on" in log.read_text(), 20, "backup server listening")
        assert run("fingerprint").strip() == fingerprint
        yield BackupServerProcess(data_dir, port, fingerprint, secret[1], log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _stop(cluster: Cluster) -> None:
    """Stop the cluster and the guest QEMU it started, even after a failed assertion."""
    pidfile = cluster["n1"].state_dir / "run" / "qemu" / f"{VMID}.pid"
    cluster.stop()
    try:
        pid = int(pidfile.read_text().strip())
        if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():   # ours, not a reused pid
            os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass   # not running (the normal case: the test stops its guest)


def _cluster(root: Path) -> Cluster:
    _require_tools()
    root.mkdir(parents=True)
    cluster = Cluster(root, next(_nets))
    try:
        cluster.create()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _api(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    from binome.lab.image import build_image

    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.kernel, iso / "vmlinuz")
    shutil.copyfile(image.initrd, iso / "initrd.gz")
    return ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                      verify_ssl=False, timeout=30)


def _log(px, upid: str) -> list[str]:
    return [line["t"] for line in px.nodes("n1").tasks(upid).log.get(limit=1000)]


def _disk(cluster: Cluster, volid: str) -> Path:
    storage, volname = volid.split(",")[0].split(":")
    assert storage == "local"
    return cluster["n1"].state_dir / "storage" / "local" / "images" / volname


def _content(px) -> list[dict]:
    listed = px.nodes("n1").storage("offsite").content.get(content="backup")
    return sorted(listed, key=lambda b: b["ctime"])


MARKER = b"BINOME-PLAINTEXT-MARKER-4d1f"


def _datastore_files(backup_server: BackupServerProcess, name: str) -> list[Path]:
    return [p for p in (backup_server.data_dir / "datastores" / name).rglob("*")
            if p.is_file()]


def _encrypted_backups(px, cluster: Cluster, backup_server: BackupServerProcess) -> str:
    """Client-side encryption: a storage with `encryption-key=autogen` on its own
    datastore; the running guest is backed up to it (then incrementally, deduplicated
    under the same key). The server's files hold no plaintext, the API never shows the
    key. Returns the key file, as the admin keeps it off the cluster."""
    from proxmoxer import ResourceException

    backup_server.cli("datastore-create", "vault")
    for storage, changes, error in (
            ("badkey", {"type": "binome-backup", "encryption-key": '{"kdf": null, '
                                                                   '"data": "AAAA"}'},
             "32 bytes"),
            ("dirkey", {"type": "dir", "path": "/tmp/x", "server": None, "datastore": None,
                        "username": None, "password": None, "fingerprint": None,
                        "port": None, "encryption-key": "autogen"},
             "not an option of storage type 'dir'")):
        params = {k: v for k, v in backup_server.storage_params(storage=storage,
                                                                **changes).items()
                  if v is not None}
        with pytest.raises(ResourceException) as bad:
            px.storage.post(**params)
        assert "encryption-key" in str(bad.value) and error in str(bad.value), bad.value
    assert {"badkey", "dirkey"}.isdisjoint(s["storage"] for s in px.storage.get())
    px.storage.post(**backup_server.storage_params(storage="vault", datastore="vault",
                                                   **{"encryption-key": "autogen"}))
    key_file = cluster["n1"].state_dir / "priv" / "storage" / "vault.enc"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key_text = key_file.read_text()
    fingerprint = json.loads(key_text)["fingerprint"]
    listed = {s["storage"]: s for s in px.storage.get()}
    assert listed["vault"]["encryption-key"] == fingerprint
    assert json.loads(key_text)["data"] not in str(px.storage.get())
    node = px.nodes("n1")
    first = time.time()
    upid = node.vzdump.post(vmid=str(VMID), storage="vault")
    assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
    log = _log(px, upid)
    assert f"INFO: encrypting the backup (key fingerprint {fingerprint})" in log, log
    # a backup is named by its start second (as PVE's): two of one guest in one second
    # collide ("already exists"), so the incremental one starts in the next second
    wait_for(lambda: int(time.time()) > int(first), 2, "the next second")
    upid = node.vzdump.post(vmid=str(VMID), storage="vault")
    assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
    log = _log(px, upid)
    assert any(line.startswith("INFO: using fast incremental mode") for line in log), log
    assert any(" in 0 new chunks" in line for line in log), log
    (entry, _) = px.nodes("n1").storage("vault").content.get(content="backup")
    assert entry["encrypted"] == fingerprint
    # the marker is in the plain datastore's chunks (so this check can fail), never in
    # the encrypted one's
    assert any(MARKER in p.read_bytes() for p in _datastore_files(backup_server, "main"))
    vault = _datastore_files(backup_server, "vault")
    assert len(vault) > 5 and not any(MARKER in p.read_bytes() for p in vault)
    assert not any(b"name: drill" in p.read_bytes() for p in vault)   # nor the config
    return key_text


def _encrypted_restores(px, cluster: Cluster, backup_server: BackupServerProcess,
                        key_text: str, expected: str) -> None:
    """On the fresh cluster: with the saved key file the encrypted backup restores to the
    same bytes and verifies; with another key, or none, the restore is refused and leaves
    nothing behind."""
    node = px.nodes("n1")
    px.storage.post(**backup_server.storage_params(storage="vault", datastore="vault",
                                                   **{"encryption-key": key_text}))
    newest = sorted(node.storage("vault").content.get(content="backup"),
                    key=lambda b: b["ctime"])[-1]
    upid = node.qemu.post(vmid=VMID + 1, archive=newest["volid"], storage="local")
    assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
    assert any("manifest signature ok" in line for line in _log(px, upid))
    config = node.qemu(VMID + 1).config.get()
    assert config["name"] == "drill"
    assert sha256_of(_disk(cluster, config["virtio0"]), "qcow2") == expected
    upid = node.storage("vault").verify.post()
    assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
    name = newest["volid"].split(":", 1)[1]
    for storage, changes, reason in (
            ("wrongkey", {"encryption-key": "autogen"}, "- wrong key"),
            ("nokey", {}, "this storage has no encryption key")):
        px.storage.post(**backup_server.storage_params(storage=storage, datastore="vault",
                                                       **changes))
        upid = node.qemu.post(vmid=VMID + 2, archive=f"{storage}:{name}", storage="local")
        assert wait_task(px, upid)["exitstatus"] != "OK"
        assert any(reason in line for line in _log(px, upid)), _log(px, upid)
        assert VMID + 2 not in [vm["vmid"] for vm in node.qemu.get()]
        assert not node.storage("local").content.get(vmid=VMID + 2)


def test_a_backup_server_outlives_its_cluster(tmp_path: Path,
                                              backup_server: BackupServerProcess) -> None:
    from proxmoxer import ResourceException

    from binome.lab.image import build_image

    # ---------------------------------------------------------------- cluster A
    first = _cluster(tmp_path / "a")
    try:
        px = _api(first)
        px.storage.post(**backup_server.storage_params())
        px.storage.post(**backup_server.storage_params(
            storage="spoofed", fingerprint=":".join(["AB"] * 32)))
        listed = {s["storage"]: s for s in px.storage.get()}
        assert listed["offsite"]["type"] == "binome-backup"
        assert listed["offsite"]["fingerprint"] == backup_server.fingerprint
        assert backup_server.secret not in str(listed) and "password" not in listed["offsite"]
        with pytest.raises(ResourceException) as bad:
            px.storage.post(**backup_server.storage_params(storage="nofp", fingerprint=None))
        assert "fingerprint" in str(bad.value)

        node = px.nodes("n1")
        upid = node.qemu.post(vmid=VMID, name="drill", memory=96, cores=1,
                              virtio0=f"local:{DISK_MIB / 1024},format=qcow2",
                              kernel="local:iso/vmlinuz", initrd="local:iso/initrd.gz",
                              vga="serial0", append=build_image().cmdline())
        assert wait_task(px, upid)["exitstatus"] == "OK"
        disk = _disk(first, node.qemu(VMID).config.get()["virtio0"])
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x41 0 {DISK}", str(disk)],
                       check=True, capture_output=True)

        # a pinned fingerprint that does not match: a clear error, nothing sent
        served_before = backup_server.log.read_text()
        upid = node.vzdump.post(vmid=str(VMID), storage="spoofed")
        assert wait_task(px, upid)["exitstatus"] != "OK"
        assert any("does not match the configured" in line for line in _log(px, upid)), \
            _log(px, upid)
        assert backup_server.log.read_text() == served_before   # not even a failed login

        wait_task(px, node.qemu(VMID).status.start.post())
        console = Console(first["n1"].state_dir / "run" / "qemu" / f"{VMID}.serial")
        wait_shell(console)
        # a marker in incompressible data (the chunk is stored as is when not encrypted)
        console(f"head -c 4194304 /dev/urandom > /tmp/r; printf {MARKER.decode()} | "
                f"dd of=/tmp/r bs=1 seek=2097152 conv=notrunc 2>/dev/null; dd if=/tmp/r "
                f"of=/dev/vda bs=1M seek=48 count=4 conv=notrunc 2>/dev/null; sync",
                timeout=60)
        upid = node.vzdump.post(vmid=str(VMID), storage="offsite")
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        log = _log(px, upid)
        assert any("on backup server 127.0.0.1" in line for line in log), log
        assert any(line.startswith(f"INFO: transferred {DISK_MIB}.0 MiB") for line in log)

        fill_disk(console, "B", range(40, 41))          # one 4 MiB chunk changes
        upid = node.vzdump.post(vmid=str(VMID), storage="offsite")
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        log = _log(px, upid)
        assert "INFO: using fast incremental mode (dirty-bitmap), 4.0 MiB dirty of 64.0 MiB " \
               "total" in log, log
        assert any(line.startswith("INFO: transferred 4.0 MiB in ") for line in log), log
        assert any(line.startswith("INFO: backup stored ") and " in 1 new chunks" in line
                   for line in log), log
        key_text = _encrypted_backups(px, first, backup_server)
        wait_task(px, node.qemu(VMID).status.stop.post())
        expected = sha256_of(disk, "qcow2")
        assert len(_content(px)) == 2
    finally:
        _stop(first)
    shutil.rmtree(tmp_path / "a")   # the whole cluster is gone: nothing of it is left

    # ---------------------------------------------------------------- cluster B
    second = _cluster(tmp_path / "b")
    try:
        px = _api(second)
        px.storage.post(**backup_server.storage_params())
        node = px.nodes("n1")
        _older, newest = _content(px)
        assert newest["volid"].startswith(f"offsite:backup/vzdump-qemu-{VMID}-")
        assert newest["format"] == "binome" and newest["size"] == DISK

        upid = node.qemu.post(vmid=VMID, archive=newest["volid"], storage="local")
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        config = node.qemu(VMID).config.get()
        assert config["name"] == "drill"
        assert sha256_of(_disk(second, config["virtio0"]), "qcow2") == expected
        wait_task(px, node.qemu(VMID).status.start.post())
        wait_for(lambda: node.qemu(VMID).status.current.get()["status"] == "running", 20,
                 "restored guest running")
        wait_shell(Console(second["n1"].state_dir / "run" / "qemu" / f"{VMID}.serial"))
        wait_task(px, node.qemu(VMID).status.stop.post())

        _encrypted_restores(px, second, backup_server, key_text, expected)

        upid = node.storage("offsite").verify.post()
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        upid = node.storage("offsite").prunebackups.delete(**{"prune-backups": "keep-last=1"})
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        assert [b["volid"] for b in _content(px)] == [newest["volid"]]
        assert _content(px)[0]["verification"] == {"state": "ok"}
        upid = node.storage("offsite").gc.post()
        assert wait_task(px, upid)["exitstatus"] == "OK", "\n".join(_log(px, upid))
        assert any(line.startswith("Removed chunks: ") for line in _log(px, upid))
    finally:
        _stop(second)

    # ---------------------------------------------------------------- no cluster at all
    restored = tmp_path / "disk.raw"
    out = backup_server.cli("restore-file", "--datastore", "main", newest["volid"], "virtio0",
                            str(restored))
    assert sha256_of(restored) == expected and expected in out
    assert os.path.getsize(restored) == DISK


def test_encrypted_backup_made_on_n1_restores_on_n2(
        cluster: Cluster, backup_server: BackupServerProcess, tmp_path: Path) -> None:
    """A binome-backup storage with `encryption-key=autogen` added through n1: its key
    file is sent to n2 over the cluster's authenticated API channel (0600, the same
    key; the witness gets none; not in etcd, not in any log), so a backup n1 makes
    restores on n2 to the same bytes. n2 refuses a key that is not the storage's."""
    from proxmoxer import ResourceException

    px = _api(cluster)            # the shared 2-node + witness cluster
    n2 = cluster["n2"]
    backup_server.cli("datastore-create", "keyed")
    storage, vmid = "keyed", 930
    logs_before = {n: (cluster[n].log_path.stat().st_size if cluster[n].log_path.exists()
                       else 0) for n in cluster.nodes}
    px.storage.post(**backup_server.storage_params(storage=storage, datastore="keyed",
                                                   **{"encryption-key": "autogen"}))
    try:
        files = {n: cluster[n].state_dir / "priv" / "storage" / f"{storage}.enc"
                 for n in cluster.nodes}
        key_text = files["n1"].read_text()
        secret = json.loads(key_text)["data"]
        assert files["n2"].read_text() == key_text
        assert files["n2"].stat().st_mode & 0o777 == 0o600
        assert not any(files[n].exists() for n in cluster.nodes if n not in ("n1", "n2"))
        for name, node in cluster.nodes.items():
            with open(node.log_path, "rb") as log:
                log.seek(logs_before[name])
                assert secret.encode() not in log.read(), f"the key is in {name}'s log"

        async def in_etcd() -> bool:
            store = cluster.raw_store("n1")
            try:
                return any(secret in json.dumps(e.value)
                           for e in await store.get_prefix("/binome/"))
            finally:
                await store.close()
        assert not asyncio.run(in_etcd())

        # a key that is not the storage's: refused by n2, its file unchanged
        other = tmp_path / "other.enc"
        other.write_text(json.dumps({**json.loads(key_text), "data": "A" * 44}))
        r = n2.cli("storage", "set-key", storage, "--key-file", str(other), check=False)
        assert r.returncode != 0 and "key" in r.stdout + r.stderr, r
        assert files["n2"].read_text() == key_text
        with pytest.raises(ResourceException) as denied:      # root@pam's alone
            px.nodes("n2").storage(storage)("encryption-key").post(key=key_text)
        assert denied.value.status_code == 403

        create_vm(px, vmid, f"local:{DISK_MIB / 1024},format=qcow2")
        disk = image_path(cluster, px.nodes("n1").qemu(vmid).config.get()["virtio0"])
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x3c 2M 1M", str(disk)],
                       check=True, capture_output=True)
        source_sum = sha256_of(disk, "qcow2")
        upid = px.nodes("n1").vzdump.post(vmid=str(vmid), storage=storage)
        assert wait_task(px, upid)["exitstatus"] == "OK", task_log(px, upid)
        assert any("encrypting the backup" in line for line in task_log(px, upid))
        (backup,) = px.nodes("n2").storage(storage).content.get(content="backup")
        upid = px.nodes("n2").qemu.post(vmid=vmid + 1, archive=backup["volid"],
                                        storage="local")
        status = wait_task(px, upid)
        assert status["exitstatus"] == "OK", status
        config = px.nodes("n2").qemu(vmid + 1).config.get()
        volname = config["virtio0"].split(",")[0].split(":")[1]
        restored = n2.state_dir / "storage" / "local" / "images" / volname
        assert sha256_of(restored, "qcow2") == source_sum
    finally:
        for where, target in (("n1", vmid), ("n2", vmid + 1)):
            with contextlib.suppress(ResourceException):
                wait_task(px, px.nodes(where).qemu(target).delete())
        _forget_storage(cluster, storage)


def _forget_storage(cluster: Cluster, storage: str) -> None:
    """The test's storage removed through the API (definition and secret), and its key
    files, which binome leaves on the nodes (a lost key loses every backup made with
    it: removing them is the admin's act), so the shared cluster is as before."""
    cluster["n1"].cli("storage", "remove", storage)
    for node in cluster.nodes.values():
        (node.state_dir / "priv" / "storage" / f"{storage}.enc").unlink(missing_ok=True)
