"""The web UI in a real browser: Debian's chromium driven by Selenium against the shared
cluster's binomed (the built SPA at https://n1:8006/). Login (a wrong password, then
admin@pve), the resource tree with both nodes and a VM, a VM started through the API
turning to running in the tree without a reload, the VM, node and datacenter views,
keyboard navigation of the tree, the task list, and no JavaScript error in the console.
Screenshots go to the test's temp dir."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from binome.api.webui import DIST
from tests.integration.harness import PASSWORD, Cluster, wait_for
from tests.integration.ui import chromium

urllib3.disable_warnings()


def _base(cluster: Cluster) -> str:
    return f"https://{cluster['n1'].address}:8006"


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> requests.Session:
    r = requests.post(_base(cluster) + "/api2/json/access/ticket", verify=False, timeout=10,
                      data={"username": "admin@pve", "password": PASSWORD})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    s = requests.Session()
    s.verify = False
    s.trust_env = False
    s.cookies.set("PVEAuthCookie", data["ticket"])
    s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    return s


def _task_ok(api: requests.Session, cluster: Cluster, upid: str) -> None:
    node = upid.split(":")[1]
    url = f"{_base(cluster)}/api2/json/nodes/{node}/tasks/{upid}/status"
    status = wait_for(lambda: (d := api.get(url, timeout=10).json()["data"])["status"]
                      == "stopped" and d, 60, f"task {upid}")
    assert status.get("exitstatus") == "OK", status


@pytest.fixture(scope="module")
def vm(api: requests.Session, cluster: Cluster) -> Iterator[int]:
    """A small stopped VM on n1 (no disk: the firmware idles, enough to be running)."""
    vmid = int(api.get(_base(cluster) + "/api2/json/cluster/nextid", timeout=10)
               .json()["data"])
    url = f"{_base(cluster)}/api2/json/nodes/n1/qemu"
    r = api.post(url, data={"vmid": vmid, "name": "ui-vm", "memory": 64}, timeout=30)
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])
    try:
        yield vmid
    finally:
        # the test migrates it: clean up wherever it is now
        listed = api.get(f"{_base(cluster)}/api2/json/cluster/resources", timeout=10,
                         params={"type": "vm"}).json()["data"]
        node = next((e["node"] for e in listed if e.get("vmid") == vmid), "n1")
        url = f"{_base(cluster)}/api2/json/nodes/{node}/qemu"
        r = api.post(f"{url}/{vmid}/status/stop", timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])
        r = api.delete(f"{url}/{vmid}", timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])


@pytest.fixture(scope="module")
def console_vm(api: requests.Session, cluster: Cluster) -> Iterator[int]:
    """A running VM on n1 booting the lab's tiny image: a shell on its serial console
    (console=ttyS0) and a VGA display for VNC."""
    from binome.lab.image import build_image

    image = build_image()
    iso = cluster["n1"].state_dir / "storage" / "local" / "template" / "iso"
    iso.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(image.kernel, iso / "ui-vmlinuz")
    shutil.copyfile(image.initrd, iso / "ui-initrd.gz")
    vmid = int(api.get(_base(cluster) + "/api2/json/cluster/nextid", timeout=10)
               .json()["data"])
    url = f"{_base(cluster)}/api2/json/nodes/n1/qemu"
    r = api.post(url, timeout=30, data={
        "vmid": vmid, "name": "ui-console", "memory": 96, "vga": "std",
        "kernel": "local:iso/ui-vmlinuz", "initrd": "local:iso/ui-initrd.gz",
        "append": "console=ttyS0 quiet panic=-1"})
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])
    try:
        r = api.post(f"{url}/{vmid}/status/start", timeout=30)
        assert r.status_code == 200, r.text
        _task_ok(api, cluster, r.json()["data"])
        yield vmid
    finally:
        r = api.post(f"{url}/{vmid}/status/stop", timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])
        r = api.delete(f"{url}/{vmid}", timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not chromium.available():
        pytest.skip("chromium/chromium-driver are not installed (make setup installs them)")
    assert (DIST / "index.html").is_file(), "the web UI is not built: run `make ui`"
    with chromium.chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-screenshots")


def _wait(driver, predicate, what: str, timeout: float = 15.0):
    return wait_for(lambda: predicate(driver), timeout, what, interval=0.1)


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _fill(driver, selector: str, text: str) -> None:
    """Replace a field's text with keys, and see it took.

    Not WebDriver's clear(): the page's state follows input events and clear() fires
    none, so a re-render between clear() and the keys put the old text back (once the
    Options tab saved "ui-editui-renamed")."""
    from selenium.webdriver.common.keys import Keys

    def typed(driver) -> bool:
        field = _css(driver, selector)
        if not field:
            return False
        field[0].send_keys(Keys.CONTROL, "a")
        field[0].send_keys(Keys.BACKSPACE)
        field[0].send_keys(text)
        return field[0].get_attribute("value") == text

    _wait(driver, typed, f"{text!r} typed into {selector}")


def _login(driver, password: str, username: str = "admin") -> None:
    from selenium.webdriver.support.ui import Select

    _wait(driver, lambda d: _css(d, "#login-realm option[value=pve]"), "the realm list")
    _fill(driver, "#login-username", username)
    _fill(driver, "#login-password", password)
    Select(_css(driver, "#login-realm")[0]).select_by_value("pve")
    _css(driver, "#login-submit")[0].click()


def _fresh_login(driver, cluster: Cluster, password: str, username: str = "admin") -> None:
    """A new session whoever was logged in: the ticket cookie and the stored session
    dropped, the page loaded again, the login form filled."""
    driver.get(_base(cluster) + "/")
    driver.delete_all_cookies()
    driver.execute_script("localStorage.removeItem('binome.session')")
    driver.get(_base(cluster) + "/")
    _login(driver, password, username=username)
    _wait(driver, lambda d: _css(d, ".tree"), "the resource tree after login")


def _assert_no_script_errors(driver) -> None:
    """No script error in the page's console; a user who may see nothing gets 403s,
    which the browser logs as network errors: those do not count."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and e.get("source") != "network"]
    assert errors == [], errors


def _tree_item(driver, key: str):
    items = _css(driver, f'.tree [data-key="{key}"]')
    return items[0] if items else None


def test_wrong_password_is_explained(browser, cluster: Cluster, shots: Path) -> None:
    browser.get(_base(cluster) + "/")
    _login(browser, "not-the-password")
    error = _wait(browser, lambda d: _css(d, "#login-error"), "the login error")[0]
    assert "wrong user name or password" in error.text, error.text
    assert _css(browser, "#login-password")[0].get_attribute("value") == ""
    assert not _css(browser, ".tree"), "a failed login must not show the app"
    browser.save_screenshot(str(shots / "login-failed.png"))
    assert chromium.axe_violations(browser) == [], "axe-core on the login form"


