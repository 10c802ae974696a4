"""Client-side encryption: keys and key files, keyed chunk ids, AES-256-GCM blobs (round
trip, tampering, wrong or missing key), manifest signatures, and an encrypted backup in
a local datastore read back only with its key."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

from binome.backup.chunkstore import (
    ChunkError,
    ChunkStore,
    chunk_digest,
    decode_blob,
    encode_blob,
    is_encrypted_blob,
)
from binome.backup.crypt import (
    CryptConfig,
    CryptError,
    check_encryption,
    key_file_text,
    load_key,
    new_key_file,
    signed_payload,
)
from binome.backup.dumpstore import GUEST_CONFIG, DumpStore
from binome.backup.index import Manifest
from binome.backup.reader import RestoreError, restore_image
from binome.backup.writer import backup_image

MARKER = b"PLAINTEXT-MARKER-of-the-guest-disk:"
CHUNK = 64 * 1024


def _refresh_crc(blob: bytearray) -> bytes:
    """Recompute a blob's CRC after changing its body: only the GCM tag can tell then."""
    blob[8:12] = struct.pack("<I", zlib.crc32(bytes(blob[12:])))
    return bytes(blob)


def test_round_trip_and_the_ciphertext_hides_the_data() -> None:
    crypt, _ = CryptConfig.generate()
    data = MARKER * 2000
    for compress in (True, False):
        blob = encode_blob(data, crypt, compress=compress)
        assert is_encrypted_blob(blob) and MARKER not in blob
        assert decode_blob(blob, crypt) == data
    # a fresh IV each time: the same data never gives the same ciphertext
    assert encode_blob(data, crypt) != encode_blob(data, crypt)


def test_chunk_ids_are_keyed_hmacs() -> None:
    key = bytes(range(32))
    crypt, same, other = CryptConfig(key), CryptConfig(key), CryptConfig(bytes(32))
    data = MARKER * 10
    digest = chunk_digest(data, crypt)
    # not the plain SHA-256, so the server cannot confirm a guess by hashing it
    assert digest != hashlib.sha256(data).digest() == chunk_digest(data)
    assert digest == chunk_digest(data, same)            # dedup under one key
    assert digest != chunk_digest(data, other)
    assert digest != chunk_digest(data + b"x", crypt)
    assert len(digest) == 32


def test_tampered_blob_is_refused() -> None:
    crypt, _ = CryptConfig.generate()
    blob = bytearray(encode_blob(MARKER * 100, crypt))
    blob[40] ^= 0x01                            # in the ciphertext, CRC not fixed
    with pytest.raises(ChunkError, match="CRC"):
        decode_blob(bytes(blob), crypt)
    with pytest.raises(ChunkError, match="decryption failed"):
        decode_blob(_refresh_crc(blob), crypt)  # CRC fixed: the GCM tag catches it
    tag_flipped = bytearray(encode_blob(MARKER * 100, crypt))
    tag_flipped[12 + 16] ^= 0x80                # the tag itself
    with pytest.raises(ChunkError, match="decryption failed"):
        decode_blob(_refresh_crc(tag_flipped), crypt)


def test_wrong_or_missing_key() -> None:
    crypt, _ = CryptConfig.generate()
    blob = encode_blob(b"secret data" * 50, crypt)
    with pytest.raises(ChunkError, match="wrong key or tampered"):
        decode_blob(blob, CryptConfig.generate()[0])
    with pytest.raises(ChunkError, match="no key"):
        decode_blob(blob)


def test_a_chunk_served_under_another_id_is_refused(tmp_path: Path) -> None:
    crypt, _ = CryptConfig.generate()
    store = ChunkStore(tmp_path)
    store.create()
    first, second = b"a" * 1000, b"b" * 1000
    store.insert(chunk_digest(first, crypt), encode_blob(first, crypt))
    # the server puts a genuine blob of ours under another chunk's id
    store.insert(chunk_digest(second, crypt), encode_blob(first, crypt))
    assert store.read_chunk(chunk_digest(first, crypt), crypt) == first
    with pytest.raises(ChunkError, match="does not match its digest"):
        store.read_chunk(chunk_digest(second, crypt), crypt)
    # without the key only the CRC can be checked (the server's verify)
    store.verify_chunk(chunk_digest(second, crypt))


def test_key_file_round_trip_and_refusals() -> None:
    text, crypt = new_key_file()
    raw = json.loads(text)
    assert raw["kdf"] is None and raw["fingerprint"] == crypt.fingerprint
    key = base64.b64decode(raw["data"])
    assert load_key(text).fingerprint == crypt.fingerprint
    assert load_key(key_file_text(key)).fingerprint == crypt.fingerprint
    # the fingerprint names the key and reveals nothing of it
    assert len(crypt.fingerprint.split(":")) == 32
    assert key.hex() not in crypt.fingerprint.replace(":", "")
    assert raw["data"] not in repr(crypt) and key.hex() not in repr(crypt)
    damaged = dict(raw, fingerprint=CryptConfig(bytes(32)).fingerprint)
    with pytest.raises(CryptError, match="does not match its own fingerprint"):
        load_key(json.dumps(damaged))
    with pytest.raises(CryptError, match="passphrase"):
        load_key(json.dumps(dict(raw, kdf={"Scrypt": {}})))
    with pytest.raises(CryptError, match="JSON"):
        load_key("autogen")
    with pytest.raises(CryptError, match="32 bytes"):
        load_key(json.dumps(dict(raw, data=base64.b64encode(b"short").decode(),
                                 fingerprint=None)))
    for bad in ("{}", json.dumps(dict(raw, data="!!"))):
        with pytest.raises(CryptError) as error:
            load_key(bad)
        assert raw["data"] not in str(error.value)


