"""Files arriving in a file-based storage from outside: uploads and downloads of ISO
images, container templates and snippets (PVE's `upload` and `download-url`), and the
metadata of a URL (PVE's `query-url-metadata`).

Owns the write path of such a file: it is streamed, chunk by chunk, into a hidden
temporary file in its final directory (`.upload-*.part`, never listed), hashed on the
way, and renamed onto its name only once complete and, when a checksum was given,
verified; a failure removes the temporary file, so nothing half-written ever appears
in the storage's content. Nothing is held in memory beyond one chunk.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from typing import Any

import aiohttp

from binome.storage.base import Storage, StorageError

CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
UPLOAD_CONTENT = ("iso", "vztmpl", "snippets")
# PVE's ISO_EXT_RE_0 and VZTMPL_EXT_RE_1 (PVE::Storage)
_EXTENSIONS = {"iso": re.compile(r"[^/]+\.(?:iso|img)$", re.I),
               "vztmpl": re.compile(r"[^/]+\.(?:tar|tar\.(?:gz|xz|zst|bz2))$", re.I),
               "snippets": re.compile(r"[A-Za-z0-9_.+=-]+$")}
# where each content type lives in a dir storage (PVE's get_iso_dir, get_vztmpl_dir, ...)
CONTENT_DIRS = {"iso": "template/iso", "vztmpl": "template/cache", "snippets": "snippets"}
PART_PREFIX = ".upload-"
CHUNK = 1 << 20
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


def normalize_content_filename(name: str) -> str:
    """PVE's normalize_content_filename: the last path component, every character but
    [a-zA-Z0-9_.-] replaced by '_'."""
    name = name.rstrip("\n")
    name = re.sub(r"^.*[/\\]", "", name)
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", name)


def check_target(content: str, filename: str) -> dict[str, str]:
    """Per-parameter errors of an upload's content type and (normalized) file name, PVE's
    texts; {} when acceptable."""
    if content not in UPLOAD_CONTENT:
        return {"content": f"upload content type '{content}' not allowed"}
    if filename in ("", ".", "..") or not _EXTENSIONS[content].fullmatch(filename):
        return {"filename": "wrong file extension"}
    return {}


def check_checksum(checksum: str | None, algorithm: str | None) -> dict[str, str]:
    """`checksum` and `checksum-algorithm` require each other (PVE's `requires`), and a
    checksum is hex digits of the algorithm's length."""
    if checksum and not algorithm:
        return {"checksum": "parameter 'checksum' requires 'checksum-algorithm'"}
    if algorithm and not checksum:
        return {"checksum-algorithm": "parameter 'checksum-algorithm' requires 'checksum'"}
    if checksum and algorithm:
        length = hashlib.new(algorithm).digest_size * 2
        if not re.fullmatch(rf"[0-9a-fA-F]{{{length}}}", checksum):
            return {"checksum": f"value is not a {algorithm} checksum ({length} hex digits)"}
    return {}


def target_dir(storage: Storage, content: str) -> Path:
    """The directory of `content` in a file-based storage that allows it; StorageError
    with PVE's text otherwise."""
    cfg = storage.config
    if not cfg.path or cfg.type != "dir":
        raise StorageError(f"can't upload to storage type '{cfg.type}'")
    if content not in cfg.content:
        raise StorageError(f"storage '{cfg.storage}' does not support '{content}' content")
    return Path(cfg.path) / CONTENT_DIRS[content]


def volid_of(storage_id: str, content: str, filename: str) -> str:
    return f"{storage_id}:{content}/{filename}"


class IncomingFile:
    """One file being written into `directory` under `filename`: `write` chunks, then
    `commit` (verify, rename) or `discard`."""

    def __init__(self, directory: Path, filename: str, algorithm: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.dest = directory / filename
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=PART_PREFIX, suffix=".part")
        self.tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.new(algorithm) if algorithm else None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        if self._hash is not None:
            self._hash.update(chunk)
        self.size += len(chunk)

    async def write_from(self, chunks: AsyncIterable[bytes]) -> int:
        """Write every chunk of `chunks`; the size written."""
        async for chunk in chunks:
            self.write(chunk)
        return self.size

    def digest(self) -> str | None:
        return None if self._hash is None else self._hash.hexdigest()

    def commit(self, expected: str | None = None) -> None:
        """Flush, check `expected` (a hex digest, any case) and rename onto the name;
        StorageError (PVE's text) and the temporary file removed on a mismatch."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            got = self.digest()
            if expected is not None and (got or "").lower() != expected.lower():
                raise StorageError(f"checksum mismatch: got '{got}' != expect '{expected}'")
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.dest)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def _ssl(verify: bool) -> ssl.SSLContext | bool:
    return True if verify else False


async def download(url: str, incoming: IncomingFile, *, verify: bool,
                   log: Any = None) -> int:
    """Stream `url` into `incoming` (not committed); the size. StorageError with the
    server's status line when it does not answer 200."""
    async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as http:
        try:
            async with http.get(url, ssl=_ssl(verify)) as resp:
                if resp.status != 200:
                    raise StorageError(f"download failed: {resp.status} {resp.reason}")
                if log is not None and resp.content_length is not None:
                    log(f"file size is: {resp.content_length}")
                return await incoming.write_from(resp.content.iter_chunked(CHUNK))
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise StorageError(f"download failed: {exc or type(exc).__name__}") from None


def _filename_from(disposition: str | None, url: str) -> str | None:
    """PVE's: the Content-Disposition's filename, else the URL path's last part."""
    if disposition:
        m = re.search(r'filename="([^"]*)"', disposition) or \
            re.search(r"filename=([^;]*)", disposition)
        if m:
            return m.group(1) or None
    m = re.match(r"^[^?]+/([^?/]*)(?:\?.*)?$", url)
    return (m.group(1) or None) if m else None


async def url_metadata(url: str, *, verify: bool) -> dict[str, Any]:
    """PVE's query-url-metadata: a HEAD request; filename, size and mimetype as known.
    StorageError "invalid server response: '<status line>'" unless it answers 200."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     headers={"User-Agent": "Proxmox VE"}) as http:
        try:
            async with http.head(url, ssl=_ssl(verify), allow_redirects=True) as resp:
                if resp.status != 200:
                    raise StorageError(f"invalid server response: '{resp.status} "
                                       f"{resp.reason}'")
                headers = resp.headers
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise StorageError(f"invalid server response: '500 "
                               f"{exc or type(exc).__name__}'") from None
    out: dict[str, Any] = {}
    filename = _filename_from(headers.get("Content-Disposition"), url)
    if filename:
        out["filename"] = filename
    size = headers.get("Content-Length")
    if size and size.isdigit() and int(size):
        out["size"] = int(size)
    mimetype = headers.get("Content-Type")
    if mimetype:
        out["mimetype"] = mimetype.split(";")[0]
    return out
