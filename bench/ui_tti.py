#!/usr/bin/env python3
"""Web UI first load and time to interactive with 200 VMs in the tree (issue 15's bench).

Starts a loopback 2-node + witness cluster (the integration harness: real etcd and
binomed, no QEMU: the VMs are configurations only, stopped, which the tree lists as
any VM), logs Debian's chromium in once, then measures the datacenter view loaded from
scratch (`about:blank`, then `https://n1:8006/#/dc`) with 10 VMs (the baseline) and
again once 190 more are created (200), side by side in one run:

* tree: navigation start -> the resource tree holds every node and VM of
  /cluster/resources (the page's own clock, `performance.now()`);
* interactive: the tree complete and a click on its last VM has rendered that VM's
  view (the tree answers input), from navigation start;
* the first load's cold numbers (browser cache cleared) and the warm median of
  `--runs` loads; and the bundle: the size of what the login and the datacenter view
  load (index.html's scripts and styles; the lazily loaded chunks are not counted).

Prints the ratio 200 VMs / 10 VMs of each. Issue 15's target: < 1 s.

    .venv/bin/python bench/ui_tti.py [--runs 5] [--vms 200] [--base-vms 10] [--json FILE]

Needs etcd, chromium and chromium-driver (`make setup`) and the built UI (`make ui`).
About a minute. The cluster and the browser are stopped (by pid, through the
harness), its temp dir removed, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests
import urllib3
from tests.integration.harness import PASSWORD, make_cluster, wait_for
from tests.integration.ui import chromium

from binome.api.webui import DIST

urllib3.disable_warnings()

# In the page: every animation frame until the tree has `want` items, then a click on
# the last VM and frames until its view shows; both times from navigation start.
_MEASURE = """
const [want, vmid] = arguments;
const done = arguments[arguments.length - 1];
const out = {};
const frame = () => {
  const items = document.querySelectorAll('.tree [role=treeitem]');
  if (out.tree === undefined) {
    if (items.length >= want) {
      out.tree = performance.now();
      const last = document.querySelector('.tree [data-key="#/vm/' + vmid + '"]');
      last.click();
    }
  } else if (document.querySelector('#view-vm[data-vmid="' + vmid + '"] h1')) {
    out.interactive = performance.now();
    const nav = performance.getEntriesByType('navigation')[0];
    out.load = nav ? nav.loadEventEnd : null;
    done(out);
    return;
  }
  requestAnimationFrame(frame);
};
frame();
"""


def api_session(base: str) -> requests.Session:
    r = requests.post(f"{base}/api2/json/access/ticket", verify=False, timeout=10,
                      data={"username": "admin@pve", "password": PASSWORD})
    r.raise_for_status()
    data = r.json()["data"]
    s = requests.Session()
    s.verify = False
    s.trust_env = False
    s.cookies.set("PVEAuthCookie", data["ticket"])
    s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    return s


def create_vms(s: requests.Session, base: str, vmids: range) -> None:
    """Configurations only (no disk, never started), half on each node, 8 at a time."""
    def one(vmid: int) -> None:
        node = "n1" if vmid % 2 else "n2"
        r = s.post(f"{base}/api2/json/nodes/{node}/qemu", timeout=60,
                   data={"vmid": vmid, "name": f"bench-{vmid}", "memory": 64})
        r.raise_for_status()
        upid = r.json()["data"]
        url = f"{base}/api2/json/nodes/{node}/tasks/{upid}/status"
        st = wait_for(lambda: (d := s.get(url, timeout=10).json()["data"])["status"]
                      == "stopped" and d, 60, f"creation of VM {vmid}")
        assert st.get("exitstatus") == "OK", st

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, vmids))


def measure(driver, base: str, want: int, vmid: int, runs: int) -> dict[str, Any]:
    def load() -> dict[str, float]:
        driver.get("about:blank")
        driver.get(f"{base}/#/dc")
        return driver.execute_async_script(_MEASURE, want, vmid)

    driver.execute_cdp_cmd("Network.clearBrowserCache", {})
    cold = load()
    warm = [load() for _ in range(runs)]
    return {"cold": cold, "warm": {k: statistics.median(w[k] for w in warm)
                                   for k in ("tree", "interactive", "load")},
            "warm_max": {k: max(w[k] for w in warm) for k in ("tree", "interactive")}}


def bundle() -> dict[str, int]:
    """What index.html loads before any lazy chunk: its scripts, styles and their
    static imports (modulepreload)."""
    html = (DIST / "index.html").read_text()
    files = set(re.findall(r'(?:src|href)="/?(assets/[^"]+\.(?:js|css))"', html))
    raw = sum((DIST / f).stat().st_size for f in files)
    gz = sum(len(gzip.compress((DIST / f).read_bytes(), 9)) for f in files)
    total = sum(p.stat().st_size for p in (DIST / "assets").iterdir())
    return {"initial_bytes": raw, "initial_gzip": gz, "all_assets_bytes": total,
            "files": len(files)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="warm loads per size")
    ap.add_argument("--vms", type=int, default=200)
    ap.add_argument("--base-vms", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if not chromium.available():
        print("chromium and chromium-driver are needed (make setup)", file=sys.stderr)
        return 2
    if not (DIST / "index.html").is_file():
        print("the web UI is not built: make ui", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"bundle": bundle(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="ui-tti-") as tmp:
        root = Path(tmp) / "cluster"
        root.mkdir()
        cluster = make_cluster(root, 180 + os.getpid() % 40)
        try:
            base = f"https://{cluster['n1'].address}:8006"
            s = api_session(base)
            with chromium.chromium(Path(tmp) / "profile") as driver:
                chromium.login(driver, base + "/", "admin", PASSWORD)
                first = 1000
                made = 0
                for size in (args.base_vms, args.vms):
                    t0 = time.monotonic()
                    create_vms(s, base, range(first + made, first + size))
                    print(f"{size - made} VMs created in {time.monotonic() - t0:.1f} s",
                          flush=True)
                    made = size
                    # every VM listed by the API before the page is measured
                    wait_for(lambda n=size: len(s.get(f"{base}/api2/json/cluster/resources",
                                                      params={"type": "vm"}, timeout=10)
                                                .json()["data"]) == n, 30, f"{size} VMs listed")
                    # the tree: the datacenter, two nodes, the VMs (the witness is no node)
                    res = measure(driver, base, 1 + 2 + size, first + size - 1, args.runs)
                    results["sizes"][size] = res
        finally:
            cluster.stop()
    b, n = results["sizes"][args.base_vms], results["sizes"][args.vms]
    print(f"\nbundle loaded first: {results['bundle']['initial_bytes'] / 1024:.1f} KiB "
          f"({results['bundle']['initial_gzip'] / 1024:.1f} KiB gzip) in "
          f"{results['bundle']['files']} files; all assets "
          f"{results['bundle']['all_assets_bytes'] / 1024:.0f} KiB")
    print(f"{'':28}{args.base_vms:>8} VMs{args.vms:>8} VMs   ratio")
    for label, key in (("cold: tree complete", ("cold", "tree")),
                       ("cold: interactive", ("cold", "interactive")),
                       ("warm median: load event", ("warm", "load")),
                       ("warm median: tree complete", ("warm", "tree")),
                       ("warm median: interactive", ("warm", "interactive")),
                       ("warm max: interactive", ("warm_max", "interactive"))):
        x, y = b[key[0]][key[1]], n[key[0]][key[1]]
        print(f"{label:28}{x:>8.0f} ms{y:>8.0f} ms{y / x:>7.2f}")
    target = n["warm"]["interactive"] < 1000 and n["cold"]["interactive"] < 1000
    print(f"\n{args.vms} VMs interactive < 1 s: {'yes' if target else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
