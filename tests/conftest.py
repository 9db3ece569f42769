"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from linetap.firmware.clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the code under test sleeps on it or a test advances it."""
    return ManualClock()