def test_login_tree_live_views(browser, cluster: Cluster, api: requests.Session, vm: int,
                               shots: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    _login(browser, PASSWORD)
    _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    assert "admin@pve" in _css(browser, "#shell-user")[0].text
    # both nodes online, the VM stopped under n1
    for node in ("n1", "n2"):
        _wait(browser, lambda d, n=node: (i := _tree_item(d, f"#/node/{n}")) is not None
              and i.get_attribute("data-status") == "online", f"{node} online in the tree")
    item = _wait(browser, lambda d: (i := _tree_item(d, f"#/vm/{vm}")) is not None
                 and i.get_attribute("data-status") == "stopped" and i, f"VM {vm} in the tree")
    assert "ui-vm" in item.text
    keys = [i.get_attribute("data-key") for i in _css(browser, ".tree [role=treeitem]")]
    assert keys.index("#/node/n1") < keys.index(f"#/vm/{vm}") < keys.index("#/node/n2")
    # the datacenter summary: quorum and the node table
    _wait(browser, lambda d: "quorate" in _css(d, "#dc-quorum")[0].text, "quorum shown")
    _wait(browser, lambda d: len(_css(d, "#dc-node-table tbody tr")) == 2, "two node rows")
    _wait(browser, lambda d: _css(d, "#dc-ha-status li[data-type=quorum]"), "HA status")
    browser.save_screenshot(str(shots / "datacenter.png"))

    # started through the API: the tree turns to running by itself (no reload: the
    # marker set on this page survives)
    browser.execute_script("window.__noReload = 1")
    r = api.post(f"{_base(cluster)}/api2/json/nodes/n1/qemu/{vm}/status/start", timeout=30)
    assert r.status_code == 200, r.text
    upid = r.json()["data"]
    _wait(browser, lambda d: _tree_item(d, f"#/vm/{vm}").get_attribute("data-status")
          == "running", f"VM {vm} running in the tree", timeout=30)
    assert browser.execute_script("return window.__noReload") == 1
    # the start task shows in the task list, finished
    _wait(browser, lambda d: (row := _css(d, f'#task-list tr[data-upid="{upid}"]'))
          and "OK" in row[0].text, "the start task in the task list", timeout=20)

    # the VM view: status, node, HA state, actions; a stop asks for confirmation first
    _tree_item(browser, f"#/vm/{vm}").click()
    _wait(browser, lambda d: _css(d, "#vm-status") and _css(d, "#vm-status")[0].text
          .startswith("running"), "the VM view's status")
    # the tree's status may come before the view's own status read (which has the HA
    # state): a local guest's QEMU shows running in /cluster/resources at once
    _wait(browser, lambda d: "not managed" in _css(d, "#vm-ha")[0].text, "the VM's HA state")
    assert _css(browser, "#vm-start")[0].get_attribute("disabled") is not None
    _css(browser, "#vm-stop")[0].click()
    dialog = _wait(browser, lambda d: _css(d, "dialog[open]"), "the confirmation")[0]
    assert str(vm) in dialog.text
    # a destructive action starts with the focus on Cancel: Enter alone stops nothing
    assert browser.switch_to.active_element.get_attribute("type") == "button"
    browser.save_screenshot(str(shots / "vm-confirm.png"))
    dialog.find_element("css selector", "button[type=button]").click()   # cancel
    _wait(browser, lambda d: not _css(d, "dialog[open]"), "the dialog to close")
    assert api.get(f"{_base(cluster)}/api2/json/nodes/n1/qemu/{vm}/status/current",
                   timeout=10).json()["data"]["status"] == "running"
    browser.save_screenshot(str(shots / "vm.png"))

    # stop, confirmed, through the UI (a write: the ticket cookie and the CSRF header)
    _css(browser, "#vm-stop")[0].click()
    _wait(browser, lambda d: _css(d, "dialog[open]"), "the confirmation")[0] \
        .find_element("css selector", "button[type=submit]").click()
    _wait(browser, lambda d: _tree_item(d, f"#/vm/{vm}").get_attribute("data-status")
          == "stopped", f"VM {vm} stopped in the tree", timeout=30)
    assert "Task started" in _css(browser, "#vm-message")[0].text
    # migrate the stopped VM to n2: the tree moves it under n2
    _wait(browser, lambda d: _css(d, "#vm-start")[0].get_attribute("disabled") is None,
          "Start enabled once stopped")
    _css(browser, "#vm-migrate")[0].click()
    dialog = _wait(browser, lambda d: _css(d, "dialog[open]"), "the migrate dialog")[0]
    assert dialog.find_element("css selector", "select").get_attribute("value") == "n2"
    dialog.find_element("css selector", "button[type=submit]").click()

    def moved(d) -> bool:
        keys = [i.get_attribute("data-key") for i in _css(d, ".tree [role=treeitem]")]
        return f"#/vm/{vm}" in keys and keys.index("#/node/n2") < keys.index(f"#/vm/{vm}")
    _wait(browser, moved, f"VM {vm} under n2 in the tree", timeout=30)
    _wait(browser, lambda d: "on n2" in _css(d, "#view-vm h1")[0].text, "the VM view on n2")
    _tree_item(browser, f"#/vm/{vm}").click()

    # keyboard: from the VM, Up goes to its node and Enter opens the node summary
    _tree_item(browser, f"#/vm/{vm}").send_keys(Keys.ARROW_UP)
    _wait(browser, lambda d: d.switch_to.active_element.get_attribute("data-key")
          == "#/node/n2", "focus on n2")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser, lambda d: _css(d, "#view-node") and "binome/" in
          _css(d, "#view-node")[0].text, "the node summary with its version")
    # dark theme
    _css(browser, "#theme-toggle")[0].click()
    theme = browser.execute_script("return document.documentElement.dataset.theme")
    browser.save_screenshot(str(shots / f"node-{theme}.png"))
    # a phone's width: the panes stack, the tree and the view both still there
    browser.set_window_size(390, 844)
    assert _css(browser, ".tree [role=treeitem]")[0].is_displayed()
    assert _css(browser, "#view-node")[0].is_displayed()
    browser.save_screenshot(str(shots / "node-phone.png"))
    browser.set_window_size(1366, 768)

    # no JavaScript error in the console; the failed requests expected: the wrong
    # password's 401, and the VM's status asked of n1 in the instant after the migration
    # (before the next /cluster/resources says it is on n2)
    def expected(e: dict) -> bool:
        m = e["message"]
        return e.get("source") == "network" and (
            ("/access/ticket" in m and " 401 " in m)
            or (f"/nodes/n1/qemu/{vm}/status/current" in m and "does not exist" in m))
    errors = [e for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and not expected(e)]
    assert errors == [], errors


def _go(driver, hash_: str) -> None:
    driver.execute_script("location.hash = arguments[0]", hash_)


