"""The node's Syslog and Tasks tabs and Datacenter → Tasks with its filters, a VM's clone /
template / destroy actions and task history, Datacenter → HA's rules, maintenance and
fence devices (added, edited without the password, tested, removed), Datacenter →
Options, and a user limited to one pool, in a real browser (chromium + Selenium, the fixtures of
test_browser.py) against the shared cluster. Each change is checked through the API;
every page ends with no script error in the console."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.harness import PASSWORD, Cluster, wait_for
from tests.integration.ui import test_browser as ui
from tests.integration.ui.test_browser import (
    _assert_no_script_errors,
    _base,
    _css,
    _fill,
    _fresh_login,
    _go,
    _task_ok,
    _tree_item,
    _wait,
)

# the browser tests' module fixtures, used here by name
api, browser, shots, vm = ui.api, ui.browser, ui.shots, ui.vm


def _url(cluster: Cluster, path: str) -> str:
    return f"{_base(cluster)}/api2/json{path}"


def _ok(r: requests.Response) -> Any:
    assert r.status_code == 200, (r.status_code, r.reason, r.text)
    return r.json()["data"]


def _as_admin(browser, cluster: Cluster) -> None:
    """Logged in as admin@pve (run alone, or after a test that logged in as another)."""
    if not _css(browser, ".tree") or "admin@pve" not in (
            _css(browser, "#shell-user")[0].text if _css(browser, "#shell-user") else ""):
        _fresh_login(browser, cluster, PASSWORD)


def _submit(browser) -> None:
    _wait(browser, lambda d: _css(d, "dialog[open] button[type=submit]"), "the dialog")[0].click()


def _lines(browser) -> list[str]:
    text = _css(browser, "#syslog-lines")[0].text
    return [line for line in text.split("\n") if line]


def test_node_syslog_and_tasks(browser, cluster: Cluster, api: requests.Session,
                               shots: Path) -> None:
    """#/node/n1/syslog: the newest page of the API's lines, paging, a bad date refused
    before sending, since in the future ("no content"), one service; the live follow
    shows a task's log line started after it was turned on, the search filter keeps
    only that task's lines; the Tasks tab lists the task and opens its log."""
    from selenium.webdriver.support.ui import Select

    _as_admin(browser, cluster)
    _go(browser, "#/node/n1/syslog")
    _wait(browser, lambda d: _css(d, "#node-tab-syslog[aria-selected=true]"), "the Syslog tab")
    answer = api.get(_url(cluster, "/nodes/n1/syslog"), timeout=30, params={"limit": 1}).json()
    assert answer["data"][0]["t"] != "no content", "the node's syslog is empty"
    pages = -(-int(answer["total"]) // 50)
    # opened on the newest page (the total only grows meanwhile)
    _wait(browser, lambda d: (at := _css(d, "#syslog-pager .pager-at")) and
          int(at[0].text.split()[1]) >= pages and len(_lines(d)) > 0, "the newest page")
    assert all(" n1 " in line for line in _lines(browser)), _lines(browser)[:3]
    browser.save_screenshot(str(shots / "node-syslog.png"))
    _css(browser, "#syslog-pager .pager-first")[0].click()
    first = _ok(api.get(_url(cluster, "/nodes/n1/syslog"), timeout=30,
                        params={"start": 0, "limit": 50}))
    _wait(browser, lambda d: _css(d, "#syslog-pager .pager-at")[0].text.startswith("Page 1 ")
          and _lines(d)[:1] == [first[0]["t"]], "the first page, as the API serves it")

    # a bad date is refused at the form; a future since shows PVE's "no content"
    _fill(browser, "#syslog-since", "yesterday")
    _css(browser, "#syslog-apply")[0].click()
    _wait(browser, lambda d: _css(d, "#syslog-bad"), "the bad date said")
    assert _css(browser, "#syslog-since")[0].get_attribute("aria-invalid") == "true"
    _fill(browser, "#syslog-since", "2099-01-01 00:00")
    _css(browser, "#syslog-apply")[0].click()
    _wait(browser, lambda d: _lines(d) == ["no content"] and not _css(d, "#syslog-bad"),
          "nothing since 2099")
    _fill(browser, "#syslog-since", "")
    Select(_css(browser, "#syslog-service")[0]).select_by_value("etcd")
    _css(browser, "#syslog-apply")[0].click()
    _wait(browser, lambda d: _lines(d) and _lines(d) != ["no content"]
          and all(" etcd: " in line for line in _lines(d)), "etcd's lines alone")

    # follow: a task started now shows within seconds; the filter keeps its lines
    _css(browser, "#syslog-follow")[0].click()
    _wait(browser, lambda d: _css(d, "#syslog-lines[data-mode=follow]") and _lines(d),
          "the followed journal")
    upid = _ok(api.post(_url(cluster, "/nodes/n1/startall"), timeout=30,
                        data={"vms": "999999"}))
    _task_ok(api, cluster, upid)
    _wait(browser, lambda d: any(upid in line for line in _lines(d)), "the task's line followed")
    _fill(browser, "#syslog-filter", upid.upper())
    _wait(browser, lambda d: _lines(d) and all(upid in line for line in _lines(d)),
          "only the task's lines")
    browser.save_screenshot(str(shots / "node-syslog-follow.png"))

    # the Tasks tab: the task listed, its log opened
    _css(browser, "#node-tab-tasks")[0].click()
    row = f'#node-tasks tr[data-upid="{upid}"]'
    _wait(browser, lambda d: _css(d, row), "the task in the node's list")
    _css(browser, f"{row} .task-open")[0].click()
    _wait(browser, lambda d: _css(d, f'#task-viewer[data-upid="{upid}"][data-state=ok]'),
          "the task's log")
    browser.save_screenshot(str(shots / "node-tasks.png"))

    # Datacenter → Tasks: a bad VM ID said at the form; filtered by type, every node's
    # list (then n1's alone) holds the task and nothing of another type
    _go(browser, "#/dc/tasks")
    _wait(browser, lambda d: _css(d, "#dctasks-table tbody tr[data-upid]"), "the cluster's tasks")
    _fill(browser, "#dctasks-vmid", "x1")
    _css(browser, "#dctasks-apply")[0].click()
    _wait(browser, lambda d: _css(d, "#dctasks-bad"), "the bad VM ID said")
    assert _css(browser, "#dctasks-vmid")[0].get_attribute("aria-invalid") == "true"
    _fill(browser, "#dctasks-vmid", "")
    _fill(browser, "#dctasks-type", "startall")
    for node in ("", "n1"):
        Select(_css(browser, "#dctasks-node")[0]).select_by_value(node)
        _css(browser, "#dctasks-apply")[0].click()
        _wait(browser, lambda d: (rows := _css(d, "#dctasks-table tbody tr[data-upid]"))
              and {r.get_attribute("data-type") for r in rows} == {"startall"}
              and _css(d, f'#dctasks-table tr[data-upid="{upid}"]'),
              f"the startall tasks alone ({node or 'every node'})")
    listed = api.get(_url(cluster, "/nodes/n1/tasks"), timeout=10,
                     params={"typefilter": "startall", "source": "all", "limit": 1}).json()
    assert _css(browser, "#dctasks-count")[0].text.startswith(f"{listed['total']} "), \
        (_css(browser, "#dctasks-count")[0].text, listed["total"])
    browser.save_screenshot(str(shots / "dc-tasks.png"))
    _assert_no_script_errors(browser)


@pytest.fixture
def spare_vm(browser, api: requests.Session, cluster: Cluster) -> Iterator[int]:
    """A stopped VM without disks on n1, removed afterwards if still there (the browser
    first leaves its page: a VM view polling a VM that is being destroyed gets the API's
    500 'does not exist', which the next test would find in the console)."""
    vmid = int(_ok(api.get(_url(cluster, "/cluster/nextid"), timeout=10)))
    _task_ok(api, cluster, _ok(api.post(_url(cluster, "/nodes/n1/qemu"), timeout=30,
                                        data={"vmid": vmid, "name": "ui-spare", "memory": 64})))
    try:
        yield vmid
    finally:
        _go(browser, "#/dc")
        r = api.delete(_url(cluster, f"/nodes/n1/qemu/{vmid}"), timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])


