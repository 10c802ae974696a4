"""binomed's read-only NBD server for backed-up images (`binome.backup.nbd_server`),
against QEMU's own NBD client (`qemu-img`, `qemu-io`: the client a live restore's QEMU
uses) and binome's client (`binome.backup.nbd`).

Checked: the whole image reads back byte for byte across chunk boundaries, through a
qcow2 overlay whose backing file is the export (what a live restore opens); a chunk that
cannot be loaded is an I/O error on the reads it spans only, logged for the task; writes
are refused and change nothing; an unknown export is refused at the handshake; several
clients at once; a chunk read by concurrent requests is loaded once.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from binome.backup.nbd import NbdError, NbdExport
from binome.backup.nbd_server import ImageSource, NbdServer

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None
                                or shutil.which("qemu-io") is None,
                                reason="qemu-utils is not installed")

CHUNK = 1 << 20
SIZE = 5 * CHUNK + 12345         # a short last chunk


def _pattern(position: int) -> bytes:
    length = min(CHUNK, SIZE - position * CHUNK)
    return hashlib.sha256(str(position).encode()).digest() * (CHUNK // 32) \
        if length == CHUNK else bytes([position + 1]) * length


IMAGE = b"".join(_pattern(p) for p in range(6))
EXPORTED = -(-SIZE // 512) * 512      # whole sectors, zeros past the image


class Loads:
    def __init__(self, broken: set[int] | None = None) -> None:
        self.count: dict[int, int] = {}
        self.broken = broken or set()
        self.lock = threading.Lock()

    def __call__(self, position: int) -> bytes:
        with self.lock:
            self.count[position] = self.count.get(position, 0) + 1
        if position in self.broken:
            raise OSError(f"chunk {position}: missing in the store")
        return _pattern(position)


def _serve(tmp_path: Path, loads: Loads, run) -> None:
    """Run `run(socket)` in a thread while the server serves export 'drive'."""
    async def main() -> None:
        server = NbdServer(tmp_path / "nbd.sock",
                           {"drive": ImageSource(SIZE, CHUNK, loads)})
        await server.start()
        try:
            await asyncio.to_thread(run, server)
        finally:
            await server.close()
        assert not (tmp_path / "nbd.sock").exists()

    asyncio.run(main())


def _uri(server: NbdServer, name: str = "drive") -> str:
    return f"nbd+unix:///{name}?socket={server.path}"


def test_qemu_reads_the_image_directly_and_through_an_overlay(tmp_path: Path) -> None:
    loads = Loads()

    def run(server: NbdServer) -> None:
        out = tmp_path / "copy.raw"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", _uri(server),
                        str(out)], check=True, capture_output=True, timeout=60)
        assert out.read_bytes() == IMAGE + bytes(EXPORTED - SIZE)
        overlay = tmp_path / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b",
                        _uri(server), str(overlay), str(EXPORTED)], check=True, timeout=30)
        # a write into the overlay, reads across it and the backing
        io = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 1536k 8k",
                             "-c", "read -P 0x77 1536k 8k",
                             "-c", f"read -P 6 {5 * CHUNK} 12345", str(overlay)],
                            capture_output=True, text=True, timeout=60)
        assert io.returncode == 0 and "Pattern verification failed" not in io.stdout, io
        flat = tmp_path / "flat.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay),
                        str(flat)], check=True, capture_output=True, timeout=60)
        expected = bytearray(IMAGE + bytes(EXPORTED - SIZE))
        expected[1536 << 10:(1536 + 8) << 10] = b"\x77" * (8 << 10)
        assert flat.read_bytes() == bytes(expected)

    _serve(tmp_path, loads, run)
    assert set(loads.count) == set(range(6))


def test_a_lost_chunk_fails_only_its_reads_and_writes_are_refused(tmp_path: Path) -> None:
    loads = Loads(broken={2})

    def run(server: NbdServer) -> None:
        with NbdExport(str(server.path), "drive") as export:
            assert export.size == EXPORTED
            assert export.pread(CHUNK - 100, 200) == IMAGE[CHUNK - 100:CHUNK + 100]
            with pytest.raises(NbdError, match="errno 5"):
                export.pread(2 * CHUNK + 10, 100)
            assert export.pread(3 * CHUNK, 4096) == IMAGE[3 * CHUNK:3 * CHUNK + 4096]
            with pytest.raises(NbdError, match="errno 1"):
                export.pwrite(0, b"x" * 512)
            assert export.pread(0, 512) == IMAGE[:512]
            with pytest.raises(NbdError, match="errno 22"):
                export.pread(EXPORTED - 10, 20)       # past the end
            assert export.pread(SIZE - 10, 20) == IMAGE[-10:] + bytes(10)
        assert server.errors and "chunk 2: missing in the store" in server.errors[0]
        io = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read 0 64k",
                             _uri(server, "nosuch")], capture_output=True, text=True,
                            timeout=30)
        assert io.returncode != 0, io

    _serve(tmp_path, loads, run)


def test_clients_at_once_share_one_load_of_a_chunk(tmp_path: Path) -> None:
    loads = Loads()

    def run(server: NbdServer) -> None:
        def reader(offset: int) -> bytes:
            with NbdExport(str(server.path), "drive") as export:
                return export.pread(offset, 64 << 10)
        results: list[bytes] = [b""] * 8
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, reader(4 * CHUNK + i * (64 << 10)))) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [IMAGE[4 * CHUNK + i * (64 << 10):4 * CHUNK + (i + 1) * (64 << 10)]
                           for i in range(8)]

    _serve(tmp_path, loads, run)
    assert loads.count == {4: 1}
