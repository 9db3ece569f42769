"""The injected clocks."""

from __future__ import annotations

import pytest

from linetap.firmware.clock import ManualClock, SystemClock, _kernel_clock_synced


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(start=10.0, wall_offset=100.0)
    assert clock.monotonic() == 10.0 and clock.wall() == 110.0
    clock.sleep(2.5)
    clock.advance(0.5)
    assert clock.monotonic() == 13.0
    clock.sleep(-1)  # a deadline already passed: no wait
    assert clock.monotonic() == 13.0
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


def test_manual_clock_sync_state_is_settable() -> None:
    clock = ManualClock(synced=False)
    assert not clock.synced()
    clock.set_synced(True)
    assert clock.synced()


def test_system_clock_asks_the_kernel() -> None:
    clock = SystemClock()
    assert clock.synced() is _kernel_clock_synced()
    assert isinstance(clock.synced(), bool)
    assert clock.monotonic() <= clock.monotonic()
