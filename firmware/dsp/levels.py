"""Levels, clipping and voice activity, per block and per channel.

Levels are dBFS with the AES17 convention: a full-scale sine reads 0 dBFS
(so a full-scale square wave reads +3 dBFS). Digital silence reads
:data:`MIN_DBFS` rather than minus infinity, so averages and JSON stay finite.

Voice activity is energy-based with an adaptive noise floor, per channel
(:class:`VoiceActivityDetector`); :class:`CallActivity` turns two of them into
call start and end for boards with no hook signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from linetap.firmware.dsp.dtmf import check_rate
from linetap.firmware.errors import ConfigError

FULL_SCALE = 32767.0
MIN_DBFS = -120.0
CLIP_LEVEL = 32_700  # |sample| at or above this (within 0.02 dB of full scale) counts as clipped


def _as_float(samples: np.ndarray) -> np.ndarray:
    return np.asarray(samples, dtype=np.float64)


def power_to_dbfs(mean_square: np.ndarray | float) -> np.ndarray | float:
    """Mean square (int16 scale) to dBFS, AES17, floored at MIN_DBFS."""
    ms = np.asarray(mean_square, dtype=np.float64)
    floor = (FULL_SCALE ** 2 / 2) * 10 ** (MIN_DBFS / 10)
    result = 10 * np.log10(np.maximum(ms, floor) * 2 / FULL_SCALE ** 2)
    return float(result) if result.ndim == 0 else result


def rms_dbfs(samples: np.ndarray) -> np.ndarray | float:
    """RMS level in dBFS: a float for 1-D input, one value per channel (column) for 2-D."""
    x = _as_float(samples)
    if len(x) == 0:
        return MIN_DBFS if x.ndim == 1 else np.full(x.shape[1], MIN_DBFS)
    return power_to_dbfs(np.mean(x * x, axis=0))


def peak_dbfs(samples: np.ndarray) -> np.ndarray | float:
    """Sample peak in dBFS (0 dBFS = full scale), per channel for 2-D input."""
    x = np.abs(_as_float(samples))
    peak = x.max(axis=0) if len(x) else np.zeros(x.shape[1:])
    result = 20 * np.log10(np.maximum(peak, FULL_SCALE * 10 ** (MIN_DBFS / 20)) / FULL_SCALE)
    return float(result) if np.ndim(result) == 0 else result


def clip_count(samples: np.ndarray, level: int = CLIP_LEVEL) -> np.ndarray | int:
    """Number of samples at or near full scale (``|x| >= level``), per channel for 2-D input."""
    x = np.asarray(samples)
    if x.size and -level < x.min() and x.max() < level:  # the usual case, at half the cost
        return 0 if x.ndim == 1 else np.zeros(x.shape[1:], dtype=np.intp)
    count = np.count_nonzero(np.abs(x.astype(np.int32)) >= level, axis=0)
    return int(count) if np.ndim(count) == 0 else count


class FrameLevels:
    """dBFS of each completed frame of a multichannel stream; keeps the remainder.

    All channels go through one numpy call per step: at 20 ms blocks the cost
    is in the number of calls, not in the arithmetic.
    """

    def __init__(self, frame_frames: int, channels: int) -> None:
        self.frame_frames = frame_frames
        self.channels = channels
        self._remainder = np.zeros((0, channels))

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Levels (channels, frames) of the frames completed by ``block`` (n, channels)."""
        x = np.concatenate([self._remainder, block]) if len(self._remainder) else block
        n = len(x) // self.frame_frames
        cut = n * self.frame_frames
        self._remainder = x[cut:].astype(np.float64)
        frames = x[:cut].T.astype(np.float64, order="C").reshape(
            self.channels, n, self.frame_frames)
        return power_to_dbfs(np.einsum("cij,cij->ci", frames, frames) / self.frame_frames)


@dataclass(frozen=True)
class VadSettings:
    """Voice-activity parameters (from the config's DSP section, later).

    - ``frame_s``: decision frame; one decision per frame.
    - ``threshold_db``: a frame is voice when its energy is this far above the
      noise floor ...
    - ``min_level_dbfs``: ... and above this absolute level (line hiss on a
      quiet line never counts, however low the floor goes).
    - ``hangover_s``: voice is held this long after the last voiced frame, so
      the gaps between words do not count as silence.
    - ``floor_rise_db_per_s``: how fast the floor follows a louder background
      (it follows a quieter one at once). Slow, so that a long utterance is not
      taken for noise; fast enough that a new steady hum is absorbed in
      ``threshold_db / floor_rise_db_per_s`` seconds.
    - ``initial_floor_dbfs``: the floor before anything has been measured.
    """

    frame_s: float = 0.01
    threshold_db: float = 10.0
    min_level_dbfs: float = -50.0
    hangover_s: float = 0.3
    floor_rise_db_per_s: float = 1.0
    initial_floor_dbfs: float = -70.0

    def __post_init__(self) -> None:
        checks = [("frame_s", self.frame_s, 0.002, 0.1), ("threshold_db", self.threshold_db, 1, 40),
                  ("hangover_s", self.hangover_s, 0.0, 5.0),
                  ("floor_rise_db_per_s", self.floor_rise_db_per_s, 0.01, 20.0),
                  ("min_level_dbfs", self.min_level_dbfs, MIN_DBFS, 0.0),
                  ("initial_floor_dbfs", self.initial_floor_dbfs, MIN_DBFS, 0.0)]
        for name, value, low, high in checks:
            if not low <= value <= high:
                raise ConfigError(f"voice activity {name} = {value} is outside {low}..{high}")


