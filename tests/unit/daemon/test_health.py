"""The node's health watch (daemon.health): certificate expiry and etcd member health
decisions, and the notifications they raise (real certificate files, the real catalogue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from binome.cluster import pki
from binome.daemon.health import CertWatch, HealthWatch, MemberWatch, cert_not_after
from binome.notify.events import Severity, make_event

DAY = 86400.0


def test_cert_warned_once_per_step_of_days_left() -> None:
    watch, expiry = CertWatch(), 100 * DAY
    said = [d for t in range(0, 110) if (d := watch.check("api", expiry, t * DAY)) is not None]
    # 29 days left first, then at each step (14, 7, 3, 1 days), expiry day; not every day
    assert said == [29, 14, 7, 3, 1, 0]
    # a renewed certificate is forgotten, and its own expiry warned again
    assert watch.check("api", 400 * DAY, 101 * DAY) is None
    assert watch.check("api", 400 * DAY, 380 * DAY) == 20


def test_member_unhealthy_after_two_checks_and_said_once() -> None:
    watch = MemberWatch(fails=2)
    assert watch.update({"n1": None, "n2": "not answering"}) == []
    assert watch.update({"n1": None, "n2": "not answering"}) == [("n2", "not answering")]
    assert watch.update({"n1": None, "n2": "not answering"}) == []
    assert watch.update({"n1": None, "n2": None}) == []       # healthy again: re-armed
    watch.update({"n2": "alarm: NOSPACE"})
    assert watch.update({"n2": "alarm: NOSPACE"}) == [("n2", "alarm: NOSPACE")]
    # a flapping member (one failure between successes) is not reported
    flap = MemberWatch(fails=2)
    for error in ("x", None, "x", None):
        assert flap.update({"w": error}) == []


async def test_check_cert_notifies_with_a_real_certificate(tmp_path: Path) -> None:
    key = pki.new_key()
    ca_key, ca = pki.create_ca("t")
    cert = pki.sign_node_cert(ca_key, ca, pki.make_csr(key, "n1"), "n1",
                              ["127.0.0.1"])
    path = tmp_path / "node.pem"
    path.write_bytes(pki.cert_pem(cert))
    notes: list[tuple[str, dict[str, Any]]] = []
    watch = HealthWatch("n1", lambda kind, **f: notes.append((kind, f)), lambda: path,
                        lambda: None, lambda: False)
    not_after = cert_not_after(path)
    await watch.check_cert(now=not_after - 200 * DAY)
    assert notes == []
    await watch.check_cert(now=not_after - 9.5 * DAY)
    await watch.check_cert(now=not_after - 9.4 * DAY)        # same step: not again
    [(kind, fields)] = notes
    assert kind == "certificate-expiry" and fields["days_left"] == 9
    ev = make_event(kind, "n1", **fields)
    assert ev.severity is Severity.WARNING
    assert ev.title == "Certificate node.pem (API) expires in 9 days"
    assert ev.fields["type"] == "certificate" and ev.fields["hostname"] == "n1"
    assert "will refuse this node's API" in ev.message and "UTC" in ev.message


async def test_check_cert_watches_the_node_and_the_custom_certificate(tmp_path: Path) -> None:
    ca_key, ca = pki.create_ca("t")
    paths = []
    for name in ("node.pem", "pveproxy-ssl.pem"):
        key = pki.new_key()
        paths.append(tmp_path / name)
        paths[-1].write_bytes(pki.cert_pem(pki.sign_node_cert(
            ca_key, ca, pki.make_csr(key, "n1"), "n1", ["127.0.0.1"])))
    notes: list[str] = []
    watch = HealthWatch("n1", lambda kind, **f: notes.append(f["certificate"]),
                        lambda: [*paths, tmp_path / "gone.pem"], lambda: None, lambda: False)
    await watch.check_cert(now=cert_not_after(paths[1]) - 5 * DAY)
    assert notes == ["node.pem (API)", "pveproxy-ssl.pem (API)"]


async def test_members_only_checked_by_the_master() -> None:
    calls: list[str] = []
    watch = HealthWatch("n2", lambda kind, **f: calls.append(kind), lambda: Path("/nonexistent"),
                        lambda: calls.append("store") or None, lambda: False)
    await watch.check_members()
    await watch.check_cert()       # no certificate file: nothing
    assert calls == ["store"]


def test_etcd_unhealthy_event_text() -> None:
    ev = make_event("etcd-unhealthy", "n1", member="n2",
                    error="not answering at https://10.0.0.2:2379 (timeout)")
    assert ev.severity is Severity.ERROR and ev.fields["member"] == "n2"
    assert ev.fields["type"] == "etcd"
    assert ev.title == "etcd member n2 unhealthy"
    assert "keeps quorum while a majority is healthy" in ev.message
