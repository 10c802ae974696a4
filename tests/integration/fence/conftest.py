"""Fixtures for the fence integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.fence.helpers import FakeAgent, install_fake_agent


@pytest.fixture
def fake_agent(tmp_path: Path) -> FakeAgent:
    """The fake ``fence_fake`` agent installed in ``tmp_path/bin``."""
    return install_fake_agent(tmp_path)
