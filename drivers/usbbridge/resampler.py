"""Band-limited fractional resampling whose ratio may change between calls (sans-IO, numpy).

:class:`FractionalResampler` converts a mono int16 stream from ``in_rate`` to
``out_rate`` by evaluating a Kaiser-windowed sinc at each output instant, from
a polyphase table of kernels: the ``den`` exact phases of a fixed ratio
``num / den``, or ``PHASES`` phases per input sample (the nearest is taken,
a timing error under 1/8192 sample, below -74 dB at the top of the band) for
a ratio steered at any moment. Two uses:

- **fixed** (the headset rate to the recording rate, prompts to the headset
  rate): output ``j`` sits at input position ``j * in_rate / out_rate``
  computed in integers, so the output does not depend on how the input was cut
  into blocks (the tap tests rely on that);
- **adaptive** (one USB clock to the other): :meth:`set_correction` changes the
  step by a relative amount (``+1e-4`` takes 100 ppm more input per output, so
  fewer outputs come out); positions accumulate in float64 relative to the
  kept history, so nothing drifts over hours.

Why not soxr: its streaming resampler has a fixed ratio, so changing its ratio means
re-creating it, which restarts its filter state and clicks unless the history
is replayed; this one keeps one state and takes a new step at any call.

The cut-off is ``ROLLOFF`` of the lower Nyquist frequency, so down-sampling is
anti-aliased (48 kHz to 8 kHz keeps 0..3.7 kHz). Delay: ``delay_in`` input
samples (the kernel's half width), 0.33 ms at 48 kHz with the defaults.
Measured (tests/drivers/test_usbbridge_resampler.py): a tone comes out within
about 84 dB of the ideal one at every supported rate pair, as good as int16
allows. Every call allocates; it runs on the bridge's pump, never in an audio
callback.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

ZERO_CROSSINGS = 16  # kernel half width in zero crossings of the sinc (quality vs. CPU)
PHASES = 4096  # kernel phases per input sample for a steered ratio (nearest one is used)
ROLLOFF = 0.92  # cut-off as a share of the lower Nyquist frequency
KAISER_BETA = 8.6  # about 90 dB stop band with 16 zero crossings
GROUPED_PHASES = 8  # a fixed ratio with at most this many phases takes the strided path


def kernels(cutoff: float, fractions: np.ndarray, zero_crossings: int = ZERO_CROSSINGS) -> np.ndarray:
    """``(len(fractions), taps)`` float32 kernels: row ``r`` weighs the taps for an output at ``i + fractions[r]``.

    ``cutoff`` is a share of the input's Nyquist frequency. Tap ``m`` multiplies
    input ``i - taps/2 + 1 + m``. Each row sums to one (unit DC gain at every
    phase), so a change of phase never steps the level.
    """
    half = math.ceil(zero_crossings / cutoff)
    offsets = np.arange(-half + 1, half + 1, dtype=np.float64)
    x = offsets[None, :] - fractions[:, None]  # distance from the output instant, in input samples
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (x / half) ** 2, 0, 1))) / np.i0(KAISER_BETA)
    table = cutoff * np.sinc(cutoff * x) * window
    table /= table.sum(axis=1, keepdims=True)
    return table.astype(np.float32)


@lru_cache(maxsize=8)
def phase_table(cutoff: float) -> np.ndarray:
    """Kernels at ``PHASES`` evenly spaced fractions, for a steered ratio (read-only, shared)."""
    table = kernels(cutoff, np.arange(PHASES + 1) / PHASES)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=16)
def ratio_table(cutoff: float, num: int, den: int) -> np.ndarray:
    """The ``den`` exact kernels of the fixed step ``num / den`` (row ``k`` for fraction ``k / den``)."""
    table = kernels(cutoff, np.arange(den) / den)
    table.setflags(write=False)
    return table


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


class FractionalResampler:
    """Mono int16 from ``in_rate`` to ``out_rate``; fixed, or steered by :meth:`set_correction`.

    ``process(x)`` returns every output whose kernel lies within the input given
    so far; the rest comes with later input. Output ``j`` is the input stream's
    value at time ``j * step`` input samples, so output lags input by
    :attr:`delay_in` input samples (the kernel's half width).
    """

    def __init__(self, in_rate: int, out_rate: int, *, adaptive: bool = False) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"resampler rates must be positive, not {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate, self.adaptive = in_rate, out_rate, adaptive
        cutoff = ROLLOFF * min(1.0, out_rate / in_rate)
        gcd = math.gcd(in_rate, out_rate)
        self._num, self._den = in_rate // gcd, out_rate // gcd  # fixed step = num / den input samples
        self._table = phase_table(cutoff) if adaptive else ratio_table(cutoff, self._num, self._den)
        self.taps = self._table.shape[1]
        self._lead = self.taps // 2 - 1  # taps before an output's integer position
        self.delay_in = self.taps // 2  # input samples needed after an output's position
        self.nominal_step = in_rate / out_rate
        self.correction = 0.0
        # Input history; _buffer[0] is absolute input index _consumed - _lead (zeros before the start).
        self._buffer = np.zeros(self._lead, dtype=np.float32)
        self._consumed = 0
        self._outputs = 0  # outputs made so far (the fixed path's positions are exact from it)
        self._position = float(self._lead)  # adaptive: the next output's position in _buffer
        self._next_position = self._position

    def set_correction(self, relative: float) -> None:
        """Take ``(1 + relative)`` times the nominal input per output from now on (adaptive only)."""
        if not self.adaptive:
            raise ValueError("set_correction() on a fixed-ratio resampler; make it with adaptive=True")
        self.correction = float(relative)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed mono int16 input; returns the int16 outputs it completes."""
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, dtype=np.float32)])
        integer, rows = self._positions()
        if not len(integer):
            return np.zeros(0, dtype=np.int16)
        if not self.adaptive and self._den <= GROUPED_PHASES:
            out = self._grouped(integer, rows)
        else:
            buffer = self._buffer
            # Every window of taps samples as a view (as sliding_window_view makes, without its checks).
            view = as_strided(buffer, (len(buffer) - self.taps + 1, self.taps), buffer.strides * 2,
                              writeable=False)
            out = np.einsum("ij,ij->i", view[integer - self._lead], self._table[rows])
        self._drop_consumed(len(integer))
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _grouped(self, integer: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """A fixed ratio with few phases: each phase's outputs read windows ``num`` apart, one kernel.

        The windows are a strided view of the buffer, so nothing is gathered (48 to 16 kHz: one
        phase, every third window); the same sums as the general path, several times faster.
        """
        out = np.empty(len(integer), dtype=np.float32)
        item = self._buffer.strides[0]
        for first in range(min(self._den, len(integer))):
            starts = integer[first::self._den] - self._lead
            windows = as_strided(self._buffer[starts[0]:], (len(starts), self.taps), (self._num * item, item),
                                 writeable=False)
            # einsum, not BLAS: its sums do not depend on how many rows there are, so the output
            # does not depend on how the input was cut into blocks.
            out[first::self._den] = np.einsum("ij,j->i", windows, self._table[rows[first]])
        return out

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Buffer index and kernel row of every output the buffer now completes."""
        last = len(self._buffer) - 1 - self.delay_in  # the furthest position whose taps are all here
        if self.adaptive:
            step = self.nominal_step * (1.0 + self.correction)
            count = max(0, math.floor((last + 1 - self._position) / step) + 1)
            positions = self._position + step * np.arange(count)
            positions = positions[positions < last + 1]
            self._next_position = self._position + step * len(positions)
            integer = np.floor(positions).astype(np.intp)
            return integer, np.rint((positions - integer) * PHASES).astype(np.intp)
        # Fixed: output j sits at absolute input position j * num / den, exactly.
        first = self._consumed - self._lead  # absolute input index of _buffer[0]
        end = ((last + first + 1) * self._den - 1) // self._num + 1  # floor(j num / den) <= last
        numerators = np.arange(self._outputs, max(self._outputs, end), dtype=np.int64) * self._num
        return (numerators // self._den - first).astype(np.intp), (numerators % self._den).astype(np.intp)

    def _drop_consumed(self, made: int) -> None:
        """Forget input no later output needs; ``made`` outputs were just produced."""
        self._outputs += made
        if self.adaptive:
            next_integer = math.floor(self._next_position)
        else:
            next_integer = (self._outputs * self._num) // self._den - (self._consumed - self._lead)
        keep_from = max(0, next_integer - self._lead)
        if self.adaptive:
            self._position = self._next_position - keep_from
        self._buffer = self._buffer[keep_from:]
        self._consumed += keep_from
