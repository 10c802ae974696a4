"""The VM's editing tabs and the datacenter's backup jobs in a real browser (chromium +
Selenium, the fixtures of test_browser): on a stopped VM with a small qcow2 disk and a
NIC, the Hardware tab edits the memory (a bad value first: the API's error shows next
to the field) and the NIC; the Snapshots tab takes a snapshot and rolls back to it; the
Backup tab starts a backup, its task viewer follows it to OK and the backup is listed;
the Options tab renames the VM; Datacenter → Backup creates a job; Datacenter →
Notifications lists the API's targets; the Hardware tab moves the disk to another dir
storage; the node's backup storage prunes (its dry-run preview first), verifies and
collects garbage. Every change is checked through the API."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.harness import PASSWORD, Cluster, wait_for
from tests.integration.ui import chromium
from tests.integration.ui import test_browser as ui
from tests.integration.ui.test_browser import _base, _css, _fill, _go, _login, _task_ok, _wait

# the browser tests' module fixtures (a logged-in API session, chromium, the screenshots'
# directory), used here by name
api, browser, shots = ui.api, ui.browser, ui.shots

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                reason="qemu-img (qemu-utils) is not installed")


def _url(cluster: Cluster, path: str) -> str:
    return f"{_base(cluster)}/api2/json{path}"


@pytest.fixture(scope="module")
def disk_vm(api: requests.Session, cluster: Cluster) -> Iterator[int]:
    """A stopped VM on n1 with a 4 MiB qcow2 disk and a NIC, and a backup storage 'bk'
    on n1; the VM, its backups and the test's backup job are removed afterwards."""
    storages = {s["storage"] for s in api.get(_url(cluster, "/storage"), timeout=10).json()["data"]}
    if "bk" not in storages:
        r = api.post(_url(cluster, "/storage"), timeout=10, data={
            "storage": "bk", "type": "dir", "content": "backup", "nodes": "n1",
            "path": str(cluster["n1"].state_dir / "backups")})
        assert r.status_code == 200, r.text
    vmid = int(api.get(_url(cluster, "/cluster/nextid"), timeout=10).json()["data"])
    r = api.post(_url(cluster, "/nodes/n1/qemu"), timeout=30, data={
        "vmid": vmid, "name": "ui-edit", "memory": 128,
        "virtio0": "local:0.00390625,format=qcow2", "net0": "virtio,bridge=vmbr0"})
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])
    try:
        yield vmid
    finally:
        api.delete(_url(cluster, f"/cluster/backup/ui-job-{vmid}"), timeout=10)
        listed = api.get(_url(cluster, "/nodes/n1/storage/bk/content"), timeout=10,
                         params={"content": "backup", "vmid": vmid}).json().get("data") or []
        for volume in listed:
            r = api.delete(_url(cluster, f"/nodes/n1/storage/bk/content/{volume['volid']}"),
                           timeout=10)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
        r = api.delete(_url(cluster, f"/nodes/n1/qemu/{vmid}"), timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])


def _config(session: requests.Session, cluster: Cluster, vmid: int) -> dict:
    return session.get(_url(cluster, f"/nodes/n1/qemu/{vmid}/config"), timeout=10).json()["data"]


def _dialog(driver):
    return _wait(driver, lambda d: _css(d, "dialog[open]"), "an open dialog")[0]


def _submit(driver) -> None:
    _dialog(driver).find_element("css selector", "button[type=submit]").click()


def _task_finished_ok(driver, what: str) -> None:
    """The task viewer shows the change's task, and the task ends OK."""
    _wait(driver, lambda d: _css(d, "#task-viewer[data-state=ok], #task-viewer[data-state=failed]"),
          f"the task of {what} to end", timeout=60)
    viewer = _css(driver, "#task-viewer")[0]
    assert viewer.get_attribute("data-state") == "ok", \
        _css(driver, "#task-viewer-log")[0].text
    _css(driver, "#task-viewer-close")[0].click()