class VoiceActivityDetector:
    """Energy-based voice activity for one channel, streaming.

    ``feed(samples)`` returns one bool per completed frame of
    ``settings.frame_s`` (samples left over wait for the next feed), True while
    voice is present (hang-over included). Frame ``i`` covers samples
    ``i * frame_frames`` to ``(i + 1) * frame_frames``. Not thread-safe.
    """

    def __init__(self, rate: int, settings: VadSettings = VadSettings()) -> None:
        check_rate(rate)
        self.rate = rate
        self.settings = settings
        self.frame_frames = int(round(settings.frame_s * rate))
        self._hangover_frames = int(round(settings.hangover_s / settings.frame_s))
        self._rise_per_frame = settings.floor_rise_db_per_s * settings.frame_s
        self._floor = settings.initial_floor_dbfs
        self._hang = 0
        self._levels = FrameLevels(self.frame_frames, 1)
        self.frames_done = 0

    @property
    def noise_floor_dbfs(self) -> float:
        return self._floor

    @property
    def active(self) -> bool:
        """The last frame's decision."""
        return self._hang > 0

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Decisions (bool array) for the frames completed by these samples (1-D)."""
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"VoiceActivityDetector.feed() takes one channel (1-D), "
                             f"got shape {x.shape}")
        levels = self.frame_levels(x)
        return self.decide(levels)

    def frame_levels(self, samples: np.ndarray) -> np.ndarray:
        """dBFS of each frame completed by ``samples``; keeps the remainder for the next call."""
        return self._levels.feed(np.asarray(samples).reshape(-1, 1))[0]

    def decide(self, levels: np.ndarray) -> np.ndarray:
        """Decisions for frames of the given levels, updating the floor and the hang-over."""
        decisions = []
        threshold = self.settings.threshold_db
        min_level = self.settings.min_level_dbfs
        floor, hang, rise = self._floor, self._hang, self._rise_per_frame
        for level in levels.tolist():
            if level < floor:
                floor = level
            else:
                floor = min(floor + rise, level)
            if level >= floor + threshold and level >= min_level:
                hang = self._hangover_frames + 1
            elif hang > 0:
                hang -= 1
            decisions.append(hang > 0)
        self._floor, self._hang = floor, hang
        self.frames_done += len(levels)
        return np.array(decisions, dtype=bool)


@dataclass(frozen=True, slots=True)
class CallStarted:
    """Voice on both channels: a call began at ``start_s`` (the first of the two voices)."""

    start_s: float


@dataclass(frozen=True, slots=True)
class CallEnded:
    """Two-sided silence lasted ``end_silence_s``: the call ended at ``end_s`` (last voice)."""

    end_s: float


class CallActivity:
    """Call start and end from voice activity, for boards with no hook signal.

    A call starts when voice is seen on both channels within
    ``start_window_s`` of each other (one-sided sound, such as a radio in the
    office or music on hold, does not start one); it ends after
    ``end_silence_s`` of silence on both channels, so a long hold with one
    side talking now and then does not split the call. ``feed`` takes stereo
    blocks (n, 2); times are seconds since the first sample fed.
    """

    def __init__(self, rate: int, *, start_window_s: float = 3.0, end_silence_s: float = 60.0,
                 vad: VadSettings = VadSettings()) -> None:
        if start_window_s <= 0 or end_silence_s <= 0:
            raise ConfigError(f"call activity start_window_s = {start_window_s} and "
                              f"end_silence_s = {end_silence_s} must both be positive")
        self._detectors = (VoiceActivityDetector(rate, vad), VoiceActivityDetector(rate, vad))
        self._levels = FrameLevels(self._detectors[0].frame_frames, 2)
        self._frame_s = vad.frame_s
        self._window = int(round(start_window_s / vad.frame_s))
        self._end_silence = int(round(end_silence_s / vad.frame_s))
        never = -10 ** 12
        self._last_voice = [never, never]  # frame index of each side's latest voiced frame
        self._run_start = [never, never]  # first frame of each side's latest voiced run
        self._frame = 0
        self.in_call = False

    def feed(self, block: np.ndarray) -> list[CallStarted | CallEnded]:
        frames = np.asarray(block)
        if frames.ndim != 2 or frames.shape[1] != 2:
            raise ValueError(f"CallActivity.feed() takes stereo blocks (n, 2), "
                             f"got shape {frames.shape}")
        levels = self._levels.feed(frames)
        near = self._detectors[0].decide(levels[0])
        far = self._detectors[1].decide(levels[1])
        events: list[CallStarted | CallEnded] = []
        for decisions in zip(near.tolist(), far.tolist()):
            for side, voiced in enumerate(decisions):
                if voiced:
                    if self._last_voice[side] != self._frame - 1:
                        self._run_start[side] = self._frame
                    self._last_voice[side] = self._frame
            if self.in_call:
                if self._frame - max(self._last_voice) >= self._end_silence:
                    self.in_call = False
                    events.append(CallEnded((max(self._last_voice) + 1) * self._frame_s))
            elif self._frame - min(self._last_voice) < self._window:
                self.in_call = True
                start = max(min(self._run_start), self._frame - self._window + 1, 0)
                events.append(CallStarted(start * self._frame_s))
            self._frame += 1
        return events
