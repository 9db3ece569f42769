"""Per-call QA metrics, computed as the call streams (stereo: near end, far end).

All activity figures rest on the voice-activity decisions of
:class:`~linetap.firmware.dsp.levels.VoiceActivityDetector` (one per side),
taken every ``vad.frame_s`` (10 ms by default). "Active" below means the
detector's decision, hang-over included, so the short gaps between words
count as talking. :meth:`CallMetrics.result` gives, with every time in
seconds since the first sample fed:

``duration_s``
    samples fed / rate.
``talk_s`` (per side)
    active frames x frame length.
``silence_share``
    share of frames with neither side active (0..1).
``overtalk_share``
    share of frames with both sides active (0..1).
``longest_monologue_s`` (per side)
    the longest stretch from one of the side's active frames to a later one
    (inclusive) with the other side never active in between and no pause of
    the side itself longer than ``monologue_pause_s``.
``clipping_share`` (per side)
    share of samples at or near full scale
    (:data:`~linetap.firmware.dsp.levels.CLIP_LEVEL`).
``rms_dbfs`` (per side)
    RMS level (dBFS, AES17) over the side's active frames: its speech level,
    not diluted by listening time; :data:`~linetap.firmware.dsp.levels.MIN_DBFS`
    for a side that never spoke.
``hold_spans``
    ``[start_s, end_s]`` of every stretch of two-sided silence lasting at
    least ``hold_min_s`` (holds, transfers, dead air). Because of the
    hang-over, a span starts ``vad.hangover_s`` after the last voice.

Per-side values are dicts keyed ``"near"`` and ``"far"``; the result is plain
JSON-ready data for the call's manifest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linetap.firmware.dsp.levels import (
    MIN_DBFS,
    VadSettings,
    VoiceActivityDetector,
    FrameLevels,
    clip_count,
)
from linetap.firmware.errors import ConfigError

SIDES = ("near", "far")


class _Monologue:
    """One side's monologue tracker (frame indices)."""

    def __init__(self, max_pause: int) -> None:
        self.max_pause = max_pause
        self.start: int | None = None
        self.last = 0
        self.longest = 0

    def frame(self, index: int, own: bool, other: bool) -> None:
        if other or (self.start is not None and index - self.last - 1 > self.max_pause):
            self.close()
        if own and not other:
            if self.start is None:
                self.start = index
            self.last = index

    def close(self) -> None:
        if self.start is not None:
            self.longest = max(self.longest, self.current())
            self.start = None

    def current(self) -> int:
        return 0 if self.start is None else self.last - self.start + 1


class CallMetrics:
    """Streaming QA metrics for one call; see the module docstring for each figure.

    ``feed(block)`` takes stereo int16 blocks (n, 2), column 0 near end,
    column 1 far end; ``result()`` may be called at any time, also mid-call.
    Not thread-safe.
    """

    def __init__(self, rate: int, *, vad: VadSettings = VadSettings(), hold_min_s: float = 10.0,
                 monologue_pause_s: float = 3.0) -> None:
        if hold_min_s <= 0 or monologue_pause_s < 0:
            raise ConfigError(f"call metrics hold_min_s = {hold_min_s} must be positive and "
                              f"monologue_pause_s = {monologue_pause_s} not negative")
        self.rate = rate
        self._frame_s = vad.frame_s
        self._detectors = (VoiceActivityDetector(rate, vad), VoiceActivityDetector(rate, vad))
        self._levels = FrameLevels(self._detectors[0].frame_frames, 2)
        self._hold_min = int(round(hold_min_s / vad.frame_s))
        self._monologues = (_Monologue(int(round(monologue_pause_s / vad.frame_s))),
                            _Monologue(int(round(monologue_pause_s / vad.frame_s))))
        self._samples = 0
        self._clipped = np.zeros(2, dtype=np.int64)
        self._frames = 0
        self._active = [0, 0]
        self._active_power = [0.0, 0.0]  # sums of frame powers, relative to a full-scale sine
        self._both = 0
        self._neither = 0
        self._silence_start: int | None = None
        self._holds: list[tuple[int, int]] = []

    def feed(self, block: np.ndarray) -> None:
        frames = np.asarray(block)
        if frames.ndim != 2 or frames.shape[1] != 2:
            raise ValueError(f"CallMetrics.feed() takes stereo blocks (n, 2), "
                             f"got shape {frames.shape}")
        self._samples += len(frames)
        self._clipped += clip_count(frames)
        levels = self._levels.feed(frames)
        if not levels.shape[1]:
            return
        # Python floats and bools from here: a block holds a few frames, fewer than it takes
        # numpy calls to count them.
        near_levels, far_levels = levels.tolist()
        near = self._detectors[0].decide(levels[0]).tolist()
        far = self._detectors[1].decide(levels[1]).tolist()
        if not (any(near) or any(far)) and self._quiet_since_silence():
            self._neither += len(near)
            self._frames += len(near)  # nothing to track: the silence goes on
            return
        active, active_power = self._active, self._active_power
        for index, (n, f, near_level, far_level) in enumerate(
                zip(near, far, near_levels, far_levels), start=self._frames):
            if n:
                active[0] += 1
                active_power[0] += 10 ** (near_level / 10)
            if f:
                active[1] += 1
                active_power[1] += 10 ** (far_level / 10)
            self._monologues[0].frame(index, n, f)
            self._monologues[1].frame(index, f, n)
            if n and f:
                self._both += 1
            if n or f:
                self._end_silence(index)
            else:
                self._neither += 1
                if self._silence_start is None:
                    self._silence_start = index
        self._frames += len(near)

    def _quiet_since_silence(self) -> bool:
        """Whether silent frames would change nothing: silence is open, no monologue is."""
        return (self._silence_start is not None and self._monologues[0].start is None
                and self._monologues[1].start is None)

    def _end_silence(self, index: int) -> None:
        if self._silence_start is not None and index - self._silence_start >= self._hold_min:
            self._holds.append((self._silence_start, index))
        self._silence_start = None

    def result(self) -> dict[str, Any]:
        frames = max(self._frames, 1)
        holds = list(self._holds)
        if self._silence_start is not None and self._frames - self._silence_start >= self._hold_min:
            holds.append((self._silence_start, self._frames))
        samples = max(self._samples, 1)
        rms = [max(10 * float(np.log10(self._active_power[s] / self._active[s])), MIN_DBFS)
               if self._active[s] else MIN_DBFS for s in range(2)]
        return {
            "duration_s": round(self._samples / self.rate, 3),
            "talk_s": {side: round(float(self._active[s]) * self._frame_s, 3)
                       for s, side in enumerate(SIDES)},
            "silence_share": round(self._neither / frames, 4),
            "overtalk_share": round(self._both / frames, 4),
            "longest_monologue_s": {
                side: round(max(m.longest, m.current()) * self._frame_s, 3)
                for side, m in zip(SIDES, self._monologues, strict=True)},
            "clipping_share": {side: round(float(self._clipped[s]) / samples, 9)
                               for s, side in enumerate(SIDES)},
            "rms_dbfs": {side: round(rms[s], 2) for s, side in enumerate(SIDES)},
            "hold_spans": [[round(a * self._frame_s, 3), round(b * self._frame_s, 3)]
                           for a, b in holds],
        }
