#!/usr/bin/env python3
"""HA soak benchmark (issue 16): N minutes of seeded random faults on the HA lab.

Builds the HA lab (`binome.lab.ha.HaLab`: n1, n2, witness, a simulated BMC per
node with its IPMI fence device, `action: off`), creates the HA guest (tiny
image, disk on a replicated volume, HTTP server), starts a CPU hog (a busy
loop) inside one node's namespace and the probes independent of the
product's own: an HTTP prober, a writer storing sequence numbers in the
guest's disk, a sampler of the guest's running QEMU copies on both nodes, a
sampler of the mirror's state. Then, until N minutes have passed, it picks a
random fault (`binome.lab.soak.random_fault`, seeded), injects it, waits until
the guest serves again (bounded), heals, waits until the volume is in sync,
and goes on. At the end it reads every acknowledged sequence number back from
the UpToDate Primary's backing file and prints one line per fault and the
totals (`binome.lab.soak.format_report`). The machinery is `binome.lab.soak`;
this script owns the command line, the seeded plan and the cleanup: the hog,
the probes and the lab are stopped by pid and torn down (namespaces, veths
with their tc qdiscs, iptables rules) also on failure, Ctrl-C or SIGTERM.

    sudo .venv/bin/python bench/soak.py --minutes 10 [--seed 16] [--json FILE]

Root only (network namespaces). Heavy: run it under the machine-wide lock,
`flock /tmp/binome-heavy.lock .venv/bin/python bench/soak.py --minutes 10`.
It asserts nothing; its exit status is 1 if an invariant broke (an
acknowledged write lost, two running copies, an unneeded fence) or the guest
needed the admin's `disabled`/`started` to run again after HA gave up on it
(the soak does that itself, bounded, to go on).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from binome.lab.ha import HaLab
from binome.lab.soak import Soak, describe_kinds, format_report, random_fault


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                epilog="fault kinds:\n" + describe_kinds(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True,
                   help="inject faults until this many minutes have passed")
    p.add_argument("--seed", type=int, default=16, help="random seed (default 16)")
    p.add_argument("--json", help="also write the report to this file")
    p.add_argument("--hog-node", default="n1", help="node running the CPU hog ('' for none)")
    p.add_argument("--off-grace", type=float, default=60.0,
                   help="a node off this long after its fence counts as left off (60 s)")
    p.add_argument("--base", default="198.25", help="lab subnets <base>.1-4.0/24")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/soak.py needs root (network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    rng = random.Random(args.seed)
    ha = HaLab(base=args.base, lab_id=f"sk{os.getpid() % 100000:x}"[:8], name="soak")
    soak: Soak | None = None
    report: dict[str, Any] | None = None
    began = time.monotonic()
    try:
        ha.start()
        ha.create_ha_guest()
        print(f"lab up, HA guest serving on a replicated disk: {time.monotonic() - began:.0f} s;"
              f" seed {args.seed}, {args.minutes:g} min of faults", flush=True)
        soak = Soak(ha, hog_node=args.hog_node or None, off_grace=args.off_grace,
                    say=lambda line: print(line, flush=True))
        soak.start()
        until = time.monotonic() + args.minutes * 60
        while time.monotonic() < until:
            soak.run(random_fault(rng, ha, ha.guest_node()))
        soak.finish()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        try:
            if soak is not None:
                soak.stop()
                report = soak.report()   # the cluster log is read before the teardown
        finally:
            ha.stop()
    if report is None:
        return 1
    report["seed"] = args.seed
    report["minutes"] = args.minutes
    print()
    print(format_report(report))
    print(f"total {time.monotonic() - began:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    broken = (report["acked_writes_lost"] or 0) > 0 or report["double_runs"] > 0 \
        or report["unneeded_fences"] > 0 or bool(report["admin_recoveries"])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