def test_consoles_and_graphs(browser, cluster: Cluster, console_vm: int, shots: Path,
                            api: requests.Session) -> None:
    """The serial console (xterm.js) answers a command typed in the browser, the VNC
    console (noVNC) draws the guest's display, the graphs draw the rrddata; the node's
    Network and System tabs and its bulk actions (confirmed, checked before sending)."""
    from selenium.webdriver.support.ui import Select

    vm = console_vm
    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    _go(browser, f"#/vm/{vm}/console")
    _wait(browser, lambda d: _css(d, "#console-state[data-state=connected]"),
          "the serial console connected", timeout=20)
    # the guest boots (or, booted, answers the Enter sent on connect) to its shell prompt
    # on ttyS0; then a command typed into the terminal is answered (the answer computed
    # by the guest, so it cannot be the typed text echoed)
    _wait(browser, lambda d: "guest:/#" in _css(d, "#serial-console .xterm-rows")[0].text,
          "the guest's shell prompt in the terminal", timeout=30)
    _css(browser, "#serial-console .xterm-helper-textarea")[0].send_keys(
        "echo ui-console-$((40+2))\n")
    _wait(browser, lambda d: "ui-console-42" in _css(d, "#serial-console .xterm-rows")[0]
          .text.replace("$((40+2))", ""), "the guest's answer in the terminal", timeout=20)
    browser.save_screenshot(str(shots / "console-serial.png"))

    _css(browser, "#vm-tab-vnc")[0].click()
    _wait(browser, lambda d: _css(d, "#console-state[data-state=connected]"),
          "the VNC console connected", timeout=20)
    # a frame drawn: the canvas has the guest's size and some pixel that is not black
    drawn = """
        const c = document.querySelector('#vnc-console canvas');
        if (!c || c.width < 100) return false;
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < px.length; i += 4) if (px[i] || px[i+1] || px[i+2]) return true;
        return false;"""
    _wait(browser, lambda d: d.execute_script(drawn), "a VNC frame on the canvas", timeout=20)
    browser.save_screenshot(str(shots / "console-vnc.png"))

    _css(browser, "#vm-tab-graphs")[0].click()
    _wait(browser, lambda d: len(_css(d, "#graphs .chart canvas")) == 4
          and int(_css(d, "#graphs")[0].get_attribute("data-points")) > 0,
          "four VM charts drawn from rrddata")
    Select(_css(browser, "#graphs-timeframe")[0]).select_by_value("day")
    _wait(browser, lambda d: len(_css(d, "#graphs .chart canvas")) == 4, "the day charts")
    browser.save_screenshot(str(shots / "vm-graphs.png"))
    _go(browser, "#/node/n1")
    _wait(browser, lambda d: len(_css(d, "#view-node #graphs .chart canvas")) == 4,
          "the node's four charts")
    browser.save_screenshot(str(shots / "node-graphs.png"))

    # the node's Network tab: the interfaces the API reads from the host, one row each
    ifaces = api.get(f"{_base(cluster)}/api2/json/nodes/n1/network", timeout=30).json()["data"]
    _css(browser, "#node-tab-network")[0].click()
    _wait(browser, lambda d: {r.get_attribute("data-iface") for r in
                              _css(d, "#node-network-table tbody tr")}
          == {i["iface"] for i in ifaces}, "a row per interface")
    browser.save_screenshot(str(shots / "node-network.png"))
    # System: version, time, and binomed running among the services
    _css(browser, "#node-tab-system")[0].click()
    _wait(browser, lambda d: (r := _css(d, '#node-services-table tr[data-service="binomed"]'))
          and "running" in r[0].text, "binomed running in the services")
    assert "PVE API 8." in _css(browser, "#node-sys-version")[0].text
    browser.save_screenshot(str(shots / "node-system.png"))
    # bulk shutdown: a bad timeout is said before anything is sent; Cancel sends nothing
    _css(browser, "#node-stopall")[0].click()
    _fill(browser, "#node-bulk-timeout", "-1")
    _wait(browser, lambda d: _css(d, "dialog button[type=submit]")[0].get_attribute("disabled")
          is not None, "OK disabled for a bad timeout")
    _css(browser, "dialog button[type=button]")[0].click()
    _wait(browser, lambda d: not _css(d, "dialog"), "the dialog closed")
    st = api.get(f"{_base(cluster)}/api2/json/nodes/n1/qemu/{console_vm}/status/current",
                 timeout=30).json()["data"]
    assert st["status"] == "running"
    # bulk start of the running guest, confirmed: a startall task, the guest skipped
    _css(browser, "#node-startall")[0].click()
    _fill(browser, "#node-bulk-vms", str(console_vm))
    _css(browser, "dialog button[type=submit]")[0].click()
    _wait(browser, lambda d: (m := _css(d, "#node-message")) and ":startall:" in m[0].text,
          "the startall task started")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_console_ends_when_access_is_revoked(browser, cluster: Cluster, api: requests.Session,
                                            console_vm: int, shots: Path) -> None:
    """A live console websocket (VNC, on the guest's node n1) opened as a non-root user
    with VM.Console closes within seconds, with the reason, when the access changes on
    another node (n2): first a token-authenticated one whose token is deleted (the
    user's own session stays), then a ticket one whose user is disabled; and the
    browser's VNC tab shows that reason when the user's VM.Console is taken away; and a
    console whose guest stops is closed with that said."""
    import asyncio

    import aiohttp

    vm = console_vm
    n1 = f"{_base(cluster)}/api2/json"
    n2 = f"https://{cluster['n2'].address}:8006/api2/json"
    userid = f"ws-{uuid.uuid4().hex[:6]}@pve"
    password = "console-" + uuid.uuid4().hex

    def ok(r: requests.Response) -> Any:
        assert r.status_code == 200, (r.status_code, r.reason, r.text)
        return r.json()["data"]

    ok(api.post(f"{n1}/access/users", data={"userid": userid, "password": password},
                timeout=10))
    try:
        ok(api.put(f"{n1}/access/acl", data={"path": f"/vms/{vm}", "roles": "PVEVMUser",
                                              "users": userid}, timeout=10))
        token = ok(api.post(f"{n1}/access/users/{userid}/token/ws", data={"privsep": 0},
                            timeout=10))
        token_header = {"Authorization": f"PVEAPIToken={token['full-tokenid']}="
                                         f"{token['value']}"}
        login = ok(requests.post(f"{n1}/access/ticket", verify=False, timeout=10,
                                 data={"username": userid, "password": password}))
        cookies = {"PVEAuthCookie": login["ticket"]}
        ticket_headers = {"CSRFPreventionToken": login["CSRFPreventionToken"]}

        async def open_vnc(session: aiohttp.ClientSession,
                           headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
            async with session.post(f"{n1}/nodes/n1/qemu/{vm}/vncproxy", headers=headers,
                                    ssl=False) as r:
                assert r.status == 200, (r.status, r.reason)
                data = (await r.json())["data"]
            ws = await session.ws_connect(
                f"{n1}/nodes/n1/qemu/{vm}/vncwebsocket", ssl=False, headers=headers,
                params={"port": data["port"], "vncticket": data["ticket"]})
            banner = await asyncio.wait_for(ws.receive(), 10)
            assert banner.type == aiohttp.WSMsgType.BINARY and \
                banner.data.startswith(b"RFB "), banner
            return ws

        async def change_then_close(change: Any, ws: aiohttp.ClientWebSocketResponse,
                                    seconds: float = 5) -> tuple[float, aiohttp.WSMessage]:
            """Make the change (through n2), then read the socket until its close;
            the time from the change's request to the close."""
            loop = asyncio.get_running_loop()
            began = loop.time()
            r = await asyncio.to_thread(change)
            assert r.status_code == 200, r.text
            while True:                 # the guest's frames until the close
                msg = await asyncio.wait_for(ws.receive(), began + seconds - loop.time())
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return loop.time() - began, msg

        async def scenario() -> None:
            async with aiohttp.ClientSession(cookies=cookies) as user_session, \
                    aiohttp.ClientSession() as token_session:
                by_token = await open_vnc(token_session, token_header)
                by_ticket = await open_vnc(user_session, ticket_headers)
                took, msg = await change_then_close(lambda: api.delete(
                    f"{n2}/access/users/{userid}/token/ws", timeout=10), by_token)
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                assert msg.data == 1008 and msg.extra == \
                    f"access revoked: API token '{userid}!ws' was deleted", msg
                print(f"token session closed {took:.2f} s after the delete was sent")
                # the user's own session goes on: no close (both would be decided in the
                # same pass), and nothing else comes (the RFB server awaits the client)
                try:
                    msg = await by_ticket.receive(timeout=0.5)
                    raise AssertionError(f"the user's own session got {msg}")
                except TimeoutError:
                    pass
                took, msg = await change_then_close(lambda: api.put(
                    f"{n2}/access/users/{userid}", data={"enable": 0}, timeout=10), by_ticket)
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                assert msg.data == 1008 and \
                    msg.extra == f"access revoked: user '{userid}' was disabled", msg
                print(f"ticket session closed {took:.2f} s after the disable was sent")

        asyncio.run(scenario())
        _vnc_tab_says_why(browser, cluster, api, vm, userid, password, shots)

        async def guest_goes() -> None:
            """The guest's end closes (the VM is stopped, its last use here): said too."""
            async with aiohttp.ClientSession(cookies=api.cookies.get_dict()) as admin:
                ws = await open_vnc(admin, {"CSRFPreventionToken":
                                            str(api.headers["CSRFPreventionToken"])})
                took, msg = await change_then_close(lambda: api.post(
                    f"{n1}/nodes/n1/qemu/{vm}/status/stop", timeout=30), ws, seconds=30)
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                assert msg.data == 1000 and \
                    msg.extra == f"VM {vm}: the guest's vnc console closed", msg
                print(f"admin session closed {took:.2f} s after the stop was sent")

        asyncio.run(guest_goes())
    finally:
        api.delete(f"{n1}/access/users/{userid}", timeout=10)
        _fresh_login(browser, cluster, PASSWORD)       # the next tests run as admin
        # drained: the deleted user's page had its last requests refused (401), as it
        # should; its script errors were checked before the user went
        browser.get_log("browser")


def _vnc_tab_says_why(browser, cluster: Cluster, api: requests.Session, vm: int, userid: str,
                      password: str, shots: Path) -> None:
    """The VNC tab, open as that user (enabled again, auditing everything, VM.Console
    on the VM alone), shows the server's reason when VM.Console is taken away."""
    n1 = f"{_base(cluster)}/api2/json"
    r = api.put(f"{n1}/access/users/{userid}", data={"enable": 1}, timeout=10)
    assert r.status_code == 200, r.text
    r = api.put(f"{n1}/access/acl", data={"path": "/", "roles": "PVEAuditor", "users": userid},
                timeout=10)
    assert r.status_code == 200, r.text
    _fresh_login(browser, cluster, password, username=userid.split("@")[0])
    _wait(browser, lambda d: _css(d, f'.tree [data-key="#/vm/{vm}"]'), "the VM in the user's tree")
    _go(browser, f"#/vm/{vm}/vnc")
    _wait(browser, lambda d: _css(d, "#console-state[data-state=connected]"), "VNC connected")
    r = api.put(f"{n1}/access/acl", timeout=10, data={
        "path": f"/vms/{vm}", "roles": "PVEVMUser", "users": userid, "delete": 1})
    assert r.status_code == 200, r.text
    state = _wait(browser, lambda d: (e := _css(d, "#console-state[data-state=closed]")) and e[0],
                  "the VNC tab closed")
    assert "access revoked: permission removed" in state.text, state.text
    assert _css(browser, "#console-reconnect"), "no way to reconnect"
    browser.save_screenshot(str(shots / "vm-vnc-closed.png"))
    _assert_no_script_errors(browser)


def test_create_vm_wizard(browser, cluster: Cluster, api: requests.Session,
                          shots: Path) -> None:
    """The create wizard: a bad memory size comes back as the API's per-parameter error
    next to the field (the wizard jumps to its step); corrected, the VM is created and
    shows in the tree."""
    from selenium.webdriver.support.ui import Select

    _go(browser, "#/dc")
    _css(browser, "#create-vm")[0].click()
    _wait(browser, lambda d: _css(d, "#create-vmid") and _css(d, "#create-vmid")[0]
          .get_attribute("value"), "the next free VMID in the wizard")
    vmid = int(_css(browser, "#create-vmid")[0].get_attribute("value"))
    try:
        assert Select(_css(browser, "#create-node")[0]).first_selected_option.text == "n1"
        _fill(browser, "#create-name", "ui-wizard")
        _css(browser, "#create-next")[0].click()                       # -> OS
        _wait(browser, lambda d: _css(d, "#create-iso"), "the OS step")
        _css(browser, "#create-step-memory")[0].click()
        _fill(browser, "#create-memory", "64x")
        _css(browser, "#create-step-disks")[0].click()
        Select(_css(browser, "#create-storage")[0]).select_by_value("")  # no disk
        _css(browser, "#create-step-network")[0].click()
        _fill(browser, "#create-bridge", "")                           # no NIC
        _css(browser, "#create-step-confirm")[0].click()
        _css(browser, "#create-submit")[0].click()
        error = _wait(browser, lambda d: _css(d, "#error-memory"), "the memory error")[0]
        assert error.text, "the API's reason for the parameter"
        assert "has-error" in _css(browser, "#create-step-memory")[0].get_attribute("class")
        browser.save_screenshot(str(shots / "create-error.png"))
        _fill(browser, "#create-memory", "64")
        _css(browser, "#create-step-confirm")[0].click()
        assert f"{vmid}" in _css(browser, "#create-summary")[0].text
        _css(browser, "#create-submit")[0].click()

        def created(d) -> bool:
            # a refusal now would show as the wizard's message: say it, do not wait
            message = _css(d, "#create-message")
            assert not message, message[0].text
            return (i := _tree_item(d, f"#/vm/{vmid}")) is not None and "ui-wizard" in i.text
        try:
            _wait(browser, created, f"VM {vmid} in the tree", timeout=30)
        except AssertionError:
            browser.save_screenshot(str(shots / "create-failed.png"))
            raise
        _wait(browser, lambda d: d.execute_script("return location.hash") == f"#/vm/{vmid}",
              "the new VM's view")
        browser.save_screenshot(str(shots / "create-done.png"))
        config = api.get(f"{_base(cluster)}/api2/json/nodes/n1/qemu/{vmid}/config",
                         timeout=10).json()["data"]
        assert config["memory"] == 64 and config["name"] == "ui-wizard", config
        # the memory error is an expected 400 of the create request
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                  and not (e.get("source") == "network" and " 400 " in e["message"]
                           and "/nodes/n1/qemu" in e["message"])]
        assert errors == [], errors
    finally:
        r = api.delete(f"{_base(cluster)}/api2/json/nodes/n1/qemu/{vmid}", timeout=30)
        if r.status_code == 200:
            _task_ok(api, cluster, r.json()["data"])