def test_vm_clone_template_destroy(browser, cluster: Cluster, api: requests.Session,
                                   spare_vm: int, shots: Path) -> None:
    """Clone (the next free ID offered), convert the clone to a template, destroy it
    (confirmed): each through the VM's toolbar, each seen in the tree and the API; the
    source VM's task history lists the clone task."""
    _as_admin(browser, cluster)
    _go(browser, f"#/vm/{spare_vm}")
    _wait(browser, lambda d: _css(d, "#vm-clone"), "the VM's toolbar")[0].click()
    newid = int(_wait(browser, lambda d: (v := _css(d, "#vm-clone-newid")[0]
                                          .get_attribute("value")) and v, "the next ID"))
    clone = None
    try:
        _fill(browser, "#vm-clone-name", "ui-clone")
        _submit(browser)
        clone = newid
        item = _wait(browser, lambda d: _tree_item(d, f"#/vm/{newid}"), "the clone in the tree",
                     timeout=60)
        assert "ui-clone" in item.text, item.text
        _go(browser, f"#/vm/{spare_vm}/tasks")
        _wait(browser, lambda d: any("qmclone" in r.text for r in _css(d, "#vm-tasks tbody tr")),
              "the clone task in the VM's history")

        _go(browser, f"#/vm/{newid}")
        _wait(browser, lambda d: _css(d, "#vm-template:not([disabled])"),
              "Convert to template")[0].click()
        _submit(browser)
        wait_for(lambda: _ok(api.get(_url(cluster, f"/nodes/n1/qemu/{newid}/config"),
                                     timeout=10)).get("template") == 1, 30, "a template")
        _wait(browser, lambda d: _css(d, "#vm-template[disabled]"), "no second conversion")

        # a template's clone is linked unless Full is chosen (PVE's window), and is sent so
        _css(browser, "#vm-clone")[0].click()
        mode = _wait(browser, lambda d: _css(d, "#vm-clone-mode"), "the clone mode")[0]
        assert mode.get_attribute("value") == "linked"
        linked = int(_wait(browser, lambda d: (v := _css(d, "#vm-clone-newid")[0]
                                               .get_attribute("value")) and v, "the next ID"))
        _submit(browser)
        try:
            _wait(browser, lambda d: _tree_item(d, f"#/vm/{linked}"), "the linked clone",
                  timeout=60)
            tasks = _ok(api.get(_url(cluster, "/nodes/n1/tasks"), timeout=10,
                                params={"typefilter": "qmclone", "vmid": newid}))
            assert tasks and tasks[0]["status"] == "OK", tasks
        finally:
            r = api.delete(_url(cluster, f"/nodes/n1/qemu/{linked}"), timeout=30)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
        _go(browser, f"#/vm/{newid}")

        _wait(browser, lambda d: _css(d, "#vm-destroy:not([disabled])"), "Destroy")
        _css(browser, "#vm-destroy")[0].click()
        _wait(browser, lambda d: _css(d, "#vm-destroy-purge:checked"), "the destroy dialog")
        _submit(browser)
        _wait(browser, lambda d: _tree_item(d, f"#/vm/{newid}") is None, "the clone gone",
              timeout=60)
        clone = None
        assert api.get(_url(cluster, f"/nodes/n1/qemu/{newid}/config"),
                       timeout=10).status_code != 200
    finally:
        if clone is not None:
            r = api.delete(_url(cluster, f"/nodes/n1/qemu/{clone}"), timeout=30)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
    _assert_no_script_errors(browser)


