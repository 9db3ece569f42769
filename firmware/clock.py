"""Time, injected.

Everything that needs time takes a :class:`Clock`. The firmware uses
:class:`SystemClock`; tests and the as-fast-as-possible simulation use
:class:`ManualClock`, whose ``sleep`` advances time instead of waiting, so no
test depends on the machine's speed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """The time source every time-dependent part of linetap is given."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals)."""

    def wall(self) -> float:
        """Seconds since the Unix epoch, as the system believes (for timestamps)."""

    def synced(self) -> bool:
        """True when the wall clock is known to be synchronised (NTP, RTC)."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass on this clock."""


@functools.cache
def _adjtimex() -> Callable[[], int] | None:
    """libc's adjtimex, looked up once (finding libc can run ldconfig: milliseconds)."""
    import ctypes
    import ctypes.util

    class Timex(ctypes.Structure):
        _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 204)]  # struct timex, 208 bytes

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.adjtimex
    except (OSError, AttributeError):
        return None
    return lambda: call(ctypes.byref(Timex()))


def _kernel_clock_synced() -> bool:
    """Ask the kernel whether NTP discipline is active (adjtimex's STA_UNSYNC bit).

    A Pi has no battery-backed clock, so until this is true its wall time may be
    1970 or a stale value saved at shutdown.
    """
    adjtimex = _adjtimex()
    if adjtimex is None:
        return False
    TIME_ERROR = 5  # returned while the clock is not synchronised
    return adjtimex() not in (-1, TIME_ERROR)


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def synced(self) -> bool:
        return _kernel_clock_synced()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock that moves only when told to: by :meth:`advance` or :meth:`sleep`.

    Thread-safe. ``sleep`` returns at once after advancing the clock, so code
    paced by this clock runs as fast as the machine allows while seeing the
    time it would have seen in real life.
    """

    def __init__(self, start: float = 1_000.0, wall_offset: float = 1_767_225_600.0,
                 synced: bool = True) -> None:
        self._now = start
        self._wall_offset = wall_offset  # 2026-01-01T00:00:00Z at monotonic 0
        self._synced = synced
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def wall(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def synced(self) -> bool:
        return self._synced

    def set_synced(self, synced: bool) -> None:
        self._synced = synced

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back (asked to advance by {seconds})")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
