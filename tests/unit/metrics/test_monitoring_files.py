"""The monitoring files agree with the metric table (`binome.metrics.families.METRICS`):
docs/metrics.md documents every metric with its type and labels and names no other;
the alerting rules pass `promtool check rules` and their `promtool test rules` cases;
the Grafana dashboard is valid JSON whose queries parse (promtool) and use only
documented metrics. promtool comes with Debian's `prometheus` (tools/setup-debian.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from binome.metrics.families import METRICS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "metrics.md"
ALERTS = ROOT / "docs" / "monitoring" / "binome-alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts-test.yml")
DASHBOARD = ROOT / "docs" / "monitoring" / "binome-dashboard.json"
# a metric name (a family written as `binome_guest_*` ends in "_" here and is skipped)
NAME = re.compile(r"\bbinome_[a-z0-9_]*[a-z0-9]\b(?!\*)")
# the series a histogram or summary exposes besides its name
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exposed_names() -> set[str]:
    names = set()
    for spec in METRICS.values():
        names.add(spec.name)
        names.update(spec.name + s for s in SUFFIXES.get(spec.kind, ()))
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (make setup installs prometheus)")
    return path


def test_metric_names_follow_prometheus_conventions() -> None:
    units = ("_bytes", "_seconds", "_ratio", "_total", "_bytes_per_second")
    for name, spec in METRICS.items():
        assert re.fullmatch(r"binome_[a-z0-9_]+", name), name
        assert spec.kind in ("gauge", "counter", "summary", "histogram"), name
        assert name.endswith("_total") == (spec.kind == "counter"), name
        if spec.kind in ("summary", "histogram"):
            assert name.endswith("_seconds"), name
        if any(w in name for w in ("bytes", "seconds")):
            assert name.endswith(units), name
        assert spec.help.strip() and all(re.fullmatch(r"[a-z_]+", lb) for lb in spec.labels)


def test_the_reference_documents_every_metric_and_no_other() -> None:
    text = DOC.read_text()
    for spec in METRICS.values():
        labels = ", ".join(f"`{lb}`" for lb in spec.labels) or "-"
        row = f"| `{spec.name}` | {spec.kind} | {labels} |"
        assert row in text, f"docs/metrics.md lacks the row: {row}"
    unknown = set(NAME.findall(text)) - exposed_names()
    assert not unknown, f"docs/metrics.md names metrics that do not exist: {unknown}"


def test_alerting_rules_check_and_their_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unknown = set(NAME.findall(ALERTS.read_text())) - exposed_names()
    assert not unknown, f"the alerting rules use undocumented metrics: {unknown}"
    run = subprocess.run([tool, "test", "rules", str(ALERT_TESTS)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    out = []
    for panel in dash["panels"]:
        out.extend(t["expr"] for t in panel.get("targets", ()))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["definition"])
    return out


def test_the_dashboard_is_json_with_valid_queries_on_documented_metrics(tmp_path: Path
                                                                        ) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    queries = dashboard_queries(dash)
    assert len(queries) > 20
    used: set[str] = set()
    for q in queries:
        used.update(NAME.findall(q))
    unknown = used - exposed_names()
    assert not unknown, f"the dashboard queries undocumented metrics: {unknown}"
    # every PromQL expression must parse: checked by promtool as recording rules
    # (Grafana's variables replaced by values; label_values() is Grafana's, not PromQL)
    exprs = [q.replace("$__rate_interval", "5m").replace("$instance", ".*")
             for q in queries if not q.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))     # JSON is YAML
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