def test_vm_tabs_and_backup_job(browser, cluster: Cluster, api: requests.Session,
                                disk_vm: int, shots: Path) -> None:
    from selenium.webdriver.support.ui import Select

    vmid = disk_vm
    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")

    # Hardware: memory (a bad value: the API's error beside the field, then a good one)
    _go(browser, f"#/vm/{vmid}/hardware")
    _wait(browser, lambda d: _css(d, '#hw-table tr[data-key=memory]'), "the hardware list")
    # unset sockets and cores: the Processors row shows their defaults, as PVE's
    assert "1 socket(s), 1 core(s)" in _css(browser, "#hw-table tr[data-key=cores]")[0].text
    _css(browser, "#hw-table tr[data-key=memory] .hw-edit")[0].click()
    _fill(browser, "#hw-memory", "lots")
    _submit(browser)
    error = _wait(browser, lambda d: _css(d, "#error-memory"), "the memory field's error")[0]
    assert error.text, "an empty error"
    _fill(browser, "#hw-memory", "256")
    _submit(browser)
    _wait(browser, lambda d: not _css(d, "dialog[open]"), "the memory dialog closed")
    assert _config(api, cluster, vmid)["memory"] == 256
    _wait(browser, lambda d: "256" in _css(d, "#hw-table tr[data-key=memory]")[0].text,
          "the new memory listed")

    # Hardware: the NIC (model and VLAN tag; its MAC kept)
    mac = _config(api, cluster, vmid)["net0"].split(",")[0].split("=")[1]
    _css(browser, "#hw-table tr[data-key=net0] .hw-edit")[0].click()
    _dialog(browser)
    Select(_css(browser, "#hw-net-model")[0]).select_by_value("e1000")
    _fill(browser, "#hw-net-tag", "42")
    _submit(browser)
    _wait(browser, lambda d: not _css(d, "dialog[open]"), "the NIC dialog closed")
    net0 = _config(api, cluster, vmid)["net0"]
    assert net0.startswith(f"e1000={mac},") and "bridge=vmbr0" in net0 and "tag=42" in net0, net0
    browser.save_screenshot(str(shots / "vm-hardware.png"))

    # Options: a new name, saved with what changed only
    _css(browser, "#vm-tab-options")[0].click()
    _fill(browser, "#opt-name", "ui-renamed")
    _css(browser, "#opt-save")[0].click()
    _wait(browser, lambda d: _css(d, "#opt-message.notice"), "the options saved")
    assert _config(api, cluster, vmid)["name"] == "ui-renamed"

    # Snapshots: take one, change the memory, roll back (confirmed): the memory is back
    _css(browser, "#vm-tab-snapshots")[0].click()
    _wait(browser, lambda d: _css(d, "#snap-table tr[data-snap=current]"), "the snapshot list")
    _css(browser, "#snap-take")[0].click()
    _fill(browser, "#snap-name", "before")
    _submit(browser)
    _task_finished_ok(browser, "the snapshot")
    _wait(browser, lambda d: _css(d, "#snap-table tr[data-snap=before]"), "the snapshot listed")
    r = api.put(_url(cluster, f"/nodes/n1/qemu/{vmid}/config"), data={"memory": 384}, timeout=10)
    assert r.status_code == 200, r.text
    _css(browser, "#snap-table tr[data-snap=before] .snap-rollback")[0].click()
    _submit(browser)
    _task_finished_ok(browser, "the rollback")
    assert _config(api, cluster, vmid)["memory"] == 256
    browser.save_screenshot(str(shots / "vm-snapshots.png"))

    # Backup: Backup now on 'bk'; the task viewer follows it; the backup is listed
    _css(browser, "#vm-tab-backup")[0].click()
    _wait(browser, lambda d: _css(d, "#backup-now:not([disabled])"), "the backup storages")
    _css(browser, "#backup-now")[0].click()
    Select(_dialog(browser).find_element("css selector", "#backup-storage")).select_by_value("bk")
    _submit(browser)
    _task_finished_ok(browser, "the backup")
    row = f'#backup-table tr[data-volid^="bk:backup/vzdump-qemu-{vmid}-"]'
    _wait(browser, lambda d: _css(d, row), "the backup listed")
    browser.save_screenshot(str(shots / "vm-backup.png"))

    # Datacenter → Backup: a new job, listed with its schedule, next run and selection
    _go(browser, "#/dc/backup")
    _wait(browser, lambda d: _css(d, "#bjob-add"), "the backup jobs page")
    _css(browser, "#bjob-add")[0].click()
    _fill(browser, "#bjob-id", f"ui-job-{vmid}")
    _fill(browser, "#bjob-schedule", "sun 03:00")
    Select(_css(browser, "#bjob-storage")[0]).select_by_value("bk")
    _fill(browser, "#bjob-vmid", str(vmid))
    _submit(browser)
    job = f'#bjob-table tr[data-job="ui-job-{vmid}"]'
    _wait(browser, lambda d: _css(d, job), "the new job listed")
    text = _css(browser, job)[0].text
    assert "sun 03:00" in text and str(vmid) in text, text
    created = api.get(_url(cluster, f"/cluster/backup/ui-job-{vmid}"), timeout=10).json()["data"]
    assert created["schedule"] == "sun 03:00" and created["storage"] == "bk"
    assert str(created["vmid"]) == str(vmid)
    browser.save_screenshot(str(shots / "dc-backup-jobs.png"))

    # Datacenter → Notifications: the targets and matchers as the API lists them
    _css(browser, "#dc-tab-notifications")[0].click()
    targets = api.get(_url(cluster, "/cluster/notifications/targets"), timeout=10).json()["data"]
    listed = '#notif-target-table tr[data-target="{}"]'
    for target in targets:
        _wait(browser, lambda d, n=target["name"]: _css(d, listed.format(n)),
              f"target {target['name']} listed")
    _notification_targets(browser, api, cluster, vmid, shots)

    _move_disk(browser, api, cluster, vmid, shots)

    # the expected failures: the refused memory value (a 400 on .../config), the
    # refused SMTP port (a 400 on .../endpoints/smtp) and the refused move (.../move_disk)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network" and " 400 " in e["message"]
                       and (f"/qemu/{vmid}/config" in e["message"]
                            or "/notifications/endpoints/smtp" in e["message"]))
              and not (e.get("source") == "network" and f"/qemu/{vmid}/move_disk" in e["message"])]
    assert errors == [], errors


