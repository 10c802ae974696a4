"""Cluster membership through the real path: CLI -> API -> binomed -> etcd (TLS)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.harness import Cluster, make_cluster, wait_for


def test_status_of_healthy_cluster(cluster: Cluster) -> None:
    status = cluster["n1"].json("cluster", "status")
    head = next(e for e in status if e["type"] == "cluster")
    assert head["name"] == "itest"
    assert head["quorate"] == 1
    assert head["expected_votes"] == 3 and head["total_votes"] == 3 and head["quorum"] == 2
    assert head["nodes"] == 2 and head["witness"] == 1
    assert "Quorate" in head["flags"].split() and "Witness" in head["flags"].split()
    assert head["warnings"] == []
    members = {e["name"]: e for e in status if e["type"] != "cluster"}
    assert set(members) == {"n1", "n2", "w"}
    assert members["w"]["type"] == "witness" and members["n1"]["type"] == "node"
    assert members["n1"]["local"] == 1 and members["n2"]["local"] == 0
    assert [members[n]["nodeid"] for n in ("n1", "n2", "w")] == [1, 2, 3]
    assert all(m["online"] == 1 and m["votes"] == 1 for m in members.values())
    assert members["n2"]["ip"] == cluster["n2"].address


def test_every_node_sees_every_member(cluster: Cluster) -> None:
    for name in ("n1", "n2", "w"):
        names = {n["name"] for n in cluster[name].json("cluster", "nodes")}
        assert names == {"n1", "n2", "w"}, name
    text = cluster["n2"].cli("cluster", "status").stdout
    assert "Quorate:          Yes" in text
    assert "n2 (local)" in text and "witness  w" in text
    witness = cluster["w"].cli("witness", "status").stdout
    assert "Witness w of cluster 'itest'" in witness and "Quorate:  Yes (3 of 3" in witness


def test_output_formats(cluster: Cluster) -> None:
    compact = cluster["n1"].cli("cluster", "nodes", "--output-format", "json").stdout
    pretty = cluster["n1"].cli("cluster", "nodes", "--output-format", "json-pretty").stdout
    assert json.loads(compact) == json.loads(pretty)
    assert "\n    " in pretty and "\n" not in compact.strip()
    text = cluster["n1"].cli("cluster", "nodes").stdout
    assert text.splitlines()[0].split()[:3] == ["NODEID", "QUORUM_VOTES", "NAME"]


def test_etcd_requires_client_certificates(cluster: Cluster) -> None:
    """etcd is TLS-only with client-cert-auth: a plaintext or certificate-less client fails."""
    import subprocess

    n1 = cluster["n1"]
    ca = n1.state_dir / "pki" / "ca.pem"
    plain = subprocess.run(["etcdctl", f"--endpoints=http://{n1.address}:2379",
                            "--dial-timeout=2s", "get", "/binome/cluster"],
                           capture_output=True, text=True, env={"ETCDCTL_API": "3"})
    assert plain.returncode != 0
    nocert = subprocess.run(["etcdctl", f"--endpoints=https://{n1.address}:2379",
                             f"--cacert={ca}", "--dial-timeout=2s", "--command-timeout=3s",
                             "get", "/binome/cluster"],
                            capture_output=True, text=True, env={"ETCDCTL_API": "3"})
    assert nocert.returncode != 0


def test_join_refuses_wrong_fingerprint_and_password(lone_nodes: Cluster) -> None:
    c = lone_nodes
    c.create()
    n2 = c.add_node("n2")
    good = c["n1"].fingerprint()
    bad = ":".join(["AB"] * 32)
    r = n2.cli("cluster", "join", c["n1"].address, "--fingerprint", bad, "--user", "admin@pve",
               "--password-file", str(c.password_file), check=False)
    assert r.returncode != 0
    assert "fingerprint mismatch" in r.stdout and good in r.stdout
    wrong = c.root / "wrong"
    wrong.write_text("not-the-password\n")
    r = n2.cli("cluster", "join", c["n1"].address, "--fingerprint", good, "--user", "admin@pve",
               "--password-file", str(wrong), check=False)
    assert r.returncode != 0 and "authentication failure" in r.stdout
    # neither attempt changed anything: n2 is alone, n1's cluster has one member, version 1
    assert not any(e["type"] == "cluster" for e in n2.json("cluster", "status"))
    head = c["n1"].cluster()
    assert head["expected_votes"] == 1 and head["version"] == 1
    # a malformed fingerprint is refused at the API boundary with a per-parameter error
    r = n2.cli("cluster", "join", c["n1"].address, "--fingerprint", "xyz",
               "--password-file", str(c.password_file), check=False)
    assert r.returncode == 2 and "fingerprint: invalid SHA-256 fingerprint" in r.stderr
    # and the right credentials work
    n2.cli("cluster", "join", c["n1"].address, "--fingerprint", good, "--user", "admin@pve",
           "--password-file", str(c.password_file))
    assert c["n1"].cluster()["expected_votes"] == 2


def test_config_version_increments_on_each_change(lone_nodes: Cluster) -> None:
    c = lone_nodes
    c.create()
    versions = [c["n1"].cluster()["version"]]
    c.join("n2")
    versions.append(c["n1"].cluster()["version"])
    c.join("w", role="witness")
    versions.append(wait_for(lambda: c["n2"].cluster()["version"], 5, "version"))
    assert versions[0] == 1
    assert versions == sorted(versions) and len(set(versions)) == 3
    # every node reports the same version once settled
    wait_for(lambda: len({c[n].cluster()["version"] for n in ("n1", "n2", "w")}) == 1, 5,
             "same config version everywhere")
    # and the cluster log recorded each change
    log = c["w"].json("cluster", "log")
    msgs = [e["msg"] for e in log]
    assert any("created" in m for m in msgs)
    assert any("node n2 joined" in m for m in msgs)
    assert any("witness w joined" in m for m in msgs)


def test_quorum_transitions_and_expected_override(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n1, n2, w = c["n1"], c["n2"], c["w"]
    assert n1.quorate()
    w.kill()
    wait_for(lambda: n1.cluster()["total_votes"] == 2, 10, "witness seen offline")
    assert n1.quorate(), "2 of 3 votes must stay quorate"
    n2.kill()
    wait_for(lambda: not n1.quorate(), 10, "n1 to lose quorum")
    head = n1.cluster()
    assert head["total_votes"] == 1 and head["expected_votes"] == 3
    assert any("no quorum" in warning for warning in head["warnings"])
    assert "Quorate:          No" in n1.cli("cluster", "status").stdout
    # state changes are refused without quorum
    r = n1.cli("cluster", "delnode", "n2", check=False)
    assert r.returncode != 0 and "no quorum" in r.stdout
    w.start()
    n2.start()
    wait_for(n1.quorate, 20, "quorum back")
    wait_for(lambda: n1.cluster()["total_votes"] == 3, 20, "all three votes back")
    # read through n2, whose own etcd member may still be starting (n1 counts its vote
    # from the peers' view first)
    def n2_log() -> list[str]:
        return [e["msg"] for e in n2.json("cluster", "log", "--max", "200")]
    log_msgs = wait_for(n2_log, 20, "the cluster log through n2")
    assert any("n1: quorum lost" in m for m in log_msgs), log_msgs
    assert any("n1: quorum regained" in m for m in log_msgs), log_msgs

    # emergency override: n1 alone again, admin forces expected votes to 1
    version_before = n1.cluster()["version"]
    r = n1.cli("cluster", "expected", "1", "--yes", check=False)
    assert r.returncode != 0 and "cluster is quorate" in r.stdout
    n2.kill()
    w.kill()
    wait_for(lambda: not n1.quorate(), 10, "n1 to lose quorum again")
    r = n1.cli("cluster", "expected", "2", "--yes", check=False)
    assert r.returncode != 0 and "only 'expected 1'" in r.stdout
    r = n1.cli("cluster", "expected", "1", check=False)  # no terminal, no --yes
    assert r.returncode != 0 and "refusing without --yes" in r.stderr
    r = n1.cli("cluster", "expected", "1", "--yes")
    assert "WARNING" in r.stderr and "split brain" in r.stdout
    wait_for(n1.quorate, 20, "n1 quorate alone")
    head = n1.cluster()
    assert head["expected_votes"] == 1 and "ExpectedOverride" in head["flags"]
    assert head["version"] > version_before
    log = n1.json("cluster", "log")
    override = [e for e in log if "EXPECTED VOTES OVERRIDE" in e["msg"]]
    assert override and override[0]["pri"] == 4 and override[0]["user"] == "root@pam"
    assert "n2" in override[0]["msg"] and "w" in override[0]["msg"]


def test_delnode(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n1 = c["n1"]
    n3 = c.join("n3")
    wait_for(lambda: n1.cluster()["expected_votes"] == 4, 10, "4 votes")
    r = n1.cli("cluster", "delnode", "n3", check=False)
    assert r.returncode != 0 and "is online" in r.stdout
    r = n1.cli("cluster", "delnode", "n1", check=False)
    assert r.returncode != 0 and "cannot remove the local node" in r.stdout
    r = n1.cli("cluster", "delnode", "nosuch", check=False)
    assert r.returncode != 0 and "no such cluster node 'nosuch'" in r.stdout

    # a node that still owns a guest is refused (the guest config is planted directly
    # in etcd: guests arrive with the next issue)
    async def plant(present: bool) -> None:
        store = c.raw_store("n1")
        key = "/binome/config/nodes/n3/qemu/100.conf"
        if present:
            await store.put(key, {"name": "fixture"})
        else:
            await store.delete(key)
        await store.close()

    n3.kill()
    wait_for(lambda: not any(e.get("name") == "n3" and e["online"]
                             for e in n1.json("cluster", "status")), 10, "n3 offline")
    asyncio.run(plant(True))
    r = n1.cli("cluster", "delnode", "n3", check=False)
    assert r.returncode != 0 and "still owns 1 guest" in r.stdout
    asyncio.run(plant(False))
    version = n1.cluster()["version"]
    n1.cli("cluster", "delnode", "n3")
    head = n1.cluster()
    assert head["expected_votes"] == 3 and head["quorate"] == 1
    assert head["version"] == version + 1
    assert "n3" not in {n["name"] for n in c["n2"].json("cluster", "nodes")}


def test_daemon_restart_keeps_membership(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n2 = c["n2"]
    n2.stop()
    wait_for(lambda: c["n1"].cluster()["total_votes"] == 2, 10, "n2 offline")
    assert c["n1"].quorate() and c["w"].quorate(), "one node lost of 2 + witness: still quorate"
    n2.start()
    wait_for(lambda: c["n1"].cluster()["total_votes"] == 3, 20, "n2 back")
    wait_for(n2.quorate, 10, "n2 quorate after its restart")
    assert "n2 (local)" in n2.cli("cluster", "status").stdout


@pytest.mark.parametrize("witness", [False])
def test_two_nodes_without_witness(tmp_path, witness: bool) -> None:
    c = make_cluster(tmp_path, 250, witness=witness)
    try:
        head = c["n1"].cluster()
        assert any("without a witness" in w for w in head["warnings"])
        c["n2"].kill()
        wait_for(lambda: not c["n1"].quorate(), 10, "n1 inquorate after losing n2")
    finally:
        c.stop()


def test_task_cli(cluster: Cluster) -> None:
    n1 = cluster["n1"]
    # filtered: the shared cluster's other tests push it past the list's first 50
    tasks = n1.json("task", "list", "--typefilter", "clustercreate")
    create = next(t for t in tasks if t["type"] == "clustercreate")
    assert create["status"] == "OK" and create["user"] == "root@pam"
    status = n1.json("task", "status", create["upid"])
    assert status["status"] == "stopped" and status["exitstatus"] == "OK"
    log = n1.cli("task", "log", create["upid"]).stdout.splitlines()
    assert log[0] == "creating cluster 'itest' on node n1" and log[-1] == "TASK OK"
    # a task of another node, asked here: routed by the node inside the UPID
    join = next(t for t in cluster["n2"].json("task", "list", "--typefilter", "clusterjoin")
                if t["type"] == "clusterjoin")
    assert n1.cli("task", "log", join["upid"]).stdout.splitlines()[-1] == "TASK OK"
    r = n1.cli("task", "status", "UPID:bogus", check=False)
    assert r.returncode == 2 and "upid" in r.stderr


def test_half_done_join_never_costs_quorum(fresh_cluster: Cluster) -> None:
    """A node admitted but never started stays a non-voting learner: quorum is unchanged."""
    import requests

    from binome.cluster import pki
    from tests.integration.harness import PASSWORD

    c = fresh_cluster
    n1 = c["n1"]
    url = f"https://{n1.address}:8006/api2/json"
    s = requests.Session()
    s.verify, s.trust_env = False, False
    login = s.post(url + "/access/ticket", data={"username": "admin@pve",
                                                 "password": PASSWORD}, timeout=10).json()
    s.cookies.set("PVEAuthCookie", login["data"]["ticket"])
    s.headers["CSRFPreventionToken"] = login["data"]["CSRFPreventionToken"]
    csr = pki.csr_pem(pki.make_csr(pki.new_key(), "ghost")).decode()
    ghost_ip = f"127.{c.net}.0.9"
    r = s.post(url + "/cluster/config/nodes/ghost", timeout=30, data={
        "csr": csr, "cluster_address": ghost_ip, "replication_address": ghost_ip})
    assert r.status_code == 200, r.reason
    assert r.json()["data"]["member_id"] > 0
    status = n1.json("cluster", "status")
    ghost = next(e for e in status if e.get("name") == "ghost")
    assert ghost["learner"] == 1 and ghost["votes"] == 0
    assert status[0]["expected_votes"] == 3 and status[0]["quorate"] == 1
    # were the ghost a voter, 4 members would need 3 votes: losing the witness would
    # cost quorum. As a learner it does not.
    c["w"].kill()
    wait_for(lambda: n1.cluster()["total_votes"] == 2, 10, "witness offline")
    assert n1.quorate()
    n1.cli("cluster", "delnode", "ghost")
    assert "ghost" not in {n["name"] for n in n1.json("cluster", "nodes")}


def test_evicted_node_learns_it_and_rejoins_with_force(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    n1, n2, w = c["n1"], c["n2"], c["w"]
    n2.kill()
    w.kill()
    wait_for(lambda: not n1.quorate(), 10, "n1 inquorate")
    n1.cli("cluster", "expected", "1", "--yes")
    wait_for(n1.quorate, 20, "n1 quorate alone")
    # n2 comes back (the witness stays down): its etcd is refused by the survivor
    n2.start()
    wait_for(lambda: any("removed from the cluster" in x for x in n2.cluster()["warnings"]),
             60, "n2 to learn it was evicted")
    r = n2.cli("cluster", "join", n1.address, "--fingerprint", n1.fingerprint(), "--user",
               "admin@pve", "--password-file", str(c.password_file), check=False)
    assert r.returncode != 0 and "--force" in r.stdout + r.stderr
    n2.cli("cluster", "join", n1.address, "--fingerprint", n1.fingerprint(), "--user",
           "admin@pve", "--password-file", str(c.password_file), "--force")
    head = wait_for(lambda: (h := n1.cluster())["total_votes"] == 2 and h, 20, "n2 back")
    assert head["expected_votes"] == 2 and head["quorate"] == 1
    assert "ExpectedOverride" not in head["flags"]
    wait_for(n2.quorate, 10, "n2 quorate")
    # a quorate, active member refuses --force (it would walk out of a working cluster)
    r = n2.cli("cluster", "join", n1.address, "--fingerprint", n1.fingerprint(), "--user",
               "admin@pve", "--password-file", str(c.password_file), "--force", check=False)
    assert r.returncode != 0 and "active, quorate member" in r.stdout
