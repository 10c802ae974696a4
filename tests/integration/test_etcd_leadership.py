"""etcd leadership on the witness, on a real 2-node + witness cluster (real etcd, binomed).

The daemons move etcd leadership to the witness's member once the cluster is
healthy, move it back after somebody moved it away, and a node's death then
costs no election: the leader and the raft term stay as they were, and the dead
node's lease expires after its TTL without etcd's leader-change extension.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from binome.store import keys
from tests.integration.harness import Cluster, wait_for


def etcd(cluster: Cluster, node: str, fn) -> Any:
    """Run `fn(store)` against `node`'s etcd member (its client URL, its certificate)."""
    async def go():
        store = cluster.raw_store(node)
        try:
            return await fn(store)
        finally:
            await store.close()
    return asyncio.run(go())


def member_ids(cluster: Cluster) -> dict[str, int]:
    async def fn(store):
        return {m.name: m.id for m in await store.members()}
    return etcd(cluster, "w", fn)


def status(cluster: Cluster, node: str) -> dict[str, Any]:
    return etcd(cluster, node, lambda store: store.member_status(timeout=2.0))


def leader_is(cluster: Cluster, ids: dict[str, int], name: str, *via: str) -> bool:
    return all(status(cluster, v)["leader"] == ids[name] for v in via)


def transfers_logged(cluster: Cluster, node: str) -> list[str]:
    text = cluster[node].log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "etcd leadership moved to the witness" in line]


def test_etcd_leadership_stays_on_the_witness(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n1, n2, w = c["n1"], c["n2"], c["w"]
    began = time.monotonic()
    ids = member_ids(c)
    assert set(ids) == {"n1", "n2", "w"}

    # ---- after formation the leader (n1, the creator) hands leadership to the witness
    wait_for(lambda: leader_is(c, ids, "w", "n1", "n2", "w"), 30,
             "etcd leadership on the witness after formation")
    print(f"\nleader on w {time.monotonic() - began:.1f} s after the cluster was formed")
    # pre-vote is on for every member
    for node in (n1, n2, w):
        pid = int((node.state_dir / "run" / "etcd.pid").read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"--pre-vote" in f.read().split(b"\0")
    # the pvecm-like view names the leader (JSON field and text)
    wait_for(lambda: n1.cluster().get("etcd_leader") == "w", 10, "etcd_leader w in n1's status")
    # each daemon's view refreshes on its own: n2's may say it a moment after n1's
    wait_for(lambda: "etcd leader:      w" in n2.cli("cluster", "status").stdout, 10,
             "etcd leader w in n2's text status")
    # logged once per transfer, in logfmt, by the daemon whose member led (n1 unless
    # an election under load moved it to n2 first); never by the witness
    lines = transfers_logged(c, "n1") + transfers_logged(c, "n2")
    assert lines and all("to=w" in line and "took_ms=" in line for line in lines), lines
    assert transfers_logged(c, "w") == []
    from_n1 = len(transfers_logged(c, "n1"))

    # ---- moved away (MoveLeader, as an admin could): it comes back to the witness
    etcd(c, "w", lambda store: store.move_leader(ids["n1"], timeout=10.0))
    assert status(c, "n1")["leader"] == ids["n1"]
    moved = time.monotonic()
    wait_for(lambda: leader_is(c, ids, "w", "n1", "n2", "w"), 30,
             "etcd leadership back on the witness", interval=0.1)
    print(f"leader back on w {time.monotonic() - moved:.1f} s after it was moved to n1")
    wait_for(lambda: len(transfers_logged(c, "n1")) == from_n1 + 1, 10, "n1's transfer logged")
    assert "from=n1 to=w" in transfers_logged(c, "n1")[-1]
    assert transfers_logged(c, "w") == []

    # ---- no flapping: leadership stays on the witness, same term (a 3 s observation
    # window, which also lets n1 renew its lease after the extension of the transfer)
    before = status(c, "w")
    assert before["leader"] == ids["w"]
    watch_until = time.monotonic() + 3.0
    while time.monotonic() < watch_until:
        for node in ("w", "n2", "n1"):
            now = status(c, node)
            assert now["leader"] == ids["w"] and now["raft_term"] == before["raft_term"], now
        time.sleep(0.2)

    # ---- n1 dies: no election, no term change, its lease runs out after its TTL
    killed = time.monotonic()
    n1.kill()
    wait_for(lambda: not any(e.get("name") == "n1" and e["online"]
                             for e in w.json("cluster", "status")), 20, "n1 offline on w")

    async def alive_key(store):
        return await store.get(keys.alive("n1"))

    wait_for(lambda: etcd(c, "w", alive_key) is None, 30, "n1's alive key to expire",
             interval=0.1)
    expired = time.monotonic() - killed
    print(f"n1 killed -> its alive key (lease ttl 5 s) gone: {expired:.1f} s")
    # several election timeouts (1 s) after n1 went away: still the same leader and term
    for node in ("w", "n2"):
        now = status(c, node)
        assert now["leader"] == ids["w"] and now["raft_term"] == before["raft_term"], (node, now)

    # ---- n1 comes back (pre-vote: its return does not depose the leader)
    n1.start()
    wait_for(n1.quorate, 60, "n1 quorate again")
    wait_for(lambda: status(c, "n1")["leader"] == ids["w"], 20, "n1 follows w")
    for node in ("w", "n2", "n1"):
        now = status(c, node)
        assert now["leader"] == ids["w"] and now["raft_term"] == before["raft_term"], (node, now)

    # ---- the witness goes away: leadership stays on a node, nobody tries to move it
    # to the unreachable witness; once it is back and healthy, it gets leadership back
    moves = {n: len(transfers_logged(c, n)) for n in ("n1", "n2")}
    w.kill()   # its etcd (SIGTERM) hands leadership to a node itself
    wait_for(lambda: status(c, "n1")["leader"] in (ids["n1"], ids["n2"])
             and status(c, "n2")["leader"] == status(c, "n1")["leader"], 20,
             "a node leads without the witness")
    wait_for(lambda: not any(e.get("name") == "w" and e["online"]
                             for e in n1.json("cluster", "status")), 20, "w offline on n1")
    node_leader = status(c, "n1")["leader"]
    watch_until = time.monotonic() + 3.0
    while time.monotonic() < watch_until:
        assert status(c, "n1")["leader"] == node_leader
        time.sleep(0.2)
    assert {n: len(transfers_logged(c, n)) for n in ("n1", "n2")} == moves
    for n in ("n1", "n2"):
        assert "etcd leadership transfer to the witness failed" not in \
            c[n].log_path.read_text(errors="replace")
    w.start()
    back = time.monotonic()
    wait_for(lambda: leader_is(c, ids, "w", "n1", "n2", "w"), 60,
             "etcd leadership back on the returned witness")
    print(f"witness back -> leader on w after {time.monotonic() - back:.1f} s")
    print(f"test runtime {time.monotonic() - began:.1f} s")