def _move_disk(browser, api: requests.Session, cluster: Cluster, vmid: int,
               shots: Path) -> None:
    """VM → Hardware → Move disk: the stopped VM's qcow2 disk moved from 'local' to
    another dir storage. Deleting the source is refused in the dialog (a snapshot holds
    it); without, the task viewer follows the move to its end (PVE's warning: the
    snapshots stay behind), the VM's config names the new volume and keeps the old one
    as unused0. Moved back afterwards."""
    from selenium.webdriver.support.ui import Select

    sid = f"ui-mv-{vmid}"
    root = cluster["n1"].state_dir / sid
    r = api.post(_url(cluster, "/storage"), timeout=10, data={
        "storage": sid, "type": "dir", "content": "images", "nodes": "n1", "path": str(root)})
    assert r.status_code == 200, r.text
    try:
        _go(browser, f"#/vm/{vmid}/hardware")
        row = "#hw-table tr[data-key=virtio0]"
        _wait(browser, lambda d: _css(d, f"{row} .hw-move"), "Move disk")[0].click()
        _wait(browser, lambda d: _css(d, f'#hw-move-storage option[value="{sid}"]'),
              "the target storage offered")
        assert not _css(browser, '#hw-move-storage option[value="local"]'), "the source offered"
        Select(_css(browser, "#hw-move-storage")[0]).select_by_value(sid)
        Select(_css(browser, "#hw-move-format")[0]).select_by_value("qcow2")
        _css(browser, "#hw-move-delete")[0].click()
        before = _config(api, cluster, vmid)["virtio0"].split(",")[0]
        _submit(browser)
        refusal = _wait(browser, lambda d: _css(d, "dialog[open] #hw-move-message.error"),
                        "the refusal in the dialog")[0]
        assert "snapshot" in refusal.text, refusal.text
        assert _config(api, cluster, vmid)["virtio0"].split(",")[0] == before
        _css(browser, "#hw-move-delete")[0].click()
        _submit(browser)
        _wait(browser, lambda d: _css(d, "#task-viewer:is([data-state=ok], [data-state=warning], "
                                         "[data-state=failed])"), "the move's end", timeout=60)
        log = _css(browser, "#task-viewer-log")[0].text
        assert _css(browser, "#task-viewer")[0].get_attribute("data-state") == "warning", log
        assert "snapshots will not be moved" in log, log
        config = _config(api, cluster, vmid)
        assert config["virtio0"].startswith(f"{sid}:{vmid}/") and "qcow2" in config["virtio0"], \
            config["virtio0"]
        assert config.get("unused0") == before, config
        _wait(browser, lambda d: sid in _css(d, row)[0].text, "the new volume listed")
        browser.save_screenshot(str(shots / "vm-hardware-move.png"))
    finally:
        if _config(api, cluster, vmid).get("virtio0", "").startswith(f"{sid}:"):
            r = api.post(_url(cluster, f"/nodes/n1/qemu/{vmid}/move_disk"), timeout=30,
                         data={"disk": "virtio0", "storage": "local", "delete": 1})
            assert r.status_code == 200, r.text
            status = _url(cluster, f"/nodes/n1/tasks/{r.json()['data']}/status")
            done = wait_for(lambda: (d := api.get(status, timeout=10).json()["data"])["status"]
                            == "stopped" and d, 60, "the move back")
            assert done["exitstatus"] in ("OK", "WARNINGS: 1"), done
        api.delete(_url(cluster, f"/storage/{sid}"), timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _notification_targets(browser, api: requests.Session, cluster: Cluster, vmid: int,
                          shots: Path) -> None:
    """Notification targets created, edited and deleted on the Notifications page: an
    SMTP target (a bad port refused beside its field first), a gotify target whose token
    is never shown again (the edit's token field starts empty, the page holds no token),
    a webhook with a header and a secret (the secret's name listed, never its value)."""
    base = "/cluster/notifications/endpoints"

    def read(kind: str) -> dict:
        return api.get(_url(cluster, f"{base}/{kind}/{names[kind]}"), timeout=10).json()["data"]

    names = {kind: f"ui-{kind}-{vmid}" for kind in ("smtp", "gotify", "webhook")}
    row = '#notif-target-table tr[data-target="{}"]'
    token, password, secret = "tok-ui-s3cret", "pw-ui-s3cret", "hook-ui-s3cret"
    try:
        _css(browser, "#notif-add-smtp")[0].click()
        _fill(browser, "#target-name", names["smtp"])
        _fill(browser, "#target-server", "127.0.0.1")
        _fill(browser, "#target-port", "99999")
        _fill(browser, "#target-from", "binome@example.test")
        _fill(browser, "#target-password", password)
        _submit(browser)
        error = _wait(browser, lambda d: _css(d, "dialog[open] #error-port"), "the port's error")[0]
        assert error.text, "an empty error"
        _fill(browser, "#target-port", "2525")
        _submit(browser)
        _wait(browser, lambda d: _css(d, row.format(names["smtp"])), "the SMTP target listed")
        smtp = read("smtp")
        assert (smtp["server"], smtp["port"], smtp["from-address"]) == \
            ("127.0.0.1", 2525, "binome@example.test") and "password" not in smtp, smtp

        _css(browser, "#notif-add-gotify")[0].click()
        _fill(browser, "#target-name", names["gotify"])
        _fill(browser, "#target-server", "http://127.0.0.1:9")
        _fill(browser, "#target-token", token)
        _submit(browser)
        _wait(browser, lambda d: _css(d, row.format(names["gotify"])), "the gotify target listed")
        _css(browser, f"{row.format(names['gotify'])} .notif-edit-target")[0].click()
        _wait(browser, lambda d: _css(d, "#target-server")[0].get_attribute("value")
              == "http://127.0.0.1:9", "the gotify target's settings in the dialog")
        assert _css(browser, "#target-token")[0].get_attribute("value") == ""
        assert token not in browser.page_source and password not in browser.page_source
        _fill(browser, "#target-comment", "edited in the UI")
        _submit(browser)
        _wait(browser, lambda d: "edited in the UI" in
              _css(d, row.format(names["gotify"]))[0].text, "the gotify target's new comment")
        gotify = read("gotify")
        assert gotify["comment"] == "edited in the UI" and "token" not in gotify, gotify

        _css(browser, "#notif-add-webhook")[0].click()
        _fill(browser, "#target-name", names["webhook"])
        _fill(browser, "#target-url", "http://127.0.0.1:9/hook")
        _fill(browser, "#target-header", "X-Binome: ui test")
        _css(browser, "#target-secret-add")[0].click()
        _fill(browser, ".target-secret-name", "key")
        _fill(browser, ".target-secret-value", secret)
        _submit(browser)
        _wait(browser, lambda d: _css(d, row.format(names["webhook"])), "the webhook listed")
        hook = read("webhook")
        assert hook["secret"] == ["name=key"] and secret not in str(hook), hook
        assert hook["header"] == ["name=X-Binome,value=dWkgdGVzdA=="], hook   # base64("ui test")
        _css(browser, f"{row.format(names['webhook'])} .notif-edit-target")[0].click()
        _wait(browser, lambda d: _css(d, "#target-header")[0].get_attribute("value")
              == "X-Binome: ui test", "the webhook's header, decoded, in the dialog")
        assert _css(browser, ".target-secret-name")[0].get_attribute("value") == "key"
        assert _css(browser, ".target-secret-value")[0].get_attribute("value") == ""
        assert secret not in browser.page_source
        browser.save_screenshot(str(shots / "dc-notification-target.png"))
        _submit(browser)                 # unchanged: the stored secret is kept
        _wait(browser, lambda d: not _css(d, "dialog[open]"), "the webhook dialog closed")
        hook = read("webhook")
        assert hook["secret"] == ["name=key"], hook

        _css(browser, f"{row.format(names['gotify'])} .notif-delete")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, row.format(names["gotify"])),
              "the gotify target deleted")
    finally:
        for kind, name in names.items():
            api.delete(_url(cluster, f"{base}/{kind}/{name}"), timeout=10)