def test_vm_cdrom_iso_choice(browser, cluster: Cluster, api: requests.Session,
                             spare_vm: int, shots: Path) -> None:
    """VM → Hardware: a CD/DVD drive added with an ISO image of the node's ISO storage
    (listed from the storage's content), then changed to no media; each seen in the
    VM's config through the API."""
    from selenium.webdriver.support.ui import Select

    name = f"ui-cd-{uuid.uuid4().hex[:6]}.iso"
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso" / name
    iso.parent.mkdir(parents=True, exist_ok=True)
    iso.write_bytes(b"\0" * 4096)
    config = _url(cluster, f"/nodes/n1/qemu/{spare_vm}/config")
    try:
        _as_admin(browser, cluster)
        _go(browser, f"#/vm/{spare_vm}/hardware")
        _wait(browser, lambda d: _css(d, "#hw-add-cdrom"), "Add CD/DVD drive")[0].click()
        _wait(browser, lambda d: _css(d, f'#hw-cdrom-iso option[value="local:iso/{name}"]'),
              "the ISO offered")
        Select(_css(browser, "#hw-cdrom-key")[0]).select_by_value("ide2")
        Select(_css(browser, "#hw-cdrom-iso")[0]).select_by_value(f"local:iso/{name}")
        _submit(browser)
        wait_for(lambda: _ok(api.get(config, timeout=10)).get("ide2")
                 == f"local:iso/{name},media=cdrom", 15, "the CD-ROM with the ISO")
        row = '#hw-table tr[data-key="ide2"]'
        _wait(browser, lambda d: _css(d, row) and name in _css(d, row)[0].text, "the drive listed")
        browser.save_screenshot(str(shots / "vm-hardware-cdrom.png"))
        _css(browser, f"{row} .hw-edit")[0].click()
        _wait(browser, lambda d: _css(d, f'#hw-cdrom-iso option[value="local:iso/{name}"]:checked'),
              "the drive's ISO selected")
        Select(_css(browser, "#hw-cdrom-iso")[0]).select_by_value("none")
        _submit(browser)
        wait_for(lambda: _ok(api.get(config, timeout=10)).get("ide2") == "none,media=cdrom", 15,
                 "the CD-ROM emptied")
    finally:
        iso.unlink(missing_ok=True)
    _assert_no_script_errors(browser)


