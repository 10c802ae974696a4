"""A scheduled backup job on the shared cluster: created through the API (proxmoxer) with a
schedule a few seconds ahead, run by n1's scheduler as a real vzdump task of the guest
n1 holds, its result delivered as a `vzdump` notification to a real webhook receiver;
then the backup management: prune (dry run, then for real), verify and garbage
collection tasks, and the job's included volumes and not-backed-up listing."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.harness import PASSWORD, Cluster, wait_for
from tests.integration.notify.test_cluster_notifications import Receiver

pytestmark = pytest.mark.skipif(shutil.which("qemu-nbd") is None,
                                reason="qemu-utils is not installed")

VMID = 930
STORAGE = "bkjobs"
JOB = "itest-job"


@pytest.fixture(scope="module")
def px(cluster: Cluster):
    from proxmoxer import ProxmoxAPI

    api = ProxmoxAPI(cluster["n1"].address, user="admin@pve", password=PASSWORD,
                     verify_ssl=False, timeout=30)
    if STORAGE not in {s["storage"] for s in api.storage.get()}:
        api.storage.post(storage=STORAGE, type="dir", content="backup", nodes="n1",
                         path=str(cluster["n1"].state_dir / "bkjobs"))
    return api   # the storage stays (binome has no DELETE /storage/{id} yet)


def wait_task(px, upid: str, timeout: float = 60) -> dict:
    from proxmoxer.tools import Tasks

    status = Tasks.blocking_status(px, upid, timeout=timeout, polling_interval=0.2)
    assert status is not None, f"task {upid} did not finish"
    return status


def task_log(px, upid: str) -> list[str]:
    return [line["t"] for line in px.nodes("n1").tasks(upid).log.get(limit=1000)]


def backups(px) -> list[dict]:
    listed = px.nodes("n1").storage(STORAGE).content.get(content="backup")
    return sorted((b for b in listed if b["vmid"] == VMID), key=lambda b: b["ctime"])


@pytest.fixture
def vzdump_hook(px):
    """A webhook target and a matcher for `type=vzdump` events, removed afterwards."""
    receiver = Receiver()
    receiver.start()
    notifications = px.cluster.notifications
    body = '{"title": "{{ escape title }}", "severity": "{{ severity }}", ' \
           '"job": "{{ fields.job-id }}"}'
    notifications.endpoints.webhook.post(
        name="bkjobs-hook", method="post", url=f"http://127.0.0.1:{receiver.port}/vzdump",
        body=base64.b64encode(body.encode()).decode())
    notifications.matchers.post(name="bkjobs-vzdump", target="bkjobs-hook",
                                **{"match-field": "exact:type=vzdump"})
    try:
        yield receiver
    finally:
        notifications.matchers("bkjobs-vzdump").delete()
        notifications.endpoints.webhook("bkjobs-hook").delete()
        receiver.stop()


def test_scheduled_job_prune_verify_gc(px, vzdump_hook, cluster: Cluster) -> None:
    from proxmoxer import ResourceException

    node = px.nodes("n1")
    upid = node.qemu.post(vmid=VMID, name="jobguest", memory=64, cores=1,
                          virtio0="local:0.0078125")                  # an 8 MiB raw disk
    assert wait_task(px, upid)["exitstatus"] == "OK"
    try:
        # ---- the job: bad input first, then one due in a few seconds
        with pytest.raises(ResourceException) as bad:
            px.cluster.backup.post(id=JOB, schedule="25:00", vmid=str(VMID))
        assert bad.value.status_code == 400 and "schedule" in bad.value.errors
        due = datetime.now(UTC) + timedelta(seconds=6)
        px.cluster.backup.post(id=JOB, schedule=f"{due:%H:%M:%S} UTC", vmid=str(VMID),
                               storage=STORAGE, comment="integration test")
        logged = [e for e in px.cluster.log.get(max=50) if e["tag"] == "backup"]
        assert any(e["msg"].startswith(f"backup job '{JOB}' created by admin@pve")
                   and e["user"] == "admin@pve" for e in logged)
        (listed,) = [j for j in px.cluster.backup.get() if j["id"] == JOB]
        assert listed["next-run"] == int(due.replace(microsecond=0).timestamp())
        assert listed["enabled"] == 1 and listed["vmid"] == str(VMID)
        included = px.cluster.backup(JOB).included_volumes.get()["children"]
        assert [(g["id"], [(d["id"], d["included"], d["reason"]) for d in g["children"]])
                for g in included] == [(VMID, [(f"{VMID}:virtio0", 1, "backup=yes")])]
        assert VMID not in {g["vmid"] for g in px.cluster("backup-info")("not-backed-up").get()}

        first = wait_for(lambda: backups(px), 40, "the scheduled backup")[0]
        runs = node.tasks.get(typefilter="vzdump", userfilter="root@pam", limit=50)
        upid = next(t["upid"] for t in runs if t["id"] == str(VMID)
                    and t["starttime"] >= int(due.timestamp()) - 1)
        assert wait_task(px, upid)["exitstatus"] == "OK"
        log = task_log(px, upid)
        assert log[0].startswith("INFO: starting new backup job: vzdump ")
        assert f"--storage {STORAGE}" in log[0] and log[0].endswith(str(VMID))
        assert any(line.startswith(f"INFO: Finished Backup of VM {VMID} (") for line in log)
        posted = wait_for(lambda: [json.loads(r[3]) for r in vzdump_hook.requests
                                   if r[1] == "/vzdump"], 30, "the vzdump notification")
        assert posted == [{"title": "vzdump backup status (n1): backup successful",
                           "severity": "info", "job": JOB}]

        n1 = cluster["n1"]
        n1.cli("backup-job", "set", JOB, "--comment", "changed", "--delete", "storage")
        (shown,) = [j for j in n1.json("backup-job", "list") if j["id"] == JOB]
        assert shown["comment"] == "changed" and "storage" not in shown
        n1.cli("backup-job", "delete", JOB)
        with pytest.raises(ResourceException) as gone:
            px.cluster.backup(JOB).get()
        assert gone.value.status_code == 400
        assert VMID in {g["vmid"] for g in px.cluster("backup-info")("not-backed-up").get()}

        # ---- a second backup, then prune keep-last=1: dry run, then for real
        wait_for(lambda: int(datetime.now(UTC).timestamp()) > first["ctime"], 5,
                 "a new second for the next backup's name")
        upid = node.vzdump.post(vmid=str(VMID), storage=STORAGE)
        assert wait_task(px, upid)["exitstatus"] == "OK"
        older, newer = backups(px)
        with pytest.raises(ResourceException) as unset:
            node.storage(STORAGE).prunebackups.get()
        assert "no prune-backups options configured" in str(unset.value)
        marks = node.storage(STORAGE).prunebackups.get(**{"prune-backups": "keep-last=1"})
        assert {(m["volid"], m["mark"]) for m in marks if m["vmid"] == VMID} == {
            (newer["volid"], "keep"), (older["volid"], "remove")}
        assert [b["volid"] for b in backups(px)] == [older["volid"], newer["volid"]]
        upid = node.storage(STORAGE).prunebackups.delete(**{"prune-backups": "keep-last=1"})
        assert wait_task(px, upid)["exitstatus"] == "OK"
        assert f"removing backup '{older['volid']}'" in task_log(px, upid)
        assert [b["volid"] for b in backups(px)] == [newer["volid"]]

        # ---- verify and garbage collection tasks
        upid = node.storage(STORAGE).verify.post()
        assert wait_task(px, upid)["exitstatus"] == "OK"
        assert "verified all backups: ok" in task_log(px, upid)
        assert backups(px)[0]["verification"] == {"state": "ok"}
        gc = n1.cli("storage", "gc", STORAGE).stdout        # waits for the task, prints it
        assert "Removed chunks: " in gc and "Disk chunks: " in gc
    finally:
        for job in px.cluster.backup.get():
            if job["id"] == JOB:
                px.cluster.backup(JOB).delete()
        for backup in backups(px):
            wait_task(px, node.storage(STORAGE).content(backup["volid"]).delete())
        wait_task(px, node.qemu(VMID).delete())
