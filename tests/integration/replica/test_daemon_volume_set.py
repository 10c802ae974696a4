"""`binome volume set` (drbdadm adjust) through the real path: CLI -> API -> binomed ->
engine and etcd, on a 2-node + witness cluster; the peer's engine follows (over the
replication link and through its daemon's reconcile loop); bad input is a 400 with
per-parameter errors that changes neither the record nor an engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.harness import Cluster, Node, wait_for
from tests.integration.replica.test_daemon_volumes import (
    MiB,
    in_sync,
    store_get,
    volume_cluster,
    vstatus,
)


@pytest.fixture(scope="module")
def vc(tmp_path_factory) -> Iterator[Cluster]:
    yield from volume_cluster(tmp_path_factory, "volset")


def settings(node: Node, name: str = "d1") -> dict:
    return vstatus(node, name).get("settings") or {}


def on_disk(node: Node, name: str = "d1") -> dict:
    return json.loads((node.state_dir / "replica" / "volumes" / name / "volume.json")
                      .read_text())


def test_volume_set_applies_on_both_nodes_and_refuses_bad_input(vc: Cluster) -> None:
    n1, n2 = vc["n1"], vc["n2"]
    # create takes the dynamic controller's settings; the peer's copy gets them from etcd
    n1.cli("volume", "create", "d1", "--size", "8M", "--c-plan-ahead", "20",
           "--c-fill-target", "1024", "--c-max-rate", "8192", "--csums-alg", "sha256")
    wait_for(lambda: in_sync(vstatus(n2, "d1")), 60, "n2 in sync")
    for node in (n1, n2):
        s = settings(node)
        assert s["c_plan_ahead"] == 2.0 and s["c_max_rate"] == 8 * MiB, (node.name, s)
        assert s["c_fill_target"] == 1 * MiB and s["csums_alg"] == "sha256"
        assert s["allow_two_primaries"] is False
    rec = store_get(vc, "/binome/volumes/d1/config")
    assert rec["c_plan_ahead"] == 2.0 and rec["c_max_rate"] == 8 * MiB
    r = n2.cli("volume", "primary", "d1", check=False)
    assert r.returncode != 0 and "Multiple primaries not allowed" in r.stdout + r.stderr

    # An existing disk made dual-primary (live migration), with the controller changed:
    # set on n1, applied on n2's engine too.
    out = n1.json("volume", "set", "d1", "--allow-two-primaries", "1",
                  "--resync-rate", "2048", "--c-min-rate", "512")
    assert out["changed"]["allow_two_primaries"] == [False, True]
    assert out["changed"]["resync_rate"] == [0, 2 * MiB]
    assert out["settings"]["c_min_rate"] == 512 * 1024
    rec = store_get(vc, "/binome/volumes/d1/config")
    assert rec["allow_two_primaries"] is True and rec["resync_rate"] == 2 * MiB
    assert rec["c_min_rate"] == 512 * 1024
    wait_for(lambda: settings(n2).get("resync_rate") == 2 * MiB
             and settings(n2).get("c_min_rate") == 512 * 1024, 15, "n2's engine adjusted")
    assert settings(n2)["allow_two_primaries"] is True
    assert on_disk(n2)["allow_two_primaries"] is True and on_disk(n2)["resync_rate"] == 2 * MiB
    assert "secret" not in json.dumps(out)
    outp = n2.cli("volume", "primary", "d1").stdout
    assert "ro:Primary/Primary" in outp

    # Bad input: 400, one error per parameter, nothing changed anywhere.
    before = (store_get(vc, "/binome/volumes/d1/config"), settings(n1), settings(n2))
    for args, param, text in (
            (("--c-min-rate", "9000"), "c-min-rate", "must not exceed c-max-rate"),
            (("--protocol", "A"), "protocol", "allow-two-primaries requires protocol C"),
            (("--resync-rate", "-1"), "resync-rate", "minimum"),
            # (the CLI checks enums itself: the raw API call reaches the server's check)
            (("api", "set", "/nodes/n1/volumes/d1", "csums-alg=md4"), "csums-alg", "value"),
            (("--c-plan-ahead", "5", "--c-fill-target", "0", "--c-delay-target", "0"),
             "c-plan-ahead", "needs c-fill-target or c-delay-target"),
            (("--allow-two-primaries", "0"), "allow-two-primaries",
             "Can not clear allow_two_primaries")):
        cmd = args if args[0] == "api" else ("volume", "set", "d1", *args)
        r = n1.cli(*cmd, check=False)
        err = r.stdout + r.stderr
        assert r.returncode == 2 and "(400)" in err, (args, err)
        assert f"  {param}: " in err and text in err, (args, err)
    r = n1.cli("volume", "set", "d1", check=False)
    assert r.returncode == 2 and "no setting to change" in r.stdout + r.stderr
    assert (store_get(vc, "/binome/volumes/d1/config"), settings(n1), settings(n2)) == before

    # one Primary again: cleared from the other node, both engines follow
    n2.cli("volume", "secondary", "d1")
    out = n2.json("volume", "set", "d1", "--allow-two-primaries", "0", "--c-plan-ahead", "0")
    assert out["changed"]["allow_two_primaries"] == [True, False]
    wait_for(lambda: settings(n1).get("allow_two_primaries") is False
             and settings(n1).get("c_plan_ahead") == 0.0, 15, "n1's engine adjusted")
    assert store_get(vc, "/binome/volumes/d1/config")["allow_two_primaries"] is False

    # the drbdsetup-show view, proxied to n2
    text = n1.cli("volume", "config", "d1", "--node", "n2").stdout
    assert "resource d1 {" in text and "allow-two-primaries     no;" in text
    assert "resync-rate             2048k;" in text and "csums-alg               sha256;" in text
    assert "c-min-rate              512k;" in text

    # n2's daemon away (its engine runs on): a local setting reaches n2's engine when
    # the daemon is back (its reconcile loop), a shared one at once over the link.
    n2.stop()
    out = n1.json("volume", "set", "d1", "--resync-rate", "4096", "--verify-alg", "md5")
    assert out["changed"] == {"resync_rate": [2 * MiB, 4 * MiB], "verify_alg": ["sha256", "md5"]}
    assert on_disk(n2)["verify_alg"] == "md5"              # over the replication link
    assert on_disk(n2)["resync_rate"] == 2 * MiB           # nobody told n2's engine yet
    n2.start()
    wait_for(lambda: on_disk(n2)["resync_rate"] == 4 * MiB, 60, "n2's daemon applied it")
    assert settings(n2)["resync_rate"] == 4 * MiB and settings(n2)["verify_alg"] == "md5"
    assert in_sync(vstatus(n2, "d1"))
