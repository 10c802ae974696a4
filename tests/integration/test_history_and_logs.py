"""Usage history that survives a daemon restart, and the node logs (syslog, journal,
`binome log --follow`, cluster log filters), through real binomed and etcd processes."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import uuid

import pytest
import requests
import urllib3

from binome.cli.client import ApiCallError, Client
from tests.integration.harness import BIN, PASSWORD, Cluster, wait_for

pytestmark = pytest.mark.integration
urllib3.disable_warnings()

CURSOR = re.compile(r"^s=(binomed|etcd);t=\d+;i=\d+$")


def base(cluster: Cluster, node: str = "n1") -> str:
    return f"https://{cluster[node].address}:8006/api2/json"


@pytest.fixture(scope="module")
def session(cluster: Cluster) -> requests.Session:
    r = requests.post(base(cluster) + "/access/ticket",
                      data={"username": "admin@pve", "password": PASSWORD}, verify=False,
                      timeout=10)
    assert r.status_code == 200, r.text
    s = requests.Session()
    s.verify, s.trust_env = False, False
    s.cookies.set("PVEAuthCookie", r.json()["data"]["ticket"])
    s.headers["CSRFPreventionToken"] = r.json()["data"]["CSRFPreventionToken"]
    return s


def _create_user(cluster: Cluster, session: requests.Session) -> str:
    """An access change: binomed logs it and writes a cluster-log entry tagged `access`."""
    userid = f"logs-{uuid.uuid4().hex[:8]}@pve"
    r = session.post(base(cluster) + "/access/users", data={"userid": userid}, timeout=10)
    assert r.status_code == 200, r.text
    return userid


def test_usage_history_survives_a_daemon_restart(lone_nodes: Cluster) -> None:
    node = lone_nodes.add_node("n1")
    api = Client(socket_path=node.socket)         # the CLI's client, on the node's socket

    def history(path: str, field: str, **params: str) -> dict[int, float]:
        rows = api.call("GET", path, {"timeframe": "hour", **params})
        assert len(rows) == 70                    # PVE's hour archive: 70 one-minute rows
        return {p["time"]: p[field] for p in rows if field in p}

    before = wait_for(lambda: history("/nodes/localhost/rrddata", "memtotal"), 15,
                      "a node usage sample")
    storage = wait_for(lambda: history("/nodes/localhost/storage/local/rrddata", "total"), 15,
                       "a storage usage sample")
    assert (node.state_dir / "rrd.sqlite").exists()
    node.stop()
    node.start()
    after = history("/nodes/localhost/rrddata", "memtotal")
    assert before.items() <= after.items()        # same rows, same values, after the restart
    assert storage.items() <= history("/nodes/localhost/storage/local/rrddata",
                                      "total").items()
    year = api.call("GET", "/nodes/localhost/rrddata", {"timeframe": "year", "cf": "MAX"})
    assert len(year) == 70 and [p["time"] for p in year] == sorted(p["time"] for p in year)
    with pytest.raises(ApiCallError) as bad:
        api.call("GET", "/nodes/localhost/rrddata", {"timeframe": "decade"})
    assert bad.value.status == 400 and "timeframe" in bad.value.errors


def test_syslog_serves_binomed_and_etcd_with_pve_shape(cluster: Cluster,
                                                       session: requests.Session) -> None:
    r = session.get(base(cluster) + "/nodes/n1/syslog", params={"limit": 500}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    lines = body["data"]
    assert body["total"] >= len(lines) > 0
    assert [line["n"] for line in lines] == list(range(1, len(lines) + 1))
    assert any(" n1 binomed: " in line["t"] for line in lines)
    # etcd's lines, asked of n2 about n1 (proxied to n1)
    r = session.get(base(cluster, "n2") + "/nodes/n1/syslog",
                    params={"service": "etcd", "start": 2, "limit": 3}, timeout=10)
    etcd = r.json()["data"]
    assert [line["n"] for line in etcd] == [3, 4, 5]
    assert all(" n1 etcd: level=" in line["t"] for line in etcd), etcd
    r = session.get(base(cluster) + "/nodes/n1/syslog",
                    params={"since": "2099-01-01", "until": "2099-01-02 10:00"}, timeout=10)
    assert r.json()["data"] == [{"n": 1, "t": "no content"}]


def test_journal_cursor_follows_new_lines(cluster: Cluster, session: requests.Session) -> None:
    url = base(cluster) + "/nodes/n1/journal"
    first = session.get(url, params={"lastentries": 5}, timeout=10).json()["data"]
    assert len(first) == 7 and CURSOR.match(first[0]) and CURSOR.match(first[-1])
    userid = _create_user(cluster, session)

    def newer() -> list[str]:
        data = session.get(url, params={"startcursor": first[-1]}, timeout=10).json()["data"]
        return [line for line in data[1:-1] if userid in line]
    assert "binomed:" in wait_for(newer, 10, "the access change in the journal")[0]
    assert first[1] not in session.get(url, params={"startcursor": first[-1]},
                                       timeout=10).json()["data"]


def test_binome_log_follow_prints_new_lines(cluster: Cluster, session) -> None:
    env = dict(os.environ, BINOME_SOCKET=cluster["n1"].socket)
    proc = subprocess.Popen([str(BIN / "binome"), "log", "--follow", "-n", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: seen, 10, "the first line of binome log")
        userid = _create_user(cluster, session)
        wait_for(lambda: any(userid in line for line in seen), 10,
                 "binome log --follow to print the access change")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
    # everything since 2000 (no last-N cut, so etcd's start-up lines are in)
    etcd = cluster["n1"].cli("log", "--service", "etcd", "--since",
                             "2000-01-01").stdout.splitlines()
    assert etcd and all(" etcd: " in line for line in etcd)
    r = cluster["n1"].cli("log", "--since", "not-a-date", check=False)
    assert r.returncode != 0 and "not a time" in r.stderr


def test_cluster_log_severity_and_tag_filters(cluster: Cluster,
                                              session: requests.Session) -> None:
    userid = _create_user(cluster, session)
    url = base(cluster) + "/cluster/log"
    access = session.get(url, params={"tag": "access", "max": 500}, timeout=10).json()["data"]
    assert access and all(e["tag"] == "access" for e in access)
    assert any(userid in e["msg"] for e in access)
    both = session.get(url, params={"tag": "access,quorum", "max": 500},
                       timeout=10).json()["data"]
    assert {e["tag"] for e in both} <= {"access", "quorum"} and len(both) >= len(access)
    warnings = session.get(url, params={"severity": "warning", "max": 500},
                           timeout=10).json()["data"]
    assert all(e["pri"] <= 4 for e in warnings)
    assert not any(userid in e["msg"] for e in warnings)    # an info entry
    cli = cluster["n1"].json("cluster", "log", "--tag", "access", "--max", "5")
    assert cli and all(e["tag"] == "access" for e in cli)


@pytest.mark.parametrize(("path", "params", "bad"), [
    ("/nodes/n1/syslog", {"since": "yesterday"}, "since"),
    ("/nodes/n1/syslog", {"until": "2026-02-30"}, "until"),
    ("/nodes/n1/syslog", {"limit": "-1"}, "limit"),
    ("/nodes/n1/syslog", {"lines": "5"}, "lines"),
    ("/nodes/n1/journal", {"since": "1", "startcursor": "s=etcd;t=1;i=0"}, "startcursor"),
    ("/nodes/n1/journal", {"until": "1", "endcursor": "s=etcd;t=1;i=0"}, "endcursor"),
    ("/nodes/n1/journal", {"startcursor": "s=foo;t=1;i=0"}, "startcursor"),
    ("/nodes/n1/journal", {"lastentries": "many"}, "lastentries"),
    ("/cluster/log", {"severity": "loud"}, "severity"),
    ("/cluster/log", {"tag": "Not A Tag"}, "tag"),
])
def test_log_endpoints_refuse_bad_input_with_pve_400(cluster: Cluster, session, path: str,
                                                     params: dict[str, str], bad: str) -> None:
    r = session.get(base(cluster, "n2") + path, params=params, timeout=10)
    assert r.status_code == 400, r.text
    assert bad in r.json()["errors"], r.json()