def test_datacenter_pages(browser, cluster: Cluster, api: requests.Session, vm: int,
                          shots: Path) -> None:
    """The cluster log, the storage list, and HA: a VM added as a resource through the
    dialog, then removed (confirmed)."""
    from selenium.webdriver.support.ui import Select

    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    _go(browser, "#/dc")
    _css(browser, "#dc-tab-log")[0].click()
    _wait(browser, lambda d: len(_css(d, "#dc-log-table tbody tr")) > 0, "cluster log rows")
    _css(browser, "#dc-tab-storage")[0].click()
    _wait(browser, lambda d: _css(d, '#dc-storage-table tr[data-storage="local"]'),
          "the local storage listed")
    _storage_editing(browser, api, cluster, shots)
    _go(browser, "#/dc")
    _css(browser, "#dc-tab-ha")[0].click()
    _wait(browser, lambda d: _css(d, "#ha-status-list li[data-type=quorum]"), "HA status")
    _css(browser, "#ha-add")[0].click()
    dialog = _wait(browser, lambda d: _css(d, "dialog[open]"), "the add dialog")[0]
    Select(_css(browser, "#ha-add-vm")[0]).select_by_value(str(vm))
    Select(_css(browser, "#ha-add-state")[0]).select_by_value("stopped")
    dialog.find_element("css selector", "button[type=submit]").click()
    row = f'#ha-resource-table tr[data-sid="vm:{vm}"]'
    group = f"ui-grp-{vm}"
    grow = f'#ha-group-table tr[data-group="{group}"]'
    try:
        _wait(browser, lambda d: _css(d, row) and "stopped" in _css(d, row)[0].text,
              "the VM as an HA resource")
        browser.save_screenshot(str(shots / "dc-ha.png"))
        _ha_editing(browser, api, cluster, vm, row, group, grow, shots)
        _css(browser, f"{row} .ha-remove")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open]"), "the remove confirmation")[0] \
            .find_element("css selector", "button[type=submit]").click()
        _wait(browser, lambda d: not _css(d, row), "the HA resource removed")
        listed = api.get(f"{_base(cluster)}/api2/json/cluster/ha/resources",
                         timeout=10).json()["data"]
        assert f"vm:{vm}" not in [r["sid"] for r in listed]
        # unused now, the group goes (confirmed)
        _css(browser, f"{grow} .ha-group-delete")[0].click()
        _wait(browser, lambda d: _css(d, "dialog[open]"), "the delete confirmation")[0] \
            .find_element("css selector", "button[type=submit]").click()
        _wait(browser, lambda d: not _css(d, grow), "the HA group deleted")
        assert group not in [g["group"] for g in _ha(api, cluster, "groups")]
    finally:
        api.delete(f"{_base(cluster)}/api2/json/cluster/ha/resources/vm:{vm}", timeout=10)
        api.delete(f"{_base(cluster)}/api2/json/cluster/ha/groups/{group}", timeout=10)
    # the expected failures: the refused max_restart (a 400) and the refused delete of
    # the group in use (a 500, as PVE's), both answers of /cluster/ha/...
    # and the refused storage ID and nodes (400s of /storage)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network"
                       and ("/cluster/ha/" in e["message"] or "/storage" in e["message"])
                       and (" 400 " in e["message"] or " 500 " in e["message"]))]
    assert errors == [], errors


