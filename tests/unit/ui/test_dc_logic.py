"""The web UI's pure logic of the datacenter pages, run by Node.js as the browser runs it
(TypeScript compiled by the UI's own tsc): the replicated volumes merged from every
node's list, the split-brain resolution plan (which calls, on which node, and when it
must be refused: a copy a guest has open, a node that does not answer), and the
availability report cut into a time series for the charts; a VM's disks found in its
configuration and a volume's settings converted between the engine's units and the
API's for the VM's Replication tab; the summary's active alerts and volume health. The
TypeScript is bundled by
the UI's own bundler (rolldown, Vite's; `make ui` type-checks it with tsc)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.ui.node_checks import ROOT, needs_node, run_checks

DC = ROOT / "ui" / "src" / "views" / "dc"
SOURCES = [DC / "volumes.ts", DC / "availability.ts",
           ROOT / "ui" / "src" / "views" / "vm" / "replication.ts"]
CHECKS = Path(__file__).with_name("dc_logic_checks.mjs")


@needs_node
def test_volume_merge_split_brain_plan_and_availability_series(tmp_path: Path) -> None:
    run_checks(SOURCES, CHECKS, tmp_path)


@needs_node
def test_active_alerts_and_volume_health(tmp_path: Path) -> None:
    run_checks([DC / "alerts.ts"], CHECKS.with_name("alerts_checks.mjs"), tmp_path)


@needs_node
def test_task_filters_and_cluster_merge(tmp_path: Path) -> None:
    """Datacenter → Tasks: the filters as PVE's /nodes/{node}/tasks names them, a bad
    VM ID or date refused before sending, and one page of every node's tasks merged."""
    run_checks([DC / "tasks.ts"], CHECKS.with_name("tasks_checks.mjs"), tmp_path)
