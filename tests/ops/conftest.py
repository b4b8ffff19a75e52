"""Fixtures and markers for tests/ops (helpers live in opshelpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opshelpers import Server, run_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: starts real server processes (and Prometheus, Locust)")


@pytest.fixture
def millionws_server(tmp_path: Path) -> Iterator[Server]:
    """A real millionws with 2 workers on a free loopback port."""
    with run_server(tmp_path, workers=2) as server:
        yield server