def _storage_editing(browser, api: requests.Session, cluster: Cluster, shots: Path) -> None:
    """Datacenter -> Storage: a dir storage added (a bad ID refused first, the error beside
    its field), edited (an unknown node refused beside its field; disabled, enabled
    again), its content on n1 opened: an ISO uploaded with its checksum (the progress,
    then the task), deleted (confirmed); the storage removed (confirmed)."""
    import hashlib
    import os
    import tempfile

    from selenium.webdriver.support.ui import Select

    sid = f"uist{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix="binome-ui-storage-"))
    row = f'#dc-storage-table tr[data-storage="{sid}"]'
    iso = root / "ui-upload.iso"
    iso.write_bytes(os.urandom(4 << 20))
    try:
        _css(browser, "#storage-add")[0].click()
        _fill(browser, "#storage-id", "Bad ID")
        _fill(browser, "#storage-path", str(root / "store"))
        _css(browser, "#storage-save")[0].click()
        _wait(browser, lambda d: _css(d, "#error-storage"), "the refused storage ID")
        _fill(browser, "#storage-id", sid)
        _css(browser, "#storage-save")[0].click()
        _wait(browser, lambda d: _css(d, row), "the new storage listed")
        definition = api.get(f"{_base(cluster)}/api2/json/storage/{sid}", timeout=10)
        assert definition.json()["data"]["path"] == str(root / "store")

        _css(browser, f"{row} button[data-action=edit]")[0].click()
        _wait(browser, lambda d: _css(d, "#storage-id[disabled]"), "the edit form")
        _fill(browser, "#storage-nodes", "nosuchnode")
        _css(browser, "#storage-save")[0].click()
        _wait(browser, lambda d: _css(d, "#error-nodes")
              and "no such cluster node" in _css(d, "#error-nodes")[0].text,
              "the unknown node refused beside its field")
        _fill(browser, "#storage-nodes", "")
        _css(browser, "#storage-disable")[0].click()
        _css(browser, "#storage-save")[0].click()
        _wait(browser, lambda d: not _css(d, "#storage-form"), "the form closed")
        data = api.get(f"{_base(cluster)}/api2/json/storage/{sid}", timeout=10).json()["data"]
        assert data.get("disable") == 1 and "nodes" not in data, data
        _css(browser, f"{row} button[data-action=edit]")[0].click()
        _wait(browser, lambda d: _css(d, "#storage-disable:checked"), "the edit form again")
        _css(browser, "#storage-disable")[0].click()
        _css(browser, "#storage-save")[0].click()
        _wait(browser, lambda d: not _css(d, "#storage-form"), "the form closed")

        _css(browser, f'{row} .storage-content-link[data-node="n1"]')[0].click()
        _wait(browser, lambda d: _css(d, f'#view-storage-content[data-storage="{sid}"]'),
              "the storage's content view")
        _css(browser, "#upload-file")[0].send_keys(str(iso))
        Select(_css(browser, "#upload-algorithm")[0]).select_by_value("sha256")
        _fill(browser, "#upload-checksum", hashlib.sha256(iso.read_bytes()).hexdigest())
        _css(browser, "#upload-start")[0].click()
        _wait(browser, lambda d: _css(d, "#task-viewer[data-state=ok]"), "the upload's task",
              timeout=30)
        assert "checksum verified" in _css(browser, "#task-viewer-log")[0].text
        volrow = f'#storage-content-table tr[data-volid="{sid}:iso/ui-upload.iso"]'
        _wait(browser, lambda d: _css(d, volrow), "the uploaded ISO listed")
        browser.save_screenshot(str(shots / "storage-content.png"))
        assert (root / "store" / "template" / "iso" / "ui-upload.iso").read_bytes() == \
            iso.read_bytes()
        _css(browser, f"{volrow} button[data-action=delete]")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, volrow), "the ISO deleted", timeout=20)

        _go(browser, "#/dc/storage")
        _wait(browser, lambda d: _css(d, row), "the storage list again")
        _css(browser, f"{row} button[data-action=remove]")[0].click()
        _submit(browser)
        _wait(browser, lambda d: not _css(d, row), "the storage removed")
    finally:
        api.delete(f"{_base(cluster)}/api2/json/storage/{sid}", timeout=10)
        shutil.rmtree(root, ignore_errors=True)


# the main pages, each with what shows it has loaded (axe checks the page as it is)
A11Y_PAGES = (("#/dc", "#dc-node-table tbody tr"), ("#/dc/log", "#dc-log-table tbody tr"),
              ("#/dc/tasks", "#dctasks-table tbody tr"),
              ("#/dc/ha", "#ha-status-list li"), ("#/dc/storage", "#dc-storage-table tr"),
              ("#/dc/volumes", "#view-dc-volumes"), ("#/dc/availability", ".view"),
              ("#/dc/backup", ".view"), ("#/dc/notifications", ".view"),
              ("#/dc/options", "#opt-current"),
              ("#/dc/acme", '#acme-plugin-table tr[data-plugin="standalone"]'),
              ("#/dc/mappings", "#map-dir-table"),
              ("#/node/n1", "#view-node"), ("#/node/n1/tasks", "#node-tasks tbody tr"),
              ("#/node/n1/syslog", "#syslog-lines"),
              ("#/node/n1/network", "#node-network-table tbody tr"),
              ("#/node/n1/system", '#node-services-table tr[data-service="binomed"]'),
              ("#/node/n1/certificates", '#cert-table tr[data-filename="node.pem"]'),
              ("#/node/n1/storage/local", "#view-storage-content"), ("#/vm/{vm}", "#vm-status"),
              ("#/vm/{vm}/hardware", ".view table"), ("#/vm/{vm}/options", ".view"),
              ("#/vm/{vm}/replication", "#vm-replication"), ("#/vm/{vm}/snapshots", ".view"),
              ("#/vm/{vm}/backup", ".view"), ("#/vm/{vm}/graphs", ".view"),
              ("#/vm/{vm}/cloudinit", ".view"), ("#/vm/{vm}/tasks", "#vm-tasks tbody tr"),
              ("#/create", ".wizard"), ("#/access/users", ".view"), ("#/access/acl", ".view"),
              ("#/access/groups", "#view-access-groups table"),
              ("#/access/roles", "#view-access-roles table"),
              ("#/access/tokens", "#view-access-tokens"),
              ("#/access/pools", "#view-access-pools table"),
              ("#/access/realms", "#view-access-realms table"),
              ("#/access/tfa", "#view-access-tfa"),
              ("#/search/ui", ".view"))


