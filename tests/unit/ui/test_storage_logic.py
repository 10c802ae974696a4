"""The web UI's storage pages' pure logic, run by Node.js as the browser runs it: the
parameters the add/edit form sends (only what changed, `delete` for emptied options, the
digest read; type and path never), the upload's field order and progress, and which
volumes the content view offers to delete, a binome-backup storage's options and key choice,
the prune dialog's `prune-backups` and which storages offer prune, verify and GC."""

from __future__ import annotations

from pathlib import Path

from tests.unit.ui.node_checks import ROOT, needs_node, run_checks

SOURCE = ROOT / "ui" / "src" / "views" / "storage" / "storage.ts"
CHECKS = Path(__file__).with_name("storage_logic_checks.mjs")


@needs_node
def test_storage_form_parameters_upload_fields_and_delete_rules(tmp_path: Path) -> None:
    run_checks([SOURCE], CHECKS, tmp_path)
