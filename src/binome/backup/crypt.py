"""Client-side encryption of backups (PBS's model): the key, what is derived from it, and
the authentication of a backup's manifest.

Owns the encryption key's file format, the keys derived from it, chunk ids, chunk
encryption and the manifest signature. The key never leaves the cluster: the backup
server stores ciphertext, keyed chunk ids and signed manifests, and can neither read nor
confirm guest data.

- **Key file** (PBS's `KeyConfig` without a passphrase): JSON `{"kdf": null, "created":
  ISO time, "modified": ISO time, "data": base64 of the 32-byte key, "fingerprint":
  "aa:bb:..."}`. A key whose `fingerprint` does not match its `data` is refused (a
  truncated or hand-edited copy). Passphrase-protected keys (`kdf` set) are not read.
- **Derived keys**, HKDF-SHA256 of the key, one `info` label each, so no derived key
  reveals another or the key: the AES-256-GCM data key, the chunk-id key, the manifest
  authentication key and the fingerprint.
- **Chunk id** of an encrypted backup: HMAC-SHA256(id key, plaintext) (PBS: SHA-256 of
  the data and its id key). Equal data under the same key gets the same id, so dedup
  works between backups with one key; without the key the server cannot tell which
  data a chunk holds, not even by hashing a guess.
- **Chunks and small files** are PBS data blobs (`chunkstore.encode_blob`): 16-byte IV,
  16-byte GCM tag, then the ciphertext of the (possibly zstd-compressed) data. A blob
  is only accepted once decrypted and its HMAC id recomputed equals the id it was asked
  for, so the server can neither alter a chunk nor serve another chunk in its place.
- **Fingerprint**: 32 bytes derived from the key, shown as `aa:bb:...`; it names the key
  (in the storage definition, in each manifest) and reveals nothing of it.
- **Manifest signature**: HMAC-SHA256(auth key) over the canonical JSON of the
  manifest's protected part (type, id, time, key fingerprint, and per file its name,
  size and SHA-256 / index checksum). An index is only used once its checksum (over all
  its chunk ids) and size match the signed manifest, so the server cannot swap, drop or
  replay indexes or files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
AUTOGEN = "autogen"
_FINGERPRINT_LEN = 32


class CryptError(ValueError):
    """A key that cannot be used, or a backup the key cannot authenticate."""


def _derive(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"binome-backup " + label).derive(key)


def format_fingerprint(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class CryptConfig:
    """An encryption key and what derives from it. Never logged: repr shows the
    fingerprint only."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise CryptError(f"an encryption key is {KEY_SIZE} bytes")
        self._aead = AESGCM(_derive(key, b"chunk encryption"))
        self._id_key = _derive(key, b"chunk id")
        self._auth_key = _derive(key, b"manifest authentication")
        self.fingerprint = format_fingerprint(_derive(key, b"fingerprint")[:_FINGERPRINT_LEN])

    @classmethod
    def generate(cls) -> tuple[CryptConfig, bytes]:
        key = secrets.token_bytes(KEY_SIZE)
        return cls(key), key

    def __repr__(self) -> str:
        return f"CryptConfig(fingerprint={self.fingerprint})"

    def digest(self, data: bytes | bytearray) -> bytes:
        """The chunk id of `data`: keyed, so it tells nothing without the key."""
        return hmac.new(self._id_key, data, hashlib.sha256).digest()

    def encrypt(self, data: bytes | bytearray) -> tuple[bytes, bytes, bytes]:
        """(iv, tag, ciphertext) of `data` under AES-256-GCM, a fresh random IV each."""
        iv = secrets.token_bytes(16)
        sealed = self._aead.encrypt(iv, data, None)
        return iv, sealed[-16:], sealed[:-16]

    def decrypt(self, iv: bytes, tag: bytes, data: bytes) -> bytes:
        """The plaintext; cryptography's InvalidTag if the key is wrong or data altered."""
        return self._aead.decrypt(iv, data + tag, None)

    def sign(self, payload: bytes) -> str:
        return hmac.new(self._auth_key, payload, hashlib.sha256).hexdigest()

    def signature_ok(self, payload: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(payload), signature)


