"""The admin's way out when no fence can succeed: `binome fence NODE --confirm-off`.

One loopback 2-node + witness cluster (real etcd, binomed, QEMU with TCG;
the fixture of `test_ha_daemon_restart`). n1's fence device is an agent that
always fails, and n1's watchdog guarantee is gone: its binomed is restarted
(SIGTERM while the host runs: the LRM releases its watchdog with the guest
left running, docs/ha.md 4.5), then everything left of n1 is killed. After
`restart_grace` the CRM fences n1 through its device, which fails: nothing is
recovered, an alert names the way out. The admin confirms the power-off on
n2: the guest is recovered on n2 (`fenced (manual: root@pam ...)`: the CLI
on the local socket acts as root@pam). Refusals: the local node, a node that
is online, an unknown node, a malformed name, and no `--yes` without a
terminal. Every step is mailed to a real SMTP server (aiosmtpd), once, by n2's
CRM: the failed fence and the blocked recovery with the way out, then the manual
fence and the recovery.
"""

from __future__ import annotations

import time

from tests.integration.ha.guests import (
    _pid,
    api,
    kill_pid,
    qemu_pid,
    remove_ha_guest,
    service,
)
from tests.integration.ha.test_ha_daemon_restart import (  # noqa: F401 (fixture)
    GRACE,
    cluster,
    cluster_log,
    ha_vm,
    sigterm,
)
from tests.integration.harness import Cluster, wait_for
from tests.integration.notify.mailbox import Inbox, smtp_server

FAILING_AGENT = """#!/bin/sh
# a fence agent whose device never answers: every action fails (exit 1)
while IFS= read -r line; do :; done
echo "BMC unreachable" >&2
exit 1
"""


def one_event(inbox: Inbox, title: str) -> str:
    found = wait_for(lambda: inbox.events(title), 30, f"the mail '{title}'; got "
                     f"{inbox.subjects()}")
    assert len(found) == 1, (title, inbox.subjects())
    return found[0][1]


def test_confirm_off_recovers_when_fencing_cannot_succeed(cluster: Cluster,  # noqa: F811
                                                          tmp_path) -> None:
    with smtp_server() as (inbox, port):
        cluster["n2"].cli("notification", "endpoint", "smtp", "add", "mail", "--server",
                          "127.0.0.1", "--port", str(port), "--mode", "insecure",
                          "--mailto", "ops@example.org", "--from-address",
                          "binome@example.org")
        cluster["n2"].cli("notification", "matcher", "add", "ha-and-fencing", "--target",
                          "mail", "--match-field", "exact:type=fencing,ha")
        try:
            _confirm_off(cluster, tmp_path, inbox)
        finally:
            cluster["n2"].cli("notification", "matcher", "delete", "ha-and-fencing")
            cluster["n2"].cli("notification", "endpoint", "smtp", "delete", "mail")


