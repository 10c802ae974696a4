"""The HA lab the scenario tests share: started, the HA guest serving on its replicated
disk and in sync, and always torn down (root only: network namespaces); a real SMTP
server the lab's nodes mail their failover notifications to."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

import pytest

from binome.lab.ha import HaLab, wait_until
from tests.integration.notify.mailbox import Inbox, smtp_server

#: the event types of a failover, as an admin's matcher would route them to the on-call
FAILOVER_TYPES = "fencing,ha,node"
#: the dispatcher's storm-grouping window (NotificationService's default)
GROUP_WINDOW = 5.0


def serving_lab(tmp_path_factory, *, base: str, id_prefix: str, dirname: str,
                label: str = "HA lab", **options) -> Iterator[HaLab]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    lab = HaLab(base=base, lab_id=f"{id_prefix}{os.getpid() % 100000:x}"[:8],
                workdir=tmp_path_factory.mktemp(dirname), **options)
    began = time.monotonic()
    lab.start()
    try:
        lab.create_ha_guest()
        print(f"\n{label} with the guest serving and its volume in sync: "
              f"{time.monotonic() - began:.1f} s")
        yield lab
    finally:
        lab.stop()


@contextlib.contextmanager
def failover_mail(ha: HaLab, via: str) -> Iterator[Inbox]:
    """aiosmtpd on the root namespace's address on the cluster network (every node reaches
    it over its cluster link), target `labmail` and a matcher routing the failover's event
    types to it, configured through `via`'s CLI; removed at the end."""
    address = ha.cluster.lab.root_addresses["cluster"]
    with smtp_server(hostname=address) as (inbox, port):
        ha.cluster.cli(via, "notification", "endpoint", "smtp", "add", "labmail",
                       "--server", address, "--port", str(port), "--mode", "insecure",
                       "--mailto", "oncall@example.org", "--from-address",
                       "binome@example.org")
        ha.cluster.cli(via, "notification", "matcher", "add", "failover", "--target",
                       "labmail", "--match-field", f"exact:type={FAILOVER_TYPES}")
        try:
            # the previous scenario's last events (its node back online) may still wait in
            # the dispatcher's group window and reach the new matcher: not this test's
            inbox.settle()
            yield inbox
        finally:
            for what in (("matcher", "delete", "failover"),
                         ("endpoint", "smtp", "delete", "labmail")):
                ha.cluster.cli(via, "notification", *what, check=False)


def settled_mail(ha: HaLab, inbox: Inbox, via: str, expected: list[str],
                 timeout: float = 60.0) -> list[str]:
    """Wait for the `expected` events, then for every delivery of the cluster to
    `labmail` to have ended and a grouping window to have passed with nothing new
    (a bounded observation: what is still to come would have been grouped by then);
    the titles received."""
    wait_until(lambda: all(t in inbox.titles() for t in expected), timeout,
               f"the mails {expected}; got {inbox.titles()}")

    def quiet() -> bool:
        rows = json.loads(ha.cluster.cli(via, "notification", "history", "--target",
                                         "labmail", "--output-format", "json").stdout)
        return not any(r["status"] in ("pending", "retrying") for r in rows)

    deadline = time.monotonic() + timeout
    while True:
        seen = len(inbox.titles())
        time.sleep(GROUP_WINDOW + 1.0)
        wait_until(quiet, timeout, "the deliveries to labmail ended")
        if len(inbox.titles()) == seen:
            return inbox.titles()
        assert time.monotonic() < deadline, f"mails kept coming: {inbox.titles()}"