def _ha_status(api: requests.Session, cluster: Cluster) -> list[dict[str, Any]]:
    return _ok(api.get(_url(cluster, "/cluster/ha/status/current"), timeout=10))


def test_ha_maintenance_and_fence_test(browser, cluster: Cluster, api: requests.Session,
                                       shots: Path) -> None:
    """Datacenter → HA: disarm (freeze: the summary's active alerts say so) and arm
    again, n2 into maintenance mode and out, each confirmed and seen in the API's status;
    a fence device added in the UI (a bad port refused beside its field first), edited
    without retyping its password (kept: the page never holds it), its Test button
    showing the device's answer (a BMC that is not there: a failure, said), removed."""
    from selenium.webdriver.support.ui import Select

    _as_admin(browser, cluster)
    browser.get_log("browser")      # drained: this test counts network errors too
    secret = "fence-secret-1"
    fence = _url(cluster, "/cluster/ha/fence/n2")
    try:
        _go(browser, "#/dc/ha")
        _wait(browser, lambda d: _css(d, "#ha-disarm"), "Disarm HA")[0].click()
        _css(browser, "#ha-disarm-mode option[value=freeze]")[0].click()
        _submit(browser)
        _wait(browser, lambda d: _css(d, "#ha-armed[data-armed='0']") and _css(d, "#ha-arm"),
              "HA disarmed", timeout=30)
        master = next(e for e in _ha_status(api, cluster) if e["type"] == "master")
        assert master.get("disarm") == "freeze", master
        browser.save_screenshot(str(shots / "dc-ha-disarmed.png"))
        # the datacenter summary's active alerts say so, and its volume card has loaded
        _go(browser, "#/dc")
        _wait(browser, lambda d: _css(d, '#dc-alert-list li[data-id="ha:disarmed"]'),
              "the disarmed alert on the summary")
        _wait(browser, lambda d: _css(d, "#dc-volume-health[data-total]")
              and _css(d, "#dc-volume-health")[0].get_attribute("data-total") != "",
              "the volumes' health")
        _go(browser, "#/dc/ha")
        _wait(browser, lambda d: _css(d, "#ha-arm"), "Arm HA")[0].click()
        _submit(browser)
        _wait(browser, lambda d: _css(d, "#ha-armed[data-armed='1']"), "HA armed", timeout=30)

        row = '#ha-node-table tr[data-node="n2"]'
        _wait(browser, lambda d: _css(d, f"{row} .ha-maint-toggle"), "n2's row")[0].click()
        _submit(browser)
        _wait(browser, lambda d: _css(d, f"{row}[data-maintenance='1']"), "n2 in maintenance",
              timeout=30)
        lrm = next(e for e in _ha_status(api, cluster) if e["id"] == "lrm:n2")
        assert "maintenance" in (lrm.get("state"), lrm.get("mode")), lrm
        _css(browser, f"{row} .ha-maint-toggle")[0].click()
        _submit(browser)
        _wait(browser, lambda d: _css(d, f"{row}[data-maintenance='0']"), "n2 out of maintenance",
              timeout=30)

        frow = '#ha-fence-table tr[data-node="n2"]'
        _css(browser, "#fence-add")[0].click()
        Select(_wait(browser, lambda d: _css(d, "#fence-node"), "the node list")[0]) \
            .select_by_value("n2")
        _fill(browser, "#fence-ip", "127.0.0.1")
        _fill(browser, "#fence-port", "99999")
        _fill(browser, "#fence-username", "nobody")
        _fill(browser, "#fence-password", secret)
        _fill(browser, "#fence-timeout", "1")
        _submit(browser)
        error = _wait(browser, lambda d: _css(d, "dialog[open] #error-port"), "the port's error")[0]
        assert error.text, "an empty error"
        assert api.get(fence, timeout=10).status_code != 200, "a refused device stored"
        _fill(browser, "#fence-port", "9")
        _submit(browser)
        _wait(browser, lambda d: _css(d, frow) and not _css(d, "dialog[open]"),
              "n2's device listed")
        dev = _ok(api.get(fence, timeout=10))
        assert (dev["ip"], dev["port"], dev["username"], dev["has_password"]) == \
            ("127.0.0.1", 9, "nobody", 1), dev
        # edited without retyping the password: the field starts empty, the password is kept
        _css(browser, f"{frow} .fence-edit")[0].click()
        _wait(browser, lambda d: _css(d, "#fence-username")[0].get_attribute("value") == "nobody",
              "the device's settings in the dialog")
        assert _css(browser, "#fence-password")[0].get_attribute("value") == ""
        assert secret not in browser.page_source
        _fill(browser, "#fence-username", "nobody2")
        _submit(browser)
        _wait(browser, lambda d: not _css(d, "dialog[open]")
              and "nobody2@" in _css(d, frow)[0].text, "the new user listed")
        dev = _ok(api.get(fence, timeout=10))
        assert (dev["username"], dev["has_password"]) == ("nobody2", 1), dev

        _wait(browser, lambda d: _css(d, f"{frow} .fence-test"), "n2's fence device")[0].click()
        result = _wait(browser, lambda d: (c := _css(d, f"{frow} .fence-result[data-state=failed]"))
                       and c[0], "the test's answer", timeout=30)
        assert result.text.startswith("Failed"), result.text
        assert secret not in browser.page_source
        browser.save_screenshot(str(shots / "dc-ha-fence.png"))
        _css(browser, f"{frow} .fence-remove")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, frow), "n2's device removed")
        assert api.get(fence, timeout=10).status_code != 200
    finally:
        api.post(_url(cluster, "/cluster/ha/status/arm-ha"), timeout=10)
        api.post(_url(cluster, "/cluster/ha/crm-command/node-maintenance/disable"), timeout=10,
                 data={"node": "n2"})
        api.delete(fence, timeout=10)
    wait_for(lambda: not next(e for e in _ha_status(api, cluster)
                              if e["type"] == "master").get("disarm")
             and next(e for e in _ha_status(api, cluster) if e["id"] == "lrm:n2")["state"]
             != "maintenance", 30, "HA armed, n2 out of maintenance")
    # the expected failure: the refused port (a 400 on POST /cluster/ha/fence/n2)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network" and " 400 " in e["message"]
                       and "/cluster/ha/fence/n2" in e["message"])]
    assert errors == [], errors


