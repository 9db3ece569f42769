"""Integer-factor sample-rate conversion for codecs that run only at 48 kHz.

Many USB and I2S codecs are clocked for 48 kHz while the pipeline runs at 8 or
16 kHz. :class:`Decimator` brings capture down by an integer factor and
:class:`Interpolator` brings prompts up; both are streaming polyphase FIR
filters in numpy that keep their state between calls, so a stream cut into
blocks anywhere converts exactly as it would in one piece.

Both filters are linear phase: the decimator delays its output by
``Decimator.delay`` output frames, the interpolator by ``Interpolator.delay``
input frames (1.5 ms at the default length). They run on the consumer or
caller thread, never in an audio callback: every call allocates.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Kaiser beta for about 80 dB of stop-band attenuation (Kaiser's formula 0.1102 * (A - 8.7)).
_KAISER_BETA = 7.86
# Filter half-length in low-rate samples: the longer, the sharper the cut-off at
# the low rate's Nyquist frequency (24 keeps 0..7 kHz of a 16 kHz pipeline).
DEFAULT_HALF_TAPS = 24


def lowpass_taps(factor: int, half_taps: int = DEFAULT_HALF_TAPS) -> np.ndarray:
    """A Kaiser-windowed sinc low-pass at the low rate's Nyquist frequency, unit DC gain.

    ``2 * factor * half_taps + 1`` taps at the high rate, so its delay is a whole
    number (``half_taps``) of low-rate samples.
    """
    if factor < 2:
        raise ValueError(f"a resampling factor must be 2 or more, not {factor}")
    length = 2 * factor * half_taps + 1
    centre = (length - 1) / 2
    cutoff = 0.5 / factor  # cycles per high-rate sample
    taps = 2 * cutoff * np.sinc(2 * cutoff * (np.arange(length) - centre))
    taps *= np.kaiser(length, _KAISER_BETA)
    return taps / taps.sum()


def _to_int16(samples: np.ndarray) -> np.ndarray:
    # Filter overshoot on full-scale input must clip, not wrap around.
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


def _as_frames(samples: np.ndarray, channels: int) -> np.ndarray:
    frames = samples.reshape(-1, 1) if samples.ndim == 1 else samples
    if frames.ndim != 2 or frames.shape[1] != channels:
        raise ValueError(f"expected {channels} channel(s), got an array of shape {samples.shape}")
    return frames


class Decimator:
    """Low-pass and keep every ``factor``-th frame, across calls.

    ``process`` takes int16 frames of shape ``(n, channels)`` (or ``(n,)`` for
    one channel) of any length and returns the int16 frames now complete at the
    low rate, in the same layout. Only the kept outputs are computed.
    """

    def __init__(self, factor: int, channels: int = 2, half_taps: int = DEFAULT_HALF_TAPS) -> None:
        self.factor = factor
        self.channels = channels
        self.delay = half_taps
        self._taps_newest_first = lowpass_taps(factor, half_taps)[::-1].copy()
        self._pending = np.zeros((len(self._taps_newest_first) - 1, channels))

    def process(self, samples: np.ndarray) -> np.ndarray:
        frames = _as_frames(samples, self.channels)
        buffer = np.concatenate([self._pending, frames])
        length = len(self._taps_newest_first)
        if len(buffer) < length:
            self._pending = buffer
            out = np.zeros((0, self.channels), dtype=np.int16)
        else:
            count = (len(buffer) - length) // self.factor + 1
            windows = sliding_window_view(buffer, length, axis=0)[: count * self.factor : self.factor]
            out = _to_int16(windows @ self._taps_newest_first)
            self._pending = buffer[count * self.factor:]
        return out.reshape(-1) if samples.ndim == 1 else out


class Interpolator:
    """Raise the rate by ``factor``, across calls; ``flush`` lets the filter ring out.

    Each input frame yields ``factor`` output frames, computed phase by phase
    from the input (the zeros of a naive up-sampler are never multiplied).
    """

    def __init__(self, factor: int, channels: int = 1, half_taps: int = DEFAULT_HALF_TAPS) -> None:
        self.factor = factor
        self.channels = channels
        self.delay = half_taps
        taps = lowpass_taps(factor, half_taps) * factor  # restores the level the zeros took away
        per_phase = -(-len(taps) // factor)
        padded = np.zeros(per_phase * factor)
        padded[: len(taps)] = taps
        # phases[j, p] multiplies the input j frames back for output phase p.
        self._phases = padded.reshape(per_phase, factor)
        self._history = np.zeros((per_phase - 1, channels))

    def process(self, samples: np.ndarray) -> np.ndarray:
        frames = _as_frames(samples, self.channels)
        if not len(frames):
            return samples.astype(np.int16)
        buffer = np.concatenate([self._history, frames])
        per_phase = self._phases.shape[0]
        newest_first = sliding_window_view(buffer, per_phase, axis=0)[..., ::-1]
        out = (newest_first @ self._phases).transpose(0, 2, 1).reshape(-1, self.channels)
        self._history = buffer[len(buffer) - (per_phase - 1):]
        out = _to_int16(out)
        return out.reshape(-1) if samples.ndim == 1 else out

    def flush(self) -> np.ndarray:
        """The rest of the filter's response to what was given, as if silence followed.

        Afterwards the state is all zeros again, so the next sound starts clean.
        """
        silence = np.zeros((len(self._history), self.channels), dtype=np.int16)
        out = self.process(silence)
        return out.reshape(-1) if self.channels == 1 else out
