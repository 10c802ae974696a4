"""The client of a binome backup server: a datastore that lives on another machine.

Owns the client side of the protocol `binome.backup.server` serves. `RemoteDumpStore`
offers what the vzdump job, restore, listing, prune, verify and GC use of a local
`DumpStore` (same names, same volume ids), so `backup_image` and `restore_to` run
unchanged over it: `RemoteChunkStore` asks the server which chunks are missing and
uploads only those (an incremental backup reads and sends only its dirty chunks), and
loads chunks for a restore, each checked against its digest here.

With an encryption key (`crypt`, the storage's, never sent): chunks and the guest config
leave this node encrypted under keyed ids, the writer signs the manifest's protected
part and sends only the signature and the key's fingerprint with the commit, and every
manifest, index and file read back is checked against that signature
(`binome.backup.crypt`): the server holds nothing it could read or alter unnoticed.

Transport: HTTPS with the server's certificate pinned by SHA-256 fingerprint (checked
right after the TLS handshake, before any request is sent: a mismatch sends nothing),
one keep-alive connection per thread (the backup pipeline uploads from several), the
token secret in an `Authorization` header and nowhere else (never in a message).
Synchronous, like the local datastore: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from binome.backup.chunkstore import ChunkError, CryptConfig, chunk_digest, decode_blob
from binome.backup.crypt import file_entry
from binome.backup.datastore import MANIFEST, DatastoreError, SnapshotRef
from binome.backup.dumpstore import (
    GUEST_CONFIG,
    authenticated_manifest,
    backup_name,
    checked_file,
    checked_index,
    decode_guest_config,
    ref_of_name,
)
from binome.backup.index import FixedIndex, FixedIndexError, Manifest
from binome.backup.prune import Mark, PruneOptions, format_prune_backups

API = "/api2/binome"
_TIMEOUT = 120.0
# an unreachable server must not hold a storage listing for long (I/O then gets _TIMEOUT)
_CONNECT_TIMEOUT = 5.0
_MISSING_BATCH = 4096


class RemoteError(DatastoreError):
    """The backup server refused, failed or could not be reached; the message says why."""


class FingerprintMismatch(RemoteError):
    """The server's certificate is not the pinned one: nothing was sent to it."""


