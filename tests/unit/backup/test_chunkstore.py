"""Data blobs (and the incompressibility probe), encryption, atomic and batched insert,
chunk verification and the GC sweep."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from binome.backup.chunkstore import (
    COMPRESSED_MAGIC,
    ENCRYPTED_COMPRESSED_MAGIC,
    UNCOMPRESSED_MAGIC,
    ChunkError,
    ChunkStore,
    CryptConfig,
    chunk_digest,
    decode_blob,
    encode_blob,
    encode_blob_parts,
    worth_compressing,
)


def test_blob_round_trip_compressed_and_plain() -> None:
    compressible = b"a" * 10000
    blob = encode_blob(compressible)
    assert blob[:8] == COMPRESSED_MAGIC and len(blob) < 200
    assert decode_blob(blob) == compressible
    random = os.urandom(1000)
    blob = encode_blob(random)
    assert blob[:8] == UNCOMPRESSED_MAGIC
    assert decode_blob(blob) == random


def test_flipped_byte_is_detected() -> None:
    blob = bytearray(encode_blob(b"x" * 5000))
    blob[-1] ^= 1
    with pytest.raises(ChunkError, match="CRC"):
        decode_blob(bytes(blob))


def test_encryption_round_trip_and_keyed_digest() -> None:
    crypt, key = CryptConfig.generate()
    data = b"secret" * 1000
    blob = encode_blob(data, crypt)
    assert blob[:8] == ENCRYPTED_COMPRESSED_MAGIC and b"secret" not in blob
    assert decode_blob(blob, crypt) == data
    assert chunk_digest(data, crypt) != chunk_digest(data)
    assert chunk_digest(data, CryptConfig(key)) == chunk_digest(data, crypt)
    assert key.hex() not in repr(crypt)
    with pytest.raises(ChunkError, match="no key"):
        decode_blob(blob)
    with pytest.raises(ChunkError, match="decryption"):
        decode_blob(blob, CryptConfig.generate()[0])


def test_bad_key_length_rejected() -> None:
    with pytest.raises(ValueError):
        CryptConfig(b"short")


def test_insert_dedups_and_layout(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.create()
    data = b"chunk" * 100
    digest = chunk_digest(data)
    assert store.insert(digest, encode_blob(data)) is True
    assert store.insert(digest, encode_blob(data)) is False
    assert store.path(digest) == tmp_path / ".chunks" / digest.hex()[:4] / digest.hex()
    assert store.read_chunk(digest) == data
    assert not list(store.path(digest).parent.glob(".tmp-*"))


def test_read_chunk_checks_digest(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    wrong = chunk_digest(b"other")
    store.insert(wrong, encode_blob(b"data"))
    with pytest.raises(ChunkError, match="digest"):
        store.read_chunk(wrong)
    with pytest.raises(ChunkError, match="missing"):
        store.read_chunk(chunk_digest(b"absent"))


def test_verify_encrypted_without_key_checks_crc(tmp_path: Path) -> None:
    crypt, _ = CryptConfig.generate()
    store = ChunkStore(tmp_path)
    digest = chunk_digest(b"d" * 100, crypt)
    store.insert(digest, encode_blob(b"d" * 100, crypt))
    store.verify_chunk(digest)
    path = store.path(digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChunkError):
        store.verify_chunk(digest)


def test_sweep_removes_only_old_untouched(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    old, fresh = chunk_digest(b"old"), chunk_digest(b"fresh")
    store.insert(old, encode_blob(b"old"))
    store.insert(fresh, encode_blob(b"fresh"))
    past = time.time() - 3600
    os.utime(store.path(old), (past, past))
    stats = store.sweep(time.time() - 60)
    assert stats.removed_chunks == 1 and stats.kept_chunks == 1
    assert not store.contains(old) and store.contains(fresh)


def test_a_large_chunk_whose_samples_do_not_compress_is_stored_plain() -> None:
    random = os.urandom(4 << 20)
    assert not worth_compressing(random)
    blob = encode_blob(random)
    assert blob[:8] == UNCOMPRESSED_MAGIC and decode_blob(blob) == random
    # a compressible stretch anywhere a sample falls makes the whole chunk compressed
    mixed = random[:3 << 20] + bytes(1 << 20)
    assert worth_compressing(mixed)
    blob = encode_blob(mixed)
    assert blob[:8] == COMPRESSED_MAGIC and len(blob) < len(mixed) * 0.8
    assert decode_blob(blob) == mixed
    text = b"".join(b"line %d of a log file\n" % i for i in range(200_000))[:4 << 20]
    assert encode_blob(text)[:8] == COMPRESSED_MAGIC


@pytest.mark.parametrize("direct", [True, False])
def test_a_batch_names_its_chunks_only_at_commit_and_abort_leaves_nothing(
        tmp_path: Path, direct: bool) -> None:
    store = ChunkStore(tmp_path)
    store.create()
    chunks = [os.urandom(4 << 20), os.urandom(4097), b"z" * 70_000, b""]
    batch = store.batch()
    batch.direct = direct
    for data in chunks:
        assert batch.add(chunk_digest(data), encode_blob_parts(data))
    assert not any(store.contains(chunk_digest(data)) for data in chunks)
    batch.commit()
    for data in chunks:
        assert store.read_chunk(chunk_digest(data)) == data
    assert not list(store.base.rglob(".tmp-*"))
    # present chunks are only touched; an aborted batch leaves no temporary file
    again = store.batch()
    assert not again.add(chunk_digest(chunks[0]), encode_blob_parts(chunks[0]))
    other = os.urandom(5000)
    assert again.add(chunk_digest(other), encode_blob_parts(other))
    again.abort()
    again.commit()
    assert not store.contains(chunk_digest(other))
    assert not list(store.base.rglob(".tmp-*"))