def test_accessibility(browser, cluster: Cluster, vm: int, shots: Path) -> None:
    """axe-core (the UI's devDependency, injected here) finds no serious or critical
    violation on the main pages, in the light theme and the dark one."""
    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    found: dict[str, list] = {}
    for theme in ("light", "dark"):
        if browser.execute_script("return document.documentElement.dataset.theme") != theme:
            _css(browser, "#theme-toggle")[0].click()
        for page, ready in A11Y_PAGES:
            if theme == "dark" and page not in ("#/dc", "#/vm/{vm}"):
                continue
            page = page.format(vm=vm)
            _go(browser, page)
            _wait(browser, lambda d, r=ready: _css(d, r) and "Loading…" not in
                  _css(d, "#content")[0].text, f"{page} loaded")
            if violations := chromium.axe_violations(browser):
                found[f"{theme} {page}"] = violations
    (shots / "axe-violations.json").write_text(json.dumps(found, indent=2))
    summary = {page: sorted({f"{v['id']}: {v['nodes'][:2]}" for v in vs})
               for page, vs in found.items()}
    assert found == {}, json.dumps(summary, indent=1)
    _assert_no_script_errors(browser)


def _ha(api: requests.Session, cluster: Cluster, what: str) -> list[dict]:
    return api.get(f"{_base(cluster)}/api2/json/cluster/ha/{what}", timeout=10).json()["data"]


def _submit(driver) -> None:
    _wait(driver, lambda d: _css(d, "dialog[open]"), "an open dialog")[0] \
        .find_element("css selector", "button[type=submit]").click()


def _ha_editing(browser, api: requests.Session, cluster: Cluster, vm: int, row: str,
                group: str, grow: str, shots: Path) -> None:
    """An HA group created and edited through its dialog (members, priorities,
    restricted, nofailback); the VM's resource edited (a refused max_restart first: the
    API's error beside the field), started under HA with a target of its own; the
    availability page charts it with the target line; the group's delete refused while
    the resource uses it."""
    from selenium.webdriver.support.ui import Select

    # the VM's node stays the group's preferred one: the HA manager has no reason to move it
    listed = api.get(f"{_base(cluster)}/api2/json/cluster/resources", timeout=10,
                     params={"type": "vm"}).json()["data"]
    here = next(e["node"] for e in listed if e.get("vmid") == vm)
    other = "n2" if here == "n1" else "n1"

    def members(prio: dict[str, int]) -> str:      # the API's form: sorted, no ":0"
        return ",".join(f"{n}:{prio[n]}" if prio.get(n) else n for n in ("n1", "n2"))

    _css(browser, "#ha-group-add")[0].click()
    _fill(browser, "#ha-group-name", group)
    for node in ("n1", "n2"):
        _css(browser, f"#ha-group-node-{node}")[0].click()
    _fill(browser, f"#ha-group-prio-{here}", "2")
    _css(browser, "#ha-group-restricted")[0].click()
    _submit(browser)
    nodes = members({here: 2})
    _wait(browser, lambda d: _css(d, grow) and nodes in _css(d, grow)[0].text,
          "the new group listed with its members")
    created = next(g for g in _ha(api, cluster, "groups") if g["group"] == group)
    assert (created["nodes"], created["restricted"], created["nofailback"]) == (nodes, 1, 0)

    _css(browser, f"{row} .ha-edit")[0].click()
    _fill(browser, "#ha-res-maxrestart", "11")
    _submit(browser)
    error = _wait(browser, lambda d: _css(d, "dialog[open] #error-max_restart"),
                  "the max_restart error beside its field")[0]
    assert error.text, "an empty error"
    assert _css(browser, "dialog[open]"), "a refused change keeps the dialog open"
    _fill(browser, "#ha-res-maxrestart", "3")
    _fill(browser, "#ha-res-maxrelocate", "2")
    Select(_css(browser, "#ha-res-group")[0]).select_by_value(group)
    Select(_css(browser, "#ha-res-state")[0]).select_by_value("started")
    _fill(browser, "#ha-res-target", "99.9")
    _submit(browser)
    _wait(browser, lambda d: not _css(d, "dialog[open]"), "the resource dialog closed")
    res = next(r for r in _ha(api, cluster, "resources") if r["sid"] == f"vm:{vm}")
    assert (res["state"], res.get("group"), res["max_restart"], res["max_relocate"],
            res.get("availability_target")) == ("started", group, 3, 2, 99.9), res
    _wait(browser, lambda d: group in _css(d, f"{row} .ha-group")[0].text, "the group listed")

    _css(browser, f"{grow} .ha-group-edit")[0].click()
    _fill(browser, f"#ha-group-prio-{other}", "1")
    _css(browser, "#ha-group-restricted")[0].click()          # off
    _css(browser, "#ha-group-nofailback")[0].click()          # on
    _submit(browser)
    nodes = members({here: 2, other: 1})
    _wait(browser, lambda d: nodes in _css(d, grow)[0].text, "the group's new priorities")
    edited = next(g for g in _ha(api, cluster, "groups") if g["group"] == group)
    assert (edited["nodes"], edited["restricted"], edited["nofailback"]) == (nodes, 0, 1)
    browser.save_screenshot(str(shots / "dc-ha-edited.png"))

    _css(browser, f"{grow} .ha-group-delete")[0].click()
    _submit(browser)
    _wait(browser, lambda d: _css(d, "dialog[open] #ha-dialog-message.error")
          and "used by" in _css(d, "dialog[open] #ha-dialog-message")[0].text,
          "the refusal: the group is in use")
    _css(browser, "dialog[open] button[type=button]")[0].click()       # cancel
    assert group in [g["group"] for g in _ha(api, cluster, "groups")]

    # Availability: the service, started by the HA manager, is charted with its target
    def reported() -> list:
        return api.get(f"{_base(cluster)}/api2/json/cluster/ha/availability", timeout=10,
                       params={"sid": f"vm:{vm}"}).json()["data"]
    wait_for(lambda: (r := reported()) and r[0]["availability"] is not None, 60,
             "an availability once the HA manager started the VM")
    _css(browser, "#dc-tab-availability")[0].click()
    arow = f'#avail-table tr[data-sid="vm:{vm}"]'
    _wait(browser, lambda d: _css(d, arow) and _css(d, f"{arow} .avail-percent")[0].text
          .endswith("%"), "the service's availability on the page", timeout=30)
    assert "99.9" in _css(browser, f"{arow} .avail-budget")[0].text
    chart = f'.avail-chart[data-sid="vm:{vm}"]'
    _wait(browser, lambda d: _css(d, f"{chart} canvas")
          and _css(d, chart)[0].get_attribute("data-target") == "99.9"
          and int(_css(d, chart)[0].get_attribute("data-points")) > 0,
          "the availability chart with the target line")
    legend = _css(browser, f"{chart} .u-legend")[0].text
    assert "target 99.9 %" in legend, legend
    report = reported()[0]
    shown = _css(browser, f"{arow} .avail-percent")[0].text
    assert shown == f"{report['availability']:.4f} %", (shown, report)
    browser.save_screenshot(str(shots / "dc-availability.png"))
    _css(browser, "#dc-tab-ha")[0].click()
    _wait(browser, lambda d: _css(d, row), "the HA page again")


MiB = 1 << 20
VOLUME = "uisb"


def _volumes(api: requests.Session, cluster: Cluster, node: str) -> dict:
    r = api.get(f"{_base(cluster)}/api2/json/nodes/{node}/volumes", timeout=10,
                params={"volume": VOLUME})
    return r.json()["data"][0] if r.status_code == 200 else {}


def _volume_task(api: requests.Session, cluster: Cluster, node: str, action: str,
                 **params) -> None:
    r = api.post(f"{_base(cluster)}/api2/json/nodes/{node}/volumes/{VOLUME}/{action}",
                 data=params, timeout=30)
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])


