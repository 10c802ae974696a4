"""Debian's chromium driven by Selenium, for the browser tests and for the HA tests that
watch a failover in the web UI: the flags (headless, as root in a closed network), the
driver's start and stop, the login form, and a watcher that stamps when the resource
tree shows a change (the page's own clock, no reload)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.integration.harness import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# as root in a closed network: no sandbox, and none of Chromium's own connections
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1366,768")


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@contextlib.contextmanager
def chromium(profile: Path | None = None, extra_flags: tuple[str, ...] = ()) -> Iterator[Any]:
    """A headless chromium with its browser console log kept (and `extra_flags`); quit
    (and its profile removed) after, even on failure."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    own = profile is None
    profile = Path(tempfile.mkdtemp(prefix="chromium-")) if profile is None else profile
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, *extra_flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(30)
            yield driver
        finally:
            driver.quit()
    finally:
        if own:
            shutil.rmtree(profile, ignore_errors=True)


def css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def login(driver, url: str, username: str, password: str, realm: str = "pve") -> None:
    """Open `url`, log in through the form, wait for the resource tree."""
    from selenium.webdriver.support.ui import Select

    driver.get(url)
    wait_for(lambda: css(driver, f"#login-realm option[value={realm}]"), 20, "the realm list",
             interval=0.1)
    css(driver, "#login-username")[0].send_keys(username)
    css(driver, "#login-password")[0].send_keys(password)
    Select(css(driver, "#login-realm")[0]).select_by_value(realm)
    css(driver, "#login-submit")[0].click()
    wait_for(lambda: css(driver, ".tree [role=treeitem]"), 20, "the resource tree", interval=0.1)


# Every 50 ms: the first moment (Date.now(), ms) the node's tree item is not online, the
# VM's item sits under `to` (the nearest node item above it), and it is running there.
_WATCH = """
const [node, vmid, to] = arguments;
window.__noReload = 1;
window.__seen = {};
const seen = window.__seen;
window.setInterval(() => {
  const items = [...document.querySelectorAll('.tree [role=treeitem]')];
  const n = items.find((i) => i.dataset.key === '#/node/' + node);
  if (n && n.dataset.status !== 'online' && !seen.offline) {
    seen.offline = Date.now(); seen.status = n.dataset.status;
  }
  const at = items.findIndex((i) => i.dataset.key === '#/vm/' + vmid);
  if (at < 0) return;
  const parent = items.slice(0, at).reverse().find((i) => i.getAttribute('aria-level') === '2');
  if (parent && parent.dataset.key === '#/node/' + to) {
    if (!seen.moved) seen.moved = Date.now();
    if (items[at].dataset.status === 'running' && !seen.running) seen.running = Date.now();
  }
}, 50);
"""


def watch_failover(driver, node: str, vmid: int, to: str) -> None:
    """Start stamping, in the page, when `node` leaves online and VM `vmid` shows
    (then runs) under `to`; read them with `seen`."""
    driver.execute_script(_WATCH, node, vmid, to)


def seen(driver) -> dict[str, Any]:
    """The watcher's stamps (seconds since the epoch), and whether the page was never
    reloaded since the watch began."""
    raw = driver.execute_script("return [window.__seen || null, window.__noReload || 0]")
    stamps = {k: (v / 1000 if isinstance(v, (int, float)) else v)
              for k, v in (raw[0] or {}).items()}
    return {**stamps, "reloaded": raw[0] is None or raw[1] != 1}


# axe-core from the UI's npm devDependencies: injected by the test, never in the bundle
AXE = Path(__file__).resolve().parents[3] / "ui" / "node_modules" / "axe-core" / "axe.min.js"

_AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(
  (r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + (n.failureSummary || ''))}))),
  (e) => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));
"""


def axe_violations(driver, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict]:
    """axe-core's violations of the page as it is now, of the given impacts."""
    assert AXE.is_file(), f"{AXE} is missing: run `make ui` (axe-core is a devDependency)"
    if not driver.execute_script("return !!window.axe"):
        driver.execute_script(AXE.read_text())
    driver.set_script_timeout(60)
    found = driver.execute_async_script(_AXE_RUN)
    return [v for v in found if v["impact"] in impacts]