def test_manifest_signature_covers_the_files_and_the_key() -> None:
    crypt, _ = CryptConfig.generate()
    files = [{"filename": "drive-virtio0.img.fidx", "size": 4096, "csum": "ab" * 32},
             {"filename": GUEST_CONFIG, "size": 20, "csum": "cd" * 32}]
    payload = signed_payload("vm", "100", 1000, files, crypt.fingerprint)
    signature = crypt.sign(payload)
    check_encryption("b", crypt.fingerprint, signature, payload, crypt)
    # order of the files does not matter, anything else does
    assert signed_payload("vm", "100", 1000, files[::-1], crypt.fingerprint) == payload
    for changed in (signed_payload("vm", "100", 1000, [dict(files[0], size=8192), files[1]],
                                   crypt.fingerprint),
                    signed_payload("vm", "100", 1000, files[:1], crypt.fingerprint),
                    signed_payload("vm", "101", 1000, files, crypt.fingerprint),
                    signed_payload("vm", "100", 1001, files, crypt.fingerprint)):
        with pytest.raises(CryptError, match="signature mismatch"):
            check_encryption("b", crypt.fingerprint, signature, changed, crypt)
    with pytest.raises(CryptError, match="signature mismatch"):
        check_encryption("b", crypt.fingerprint, None, payload, crypt)
    other, _ = CryptConfig.generate()
    with pytest.raises(CryptError, match="wrong key"):
        check_encryption("b", crypt.fingerprint, signature, payload, other)
    with pytest.raises(CryptError, match="this storage has no encryption key"):
        check_encryption("b", crypt.fingerprint, signature, payload, None)
    # a manifest rewritten as unencrypted is not read through a storage with a key
    with pytest.raises(CryptError, match="is not encrypted"):
        check_encryption("b", None, None, payload, crypt)
    check_encryption("b", None, None, payload, None)


def test_encrypted_backup_in_a_datastore_needs_its_key(tmp_path: Path) -> None:
    crypt, _ = CryptConfig.generate()
    disk = tmp_path / "disk.raw"
    disk.write_bytes(MARKER * (3 * CHUNK // len(MARKER)) + bytes(CHUNK))
    store = DumpStore(tmp_path / "bk", "bk", crypt)
    writer = store.begin("vm", "100", 1_000)
    writer.add_file(GUEST_CONFIG, encode_blob(b"name: secretvm\n", crypt))
    backup_image(writer, "drive-virtio0.img.fidx", disk, chunk_size=CHUNK)
    ref = writer.commit()
    for path in (tmp_path / "bk").rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes() and b"secretvm" not in path.read_bytes()
    manifest = store.authenticated_manifest(ref)
    assert manifest.crypt_fingerprint == crypt.fingerprint and manifest.signature
    assert store.guest_config(ref) == "name: secretvm\n"
    out = tmp_path / "out.raw"
    restore_image(store, ref, "drive-virtio0.img.fidx", out, crypt=crypt)
    assert out.read_bytes() == disk.read_bytes()
    # the same data again under the same key: every chunk deduplicated
    again = store.begin("vm", "100", 2_000)
    stats = backup_image(again, "drive-virtio0.img.fidx", disk, chunk_size=CHUNK)
    again.commit()
    assert stats.chunks_new == 0
    # other key, no key: refused before any data is read
    for reader, match in ((DumpStore(tmp_path / "bk", "bk", CryptConfig.generate()[0]),
                           "wrong key"),
                          (DumpStore(tmp_path / "bk", "bk"), "no encryption key")):
        with pytest.raises(CryptError, match=match):
            reader.authenticated_manifest(ref)
    with pytest.raises(CryptError, match="guest config"):
        DumpStore(tmp_path / "bk", "bk").guest_config(ref)
    with pytest.raises(RestoreError, match="no key"):
        restore_image(DumpStore(tmp_path / "bk", "bk"), ref, "drive-virtio0.img.fidx",
                      tmp_path / "nokey.raw")
    # an index replaced by another backup's: its checksum is not the signed one
    directory = store.snapshot_dir(ref)
    index = directory / "drive-virtio0.img.fidx"
    original = index.read_bytes()
    other = DumpStore(tmp_path / "bk2", "bk2", crypt)
    w = other.begin("vm", "100", 3_000)
    small = tmp_path / "small.raw"
    small.write_bytes(b"x" * CHUNK)
    backup_image(w, "drive-virtio0.img.fidx", small, chunk_size=CHUNK)
    index.write_bytes((other.snapshot_dir(w.commit()) / "drive-virtio0.img.fidx").read_bytes())
    with pytest.raises(CryptError, match="does not match the signed manifest"):
        DumpStore(tmp_path / "bk", "bk", crypt).read_index(ref, "drive-virtio0.img.fidx")
    index.write_bytes(original)
    # notes and protection are not signed: they change after the backup
    store.set_notes(ref, "changed later")
    store.set_protected(ref, True)
    assert DumpStore(tmp_path / "bk", "bk", crypt).authenticated_manifest(ref).notes
    # the manifest's file list altered
    manifest_path = directory / "index.json"
    data = json.loads(manifest_path.read_text())
    data["files"] = [f for f in data["files"] if f["filename"] != GUEST_CONFIG]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(CryptError, match="signature mismatch"):
        DumpStore(tmp_path / "bk", "bk", crypt).authenticated_manifest(ref)
    assert Manifest.from_json(data).signature == manifest.signature