def test_ha_rules(browser, cluster: Cluster, api: requests.Session, vm: int,
                  shots: Path) -> None:
    """Datacenter → HA → Rules: a node-affinity rule for an HA resource added (a bad
    rule name refused beside its field first), edited (strict, disabled), removed; the
    resource's failback turned off in its dialog; each seen through the API."""
    _as_admin(browser, cluster)
    sid = f"vm:{vm}"
    rules = _url(cluster, "/cluster/ha/rules")
    # ignored: the HA manager leaves the VM where it is whatever the rule says
    _ok(api.post(_url(cluster, "/cluster/ha/resources"), timeout=10,
                 data={"sid": sid, "state": "ignored"}))
    rrow = '#ha-rule-table tr[data-rule="ui-rule"]'
    try:
        _go(browser, "#/dc/ha")
        _wait(browser, lambda d: _css(d, f'#ha-resource-table tr[data-sid="{sid}"]'),
              "the HA resource listed")
        _css(browser, "#ha-rule-add")[0].click()
        _fill(browser, "#ha-rule-name", "9-bad")
        _css(browser, f"#ha-rule-res-vm-{vm}")[0].click()
        for node in ("n1", "n2"):
            _css(browser, f"#ha-rule-node-{node}")[0].click()
        _fill(browser, "#ha-rule-prio-n1", "2")
        _fill(browser, "#ha-rule-prio-n2", "1")
        _fill(browser, "#ha-rule-comment", "from the UI")
        _submit(browser)
        error = _wait(browser, lambda d: _css(d, "dialog[open] #error-rule"), "the name's error")[0]
        assert error.text, "an empty error"
        _fill(browser, "#ha-rule-name", "ui-rule")
        _submit(browser)
        _wait(browser, lambda d: _css(d, rrow) and not _css(d, "dialog[open]"), "the rule listed")
        rule = _ok(api.get(f"{rules}/ui-rule", timeout=10))
        assert (rule["type"], rule["resources"], rule["nodes"], rule["strict"],
                rule.get("disable"), rule["comment"]) == \
            ("node-affinity", sid, "n1:2,n2:1", 0, None, "from the UI"), rule

        _css(browser, f"{rrow} .ha-rule-edit")[0].click()
        _wait(browser, lambda d: _css(d, "#ha-rule-node-n1:checked")
              and _css(d, "#ha-rule-prio-n1")[0].get_attribute("value") == "2",
              "the rule's nodes in the dialog")
        _css(browser, "#ha-rule-strict")[0].click()
        _css(browser, "#ha-rule-disable")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, "dialog[open]")
              and "disabled" in _css(d, f"{rrow} .ha-rule-enabled")[0].text, "the rule disabled")
        rule = _ok(api.get(f"{rules}/ui-rule", timeout=10))
        assert (rule["strict"], rule.get("disable"), rule["nodes"]) == (1, 1, "n1:2,n2:1"), rule
        browser.save_screenshot(str(shots / "dc-ha-rules.png"))

        # the resource's failback, off
        _css(browser, f'#ha-resource-table tr[data-sid="{sid}"] .ha-edit')[0].click()
        _wait(browser, lambda d: _css(d, "#ha-res-failback:checked"), "failback on by default")
        _css(browser, "#ha-res-failback")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, "dialog[open]"), "the resource dialog closed")
        res = next(r for r in _ok(api.get(_url(cluster, "/cluster/ha/resources"), timeout=10))
                   if r["sid"] == sid)
        assert res["failback"] == 0 and res["state"] == "ignored", res

        _css(browser, f"{rrow} .ha-rule-remove")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, rrow), "the rule removed")
        assert "ui-rule" not in [r["rule"] for r in _ok(api.get(rules, timeout=10))]
    finally:
        api.delete(f"{rules}/ui-rule", timeout=10)
        api.delete(_url(cluster, f"/cluster/ha/resources/{sid}"), timeout=10)
    # the expected failure: the refused rule name (a 400 on POST /cluster/ha/rules)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network" and " 400 " in e["message"]
                       and "/cluster/ha/rules" in e["message"])]
    assert errors == [], errors


