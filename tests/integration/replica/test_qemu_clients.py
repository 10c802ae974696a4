"""QEMU's own NBD client (qemu-img, qemu-io) and fio's nbd engine against the engine's export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.replica.conftest import require

MiB = 1 << 20


def run(*cmd: str, timeout: float = 60, cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert out.returncode == 0, f"{cmd[0]} failed: {out.stdout}\n{out.stderr}"
    return out.stdout


def qemu_io(uri: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    out = run(*args, uri)
    assert "Pattern verification failed" not in out and "failed" not in out.lower(), out
    return out


@pytest.fixture(autouse=True)
def _tools():
    require("qemu-img", "qemu-io")


def test_qemu_img_info(volume):
    vol = volume("48M")
    info = json.loads(run("qemu-img", "info", "--output=json", vol.uri))
    assert info["virtual-size"] == 48 * MiB
    assert info["format"] == "raw"


def test_qemu_io_patterns_fua_flush(volume):
    vol = volume()
    qemu_io(vol.uri,
            "write -P 0xa5 0 1M", "read -P 0xa5 0 1M",
            "write -P 0x11 512 512", "read -P 0x11 512 512", "read -P 0xa5 0 512",
            "write -f -P 0x22 8M 64k", "read -P 0x22 8M 64k",         # FUA
            "write -P 0x33 20M 4M", "flush", "read -P 0x33 20M 4M",  # direct-mode payload
            "write -P 0x44 63M 1M", "read -P 0x44 63M 1M")           # last MiB
    out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -P 0x55 0 4k", vol.uri],
                         capture_output=True, text=True)
    assert "Pattern verification failed" in out.stdout + out.stderr


def test_qemu_io_aio_pipelined(volume):
    vol = volume()
    writes = [f"aio_write -P {i + 1} {i * 256}k 256k" for i in range(32)]
    reads = [f"aio_read -P {i + 1} {i * 256}k 256k" for i in range(32)]
    qemu_io(vol.uri, *writes, "aio_flush", *reads, "aio_flush")


def test_discard_and_write_zeroes_read_back_zeroes(volume):
    vol = volume()
    qemu_io(vol.uri,
            "write -P 0x77 0 8M",
            "discard 1M 1M", "read -P 0 1M 1M", "read -P 0x77 0 1M", "read -P 0x77 2M 1M",
            "write -z 3M 512k", "read -P 0 3M 512k",                  # WRITE_ZEROES, may punch
            "write -z -u 4M 512k", "read -P 0 4M 512k",               # may unmap
            "write -z -f 5M 4k", "read -P 0 5M 4k", f"read -P 0x77 {5 * MiB + 4096} 4k")


def test_qemu_img_map_uses_base_allocation(volume):
    vol = volume("16M")
    qemu_io(vol.uri, "write -P 1 4M 1M")
    extents = json.loads(run("qemu-img", "map", "--output=json", vol.uri))
    data = [(e["start"], e["length"]) for e in extents if e["data"]]
    zero = [(e["start"], e["length"]) for e in extents if e["zero"] and not e["data"]]
    assert data == [(4 * MiB, MiB)]
    assert zero == [(0, 4 * MiB), (5 * MiB, 11 * MiB)]


def test_qemu_img_convert_and_compare(volume, tmp_path):
    vol = volume("32M")
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.write(os.urandom(5 * MiB) + bytes(10 * MiB) + os.urandom(17 * MiB))
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-W", "-m", "8", str(src),
        vol.uri)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), vol.uri)


def test_fio_nbd_engine_verified_random_writes(volume, tmp_path):
    require("fio")
    vol = volume()
    base = ["fio", "--name=verify", "--ioengine=nbd", f"--uri={vol.uri}", "--size=32M",
            "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randrepeat=1",
            "--output-format=json"]
    for extra in (["--rw=randwrite", "--bs=4k", "--iodepth=32"],
                  ["--rw=write", "--bs=1M", "--iodepth=8"],
                  ["--rw=randwrite", "--bsrange=512-256k", "--iodepth=16",
                   "--norandommap=0"]):
        # fio saves its verify state (local-verify-*.state) in its working directory
        text = run(*base, *extra, timeout=120, cwd=tmp_path)
        out = json.loads(text[text.index("{"):])   # fio prints "connected to NBD server" first
        job = out["jobs"][0]
        assert job["error"] == 0
        assert job["write"]["io_bytes"] >= 32 * MiB
        assert job["read"]["io_bytes"] > 0        # the verify pass read everything back
