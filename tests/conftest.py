"""Fixtures shared by every test package."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from linetap.firmware.clock import ManualClock


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--central-backend", choices=("embedded", "pg-s3", "both"), default="both",
                     help="which backends the central store's tests run on (tests/sync/central/conftest.py): "
                          "embedded (SQLite + files), pg-s3 (PostgreSQL + SeaweedFS) or both (the default)")


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the code under test sleeps on it or a test advances it."""
    return ManualClock()


@pytest.fixture(autouse=True)
def _linetap_log_level() -> Iterator[None]:
    """A test that applies a config's [log] level (the fleet pushes one) must not silence later tests."""
    logger = logging.getLogger("linetap")
    level = logger.level
    yield
    logger.setLevel(level)
