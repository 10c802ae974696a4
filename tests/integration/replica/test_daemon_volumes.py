"""Replicated volumes through the real path: CLI -> API -> binomed -> volume engine, with etcd.

One 2-node + witness cluster for the module (real etcd, real binomed, real engines on
127.N.0.x). Covers: engine supervision (started on demand, adopted across a daemon
restart, I/O going on without the daemon), `binome volume create|status|...`, the peer
creating its copy from the etcd record, states published to etcd, the secret never
returned, and quorum fencing end to end (the daemon is the fence-peer handler).
The engines outlive their daemons by design: the fixture stops them by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from binome.lab.nbd_client import NbdClient
from tests.integration.access.client import Api
from tests.integration.harness import Cluster, Node, make_cluster, wait_for
from tests.integration.notify.mailbox import Inbox

MiB = 1 << 20


def engine_pid(node: Node) -> int | None:
    try:
        pid = int((node.state_dir / "replica" / "engine.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    if b"binome.storage.replica" not in cmdline or \
            str(node.state_dir).encode() not in cmdline:
        return None
    return pid


def kill_engine(node: Node, sig: int = signal.SIGKILL) -> None:
    pid = engine_pid(node)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    wait_for(lambda: engine_pid(node) != pid or not _running(pid), 15, f"engine {pid} to exit")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def volume_cluster(tmp_path_factory, name: str) -> Iterator[Cluster]:
    """A module's 2-node + witness cluster; the engines outlive their daemons by design,
    so they are stopped by pid after the cluster."""
    from tests.integration.conftest import _nets, _require_tools

    _require_tools()
    c = make_cluster(tmp_path_factory.mktemp(name), next(_nets))
    try:
        yield c
    finally:
        try:
            c.stop()
        finally:
            for node in c.nodes.values():
                kill_engine(node)


@pytest.fixture(scope="module")
def vc(tmp_path_factory) -> Iterator[Cluster]:
    yield from volume_cluster(tmp_path_factory, "vols")


def vstatus(node: Node, name: str = "v1", via: Node | None = None) -> dict:
    rows = (via or node).json("volume", "list", "--node", node.name)
    return next((r for r in rows if r["name"] == name), {})


def in_sync(st: dict) -> bool:
    return st.get("cstate") == "Connected" and st.get("disk") == st.get("peer_disk") == \
        "UpToDate"


def store_get(c: Cluster, key: str, via: str = "n1"):
    async def get():
        store = c.raw_store(via)
        try:
            entry = await store.get(key, serializable=True)
            return None if entry is None else entry.value
        finally:
            await store.close()
    return asyncio.run(get())


async def _nbd_write(sock: str, offset: int, data: bytes) -> None:
    c = await NbdClient.connect(sock, "v1")
    try:
        await c.write(offset, data)
        await c.flush()
    finally:
        await c.close()


def backing(node: Node, name: str = "v1") -> Path:
    return node.state_dir / "replica" / "volumes" / name / "data.img"


def test_no_engine_without_volumes_then_create_replicates(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    assert engine_pid(n1) is None and engine_pid(n2) is None, "an engine with no volumes"
    assert n1.json("volume", "list") == []
    started = time.monotonic()
    out = n1.cli("volume", "create", "v1", "--size", "16M")
    assert "replicated between n1 and n2" in out.stdout and "connected to n2" in out.stdout
    print(f"volume create (16 MiB) task: {time.monotonic() - started:.1f}s")
    st2 = wait_for(lambda: in_sync(s := vstatus(n2)) and s, 30, "n2 in sync")
    assert st2["role"] == "Secondary" and st2["peer_role"] == "Primary"
    st1 = vstatus(n1)
    assert in_sync(st1) and st1["role"] == "Primary" and st1["peer_node"] == "n2"
    assert st1["desired_primary"] == "n1" and st1["port"] >= 7789
    # the status views
    text = n1.cli("volume", "status", "v1").stdout
    assert " 0: cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate C r-----" in text
    assert "ns:" in text and " oos:0" in text
    assert "v1 role:Primary\n  disk:UpToDate\n  n2 role:Secondary\n    peer-disk:UpToDate" \
        in text
    # the published states, for the HA manager
    wait_for(lambda: (store_get(vc, "/binome/volumes/v1/state/n2") or {}).get("role")
             == "Secondary", 10, "n2's state in etcd")
    s1 = store_get(vc, "/binome/volumes/v1/state/n1")
    assert s1["role"] == "Primary" and s1["disk"] == "UpToDate" and s1["gi"]
    # the secret: in etcd and in the engines' 0600 files, never in an API answer
    secret = store_get(vc, "/binome/volume-secrets/v1")["secret"]
    assert len(secret) == 64
    for node in (n1, n2):
        cfg = node.state_dir / "replica" / "volumes" / "v1" / "volume.json"
        assert json.loads(cfg.read_text())["secret"] == secret
        assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    answers = [n1.cli("volume", "show", "v1", "--output-format", "json").stdout,
               n1.cli("volume", "list", "--output-format", "json").stdout,
               n1.cli("volume", "show", "v1", "--node", "n2", "--output-format", "json").stdout,
               n1.cli("api", "get", "/nodes/n1/volumes/v1", "--output-format", "json").stdout]
    assert all(secret not in a for a in answers)
    show = json.loads(answers[2])
    assert show["role"] == "Secondary" and show["cluster"]["nodes"].keys() == {"n1", "n2"}
    # a write through n1's NBD export lands in both backing files
    payload = os.urandom(64 * 1024)
    asyncio.run(_nbd_write(st1["socket"], 3 * MiB, payload))
    assert backing(n2).read_bytes()[3 * MiB:3 * MiB + len(payload)] == payload
    assert backing(n1).read_bytes() == backing(n2).read_bytes()


def test_engine_outlives_the_daemon_and_is_adopted(vc: Cluster) -> None:
    n1 = vc["n1"]
    pid = engine_pid(n1)
    sock = vstatus(n1)["socket"]
    n1.stop()                              # SIGTERM binomed (and its etcd)
    assert engine_pid(n1) == pid and _running(pid)
    payload = os.urandom(4096)
    asyncio.run(_nbd_write(sock, 5 * MiB, payload))     # guest I/O goes on meanwhile
    assert backing(vc["n2"]).read_bytes()[5 * MiB:5 * MiB + 4096] == payload
    n1.start()
    st = wait_for(lambda: in_sync(s := vstatus(n1)) and s, 30, "n1 back")
    assert engine_pid(n1) == pid and st["role"] == "Primary"
    assert "volume engine adopted" in n1.log_path.read_text()


def test_a_dead_engine_is_restarted_and_the_volume_comes_back(vc: Cluster) -> None:
    n2 = vc["n2"]
    pid = engine_pid(n2)
    kill_engine(n2)
    st = wait_for(lambda: in_sync(s := vstatus(n2)) and s, 30, "n2's engine restarted")
    assert engine_pid(n2) not in (None, pid) and st["role"] == "Secondary"
    wait_for(lambda: in_sync(vstatus(vc["n1"])), 20, "n1 in sync")


def test_quorum_fencing_with_quorum_outdates_the_peer_and_continues(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    sock = vstatus(n1)["socket"]
    n2.kill()                              # the peer's node dies: daemon, etcd ...
    kill_engine(n2)                        # ... and its engine
    payload = os.urandom(4096)
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(_nbd_write(sock, 7 * MiB, payload), 30))
    print(f"write completed {time.monotonic() - started:.1f}s after the peer died "
          f"(n1 + witness quorate: n2 recorded Outdated)")
    marks = store_get(vc, "/binome/volumes/v1/fencing")["outdated"]
    assert marks["n2"]["by"] == "n1"
    st = vstatus(n1)
    assert st["peer_disk"] == "Outdated" and not st["suspended"] and st["fenced_by"] == "n1"
    assert "recorded Outdated by n1" in n1.cli("cluster", "log").stdout
    # the outdated copy comes back: told it is Outdated, resynced, then the mark is cleared
    n2.start()
    wait_for(lambda: in_sync(vstatus(n2)), 40, "n2 resynced")
    wait_for(lambda: store_get(vc, "/binome/volumes/v1/fencing")["outdated"] == {}, 20,
             "the Outdated mark cleared")
    assert backing(n2).read_bytes()[7 * MiB:7 * MiB + 4096] == payload


def test_without_quorum_writes_wait_and_the_outdated_copy_refuses_promotion(
        vc: Cluster) -> None:
    n1, n2, w = vc["n1"], vc["n2"], vc["w"]
    sock = vstatus(n1)["socket"]
    w.kill()
    n2.kill()                              # n1 alone: 1 of 3 votes, no quorum ...
    wait_for(lambda: not n1.quorate(), 20, "n1 without quorum")
    kill_engine(n2)                        # ... when it loses its peer
    payload = os.urandom(4096)

    async def write_waits() -> float:
        task = asyncio.ensure_future(_nbd_write(sock, 9 * MiB, payload))
        done, _ = await asyncio.wait({task}, timeout=4.0)
        assert not done, "a write completed on a Primary without its peer and without quorum"
        started = time.monotonic()
        await asyncio.to_thread(w.start)                  # quorum is back
        async with asyncio.timeout(30):
            await task
        return time.monotonic() - started

    took = asyncio.run(write_waits())
    print(f"write completed {took:.1f}s after the witness was started again")
    assert store_get(vc, "/binome/volumes/v1/fencing")["outdated"]["n2"]["by"] == "n1"
    # n2 returns while n1 keeps it away (StandAlone): its copy is Outdated and stays so
    n1.cli("volume", "disconnect", "v1")
    n2.start()
    st = wait_for(lambda: (s := vstatus(n2)).get("disk") == "Outdated" and s, 30,
                  "n2's engine told its copy is Outdated")
    assert st["cstate"] in ("WFConnection", "Unconnected")
    r = n2.cli("volume", "primary", "v1", check=False)
    assert r.returncode != 0 and "recorded Outdated by n1" in r.stdout + r.stderr
    assert vstatus(n2)["role"] == "Secondary"
    # n1 reconnects: n2 resyncs, the mark goes away
    n1.cli("volume", "connect", "v1")
    wait_for(lambda: in_sync(vstatus(n2)), 40, "n2 resynced")
    wait_for(lambda: store_get(vc, "/binome/volumes/v1/fencing")["outdated"] == {}, 20,
             "the Outdated mark cleared")
    assert backing(n1).read_bytes() == backing(n2).read_bytes()


class EventReader:
    """`binome volume events ...` running in the background; its lines collected."""

    def __init__(self, node: Node, *args: str) -> None:
        import subprocess
        import threading

        from tests.integration.harness import BIN

        env = dict(os.environ, BINOME_SOCKET=node.socket)
        self.proc = subprocess.Popen([str(BIN / "binome"), "volume", "events", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pred, what: str, timeout: float = 30) -> str:
        def found():
            return next((ln for ln in list(self.lines) if pred(ln)), None)
        return wait_for(found, timeout, f"{what}; lines so far: {self.lines[-8:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)
        self._thread.join(10)


def test_volume_events_now_and_streamed(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    wait_for(lambda: in_sync(vstatus(n1)), 30, "n1 in sync")
    lines = n1.cli("volume", "events", "v1", "--now").stdout.splitlines()
    assert lines[0] == "exists resource name:v1 role:Primary suspended:no", lines
    assert "exists connection name:v1 conn-name:n2 connection:Connected role:Secondary" in lines
    assert "exists device name:v1 volume:0 disk:UpToDate client:no open:no" in lines
    assert ("exists peer-device name:v1 conn-name:n2 volume:0 replication:Established "
            "peer-disk:UpToDate resync-suspended:no") in lines
    assert lines[-1] == "exists -"
    objs = [json.loads(ln) for ln in n2.cli("volume", "events", "--now", "--output-format",
                                            "json").stdout.splitlines()]
    assert objs[0]["action"] == "exists" and objs[0]["object"] == "resource"
    assert objs[0]["role"] == "Secondary" and objs[-1]["object"] == "-"
    r = n1.cli("volume", "events", "nope", "--now", check=False)
    assert r.returncode != 0 and "no volume named 'nope'" in r.stdout + r.stderr
    one = n1.json("api", "get", "/nodes/n2/volumes/v1/events", "now=1")   # proxied to n2
    assert [(e["action"], e["object"]) for e in one][-1] == ("exists", "-")
    assert one[0]["name"] == "v1" and one[0]["role"] == "Secondary"
    r = n1.cli("api", "get", "/nodes/n1/volume-events", "volume=bad/name", "now=1",
               check=False)
    assert r.returncode != 0 and "400" in r.stdout + r.stderr and "volume" in r.stdout + r.stderr

    local = EventReader(n1, "v1")                                   # n1's own API
    proxied = EventReader(n1, "--node", "n2", "--output-format", "json")   # relayed to n2
    try:
        local.wait_line(lambda ln: ln == "exists -", "n1's snapshot")
        proxied.wait_line(lambda ln: json.loads(ln)["object"] == "-", "n2's snapshot")
        started = time.monotonic()
        n1.cli("volume", "pause-sync", "v1")
        line = local.wait_line(lambda ln: ln.startswith("change peer-device name:v1")
                               and "resync-suspended:user" in ln, "n1's pause")
        print(f"event seen {time.monotonic() - started:.2f}s after the pause-sync command")
        assert line.startswith("change peer-device name:v1 conn-name:n2 volume:0 "
                               "replication:Established")
        n1.cli("volume", "resume-sync", "v1")
        local.wait_line(lambda ln: ln.startswith("change peer-device")
                        and "resync-suspended:no" in ln, "n1's resume")
        n2.cli("volume", "pause-sync", "v1")
        ev = json.loads(proxied.wait_line(
            lambda ln: json.loads(ln).get("resync-suspended") == "user", "n2's pause"))
        assert ev["action"] == "change" and ev["object"] == "peer-device" and ev["time"]
        n2.cli("volume", "resume-sync", "v1")
        assert local.proc.poll() is None and proxied.proc.poll() is None   # still streaming
    finally:
        local.stop()
        proxied.stop()
    assert not any("s3cret" in ln or "secret" in ln for ln in local.lines + proxied.lines)


def test_split_brain_in_standalone_mode_recovered_through_the_cli(
        vc: Cluster, mail: tuple[Inbox, Api]) -> None:
    """Standalone mode on both nodes, both write while disconnected, the reconnect finds
    a split brain (after-sb-1pri disconnect): StandAlone on both; the DRBD recovery by
    hand through `binome volume`: the victim (n2) discards its data, n1 survives.
    Each step is mailed once, by one node: the disconnect, the split brain with what to
    do, its resolution by hand, the resync; the deliveries are in the history."""
    n1, n2 = vc["n1"], vc["n2"]
    inbox, api = mail
    wait_for(lambda: in_sync(vstatus(n1)) and in_sync(vstatus(n2)), 30, "in sync")
    inbox.settle()   # the earlier tests' resyncs may still be in a group window
    for node in (n1, n2):
        node.cli("volume", "standalone", "v1", "--yes")
    try:
        for node in (n1, n2):
            node.cli("volume", "disconnect", "v1")
        survivor = os.urandom(8192)
        asyncio.run(_nbd_write(vstatus(n1)["socket"], 3 * MiB, survivor))
        n2.cli("volume", "primary", "v1", "--force", "1")
        asyncio.run(_nbd_write(vstatus(n2)["socket"], 3 * MiB, os.urandom(4096)))
        asyncio.run(_nbd_write(vstatus(n2)["socket"], 5 * MiB, os.urandom(4096)))
        n2.cli("volume", "secondary", "v1")
        events = EventReader(n2, "v1")
        try:
            events.wait_line(lambda ln: ln == "exists -", "n2's snapshot")
            n1.cli("volume", "connect", "v1")
            n2.cli("volume", "connect", "v1")
            for node in (n1, n2):
                wait_for(lambda node=node: vstatus(node).get("cstate") == "StandAlone", 30,
                         f"{node.name} StandAlone after the split brain")
            events.wait_line(lambda ln: ln == "call helper name:v1 volume:0 "
                             "helper:split-brain", "the split-brain helper event on n2")
        finally:
            events.stop()
        assert backing(n2).read_bytes()[3 * MiB:3 * MiB + 8192] != survivor
        split = vstatus(n1)["split_brain"]
        assert split["state"] == "detected" and split["reporter"] == "n1", split
        (_, text), = wait_for(lambda: inbox.events("Split brain on volume v1"), 30,
                              "the split-brain mail")
        print(text)
        assert "on n1 and n2" in text and "(Primary at the reconnect: n1)" in text
        assert "'binome volume connect v1 --discard-my-data 1'" in text
        # DRBD's manual recovery, through the CLI (API) on each node.
        n2.cli("volume", "connect", "v1", "--discard-my-data", "1")
        n1.cli("volume", "connect", "v1")
        wait_for(lambda: in_sync(vstatus(n2)) and in_sync(vstatus(n1)), 60,
                 "n2 resynced from n1")
        assert vstatus(n1)["role"] == "Primary" and vstatus(n2)["role"] == "Secondary"
        assert backing(n2).read_bytes() == backing(n1).read_bytes()
        assert backing(n2).read_bytes()[3 * MiB:3 * MiB + 8192] == survivor
        resolved = vstatus(n2)["split_brain"]
        assert (resolved["state"], resolved["policy"], resolved["survivor"],
                resolved["victim"]) == ("resolved", "discard-my-data", "n1", "n2")

        titles = ("Replication of v1 to n2 disconnected", "Split brain on volume v1",
                  "Split brain on volume v1 resolved", "Resync of v1 to n2 started",
                  "Resync of v1 to n2 done")
        wait_for(lambda: all(inbox.events(t) for t in titles), 30,
                 f"the mails {titles}; got {inbox.subjects()}")
        assert [len(inbox.events(t)) for t in titles] == [1] * len(titles), inbox.subjects()
        (_, text), = inbox.events("Split brain on volume v1 resolved")
        assert "resolved by hand ('connect --discard-my-data' on the victim): n1 keeps its " \
               "data; the changes made on n2" in text, text
        (_, text), = inbox.events("Replication of v1 to n2 disconnected")
        assert "by an administrator" in text, text

        # the deliveries, cluster-wide: delivered to `mail`; `deadmail` failing, with why
        def history() -> list[dict]:
            return api.ok("GET", "/cluster/notifications/history", limit=200)
        wait_for(lambda: any(e["target"] == "deadmail" and e.get("error")
                             for e in history()), 30, "deadmail's failure in the history")
        rows = history()
        good = [e for e in rows if e["target"] == "mail" and e["type"] == "split-brain"]
        assert good and all(e["status"] == "delivered" and e["node"] == "n1" for e in good)
        bad = [e for e in rows if e["target"] == "deadmail"]
        assert all(e["status"] in ("retrying", "failed") and e["attempts"] >= 1 for e in bad)
        print(bad[0])
        assert "\n" not in bad[0]["error"]
        assert api.ok("GET", "/cluster/notifications/history", target="deadmail",
                      status="delivered") == []
        assert "deadmail" in n1.cli("notification", "history").stdout
        r = api.call("GET", "/cluster/notifications/history", status="lost")
        assert r.status_code == 400 and "status" in r.json().get("errors", {})
        scrape = api.s.get(f"https://{n1.address}:8006/metrics", timeout=10)
        assert scrape.status_code == 200, scrape.text
        assert 'binome_notification_delivery_attempt_failures_total{target="deadmail"}' \
            in scrape.text
        assert 'binome_notification_deliveries_total{outcome="delivered",target="mail"}' \
            in scrape.text or \
            'binome_notification_deliveries_total{target="mail",outcome="delivered"}' \
            in scrape.text
    finally:
        for node in (n1, n2):
            node.cli("volume", "standalone", "v1", "--enable", "0", "--yes", check=False)


def test_actions_and_destroy(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    r = n2.cli("volume", "primary", "v1", check=False)
    assert r.returncode != 0 and "Multiple primaries not allowed" in r.stdout + r.stderr
    n1.cli("volume", "pause-sync", "v1")
    n1.cli("volume", "resume-sync", "v1")
    # n2's handler commands come from a node-local file, never from the API or etcd.
    hdir = n2.state_dir / "handler-out"
    hdir.mkdir()
    cmd = f"{{ env; echo END; }} > {hdir}/$BINOME_HANDLER"
    (n2.state_dir / "replica" / "handlers.json").write_text(json.dumps(
        {"handlers": {"before-resync-target": cmd, "after-resync-target": cmd},
         "handler_timeout": 30}))
    conf = n2.state_dir / "replica" / "volumes" / "v1" / "volume.json"
    wait_for(lambda: "before-resync-target" in conf.read_text(), 20,
             "the daemon applied handlers.json to the engine")
    out = n2.cli("volume", "invalidate", "v1").stdout
    assert "v1: cs:" in out
    wait_for(lambda: in_sync(vstatus(n2)), 30, "n2 resynced after invalidate")
    wait_for(lambda: all((hdir / h).exists() and (hdir / h).read_text().endswith("END\n")
                         for h in ("before-resync-target", "after-resync-target")),
             20, "n2's resync handlers ran")
    env = (hdir / "before-resync-target").read_text()
    assert "DRBD_RESOURCE=v1" in env and "DRBD_PEER_NODE=n1" in env
    secret = store_get(vc, "/binome/volume-secrets/v1")["secret"]
    assert secret not in env
    r = n1.cli("volume", "destroy", "v1", check=False)
    assert r.returncode != 0                    # needs --yes (no terminal to confirm on)
    n1.cli("volume", "destroy", "v1", "--yes")
    wait_for(lambda: not backing(n2).exists(), 20, "n2's copy removed")
    assert not backing(n1).exists()
    assert store_get(vc, "/binome/volumes/v1/config") is None
    assert store_get(vc, "/binome/volume-secrets/v1") is None
    assert n1.json("volume", "list") == [] and n2.json("volume", "list") == []