def _nbd_write(socket: str, offset: int, data: bytes) -> None:
    import asyncio

    from binome.lab.nbd_client import NbdClient

    async def write() -> None:
        c = await NbdClient.connect(socket, VOLUME)
        try:
            await c.write(offset, data)
            await c.flush()
        finally:
            await c.close()
    asyncio.run(write())


@pytest.fixture
def replicated_volume(api: requests.Session, cluster: Cluster) -> Iterator[str]:
    """An 8 MiB replicated volume between n1 (Primary) and n2, in sync; removed after,
    and the volume engines it started stopped by pid (they outlive binomed by design)."""
    from tests.integration.replica.test_daemon_volumes import in_sync, kill_engine

    r = api.post(f"{_base(cluster)}/api2/json/nodes/n1/volumes", timeout=30,
                 data={"volume": VOLUME, "size": "8M"})
    assert r.status_code == 200, r.text
    try:
        _task_ok(api, cluster, r.json()["data"])
        wait_for(lambda: in_sync(_volumes(api, cluster, "n1"))
                 and in_sync(_volumes(api, cluster, "n2")), 30, "the volume in sync")
        yield VOLUME
    finally:
        try:
            r = api.delete(f"{_base(cluster)}/api2/json/nodes/n1/volumes/{VOLUME}", timeout=30)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
        finally:
            for name in ("n1", "n2"):
                kill_engine(cluster[name])


def test_replicated_volume_split_brain_resolved(browser, cluster: Cluster,
                                                api: requests.Session,
                                                replicated_volume: str, shots: Path) -> None:
    """Datacenter → Replicated volumes shows the volume's two copies in sync; a real split
    brain (standalone mode, both nodes write while disconnected, as
    tests/integration/replica/test_daemon_volumes.py provokes it) turns the card into the
    guided resolution: the situation in words, what each copy holds, the choice of the
    survivor, a confirmation naming what is discarded; confirmed, the API's calls run
    (their tasks followed), n2 resyncs from n1 and holds n1's data."""
    import os

    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    card = f"#volume-{VOLUME}"
    _go(browser, "#/dc/volumes")
    _wait(browser, lambda d: _css(d, f"{card} .vol-sync[data-state=insync]"), "the volume in sync")
    for node, role in (("n1", "Primary"), ("n2", "Secondary")):
        copy = _css(browser, f'{card} .vol-copies tr[data-node="{node}"]')[0]
        assert (copy.get_attribute("data-role"), copy.get_attribute("data-disk"),
                copy.get_attribute("data-cstate")) == (role, "UpToDate", "Connected")
    assert _css(browser, f"{card} .vol-splitbrain")[0].get_attribute("data-state") == "none"
    browser.save_screenshot(str(shots / "dc-volumes.png"))

    # the split brain: standalone on both, disconnected, both write, reconnected
    for node in ("n1", "n2"):
        _volume_task(api, cluster, node, "standalone")
    for node in ("n1", "n2"):
        _volume_task(api, cluster, node, "disconnect")
    survivor = os.urandom(8192)
    _nbd_write(_volumes(api, cluster, "n1")["socket"], MiB, survivor)
    _volume_task(api, cluster, "n2", "primary", force=1)
    _nbd_write(_volumes(api, cluster, "n2")["socket"], MiB, os.urandom(4096))
    _nbd_write(_volumes(api, cluster, "n2")["socket"], 3 * MiB, os.urandom(4096))
    _volume_task(api, cluster, "n2", "secondary")
    for node in ("n1", "n2"):
        _volume_task(api, cluster, node, "connect")
    wait_for(lambda: all(_volumes(api, cluster, n).get("cstate") == "StandAlone"
                         for n in ("n1", "n2")), 30, "both StandAlone after the split brain")

    # the page explains it and offers the choice; nothing runs before the confirmation
    _wait(browser, lambda d: _css(d, f'{card}[data-splitbrain="detected"] #sb-explain'),
          "the split brain explained", timeout=20)
    text = _css(browser, f"{card} #sb-explain")[0].text
    assert "n1 and n2 both wrote" in text and "Nothing happens until you choose" in text, text
    written = {r.get_attribute("data-node"): r.find_element("css selector", ".sb-written").text
               for r in _css(browser, f"{card} .sb-copies tbody tr")}
    assert set(written) == {"n1", "n2"} and all("KiB" in w or "MiB" in w for w in written.values())
    assert _css(browser, "#sb-resolve")[0].get_attribute("disabled") is not None, \
        "no survivor chosen: nothing to confirm"
    browser.save_screenshot(str(shots / "dc-volumes-splitbrain.png"))
    _css(browser, "#sb-keep-n1")[0].click()
    _css(browser, "#sb-resolve")[0].click()
    dialog = _wait(browser, lambda d: _css(d, "dialog[open]"), "the confirmation")[0]
    confirm = dialog.find_element("css selector", "#sb-confirm-text").text
    assert "n1's copy of uisb is kept" in confirm and "written on n2" in confirm \
        and written["n2"] in confirm, confirm
    assert "--discard-my-data" in dialog.text
    # destructive: the focus starts on Cancel
    assert browser.switch_to.active_element.get_attribute("type") == "button"
    browser.save_screenshot(str(shots / "dc-volumes-confirm.png"))
    dialog.find_element("css selector", "button[type=submit]").click()
    _wait(browser, lambda d: _css(d, "#sb-run[data-state=ok], #sb-run[data-state=failed]"),
          "the resolution's tasks to end", timeout=60)
    run = _css(browser, "#sb-run")[0]
    assert run.get_attribute("data-state") == "ok", run.text
    steps = [li.text for li in run.find_elements("css selector", "li")]
    assert steps[0].startswith("n2: connect, discarding its own changes") \
        and steps[-1].startswith("n1: connect"), steps

    # resolved: n2 resynced from n1, the record names survivor and victim, n1's data won
    _wait(browser, lambda d: _css(d, f'{card} .vol-splitbrain[data-state="resolved"]')
          and _css(d, f"{card} .vol-sync[data-state=insync]"), "resolved and in sync again",
          timeout=60)
    record = _css(browser, f"{card} .vol-splitbrain")[0].text
    assert "n1 kept its data" in record and "made on n2 were discarded" in record, record
    resolved = _volumes(api, cluster, "n2")["split_brain"]
    assert (resolved["state"], resolved["policy"], resolved["survivor"],
            resolved["victim"]) == ("resolved", "discard-my-data", "n1", "n2"), resolved
    data = (cluster["n2"].state_dir / "replica" / "volumes" / VOLUME / "data.img").read_bytes()
    assert data[MiB:MiB + 8192] == survivor
    browser.save_screenshot(str(shots / "dc-volumes-resolved.png"))
    _css(browser, "#sb-close")[0].click()
    _wait(browser, lambda d: not _css(d, f"{card} .splitbrain"), "the resolution panel closed")
    # an online verify from the card: its task ends OK, the copies are equal
    _css(browser, f"{card} .vol-verify-start")[0].click()
    _wait(browser, lambda d: _css(d, f"{card} #task-viewer[data-state=ok]"), "the verify task",
          timeout=30)
    _wait(browser, lambda d: _css(d, f'{card} .vol-verify[data-found="0"]'),
          "the verify's result: no block differs", timeout=30)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