def test_datacenter_options(browser, cluster: Cluster, api: requests.Session,
                            shots: Path) -> None:
    """Datacenter → Options: an availability target out of range refused with the API's
    reason, then the shutdown policy and target saved; the old options put back."""
    _as_admin(browser, cluster)
    before = _ok(api.get(_url(cluster, "/cluster/options"), timeout=10))
    try:
        _go(browser, "#/dc/options")
        _wait(browser, lambda d: _css(d, "#opt-edit"), "Edit")[0].click()
        _css(browser, "#opt-policy option[value=freeze]")[0].click()
        _fill(browser, "#opt-target", "80")
        _css(browser, "#opt-save")[0].click()
        error = _wait(browser, lambda d: _css(d, "#opt-form .error"), "the refused target")[0]
        assert "availability_target" in error.text or "90" in error.text, error.text
        assert _ok(api.get(_url(cluster, "/cluster/options"), timeout=10)) == before
        _fill(browser, "#opt-target", "99.9")
        _css(browser, "#opt-save")[0].click()
        _wait(browser, lambda d: not _css(d, "#opt-form"), "the form closed")
        after = _ok(api.get(_url(cluster, "/cluster/options"), timeout=10))
        assert after == {"ha": "shutdown_policy=freeze,availability_target=99.9"}, after
        _wait(browser, lambda d: _css(d, '#opt-current dd[data-key="shutdown_policy"]')[0].text
              == "freeze", "the saved policy shown")
        browser.save_screenshot(str(shots / "dc-options.png"))
    finally:
        if before.get("ha"):
            api.put(_url(cluster, "/cluster/options"), data={"ha": before["ha"]}, timeout=10)
        else:
            api.put(_url(cluster, "/cluster/options"), data={"delete": "ha"}, timeout=10)
    _assert_no_script_errors(browser)


