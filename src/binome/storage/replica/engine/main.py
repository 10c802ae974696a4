"""The volume engine process's entry point (`python -m binome.storage.replica` runs it).

The process takes an exclusive flock on `<state>/engine.pid` (one engine per
state directory), ignores SIGHUP (it must outlive the daemon and any
terminal), and on SIGTERM/SIGINT detaches every volume cleanly before exiting.
`BINOME_UVLOOP=1` runs it on uvloop when that is installed (for measurements).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path

from binome.storage.replica.engine.process import Engine


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m binome.storage.replica",
                                 description="binome replicated volume engine")
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--socket-dir", type=Path, default=None,
                    help="directory of the NBD sockets (default: STATE/nbd)")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


async def _run(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(engine.stop()))
    await engine.start()
    await engine.stopped.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pidfile = os.open(state / "engine.pid", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(pidfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another engine runs on {state} (pid {os.pread(pidfile, 32, 0).decode().strip()})",
              file=sys.stderr)
        return 1
    os.ftruncate(pidfile, 0)
    os.pwrite(pidfile, f"{os.getpid()}\n".encode(), 0)
    engine = Engine(state, args.socket_dir)
    if os.environ.get("BINOME_UVLOOP") == "1":
        import uvloop  # optional, not a declared dependency

        uvloop.run(_run(engine))
    else:
        asyncio.run(_run(engine))
    os.ftruncate(pidfile, 0)
    return 0

