#!/usr/bin/env python3
"""NBD export benchmark: `qemu-nbd` vs the binome engine, unreplicated and replicated.

Three servers export a raw file of the same size (pre-written so every block
is allocated) over a unix socket: `qemu-nbd` (the baseline), the engine
serving a StandAlone volume, and the engine serving a volume replicated with
protocol C to a second engine over loopback TCP. Each fio job
(`--ioengine=nbd`, one connection, libnbd pipelining up to the job's iodepth)
runs against each in turn. Printed: IOPS, throughput, mean and p99 completion
latency, the ratio to the baseline, the servers' CPU use (both engines for
the replicated case), and the initial full-sync throughput over loopback.

    .venv/bin/python bench/nbd_bench.py [--runtime 10] [--size 1G] [--dir /tmp]
                                         [--jobs seq,rand32,rand1] [--uvloop] [--json]
                                         [--baseline-aio threads|io_uring] [--no-replicated]
                                         [--repeat N]

`--repeat N` runs every job N times, the servers taking turns within each
round, and prints the medians, and the median of the per-round ratios: on a
shared machine, a ratio measured a few seconds apart is much steadier than
either figure. After the jobs, the bitmap resync rate is measured: the
secondary is disconnected, a quarter of the volume is rewritten in scattered
4 KiB blocks (one in four), and the resync after reconnecting is timed.

Targets (issue 4) for the replicated engine: sequential write >= 70 % of the
baseline, 4 KiB qd32 >= 40 %, qd1 latency <= 3x. This is not a test: nothing
is asserted. Every process started is stopped by pid and the temporary
directory removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from binome.storage.replica.engine import control  # noqa: E402
from binome.storage.replica.node import supervisor  # noqa: E402

JOBS = {
    "seq": {"title": "1 MiB seq write qd8", "rw": "write", "bs": "1M", "iodepth": 8},
    "rand32": {"title": "4 KiB rand write qd32", "rw": "randwrite", "bs": "4k", "iodepth": 32},
    "rand1": {"title": "4 KiB rand write qd1", "rw": "randwrite", "bs": "4k", "iodepth": 1},
    "read32": {"title": "4 KiB rand read qd32", "rw": "randread", "bs": "4k", "iodepth": 32},
}
TARGETS = {"seq": ("throughput", 0.70), "rand32": ("iops", 0.40), "rand1": ("latency", 3.0)}


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text[-1] in mult:
        return int(text[:-1]) * mult[text[-1]]
    return int(text)


def prefill(path: Path, size: int) -> None:
    """Write every block once, so neither server pays for block allocation during a job."""
    chunk = os.urandom(1 << 20) * 4
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[:min(len(chunk), size - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_fio(uri: str, job: dict, runtime: int, size: int) -> dict:
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={job['rw']}",
           f"--bs={job['bs']}", f"--iodepth={job['iodepth']}", f"--size={size}",
           "--time_based", f"--runtime={runtime}", "--ramp_time=1", "--randrepeat=0",
           "--norandommap", "--group_reporting", "--output-format=json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=runtime + 60)
    data = json.loads(out.stdout[out.stdout.index("{"):])
    side = data["jobs"][0]["read" if "read" in job["rw"] else "write"]
    clat = side["clat_ns"]
    p99 = clat.get("percentile", {}).get("99.000000", 0)
    return {"iops": side["iops"], "bw": side["bw_bytes"], "lat_us": clat["mean"] / 1000,
            "p99_us": p99 / 1000}


class Baseline:
    def __init__(self, image: Path, sock: Path, aio: str) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(
            ["qemu-nbd", "-f", "raw", "--cache=writeback", f"--aio={aio}", "-t", "-e", "4",
             "-k", str(sock), str(image)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-nbd did not start")
            time.sleep(0.01)

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One engine (StandAlone), or a replicated pair (protocol C over loopback TCP)."""

    def __init__(self, workdir: Path, image: Path, size: int, uvloop: bool,
                 peer_image: Path | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        if uvloop:
            env["BINOME_UVLOOP"] = "1"
        tag = "repl" if peer_image else "solo"
        self.handles = [asyncio.run(supervisor.ensure_engine(workdir / f"{tag}-a", env=env))]
        if peer_image:
            self.handles.append(asyncio.run(supervisor.ensure_engine(workdir / f"{tag}-b",
                                                                     env=env)))
        self.sync_mib_s: float | None = None
        ctl = self.handles[0].control

        async def setup() -> dict:
            if peer_image is None:
                await control.call(ctl, "create", name="bench", size=size, backing=str(image))
                await control.call(ctl, "up", name="bench")
                return await control.call(ctl, "primary", name="bench", force=True)
            pa, pb = free_port(), free_port()
            net = {"secret": "bench", "protocol": "C", "connect_int": 0.1}
            peer_ctl = self.handles[1].control
            await control.call(ctl, "create", name="bench", size=size, backing=str(image),
                               address=f"127.0.0.1:{pa}", peer_address=f"127.0.0.1:{pb}", **net)
            await control.call(peer_ctl, "create", name="bench", size=size,
                               backing=str(peer_image), address=f"127.0.0.1:{pb}",
                               peer_address=f"127.0.0.1:{pa}", **net)
            await control.call(ctl, "up", name="bench")
            await control.call(peer_ctl, "up", name="bench")
            await wait_status(ctl, lambda st: st["cstate"] == "Connected")
            t0 = time.monotonic()
            await control.call(ctl, "primary", name="bench", force=True)
            st = await wait_status(ctl, lambda st: st["cstate"] == "Connected"
                                   and st["peer_disk"] == "UpToDate", timeout=600)
            self.sync_mib_s = size / 2**20 / (time.monotonic() - t0)
            return st

        self.sock = asyncio.run(setup())["socket"]

    @property
    def uri(self) -> str:
        return f"nbd+unix:///bench?socket={self.sock}"

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.handles]

    def stop(self) -> None:
        for h in self.handles:
            asyncio.run(supervisor.stop_engine(h))


