"""`binome log`: a node's binomed and etcd log, through `GET /nodes/{node}/journal`.

`--follow` polls the journal with the cursor of the last line shown (`startcursor`), so
each poll returns only newer lines, wherever the CLI runs (local socket or `--remote`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

SERVICES = ("binomed", "etcd")
FOLLOW_POLL = 1.0      # seconds between two polls of --follow


def add_parser(groups: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = groups.add_parser(
        "log", help="show a node's binomed and etcd log (like journalctl)",
        description="A node's binomed and etcd log, oldest first (API: GET "
                    "/nodes/{node}/journal). --follow keeps printing new lines.")
    common(p)
    p.add_argument("--node", dest="p_node", default="localhost",
                   help="node (default: this node)")
    p.add_argument("--service", choices=SERVICES, help="only this service's lines")
    p.add_argument("--since", help="from this time: 'YYYY-MM-DD[ HH:MM[:SS]]' (local) or "
                                   "a UNIX epoch")
    p.add_argument("--until", help="up to this time (same forms as --since)")
    p.add_argument("-n", "--lines", type=int, default=None,
                   help="the last N lines (default 50 without --since)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.set_defaults(_log=True)


def _epoch(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise SystemExit(f"binome log: not a time: '{text}' (YYYY-MM-DD[ HH:MM[:SS]] or "
                         f"an epoch)") from None


def _service_of(line: str) -> str:
    """`Dec 06 06:10:02 n1 binomed: ...` -> `binomed`."""
    parts = line.split(" ", 5)
    return parts[4].rstrip(":") if len(parts) > 5 else ""


def run(client: Any, args: argparse.Namespace, output: str) -> int:
    path = f"/nodes/{quote(args.p_node, safe='')}/journal"
    params: dict[str, Any] = {"since": _epoch(args.since), "until": _epoch(args.until),
                              "lastentries": args.lines}
    params = {k: v for k, v in params.items() if v is not None}
    if args.lines is not None and args.lines <= 0:
        raise SystemExit("binome log: --lines must be positive")
    try:
        while True:
            data = client.call("GET", path, params)
            entries = data[1:-1] if len(data) >= 2 else []
            for line in entries:
                if args.service and _service_of(line) != args.service:
                    continue
                print(json.dumps(line) if output.startswith("json") else line, flush=True)
            if not args.follow:
                return 0
            if len(data) >= 2:
                params = {"startcursor": data[-1]}
                if args.until is not None:
                    params["until"] = _epoch(args.until)
            time.sleep(FOLLOW_POLL)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        sys.stderr.close()
        return 0
