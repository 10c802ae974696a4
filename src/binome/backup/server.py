"""The independent backup server (PBS's role): datastores served over HTTPS with tokens.

Owns the server's data directory, which survives the loss of the whole cluster:

- `server.crt` / `server.key`: a self-signed certificate made at first start; clients pin
  its SHA-256 fingerprint (`fingerprint_of`), as PVE pins a PBS;
- `tokens.json`: API tokens `user@realm!name` with their secrets hashed with argon2
  (a secret is shown once, when the token is made, and never logged);
- `datastores/<name>/dump/`: one `DumpStore` per datastore, the very layout of a `dir`
  storage's binome backups (vzdump names, `.chunks/`), so the chunk, index, verify,
  prune and GC code is the `binome.backup` library's, and the directory alone can be
  restored from (`binome-backup-server restore-file`).

The HTTP protocol (`/api2/binome/datastore/<name>/...`, JSON, blobs as octet streams):
a backup is a writer session (POST `writer`: its staging directory and its GC mark),
the client asks which chunks of a list are `missing` (the present ones are touched, so
a concurrent GC keeps them), uploads only those (PUT `writer/<id>/chunk/<digest>`,
checked before insert: a plain one against its digest, an encrypted one, which the
server cannot read, by its CRC), uploads its files and indexes (an index is refused if it names a
chunk the store does not hold), then `commit`s: the staging directory is renamed into
place at once, so a half-written backup is never listed. An encrypted backup's commit
carries its key fingerprint and manifest signature, stored as given. Writer sessions live in this
process: at start, the staging directories of a previous run are dropped.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from binome.backup.chunkstore import ChunkError, check_blob
from binome.backup.datastore import DatastoreError
from binome.backup.dumpstore import DumpStore, DumpWriter, backup_name, ref_of_name
from binome.backup.index import FixedIndex, FixedIndexError
from binome.backup.prune import PruneError, parse_prune_backups
from binome.backup.remote import fingerprint_of
from binome.durable import write_bytes, write_json

log = logging.getLogger("binome.backup.server")

DEFAULT_PORT = 8007
API = "/api2/binome"
TOKEN_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+![A-Za-z0-9._-]+$")
DATASTORE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){31}$")
_SIGNATURE_RE = _DIGEST_RE
MAX_BLOB = 16 << 20   # a 4 MiB chunk, incompressible and encrypted, is far below


class ServerError(Exception):
    """Bad setup of a server directory (missing datastore, bad token id)."""


# ------------------------------------------------------------------ TLS certificate

def ensure_certificate(data_dir: Path, hostname: str = "binome-backup") -> str:
    """Make the self-signed certificate at first start; its fingerprint."""
    cert_path, key_path = data_dir / "server.crt", data_dir / "server.key"
    if not cert_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .sign(key, hashes.SHA256()))
        write_bytes(key_path, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()), mode=0o600)
        write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return certificate_fingerprint(data_dir)


def certificate_fingerprint(data_dir: Path) -> str:
    cert = x509.load_pem_x509_certificate((data_dir / "server.crt").read_bytes())
    return fingerprint_of(cert.public_bytes(serialization.Encoding.DER))


# ------------------------------------------------------------------ tokens

class TokenStore:
    """`tokens.json`: token id -> argon2 hash of its secret. Verified secrets are
    remembered in memory as a SHA-256 (an argon2 check per chunk upload would cost
    more than the upload)."""

    def __init__(self, data_dir: Path, hasher: PasswordHasher | None = None) -> None:
        self.path = data_dir / "tokens.json"
        self._hasher = hasher or PasswordHasher()
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}

    def create(self, token_id: str) -> str:
        """A new secret for `token_id` (replacing any old one); shown once to the admin."""
        if not TOKEN_RE.match(token_id):
            raise ServerError(f"bad token id '{token_id}' (expected user@realm!name)")
        secret = str(uuid.UUID(bytes=secrets.token_bytes(16)))
        tokens = self._load()
        tokens[token_id] = self._hasher.hash(secret)
        write_json(self.path, tokens)
        self.path.chmod(0o600)
        with self._lock:
            self._verified.pop(token_id, None)
        return secret

    def remove(self, token_id: str) -> bool:
        tokens = self._load()
        found = tokens.pop(token_id, None) is not None
        write_json(self.path, tokens)
        with self._lock:
            self._verified.pop(token_id, None)
        return found

    def check(self, token_id: str, secret: str) -> bool:
        quick = hashlib.sha256(secret.encode()).digest()
        with self._lock:
            known = self._verified.get(token_id)
        if known is not None:
            return hmac.compare_digest(known, quick)
        stored = self._load().get(token_id)
        if stored is None:
            return False
        try:
            self._hasher.verify(stored, secret)
        except (VerificationError, InvalidHashError):
            return False
        with self._lock:
            self._verified[token_id] = quick
        return True


# ------------------------------------------------------------------ datastores

def datastore_path(data_dir: Path, name: str) -> Path:
    if not DATASTORE_RE.match(name):
        raise ServerError(f"bad datastore name '{name}'")
    return data_dir / "datastores" / name


def open_datastore(data_dir: Path, name: str) -> DumpStore:
    """An existing datastore of the server directory; ServerError if there is none."""
    path = datastore_path(data_dir, name)
    if not path.is_dir():
        raise ServerError(f"datastore '{name}' does not exist")
    return DumpStore(path, name)


def create_datastore(data_dir: Path, name: str) -> Path:
    path = datastore_path(data_dir, name)
    store = DumpStore(path, name)
    store.create()
    return path


def snapshot_entry(store: DumpStore, name: str) -> dict[str, Any]:
    """What the server lists for a backup (the storage layer shapes PVE's listing)."""
    ref = ref_of_name(name)
    manifest = store.manifest(ref)
    return {"name": name, "backup-type": ref.backup_type, "backup-id": ref.backup_id,
            "backup-time": ref.backup_time, "size": store.used_bytes(ref),
            "protected": int(manifest.protected), "notes": manifest.notes,
            "crypt-fingerprint": manifest.crypt_fingerprint,
            "verification": manifest.verify_state, "files": manifest.files}


# a writer session no request has used for this long belongs to a client that died
# (a node lost mid-backup): it is aborted, so GC stops holding chunks back for it
SESSION_IDLE_TIMEOUT = 900.0


@dataclass
class _Session:
    writer: DumpWriter
    datastore: str
    new_dirs: set[Path] = field(default_factory=set)
    last_used: float = field(default_factory=time.monotonic)


class BackupServer:
    """The aiohttp application over one server directory."""

    def __init__(self, data_dir: Path, gc_grace: float | None = None,
                 tokens: TokenStore | None = None) -> None:
        self.data_dir = data_dir
        self.tokens = tokens or TokenStore(data_dir)
        self.sessions: dict[str, _Session] = {}
        self.gc_grace = gc_grace          # None: the datastore's (PBS-like) default
        self.authenticated_requests = 0
        self._busy = asyncio.Lock()   # GC and prune are serialized with each other

    def reap_idle_sessions(self, idle: float = SESSION_IDLE_TIMEOUT,
                           now: float | None = None) -> list[str]:
        """Abort the writer sessions unused for `idle` seconds; their backup names."""
        now = time.monotonic() if now is None else now
        reaped = []
        for writer_id, session in list(self.sessions.items()):
            if now - session.last_used >= idle:
                self.sessions.pop(writer_id, None)
                session.writer.abort()
                reaped.append(backup_name(session.writer.ref))
                log.warning("backup %s on datastore %s aborted: its client sent nothing for "
                            "%d s", backup_name(session.writer.ref), session.datastore,
                            int(idle))
        return reaped

    def drop_stale_staging(self) -> None:
        """Writer sessions do not outlive the process: a previous run's staging
        directories will never commit (and would hold GC back)."""
        base = self.data_dir / "datastores"
        if not base.is_dir():
            return
        for path in sorted(base.iterdir()):
            store = DumpStore(path, path.name)
            for staging in store.staging_dirs():
                log.info("dropping unfinished backup %s of datastore %s", staging.name,
                         path.name)
                store.remove_staging(staging)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth],
                              client_max_size=MAX_BLOB)
        ds = API + "/datastore/{datastore}"
        app.add_routes([
            web.get(API + "/version", self.version),
            web.get(ds + "/status", self.status),
            web.get(ds + "/backups", self.list_backups),
            web.post(ds + "/writer", self.begin),
            web.post(ds + "/chunks/missing", self.missing),
            web.put(ds + "/writer/{writer}/chunk/{digest}", self.put_chunk),
            web.put(ds + "/writer/{writer}/file/{file}", self.put_file),
            web.post(ds + "/writer/{writer}/commit", self.commit),
            web.delete(ds + "/writer/{writer}", self.abort),
            web.get(ds + "/backup/{name}/file/{file}", self.get_file),
            web.get(ds + "/chunk/{digest}", self.get_chunk),
            web.delete(ds + "/backup/{name}", self.remove),
            web.put(ds + "/backup/{name}", self.set_attributes),
            web.post(ds + "/prune", self.prune),
            web.post(ds + "/verify", self.verify),
            web.post(ds + "/gc", self.gc),
        ])
        return app

    # ---------------------------------------------------------------- middlewares

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (DatastoreError, ServerError, ChunkError, FixedIndexError, PruneError,
                ValueError) as error:
            return web.json_response({"error": str(error)}, status=400)
        except Exception as error:   # a clear 500, never a dropped connection
            log.exception("request %s %s failed", request.method, request.path)
            return web.json_response({"error": f"internal error: {error}"}, status=500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        kind, _, credentials = header.partition(" ")
        token_id, _, secret = credentials.partition(":")
        if kind != "BinomeToken" or not token_id or not secret or not await asyncio.to_thread(
                self.tokens.check, token_id, secret):
            log.warning("authentication failure from %s (token '%s')", request.remote,
                        token_id if TOKEN_RE.match(token_id) else "?")
            return web.json_response({"error": "authentication failure"}, status=401)
        self.authenticated_requests += 1
        return await handler(request)

    # ---------------------------------------------------------------- helpers

    def _store(self, request: web.Request) -> DumpStore:
        try:
            return open_datastore(self.data_dir, request.match_info["datastore"])
        except ServerError as error:
            raise web.HTTPNotFound(text=json.dumps({"error": str(error)}),
                                   content_type="application/json") from None

    def _session(self, request: web.Request) -> _Session:
        session = self.sessions.get(request.match_info["writer"])
        if session is None or session.datastore != request.match_info["datastore"]:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such backup writer (the "
                                                             "server restarted, or it was "
                                                             "idle too long)"}),
                                   content_type="application/json")
        session.last_used = time.monotonic()
        return session

    @staticmethod
    def _digest(text: str) -> bytes:
        if not _DIGEST_RE.match(text):
            raise ValueError(f"bad chunk digest '{text}'")
        return bytes.fromhex(text)

    @staticmethod
    def _file_name(text: str) -> str:
        if not _FILE_RE.match(text) or ".." in text:
            raise ValueError(f"bad file name '{text}'")
        return text

    # ---------------------------------------------------------------- handlers

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": "binome-backup-server", "api": 1})

    async def status(self, request: web.Request) -> web.Response:
        store = self._store(request)
        usage = await asyncio.to_thread(os.statvfs, store.root.parent)
        total = usage.f_blocks * usage.f_frsize
        return web.json_response({"total": total, "avail": usage.f_bavail * usage.f_frsize,
                                  "used": total - usage.f_bfree * usage.f_frsize})

    async def list_backups(self, request: web.Request) -> web.Response:
        store = self._store(request)
        vmid = request.query.get("vmid")

        def listing() -> list[dict[str, Any]]:
            out = []
            for ref in store.snapshots("vm", vmid):
                try:
                    out.append(snapshot_entry(store, backup_name(ref)))
                except DatastoreError:
                    continue   # removed meanwhile
            return out

        return web.json_response(await asyncio.to_thread(listing))

    async def begin(self, request: web.Request) -> web.Response:
        store = self._store(request)
        body = await request.json()
        backup_time = body.get("backup-time")
        writer = await asyncio.to_thread(
            store.begin, str(body.get("backup-type", "vm")), str(body.get("backup-id", "")),
            None if backup_time is None else int(backup_time))
        writer_id = uuid.uuid4().hex
        self.sessions[writer_id] = _Session(writer, store.storage_id)
        log.info("backup %s started on datastore %s", backup_name(writer.ref),
                 store.storage_id)
        return web.json_response({"writer": writer_id, "name": backup_name(writer.ref),
                                  "backup-time": writer.ref.backup_time})

    async def missing(self, request: web.Request) -> web.Response:
        store = self._store(request)
        digests = [self._digest(str(d)) for d in (await request.json()).get("digests", [])]
        missing = await asyncio.to_thread(store.chunks.missing, digests)
        return web.json_response({"missing": [d.hex() for d in missing]})

    async def put_chunk(self, request: web.Request) -> web.Response:
        session = self._session(request)
        digest = self._digest(request.match_info["digest"])
        blob = await request.read()
        chunks = session.writer.store.chunks

        def insert() -> bool:
            check_blob(digest, blob)
            new = chunks.insert(digest, blob, sync_dir=False)
            if new:
                session.new_dirs.add(chunks.path(digest).parent)
            return new

        return web.json_response({"new": await asyncio.to_thread(insert)})

    async def put_file(self, request: web.Request) -> web.Response:
        session = self._session(request)
        name = self._file_name(request.match_info["file"])
        data = await request.read()
        writer = session.writer

        def add() -> None:
            if not name.endswith(".fidx"):
                writer.add_file(name, data)
                return
            index = FixedIndex.from_bytes(data)
            absent = writer.store.chunks.missing(index.digests)
            if absent:
                raise DatastoreError(f"index {name} references {len(absent)} chunk(s) the "
                                     f"datastore does not hold (e.g. {absent[0].hex()})")
            # the crash-safety rule: an index never references a chunk whose name
            # is not durable
            writer.store.chunks.sync_dirs(session.new_dirs)
            session.new_dirs.clear()
            writer.add_index(name, index)

        await asyncio.to_thread(add)
        return web.json_response({})

    async def commit(self, request: web.Request) -> web.Response:
        session = self._session(request)
        body = await request.json()
        fingerprint, signature = body.get("crypt-fingerprint"), body.get("signature")
        # an encrypted backup: the client's key fingerprint and manifest signature are
        # stored as given (the server has no key to check them; the client does, at
        # every read)
        if (fingerprint is None) != (signature is None) or (
                fingerprint is not None and not (_FINGERPRINT_RE.match(str(fingerprint))
                                                 and _SIGNATURE_RE.match(str(signature)))):
            raise ValueError("bad crypt-fingerprint or signature")
        ref = await asyncio.to_thread(
            functools.partial(session.writer.commit, str(body.get("notes", "")),
                              bool(body.get("protected", False)),
                              crypt_fingerprint=fingerprint, signature=signature))
        self.sessions.pop(request.match_info["writer"], None)
        log.info("backup %s finished on datastore %s", backup_name(ref), session.datastore)
        return web.json_response({"name": backup_name(ref)})

    async def abort(self, request: web.Request) -> web.Response:
        session = self._session(request)
        self.sessions.pop(request.match_info["writer"], None)
        await asyncio.to_thread(session.writer.abort)
        log.info("backup %s aborted on datastore %s", backup_name(session.writer.ref),
                 session.datastore)
        return web.json_response({})

    async def get_file(self, request: web.Request) -> web.Response:
        store = self._store(request)
        ref = ref_of_name(request.match_info["name"])
        name = self._file_name(request.match_info["file"])
        path = store.snapshot_dir(ref) / name
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no file {name} in backup "
                                                             f"{backup_name(ref)}"}),
                                   content_type="application/json") from None
        return web.Response(body=data, content_type="application/octet-stream")

    async def get_chunk(self, request: web.Request) -> web.Response:
        store = self._store(request)
        digest = self._digest(request.match_info["digest"])
        try:
            blob = await asyncio.to_thread(store.chunks.load, digest)
        except ChunkError as error:
            raise web.HTTPNotFound(text=json.dumps({"error": str(error)}),
                                   content_type="application/json") from None
        return web.Response(body=blob, content_type="application/octet-stream")

    async def remove(self, request: web.Request) -> web.Response:
        store = self._store(request)
        ref = ref_of_name(request.match_info["name"])
        await asyncio.to_thread(store.remove, ref)
        return web.json_response({})

    async def set_attributes(self, request: web.Request) -> web.Response:
        store = self._store(request)
        ref = ref_of_name(request.match_info["name"])
        body = await request.json()

        def change() -> None:
            if body.get("notes") is not None:
                store.set_notes(ref, str(body["notes"]))
            if body.get("protected") is not None:
                store.set_protected(ref, bool(body["protected"]))

        await asyncio.to_thread(change)
        return web.json_response({})

    async def prune(self, request: web.Request) -> web.Response:
        store = self._store(request)
        body = await request.json()
        options = parse_prune_backups(str(body.get("prune-backups", "")))
        vmid = str(body.get("backup-id", ""))
        async with self._busy:
            marks = await asyncio.to_thread(store.prune_group, "vm", vmid, options,
                                            bool(body.get("dry-run")))
        return web.json_response({backup_name(ref): str(mark) for ref, mark in marks.items()})

    async def verify(self, request: web.Request) -> web.Response:
        store = self._store(request)
        body = await request.json()
        names = body.get("names")
        refs = ([ref_of_name(str(n)) for n in names] if names is not None
                else store.snapshots("vm", body.get("backup-id")))
        lines: list[str] = []
        failed = await asyncio.to_thread(store.verify_backups, refs, lines.append)
        return web.json_response({"log": lines, "failed": failed})

    async def gc(self, request: web.Request) -> web.Response:
        store = self._store(request)
        lines: list[str] = []
        async with self._busy:
            await asyncio.to_thread(store.collect_garbage, lines.append, self.gc_grace)
        return web.json_response({"log": lines})


def tls_context(data_dir: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(data_dir / "server.crt", data_dir / "server.key")
    return context


async def serve(data_dir: Path, host: str, port: int,
                ready: asyncio.Event | None = None) -> None:
    """Run the server until cancelled."""
    server = BackupServer(data_dir)
    await asyncio.to_thread(server.drop_stale_staging)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls_context(data_dir))
    await site.start()
    log.info("binome-backup-server listening on https://%s:%d", host, port)
    if ready is not None:
        ready.set()
    try:
        while True:
            await asyncio.sleep(60)
            await asyncio.to_thread(server.reap_idle_sessions)
    finally:
        await runner.cleanup()


def ensure_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