async def wait_status(ctl: str, pred, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await control.call(ctl, "status", name="bench")
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"engine state: {st}")
        await asyncio.sleep(0.05)


def fmt(job: str, r: dict) -> str:
    if job == "seq":
        return f"{r['bw'] / 2**20:8.0f} MiB/s  lat {r['lat_us']:7.0f} us"
    return f"{r['iops']:8.0f} IOPS   lat {r['lat_us']:5.0f} us p99 {r['p99_us']:5.0f} us"


KEY = {"seq": "bw", "rand32": "iops", "rand1": "lat_us", "read32": "iops"}


def median_result(job: str, rs: list[dict]) -> dict:
    ordered = sorted(rs, key=lambda r: r[KEY[job]])
    return ordered[len(ordered) // 2]


def ratio(job: str, base: list[dict], ours: list[dict], replicated: bool) -> str:
    """The median over the rounds of ours/baseline, each round's pair measured together."""
    key = KEY[job]
    xs = sorted(o[key] / b[key] for o, b in zip(ours, base, strict=True))
    x = xs[len(xs) // 2]
    spread = f" [{xs[0]:.2f}-{xs[-1]:.2f}]" if len(xs) > 1 else ""
    if job == "rand1":
        text = f"latency x{x:.2f}{spread}"
    else:
        text = f"{x * 100:5.1f} %{spread}"
    if job in TARGETS and replicated:
        kind, target = TARGETS[job]
        ok = x <= target if kind == "latency" else x >= target
        text += f"  (target {'<=' if kind == 'latency' else '>='} "
        text += f"{target if kind == 'latency' else f'{target:.0%}'}"
        text += f": {'met' if ok else 'NOT met'})"
    return text


async def resync_rate(repl: Engine, size: int) -> tuple[float, int]:
    """Disconnect the secondary, dirty a quarter of the volume, time the bitmap resync."""
    from binome.lab.nbd_client import NbdClient

    ctl, peer_ctl = repl.handles[0].control, repl.handles[1].control
    await control.call(peer_ctl, "disconnect", name="bench")
    await wait_status(ctl, lambda st: st["cstate"] in ("WFConnection", "StandAlone",
                                                      "Unconnected"))
    c = await NbdClient.connect(repl.sock, "bench")
    block = os.urandom(4096)
    try:
        offsets = list(range(0, size, 16384))
        for i in range(0, len(offsets), 256):
            await asyncio.gather(*(c.write(off, block) for off in offsets[i:i + 256]))
        await c.flush()
    finally:
        await c.close()
    dirty = (await control.call(ctl, "status", name="bench"))["out_of_sync_kib"] * 1024
    t0 = time.monotonic()
    await control.call(peer_ctl, "connect", name="bench")
    await wait_status(ctl, lambda st: st["cstate"] == "Connected"
                      and st["peer_disk"] == "UpToDate", timeout=600)
    return dirty / 2**20 / (time.monotonic() - t0), dirty


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtime", type=int, default=10, help="seconds per job (default 10)")
    ap.add_argument("--size", default="1G", help="export size (default 1G)")
    ap.add_argument("--dir", default=None, help="where the temporary files go (default $TMPDIR)")
    ap.add_argument("--jobs", default="seq,rand32,rand1", help=f"among {','.join(JOBS)}")
    ap.add_argument("--uvloop", action="store_true", help="run the engine on uvloop")
    ap.add_argument("--baseline-aio", default="threads", choices=["threads", "io_uring"],
                    help="qemu-nbd --aio mode (default threads, qemu-nbd's default)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("--no-replicated", action="store_true",
                    help="skip the replicated engine (protocol C to a second engine)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds per job; medians are printed (default 1)")
    args = ap.parse_args()
    for tool in ("fio", "qemu-nbd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    size = parse_size(args.size)
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    work = Path(tempfile.mkdtemp(prefix="nbdbench-", dir=args.dir))
    servers: list[tuple[str, Baseline | Engine]] = []
    results: dict[str, dict[str, dict]] = {}
    try:
        images = {n: work / f"{n}.raw" for n in ("baseline", "engine", "primary", "secondary")}
        wanted = ["baseline", "engine"] + ([] if args.no_replicated
                                           else ["primary", "secondary"])
        print(f"pre-writing {len(wanted)} files of {size >> 20} MiB in {work} ...", flush=True)
        for n in wanted:
            prefill(images[n], size)
        baseline = Baseline(images["baseline"], work / "qemu-nbd.sock", args.baseline_aio)
        servers.append(("qemu-nbd", baseline))
        servers.append(("engine", Engine(work, images["engine"], size, args.uvloop)))
        if not args.no_replicated:
            repl = Engine(work, images["primary"], size, args.uvloop,
                          peer_image=images["secondary"])
            servers.append(("replicated", repl))
            print(f"initial full sync over loopback: {repl.sync_mib_s:.0f} MiB/s", flush=True)
        print("pids: " + ", ".join(f"{label} {srv.pids}" for label, srv in servers)
              + f"{' (uvloop)' if args.uvloop else ''}; {args.runtime} s per job\n", flush=True)
        for job in jobs:
            spec = JOBS[job]
            rounds: dict[str, list[dict]] = {label: [] for label, _ in servers}
            for rnd in range(args.repeat):
                for label, srv in servers:
                    cpu0 = sum(cpu_seconds(p) for p in srv.pids)
                    t0 = time.monotonic()
                    r = run_fio(srv.uri, spec, args.runtime, size)
                    r["cpu"] = ((sum(cpu_seconds(p) for p in srv.pids) - cpu0)
                                / (time.monotonic() - t0))
                    rounds[label].append(r)
                    tag = f" #{rnd + 1}" if args.repeat > 1 else ""
                    print(f"{spec['title']:24s} {label + tag:14s} {fmt(job, r)}  "
                          f"cpu {r['cpu'] * 100:3.0f} %", flush=True)
            results[job] = {label: median_result(job, rs) for label, rs in rounds.items()}
            if args.repeat > 1:
                for label, _ in servers:
                    r = results[job][label]
                    print(f"{spec['title']:24s} {label + ' med':14s} {fmt(job, r)}", flush=True)
            for label, _ in servers[1:]:
                verdict = ratio(job, rounds["qemu-nbd"], rounds[label], label == "replicated")
                print(f"{'':24s} {label + '/base':14s} {verdict}", flush=True)
            print(flush=True)
        if not args.no_replicated:
            rate, dirty = asyncio.run(resync_rate(repl, size))
            print(f"bitmap resync over loopback ({dirty >> 20} MiB dirty in scattered 4 KiB "
                  f"blocks): {rate:.0f} MiB/s", flush=True)
    finally:
        for _, srv in reversed(servers):
            with contextlib.suppress(Exception):
                srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