@pytest.fixture
def replicated_vm(api: requests.Session, cluster: Cluster) -> Iterator[int]:
    """A stopped VM on n1 whose 8 MiB disk is a replicated volume (storage `uirepl`,
    added here) between n1 and n2, in sync; the VM, its volume and the storage removed
    after, and the volume engines stopped by pid."""
    from tests.integration.replica.test_daemon_volumes import in_sync, kill_engine

    base = f"{_base(cluster)}/api2/json"
    r = api.post(f"{base}/storage", timeout=10,
                 data={"storage": "uirepl", "type": "replicated", "content": "images"})
    assert r.status_code == 200, r.text
    vmid = int(api.get(f"{base}/cluster/nextid", timeout=10).json()["data"])
    try:
        r = api.post(f"{base}/nodes/n1/qemu", timeout=30, data={
            "vmid": vmid, "name": "ui-repl", "memory": 64, "virtio0": "uirepl:0.0078125"})
        assert r.status_code == 200, r.text
        _task_ok(api, cluster, r.json()["data"])
        name = f"vm-{vmid}-disk-0"

        def state(node: str) -> dict:
            r = api.get(f"{base}/nodes/{node}/volumes", params={"volume": name}, timeout=10)
            return r.json()["data"][0] if r.status_code == 200 else {}
        wait_for(lambda: in_sync(state("n1")) and in_sync(state("n2")), 60,
                 f"{name} in sync")
        yield vmid
    finally:
        try:
            r = api.delete(f"{base}/nodes/n1/qemu/{vmid}", timeout=30)
            if r.status_code == 200:
                _task_ok(api, cluster, r.json()["data"])
            api.delete(f"{base}/storage/uirepl", timeout=10)
        finally:
            for name in ("n1", "n2"):
                kill_engine(cluster[name])


def test_vm_disk_replication_tab(browser, cluster: Cluster, api: requests.Session,
                                 replicated_vm: int, shots: Path) -> None:
    """A VM's Replication tab: its replicated disk's two copies (role, disk state,
    connection) live, following a disconnect and reconnect made through the API; the
    volume's settings as the API reports them, changed from the form (applied on both
    nodes), and a refused combination explained beside its field, nothing changed."""
    vm = replicated_vm
    name = f"vm-{vm}-disk-0"
    base = f"{_base(cluster)}/api2/json"
    if not _css(browser, ".tree"):       # run alone: log in first
        browser.get(_base(cluster) + "/")
        _login(browser, PASSWORD)
        _wait(browser, lambda d: _css(d, ".tree"), "the resource tree after login")
    card = "#repl-virtio0"
    _go(browser, f"#/vm/{vm}/replication")
    _wait(browser, lambda d: _css(d, f'{card}[data-volume="{name}"] .vol-sync[data-state=insync]'),
          "the disk's volume in sync on the tab")
    rows = {r.get_attribute("data-node"): (r.get_attribute("data-role"),
                                           r.get_attribute("data-disk"),
                                           r.get_attribute("data-cstate"))
            for r in _css(browser, f"{card} .vol-copies tbody tr")}
    assert rows == {"n1": ("Primary", "UpToDate", "Connected"),
                    "n2": ("Secondary", "UpToDate", "Connected")}, rows

    def config(node: str) -> dict:
        return api.get(f"{base}/nodes/{node}/volumes/{name}/config", timeout=10) \
            .json()["data"]["settings"]
    before = config("n1")
    field = f"#repl-{name}-resync-rate"
    _wait(browser, lambda d: _css(d, field), "the settings form")
    assert _css(browser, field)[0].get_attribute("value") == str(before["resync_rate"] // 1024)
    assert _css(browser, f"#repl-{name}-protocol")[0].get_attribute("value") == before["protocol"]
    browser.save_screenshot(str(shots / "vm-replication.png"))

    # live: n2 disconnected and connected again through the API, the tab follows
    r = api.post(f"{base}/nodes/n2/volumes/{name}/disconnect", timeout=30)
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])
    _wait(browser, lambda d: (row := _css(d, f'{card} .vol-copies tr[data-node="n2"]'))
          and row[0].get_attribute("data-cstate") == "StandAlone", "n2 StandAlone on the tab")
    r = api.post(f"{base}/nodes/n2/volumes/{name}/connect", timeout=30)
    assert r.status_code == 200, r.text
    _task_ok(api, cluster, r.json()["data"])
    _wait(browser, lambda d: _css(d, f"{card} .vol-sync[data-state=insync]"),
          "in sync again on the tab", timeout=30)

    # a change from the form, applied on both nodes
    from selenium.webdriver.support.ui import Select
    _fill(browser, field, "2048")
    Select(_css(browser, f"#repl-{name}-verify-alg")[0]).select_by_value("sha1")
    _css(browser, f"{card} .repl-save")[0].click()
    _wait(browser, lambda d: (m := _css(d, f"#repl-message-{name}")) and "Applied" in m[0].text,
          "the change applied")
    assert "resync-rate" in _css(browser, f"#repl-message-{name}")[0].text
    for node in ("n1", "n2"):
        after = wait_for(lambda n=node: (c := config(n))["verify_alg"] == "sha1" and c, 10,
                         f"verify-alg on {node}")
        if node == "n1":
            assert after["resync_rate"] == 2048 * 1024, after
    # refused: c-min-rate above c-max-rate, said beside the field, nothing changed
    _fill(browser, f"#repl-{name}-c-max-rate", "100")
    _fill(browser, f"#repl-{name}-c-min-rate", "200")
    _css(browser, f"{card} .repl-save")[0].click()
    error = _wait(browser, lambda d: _css(d, f'{card} [data-param="c-min-rate"] .field-error'),
                  "the c-min-rate error beside its field")[0]
    assert "must not exceed c-max-rate" in error.text, error.text
    assert config("n1")["c_max_rate"] == before["c_max_rate"]
    browser.save_screenshot(str(shots / "vm-replication-refused.png"))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
              and not (e.get("source") == "network" and f"/volumes/{name}" in e["message"]
                       and " 400 " in e["message"])]
    assert errors == [], errors


def test_second_factor_step(browser, cluster: Cluster, shots: Path) -> None:
    """A user with a second factor: the password step, then the TFA form (here with a
    recovery key: a TOTP code would need waiting for the next 30 s step)."""
    from binome.access import ops
    from binome.access.model import User
    from binome.access.secrets import hash_secret
    from tests.integration.access.test_tfa_login import PW, _repo, session_of

    userid = f"ui{uuid.uuid4().hex[:8]}@pve"
    _repo(cluster, lambda r: r.change("test", "add user", lambda c: ops.add_user(
        c, User(userid, password_hash=hash_secret(PW)))))
    try:
        s = session_of(cluster, userid)
        r = s.post(f"{_base(cluster)}/api2/json/access/tfa/{userid}",
                   data={"type": "recovery", "password": PW}, timeout=20)
        assert r.status_code == 200, r.text
        keys = r.json()["data"]["recovery"]
        _css(browser, "#logout")[0].click()
        _login(browser, PW, username=userid.split("@")[0])
        code = _wait(browser, lambda d: _css(d, "#login-tfa-code"), "the TFA form")[0]
        _css(browser, "input[type=checkbox]")[0].click()
        code.send_keys(keys[0] + "x")          # a wrong key first: a clear refusal
        code.submit()
        error = _wait(browser, lambda d: _css(d, "#login-error"), "the TFA error")[0]
        assert "second factor was not accepted" in error.text, error.text
        browser.save_screenshot(str(shots / "login-tfa.png"))
        _css(browser, "#login-tfa-code")[0].send_keys(keys[0])
        _css(browser, "#login-tfa-code")[0].submit()
        _wait(browser, lambda d: _css(d, "#shell-user") and userid in
              _css(d, "#shell-user")[0].text, "logged in after the second factor")
        _css(browser, "#logout")[0].click()
        _wait(browser, lambda d: _css(d, "#login-username"), "the login form again")
        _assert_no_script_errors(browser)
    finally:
        _repo(cluster, lambda r: r.change("test", "delete user",
                                          lambda c: ops.delete_user(c, userid)))
