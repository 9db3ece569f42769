"""A preallocated mono int16 ring for one writer and one reader (sans-IO).

The bridge's FIFOs sit between two clocks: in the real codec the writer is
the bridge's pump and the reader an audio callback (or the other way round
for the taps). Each side moves only its own counter, after copying, and a
Python int assignment is atomic, so neither side takes a lock and the
reader's copy allocates nothing. A reader may see slightly fewer frames
than were just written, never a half-written frame.
"""

from __future__ import annotations

import numpy as np


class SampleRing:
    """``capacity`` mono int16 samples; :meth:`write` from one side, :meth:`read_into` from the other."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a sample ring needs a positive capacity, not {capacity}")
        self.capacity = capacity
        self._data = np.zeros(capacity, dtype=np.int16)
        self._written = 0  # total samples written; the writer alone moves it
        self._read = 0  # total samples read or skipped; the reader alone moves it (and discard())

    @property
    def level(self) -> int:
        """Samples written and not yet read."""
        return self._written - self._read

    def room(self) -> int:
        return self.capacity - self.level

    def write(self, samples: np.ndarray) -> int:
        """Append as many of ``samples`` as fit; returns how many were stored."""
        count = min(len(samples), self.room())
        start = self._written % self.capacity
        first = min(count, self.capacity - start)
        self._data[start:start + first] = samples[:first]
        self._data[:count - first] = samples[first:count]
        self._written += count
        return count

    def write_silence(self, count: int) -> int:
        """Append up to ``count`` zeros; returns how many were stored."""
        count = min(count, self.room())
        start = self._written % self.capacity
        first = min(count, self.capacity - start)
        self._data[start:start + first] = 0
        self._data[:count - first] = 0
        self._written += count
        return count

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` from the ring, zeros after what it held; returns the samples taken. No allocation."""
        count = min(len(out), self.level)
        start = self._read % self.capacity
        first = min(count, self.capacity - start)
        out[:first] = self._data[start:start + first]
        out[first:count] = self._data[:count - first]
        out[count:] = 0
        self._read += count
        return count

    def read(self, count: int) -> np.ndarray:
        """Take up to ``count`` samples as a new array (the pump's side, which may allocate)."""
        out = np.empty(min(count, self.level), dtype=np.int16)
        self.read_into(out)
        return out

    def discard(self, count: int) -> int:
        """Drop up to ``count`` of the oldest samples (reader's side); returns how many."""
        count = min(count, self.level)
        self._read += count
        return count
