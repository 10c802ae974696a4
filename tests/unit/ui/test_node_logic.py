"""The web UI's pure logic of a node's Network and System tabs and bulk actions, run by
Node.js as the browser runs it: interface rows in PVE's order, what holds them together,
the parameters of startall/stopall/migrateall checked before anything is sent (as the
server checks them), PVE's `localtime` shown as a wall clock; and the Syslog tab's: PVE's
start/limit paging, since/until checked as the API's pattern, the journal's cursors for
the live follow, the search filter."""

from __future__ import annotations

from pathlib import Path

from tests.unit.ui.node_checks import ROOT, needs_node, run_checks

SOURCE = ROOT / "ui" / "src" / "views" / "node" / "network.ts"
CHECKS = Path(__file__).with_name("node_logic_checks.mjs")


@needs_node
def test_network_rows_bulk_parameters_and_clock(tmp_path: Path) -> None:
    run_checks([SOURCE], CHECKS, tmp_path)


@needs_node
def test_syslog_paging_dates_follow_and_filter(tmp_path: Path) -> None:
    run_checks([SOURCE.with_name("syslog.ts")], CHECKS.with_name("syslog_checks.mjs"), tmp_path)