def _confirm_off(cluster: Cluster, tmp_path, inbox: Inbox) -> None:  # noqa: F811
    began = time.monotonic()
    c = cluster
    n1, n2 = c["n1"], c["n2"]
    agent = tmp_path / "fence_failing_agent"
    agent.write_text(FAILING_AGENT)
    agent.chmod(0o755)
    api(n2).cluster.ha.fence("n1").post(type="agent", agent=str(agent), timeout=5)
    vmid, sid = ha_vm(c, "ha-confirm-off")
    try:
        # refusals while n1 is up: it is online; the local node; bad input
        r = n2.cli("fence", "n1", "--confirm-off", "--yes", check=False)
        assert r.returncode != 0 and "is online" in r.stderr, r.stderr
        r = n2.cli("fence", "n2", "--confirm-off", "--yes", check=False)
        assert r.returncode != 0 and "local node" in r.stderr, r.stderr
        r = n2.cli("fence", "n9", "--confirm-off", "--yes", check=False)
        assert r.returncode != 0 and "no such cluster node" in r.stderr, r.stderr
        r = n2.cli("fence", "bad_name!", "--confirm-off", "--yes", check=False)
        assert r.returncode == 2 and "node" in r.stderr, r.stderr          # 400
        r = n2.cli("fence", "n1", "--confirm-off", check=False)            # no tty, no --yes
        assert r.returncode != 0 and "refusing without --yes" in r.stderr, r.stderr
        assert "run TWICE" in r.stderr and "n1" in r.stderr   # the loud warning came first

        took = sigterm(n1)            # watchdog released, guest left running
        kill_pid(qemu_pid(n1, vmid))  # then n1 dies
        kill_pid(_pid(n1.state_dir / "run" / "ha-watchdog.pid"))
        t_dead = time.monotonic()
        print(f"binomed exited after {took:.1f} s; n1's remaining processes killed")

        def blocked() -> bool:
            assert qemu_pid(n2, vmid) is None, f"{sid} recovered without any fence proof"
            return "no watchdog guarantee" in "\n".join(cluster_log(n2))
        wait_for(blocked, GRACE + 60, "the 'recovery blocked' alert", interval=0.5)
        st = service(n2, sid)
        assert st.get("state") == "fence" and st.get("node") == "n1", st
        assert "binome fence n1 --confirm-off" in st.get("reason", ""), st
        t_end = time.monotonic() + 5      # a few rounds and a device retry: still nothing
        while time.monotonic() < t_end:
            assert qemu_pid(n2, vmid) is None
            time.sleep(0.5)
        print(f"n1 dead -> blocked with the alert: {time.monotonic() - t_dead:.1f} s")
        # mailed once each, though the device is retried: why, and the way out
        text = one_event(inbox, "Fencing node n1 FAILED")
        assert "Fencing node n1 failed: " in text and "BMC unreachable" in text, text
        assert "confirm it with 'binome fence n1 --confirm-off'" in text, text
        text = one_event(inbox, f"HA service {sid} cannot be recovered")
        assert f"HA service {sid} (was on n1) cannot be recovered: the failed node could " \
               "not be fenced (" in text, text
        assert "Fence the node by hand (power it off) and confirm it with 'binome fence n1 " \
               "--confirm-off'" in text, text
        assert not inbox.events(f"HA service {sid} recovered on n2")

        t0 = time.monotonic()
        out = n2.cli("fence", "n1", "--confirm-off", "--yes")
        assert "run TWICE" in out.stderr
        wait_for(lambda: qemu_pid(n2, vmid), 60, f"{sid} recovered on n2", interval=0.1)
        print(f"confirm-off -> {sid} running on n2: {time.monotonic() - t0:.1f} s")
        wait_for(lambda: service(n2, sid).get("state") == "started"
                 and service(n2, sid).get("node") == "n2", 60, f"{sid} started on n2")
        logs = "\n".join(cluster_log(n2))
        assert "power-off of n1 confirmed by root@pam" in logs, logs
        assert "fenced (manual: root@pam confirmed it is powered off)" in logs, logs
        assert "fenced by manual" in logs, logs
        status = n2.cli("ha", "status").stdout
        print(status)
        assert "power-off confirmed by root@pam" in status, status
        text = one_event(inbox, "Node n1 fenced")
        assert "fenced successfully by manual (root@pam confirmed it is powered off)" in text
        one_event(inbox, f"HA service {sid} recovered on n2")
        assert len(inbox.events("Fencing node n1 FAILED")) == 1, inbox.subjects()

        # n1 back: its binomed starts nothing (the config is on n2), and the
        # confirmation no longer applies (shown nowhere, refused as online)
        n1.start()
        wait_for(n1.quorate, 60, "n1 quorate again")
        wait_for(lambda: "power-off confirmed" not in n2.cli("ha", "status").stdout, 60,
                 "the confirmation to stop applying once n1 is back")
        r = n2.cli("fence", "n1", "--confirm-off", "--yes", check=False)
        assert r.returncode != 0 and "is online" in r.stderr, r.stderr
        assert qemu_pid(n1, vmid) is None and qemu_pid(n2, vmid)
    finally:
        remove_ha_guest(n1, n2, sid, vmid, fence=True)
        print(f"test runtime {time.monotonic() - began:.1f} s")
