"""The lease keeper renews through another etcd member while its own member is frozen.

Real processes: a loopback 2-node + witness cluster. n2's etcd member is stopped
(SIGSTOP, by pid) for longer than the self-fence deadline: n2's HA heartbeat, bound
to its lease, must keep being renewed (read through the witness), so a node whose
only fault is its local etcd member is not power-cycled by its watchdog. Before
`KeeperLink`, renewals went only through the local member and the lease expired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from binome.store import keys
from tests.integration.harness import Cluster, wait_for


def _heartbeat_rev(c: Cluster, via: str, node: str) -> int | None:
    async def read() -> int | None:
        store = c.raw_store(via)
        try:
            entry = await store.get(keys.ha_heartbeat(node), timeout=2)
            return entry.mod_revision if entry is not None else None
        finally:
            await store.close()

    return asyncio.run(read())


def test_renewals_survive_a_frozen_local_member(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n2 = c["n2"]
    wait_for(lambda: _heartbeat_rev(c, "w", "n2") is not None, 30, "n2's HA heartbeat")
    pid = int((n2.state_dir / "run" / "etcd.pid").read_text())
    revs: list[int | None] = []
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        while time.monotonic() - frozen < 8.0:   # > self_fence_deadline (3.8 s) twice
            revs.append(_heartbeat_rev(c, "w", "n2"))
            time.sleep(0.25)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert None not in revs, f"n2's lease expired while only its etcd member was frozen: {revs}"
    assert len(set(revs[len(revs) // 2:])) >= 3, f"no renewals in the second half: {revs}"
    log = n2.log_path.read_text(errors="replace")
    assert "renewing through https://" in log
    # and back on its own member once it answers again
    wait_for(lambda: "lease renewals go back to the local etcd member"
             in n2.log_path.read_text(errors="replace"), 20, "renewals back on n2's member")
