"""The VM's editing tabs and the datacenter's backup jobs in a real browser (chromium +
Selenium, the fixtures of test_browser): on a stopped VM with a small qcow2 disk and a
NIC, the Hardware tab edits the memory (a bad value first: the API's error shows next
to the field) and the NIC; the Snapshots tab takes a snapshot and rolls back to it; the
Backup tab starts a backup, its task viewer follows it to OK and the backup is listed;
the Options tab renames the VM; Datacenter → Backup creates a job; Datacenter →
Notifications lists the API's targets. Every change is checked through the API."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.harness import PASSWORD, Cluster
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

    # the expected failures: the refused memory value (a 400 on .../config) and the
    # refused SMTP port (a 400 on .../endpoints/smtp)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network" and " 400 " in e["message"]
                       and (f"/qemu/{vmid}/config" in e["message"]
                            or "/notifications/endpoints/smtp" in e["message"]))]
    assert errors == [], errors


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
