"""Shared test configuration: tier markers are applied by directory."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "sim", "integration", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts and not item.get_closest_marker(tier):
                item.add_marker(getattr(pytest.mark, tier))