def test_pool_limited_user(browser, cluster: Cluster, api: requests.Session, vm: int,
                           shots: Path) -> None:
    """A user with PVEVMUser on /pool/<pool> only, the pool holding one VM (another VM
    exists outside it): in the browser the tree shows that VM alone, its page opens,
    the datacenter's admin pages are not offered and, opened by address, say
    "Permission denied"; the Users page lists only the user; no script error."""
    suffix = uuid.uuid4().hex[:6]
    pool, name = f"uiplim{suffix}", f"uipooluser{suffix}"
    userid, password = f"{name}@pve", "pool-user-" + uuid.uuid4().hex[:8]
    pooled = int(_ok(api.get(_url(cluster, "/cluster/nextid"), timeout=10)))
    _ok(api.post(_url(cluster, "/pools"), data={"poolid": pool}, timeout=10))
    created = False
    try:
        _task_ok(api, cluster, _ok(api.post(_url(cluster, "/nodes/n1/qemu"), timeout=30, data={
            "vmid": pooled, "name": "ui-pooled", "memory": 64, "pool": pool})))
        created = True
        _ok(api.post(_url(cluster, "/access/users"), timeout=10,
                     data={"userid": userid, "password": password}))
        _ok(api.put(_url(cluster, "/access/acl"), timeout=10, data={
            "path": f"/pool/{pool}", "roles": "PVEVMUser", "users": userid}))
        browser.get_log("browser")            # drained: only this user's page counts
        _fresh_login(browser, cluster, password, username=name)
        _wait(browser, lambda d: userid in _css(d, "#shell-user")[0].text, "logged in")
        _wait(browser, lambda d: _tree_item(d, f"#/vm/{pooled}"), "the pool's VM in the tree")
        keys = [e.get_attribute("data-key") for e in _css(browser, ".tree [data-key]")]
        assert [k for k in keys if k.startswith("#/vm/")] == [f"#/vm/{pooled}"], keys
        assert f"#/vm/{vm}" not in keys and not _css(browser, "#create-vm"), keys
        browser.save_screenshot(str(shots / "pool-user-tree.png"))
        _tree_item(browser, f"#/vm/{pooled}").click()
        _wait(browser, lambda d: _css(d, "#vm-status") and _css(d, "#vm-status")[0].text
              == "stopped", "the VM's page")

        _go(browser, "#/dc")
        _wait(browser, lambda d: _css(d, "#dc-tab-log"), "the datacenter's tabs")
        admin_tabs = ("ha", "availability", "storage", "volumes", "backup", "options")
        _wait(browser, lambda d: not any(_css(d, f"#dc-tab-{t}") for t in admin_tabs),
              "the admin pages not offered")
        for page in ("ha", "options", "backup"):
            _go(browser, f"#/dc/{page}")
            _wait(browser, lambda d: any("Permission denied:" in e.text
                                         for e in _css(d, "#content .error")),
                  f"#/dc/{page} says permission denied")
        # and offers no write: Add backup job, Disarm HA, Edit options
        _wait(browser, lambda d: not _css(d, "#bjob-add"), "no Add backup job")
        _go(browser, "#/dc/ha")
        _wait(browser, lambda d: _css(d, "#ha-maintenance"), "the HA page")
        assert not _css(browser, "#ha-disarm, #ha-arm, .ha-maint-toggle, .fence-test, #ha-add")
        browser.save_screenshot(str(shots / "pool-user-denied.png"))
        _go(browser, "#/access/users")
        _wait(browser, lambda d: _css(d, f'#user-table tr[data-userid="{userid}"]'), "the user")
        assert len(_css(browser, "#user-table tbody tr")) == 1
        assert not _css(browser, "#user-add, .user-edit, .user-delete")
        _assert_no_script_errors(browser)
    finally:
        api.delete(_url(cluster, f"/access/users/{userid}"), timeout=10)
        if created:
            r = api.delete(_url(cluster, f"/nodes/n1/qemu/{pooled}"), timeout=30)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
        api.delete(_url(cluster, "/pools"), params={"poolid": pool}, timeout=10)
        _fresh_login(browser, cluster, PASSWORD)        # the next tests run as admin
        browser.get_log("browser")