def fingerprint_of(cert_der: bytes) -> str:
    """PVE's fingerprint form: SHA-256 of the DER certificate, `AA:BB:...`."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(cert_der).digest())


def normalize_fingerprint(text: str) -> str:
    """`aa:bb...` or `aabb...` -> `AA:BB:...` (64 hex digits); ValueError otherwise."""
    raw = text.replace(":", "").strip().upper()
    if len(raw) != 64 or any(c not in "0123456789ABCDEF" for c in raw):
        raise ValueError("a fingerprint is 32 bytes of SHA-256 in hex (AA:BB:...)")
    return ":".join(raw[i:i + 2] for i in range(0, 64, 2))


class BackupServerClient:
    """HTTPS requests to one datastore of a backup server."""

    def __init__(self, server: str, port: int, datastore: str, token_id: str, secret: str,
                 fingerprint: str, timeout: float = _TIMEOUT) -> None:
        self.server, self.port, self.datastore = server, port, datastore
        self.token_id = token_id
        self._secret = secret
        self.fingerprint = normalize_fingerprint(fingerprint)
        self.timeout = timeout
        self._local = threading.local()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # trust is the pinned fingerprint (PVE's model for a PBS with a self-signed
        # certificate), checked in `_connection` before anything is sent
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._context = context

    def __repr__(self) -> str:
        return (f"BackupServerClient({self.server}:{self.port}, datastore={self.datastore}, "
                f"token={self.token_id})")

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn
        conn = http.client.HTTPSConnection(self.server, self.port, timeout=_CONNECT_TIMEOUT,
                                           context=self._context)
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as error:
            conn.close()
            raise RemoteError(f"cannot connect to backup server {self.server}:{self.port}: "
                              f"{error}") from None
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        der = conn.sock.getpeercert(binary_form=True) or b""
        seen = fingerprint_of(der)
        if seen != self.fingerprint:
            conn.close()
            raise FingerprintMismatch(
                f"backup server {self.server}:{self.port}: certificate fingerprint {seen} "
                f"does not match the configured {self.fingerprint} - refusing to connect")
        self._local.conn = conn
        return conn

    def request(self, method: str, path: str, *, body: bytes | None = None,
                json_body: Any = None, query: dict[str, Any] | None = None,
                raw: bool = False) -> Any:
        url = f"{API}/datastore/{quote(self.datastore)}{path}"
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Authorization": f"BinomeToken {self.token_id}:{self._secret}"}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/octet-stream"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, url, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as error:
                # a kept-alive connection the server closed meanwhile: once more, fresh
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise RemoteError(f"backup server {self.server}:{self.port}: "
                                      f"{error}") from None
            except (OSError, http.client.HTTPException) as error:
                conn.close()
                self._local.conn = None
                raise RemoteError(f"backup server {self.server}:{self.port}: "
                                  f"{error}") from None
        if response.status >= 400:
            try:
                reason = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                reason = data[:200].decode(errors="replace") or response.reason
            raise RemoteError(f"backup server: {reason}")
        if raw:
            return data
        return json.loads(data) if data else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class RemoteChunkStore:
    """The chunk side of a remote datastore, as `backup_image` and `restore_to` use it.

    Uploads belong to the current writer session (`writer_id`); chunks already
    uploaded or found present in this session are remembered, so each is asked once.
    """

    def __init__(self, client: BackupServerClient) -> None:
        self.client = client
        self.writer_id: str | None = None
        self.base = f"https://{client.server}:{client.port}/{client.datastore}"
        self._known: set[bytes] = set()
        self._lock = threading.Lock()

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        """Those of `digests` the server lacks; it touches the others (GC keeps them)."""
        unique = list(dict.fromkeys(digests))
        missing: list[bytes] = []
        for start in range(0, len(unique), _MISSING_BATCH):
            batch = unique[start:start + _MISSING_BATCH]
            answer = self.client.request("POST", "/chunks/missing",
                                         json_body={"digests": [d.hex() for d in batch]})
            absent = {bytes.fromhex(d) for d in answer["missing"]}
            missing += [d for d in batch if d in absent]
            with self._lock:
                self._known.update(d for d in batch if d not in absent)
        return missing

    def contains(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._known:
                return True
        return not self.missing([digest])

    def touch(self, digest: bytes) -> None:
        """Nothing to do: `missing` touched the chunks on the server."""

    def path(self, digest: bytes) -> Path:
        # backup_image groups new chunks by directory to fsync them: the server does
        return Path("/")

    def sync_dirs(self, directories: Iterable[Path]) -> None:
        """The server makes chunk names durable before it accepts an index."""

    def insert(self, digest: bytes, blob: bytes, *, sync_dir: bool = True) -> bool:
        if self.writer_id is None:
            raise RemoteError("no backup is being written")
        answer = self.client.request("PUT", f"/writer/{self.writer_id}/chunk/{digest.hex()}",
                                     body=blob)
        with self._lock:
            self._known.add(digest)
        return bool(answer["new"])

    def load(self, digest: bytes) -> bytes:
        try:
            return bytes(self.client.request("GET", f"/chunk/{digest.hex()}", raw=True))
        except RemoteError as error:
            raise ChunkError(f"chunk {digest.hex()}: {error}") from None

    def read_chunk(self, digest: bytes, crypt: CryptConfig | None = None) -> bytes:
        data = decode_blob(self.load(digest), crypt)
        if chunk_digest(data, crypt) != digest:
            raise ChunkError(f"chunk {digest.hex()} does not match its digest")
        return data


class RemoteWriter:
    """One backup being written to the server (a writer session there)."""

    def __init__(self, store: RemoteDumpStore, ref: SnapshotRef, writer_id: str,
                 crypt: CryptConfig | None = None) -> None:
        self.store, self.ref, self.writer_id = store, ref, writer_id
        self.crypt = crypt
        # what this node sent, as the server lists it in the manifest: the signature
        # covers this list, so a server-side change to it is found at the next read
        self.files: list[dict[str, Any]] = []
        store.chunks.writer_id = writer_id

    def add_file(self, name: str, data: bytes) -> None:
        self.store.client.request("PUT", f"/writer/{self.writer_id}/file/{quote(name)}",
                                  body=data)
        self.files.append(file_entry(name, data))

    def add_index(self, name: str, index: FixedIndex) -> None:
        self.store.client.request("PUT", f"/writer/{self.writer_id}/file/{quote(name)}",
                                  body=index.to_bytes())
        self.files.append({"filename": name, "size": index.size,
                           "csum": index.checksum().hex()})

    def commit(self, notes: str = "", protected: bool = False) -> SnapshotRef:
        body: dict[str, Any] = {"notes": notes, "protected": protected}
        if self.crypt is not None:
            manifest = Manifest(self.ref.backup_type, self.ref.backup_id,
                                self.ref.backup_time, files=self.files,
                                crypt_fingerprint=self.crypt.fingerprint)
            body["crypt-fingerprint"] = self.crypt.fingerprint
            body["signature"] = self.crypt.sign(manifest.signed_payload())
        self.store.client.request("POST", f"/writer/{self.writer_id}/commit", json_body=body)
        self.store.chunks.writer_id = None
        return self.ref

    def abort(self) -> None:
        self.store.chunks.writer_id = None
        try:
            self.store.client.request("DELETE", f"/writer/{self.writer_id}")
        except RemoteError:
            pass   # unreachable: the server drops the session's staging at its restart


class RemoteDumpStore:
    """A datastore on a backup server, with a local `DumpStore`'s interface and names."""

    def __init__(self, client: BackupServerClient, storage_id: str,
                 crypt: CryptConfig | None = None) -> None:
        self.client = client
        self.storage_id = storage_id
        self.crypt = crypt       # the storage's encryption key (None: plain backups)
        self._authentic: dict[SnapshotRef, Manifest] = {}
        self.chunks = RemoteChunkStore(client)
        # a running guest's fleecing images are local scratch space, never on the server:
        # on disk (/var/tmp), as they take what the guest writes during the backup
        scratch = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
        self.root = scratch / "binome-backup-scratch"

    def describe(self, ref: SnapshotRef) -> str:
        return (f"'{backup_name(ref)}' on backup server {self.client.server}:"
                f"{self.client.port}, datastore '{self.client.datastore}'")

    def volid(self, ref: SnapshotRef) -> str:
        return f"{self.storage_id}:backup/{backup_name(ref)}"

    def begin(self, backup_type: str, backup_id: str, backup_time: int | None = None,
              crypt: CryptConfig | None = None) -> RemoteWriter:
        crypt = crypt or self.crypt
        # the fleecing images hold guest data: the scratch directory is root's alone
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.root.chmod(0o700)
        answer = self.client.request("POST", "/writer", json_body={
            "backup-type": backup_type, "backup-id": backup_id, "backup-time": backup_time})
        ref = SnapshotRef(backup_type, backup_id, int(answer["backup-time"]))
        return RemoteWriter(self, ref, str(answer["writer"]), crypt)

    def status(self) -> dict[str, int]:
        """The datastore's file system: total, used, avail bytes."""
        return {k: int(v) for k, v in self.client.request("GET", "/status").items()}

    def listing(self, vmid: str | None = None) -> list[dict[str, Any]]:
        """The server's entries (name, time, size, protected, notes, verification)."""
        return list(self.client.request("GET", "/backups", query={"vmid": vmid}))

    def snapshots(self, backup_type: str | None = None,
                  backup_id: str | None = None) -> list[SnapshotRef]:
        if backup_type not in (None, "vm"):
            return []
        refs = [ref_of_name(e["name"]) for e in self.listing(backup_id)]
        return sorted(refs, key=lambda r: (r.backup_type, int(r.backup_id), r.backup_time))

    def _fetch(self, ref: SnapshotRef, name: str) -> bytes:
        return bytes(self.client.request("GET", f"/backup/{backup_name(ref)}/file/{name}",
                                         raw=True))

    def read_file(self, ref: SnapshotRef, name: str) -> bytes:
        data = self._fetch(ref, name)
        if self.crypt is not None:
            checked_file(backup_name(ref), self.authenticated_manifest(ref), name, data)
        return data

    def authenticated_manifest(self, ref: SnapshotRef) -> Manifest:
        """The manifest, checked against this storage's key (CryptError if it may not
        be used with it); fetched once per store object."""
        if ref not in self._authentic:
            self._authentic[ref] = authenticated_manifest(backup_name(ref),
                                                          self.manifest(ref), self.crypt)
        return self._authentic[ref]

    def manifest(self, ref: SnapshotRef) -> Manifest:
        try:
            return Manifest.from_json(json.loads(self._fetch(ref, MANIFEST)))
        except (ValueError, KeyError) as error:
            raise DatastoreError(f"manifest of {backup_name(ref)} is unreadable: "
                                 f"{error}") from None

    def read_index(self, ref: SnapshotRef, name: str) -> FixedIndex:
        try:
            index = FixedIndex.from_bytes(self._fetch(ref, name))
        except RemoteError as error:
            raise FixedIndexError(str(error)) from None
        if self.crypt is not None:
            checked_index(backup_name(ref), self.authenticated_manifest(ref), name, index)
        return index

    def guest_config(self, ref: SnapshotRef) -> str:
        return decode_guest_config(backup_name(ref), self.read_file(ref, GUEST_CONFIG),
                                   self.crypt)

    def used_bytes(self, ref: SnapshotRef) -> int:
        return sum(int(f.get("size", 0)) for f in self.manifest(ref).files
                   if str(f["filename"]).endswith(".fidx"))

    def remove(self, ref: SnapshotRef) -> None:
        self.client.request("DELETE", f"/backup/{backup_name(ref)}")

    def set_notes(self, ref: SnapshotRef, notes: str) -> None:
        self.client.request("PUT", f"/backup/{backup_name(ref)}", json_body={"notes": notes})

    def set_protected(self, ref: SnapshotRef, protected: bool) -> None:
        self.client.request("PUT", f"/backup/{backup_name(ref)}",
                            json_body={"protected": protected})

    def prune_group(self, backup_type: str, backup_id: str, options: PruneOptions,
                    dry_run: bool = False) -> dict[SnapshotRef, Mark]:
        answer = self.client.request("POST", "/prune", json_body={
            "backup-id": backup_id, "prune-backups": format_prune_backups(options),
            "dry-run": dry_run})
        return {ref_of_name(name): Mark(mark) for name, mark in answer.items()}

    def verify_backups(self, refs: list[SnapshotRef], log: Callable[[str], None]) -> list[str]:
        answer = self.client.request("POST", "/verify",
                                     json_body={"names": [backup_name(r) for r in refs]})
        for line in answer["log"]:
            log(line)
        return list(answer["failed"])

    def collect_garbage(self, log: Callable[[str], None]) -> None:
        answer = self.client.request("POST", "/gc", json_body={})
        for line in answer["log"]:
            log(line)