# ------------------------------------------------------------------ key files

def new_key_file() -> tuple[str, CryptConfig]:
    """A fresh key in its file form (JSON text), and its CryptConfig."""
    crypt, key = CryptConfig.generate()
    return key_file_text(key), crypt


def key_file_text(key: bytes, created: str | None = None) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    crypt = CryptConfig(key)
    return json.dumps({"kdf": None, "created": created or now, "modified": now,
                       "data": base64.b64encode(key).decode(),
                       "fingerprint": crypt.fingerprint}, indent=2) + "\n"


def load_key(text: str) -> CryptConfig:
    """The key of a key file's text; CryptError (without any key material in its
    message) if it is not a usable key file."""
    try:
        raw: Any = json.loads(text)
    except ValueError:
        raise CryptError("the encryption key is not a binome/PBS key file (JSON)") from None
    if not isinstance(raw, dict) or "data" not in raw:
        raise CryptError("the encryption key file has no 'data'")
    if raw.get("kdf") is not None:
        raise CryptError("passphrase-protected keys are not supported: give the key "
                         "without a passphrase (kdf null)")
    try:
        key = base64.b64decode(str(raw["data"]), validate=True)
    except ValueError:
        raise CryptError("the encryption key's 'data' is not base64") from None
    crypt = CryptConfig(key)
    stated = raw.get("fingerprint")
    if stated is not None and str(stated).lower() != crypt.fingerprint:
        raise CryptError(f"the encryption key does not match its own fingerprint {stated} "
                         f"(a damaged copy?)")
    return crypt


# ------------------------------------------------------------------ manifests

def file_entry(name: str, data: bytes) -> dict[str, Any]:
    """A small file's entry in a manifest (what the signature covers)."""
    return {"filename": name, "size": len(data), "csum": hashlib.sha256(data).hexdigest()}


def signed_payload(backup_type: str, backup_id: str, backup_time: int,
                   files: list[dict[str, Any]], fingerprint: str | None) -> bytes:
    """The canonical bytes a manifest's signature covers (not notes, protection or
    verify state, which change after the backup: PBS's 'unprotected' part)."""
    entries: list[dict[str, Any]] = [
        {"filename": str(f["filename"]), "size": int(f["size"]),
         "csum": str(f.get("csum") or "")}
        for f in sorted(files, key=lambda f: str(f["filename"]))]
    return json.dumps({"backup-type": backup_type, "backup-id": str(backup_id),
                       "backup-time": int(backup_time), "files": entries,
                       "crypt-fingerprint": fingerprint},
                      sort_keys=True, separators=(",", ":")).encode()


def check_encryption(name: str, fingerprint: str | None, signature: str | None,
                     payload: bytes, crypt: CryptConfig | None) -> None:
    """Whether backup `name` may be read with `crypt`: CryptError with the reason if
    not. A storage with a key reads only backups signed with that key (a manifest the
    server rewrote as unencrypted is refused too); one without reads plain ones."""
    if fingerprint is None:
        if crypt is not None:
            raise CryptError(f"backup {name} is not encrypted, but this storage has an "
                             f"encryption key (fingerprint {crypt.fingerprint}): restore "
                             f"it through a storage without 'encryption-key'")
        return
    if crypt is None:
        raise CryptError(f"backup {name} is encrypted (key fingerprint {fingerprint}) and "
                         f"this storage has no encryption key")
    if fingerprint != crypt.fingerprint:
        raise CryptError(f"backup {name} is encrypted with key {fingerprint}, not with "
                         f"this storage's key {crypt.fingerprint} - wrong key")
    if not signature or not crypt.signature_ok(payload, signature):
        raise CryptError(f"backup {name}: manifest signature mismatch - the backup was "
                         f"altered on the server")