def test_backup_storage_prune_verify_gc(browser, cluster: Cluster, api: requests.Session,
                                        disk_vm: int, shots: Path) -> None:
    """Node → storage 'bk' (a dir storage with backups): Prune with keep-last=1 over the
    guest's two backups previews the newer kept and the older removed, and confirming
    removes that one (seen through the API); Verify and Garbage collection each run as a
    task the task viewer follows to OK. Datacenter → Storage: a binome-backup storage's
    edit dialog shows its encryption key's fingerprint; the add form offers one's options."""
    from selenium.webdriver.support.ui import Select

    vmid = disk_vm
    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")

    def backups() -> list[dict]:
        r = api.get(_url(cluster, "/nodes/n1/storage/bk/content"), timeout=10,
                    params={"content": "backup", "vmid": vmid})
        assert r.status_code == 200, r.text
        return sorted(r.json()["data"], key=lambda v: (v["ctime"], v["volid"]))

    while len(backups()) < 2:        # the tabs test made one when it ran before
        # a backup's name has its start time to the second: the next one starts later
        last = max((v["ctime"] for v in backups()), default=0)
        wait_for(lambda t=last: time.time() >= t + 1, 5, "the clock past the last backup")
        r = api.post(_url(cluster, "/nodes/n1/vzdump"), timeout=30,
                     data={"vmid": vmid, "storage": "bk"})
        assert r.status_code == 200, r.text
        upid = r.json()["data"]
        try:
            _task_ok(api, cluster, upid)
        except AssertionError:
            log = api.get(_url(cluster, f"/nodes/n1/tasks/{upid}/log"), timeout=10,
                          params={"limit": 1000}).json()["data"]
            raise AssertionError("\n".join(line["t"] for line in log)) from None
    listed = backups()
    assert len(listed) == 2, listed
    older, newer = listed[0]["volid"], listed[1]["volid"]

    _go(browser, "#/node/n1/storage/bk")
    _wait(browser, lambda d: _css(d, "#storage-prune"), "the backup storage's actions")
    _css(browser, "#storage-prune")[0].click()
    dialog = _dialog(browser)
    _fill(browser, "#prune-keep-last", "1")
    _fill(browser, "#prune-vmid", str(vmid))

    def marks(driver) -> dict[str, str] | None:
        rows = _css(driver, '#prune-preview[data-ready="1"] tbody tr')
        got = {r.get_attribute("data-volid"): r.get_attribute("data-mark") for r in rows}
        return got if set(got) == {older, newer} else None
    shown = _wait(browser, marks, "the prune preview of the guest's two backups")
    assert shown == {newer: "keep", older: "remove"}, shown
    assert "1 of 2" in _css(browser, "#prune-summary")[0].text
    browser.save_screenshot(str(shots / "storage-prune.png"))
    assert chromium.axe_violations(browser) == [], "axe-core on the prune dialog"
    dialog.find_element("css selector", "button[type=submit]").click()
    _task_finished_ok(browser, "the prune")
    assert [v["volid"] for v in backups()] == [newer]

    # Verify, then GC: each a task the viewer follows to its end
    for button, what in (("#storage-verify", "the verify"), ("#storage-gc", "the GC")):
        _wait(browser, lambda d, b=button: _css(d, f"{b}:not([disabled])"), f"{what} button")
        _css(browser, button)[0].click()
        _task_finished_ok(browser, what)
    browser.save_screenshot(str(shots / "storage-verify-gc.png"))

    # a binome-backup storage with an autogen key: its edit dialog shows the key's
    # fingerprint (the definition's) and the server's options, the token secret empty
    sid = f"ui-enc-{vmid}"
    r = api.post(_url(cluster, "/storage"), timeout=30, data={
        "storage": sid, "type": "binome-backup", "server": "192.0.2.30", "datastore": "main",
        "username": "backup@pbs!c1", "password": "s3cret", "nodes": "n1",
        "fingerprint": ":".join(["AB"] * 32), "encryption-key": "autogen"})
    assert r.status_code == 200, r.text
    try:
        fingerprint = api.get(_url(cluster, f"/storage/{sid}"), timeout=10).json()["data"][
            "encryption-key"]
        _go(browser, "#/dc/storage")
        row = f'#dc-storage-table tr[data-storage="{sid}"]'
        _wait(browser, lambda d: _css(d, row), "the binome-backup storage listed")
        _css(browser, f"{row} [data-action=edit]")[0].click()
        shown = _wait(browser, lambda d: _css(d, "#storage-key-fingerprint"),
                      "the key's fingerprint")
        assert shown[0].text == fingerprint
        assert _css(browser, "#storage-server")[0].get_attribute("value") == "192.0.2.30"
        assert _css(browser, "#storage-password")[0].get_attribute("value") == ""
        browser.save_screenshot(str(shots / "storage-binome-backup.png"))
        # Add storage, type binome-backup: backup content only, no path, the key's choice
        _css(browser, "#storage-add")[0].click()
        Select(_wait(browser, lambda d: _css(d, "#storage-type"), "the add form")[0]
               ).select_by_value("binome-backup")
        _wait(browser, lambda d: _css(d, "#storage-key-autogen"), "the key's choice")
        assert not _css(browser, "#storage-path")
        checked = [c.get_attribute("name") for c in _css(browser, "#storage-form .checks input")
                   if c.is_selected()]
        assert checked == ["content-backup"], checked
        _css(browser, "#storage-key-paste")[0].click()
        _wait(browser, lambda d: _css(d, "#storage-key-text"), "the key file's field")
    finally:
        api.delete(_url(cluster, f"/storage/{sid}"), timeout=10)

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
