"""The filters and the per-frame checks of the package docstring, and the one-channel detector.

:class:`DetectorBank` runs the method for several channels at once (the
masker's); :class:`DtmfDetector` is one channel of it.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from linetap.firmware.dsp.dtmf.figures import (
    COLUMN_HZ,
    CONFIRM_FRAMES,
    END_FRAMES,
    FILL_DB,
    FREQ_TOLERANCE,
    GROUP_DOMINANCE_DB,
    HARMONIC_MARGIN_DB,
    HIGH_FRAME_SUBS,
    LOW_FRAME_SUBS,
    MIN_TONE_DBFS,
    MIN_TONE_SHARE,
    NORMAL_TWIST_DB,
    REVERSE_TWIST_DB,
    ROW_HZ,
    SCREEN_TONE_SHARE,
    SUB_BLOCKS_PER_SECOND,
    check_rate,
)
from linetap.firmware.dsp.dtmf.tracker import DigitTracker, DtmfEvent, DtmfToneOn

_FULL_SCALE = 32767.0
_HISTORY_SUBS = LOW_FRAME_SUBS + 1  # the previous frame is needed for the phase step
_PROBES_HZ = np.array(ROW_HZ + COLUMN_HZ)
_ALL_PROBES_HZ = np.concatenate([_PROBES_HZ, 2 * _PROBES_HZ])
_N_PROBES = len(_ALL_PROBES_HZ)
_ROW_HZ = np.array(ROW_HZ)
_COLUMN_HZ = np.array(COLUMN_HZ)


def filter_gain(offset_hz: np.ndarray, length: int, rate: int) -> np.ndarray:
    """Magnitude response of a ``length``-sample rectangular DFT bin, ``offset_hz`` off centre."""
    x = np.pi * offset_hz / rate
    small = np.abs(x) < 1e-12
    safe = np.where(small, 1.0, x)
    gain = np.abs(np.sin(length * safe) / (length * np.sin(safe)))
    return np.where(small, 1.0, np.maximum(gain, 1e-3))


class _Frames(NamedTuple):
    """The analysis frames ending at each new sub-block, for one channel."""

    low: np.ndarray  # low-group frame values, the previous frame of the first new one in row 0
    high: np.ndarray  # high-group frame values, likewise
    low_power: np.ndarray  # tone power in each low-group filter, new frames only
    high_power: np.ndarray  # likewise for the high-group filters
    mean_square: np.ndarray  # the low-group frame's mean square, new frames only


class _Candidates(NamedTuple):
    """Frames that passed the screen and the frequency check, with their strongest tones."""

    f: np.ndarray  # index among the new frames
    row: np.ndarray  # 0..3
    column: np.ndarray  # 0..3
    row_offset: np.ndarray  # Hz off the nominal row tone, measured from the phase step
    column_offset: np.ndarray


class DetectorBank:
    """The detector of the package docstring for several channels at once.

    Every per-block step is one numpy call for all channels, because at 20 ms
    blocks the cost is in the number of calls, not in the arithmetic. Each
    frame's loudness and fill are known from sub-block energies alone, and a
    frame fails the level check (2) or the fill check (7) whatever its tones
    are when its energy is too low for a tone of MIN_TONE_DBFS or its
    sub-blocks are too unequal; a block whose frames all fail there (silence,
    line noise, most of speech) skips the filters altogether. The filters'
    values are computed from the samples when needed, so the gate changes no
    decision.
    """

    def __init__(self, rate: int, channel_numbers: tuple[int, ...]) -> None:
        check_rate(rate)
        self.rate = rate
        self.channels = channels = len(channel_numbers)
        self._sub = rate // SUB_BLOCKS_PER_SECOND
        n = np.arange(self._sub)[:, None]
        omega = 2 * np.pi * _ALL_PROBES_HZ[None, :] / rate
        # Interleaved (cos, -sin) columns, so the product views directly as complex values.
        self._basis = np.stack([np.cos(omega * n), -np.sin(omega * n)], axis=2).reshape(
            self._sub, 2 * _N_PROBES)
        self._phases = np.zeros((0, _N_PROBES), dtype=np.complex128)
        self._cycles_per_sub = _ALL_PROBES_HZ * self._sub / rate
        self._low_length = LOW_FRAME_SUBS * self._sub
        self._high_length = HIGH_FRAME_SUBS * self._sub
        # A sine of amplitude A gives |X| = A N / 2; these turn |X|^2 into its power A^2 / 2.
        self._low_scale = 2 / self._low_length ** 2
        self._high_scale = 2 / self._high_length ** 2
        self._min_tone_power = (_FULL_SCALE * 10 ** (MIN_TONE_DBFS / 20)) ** 2 / 2
        # A frame's row-tone power is at most 2 x its mean square (Cauchy-Schwarz), and the
        # loss correction divides it by at most the filter's gain at the frequency tolerance:
        # below this frame energy (with 3 dB to spare for rounding) no tone is loud enough.
        least_gain = filter_gain(np.array([FREQ_TOLERANCE * max(ROW_HZ)]), self._low_length,
                                  rate)[0]
        gate_energy = 0.5 * self._min_tone_power * least_gain ** 2 * self._low_length / 2
        # Within the fill limit, a frame of that energy has every sub-block above this.
        self._gate_fill = 10 ** (FILL_DB / 10) * (1 + 1e-6)
        self._gate_sub_energy = gate_energy / (LOW_FRAME_SUBS * self._gate_fill)
        self._nothing = [False] * channels
        self._no_remainder = np.zeros((0, channels))
        self._history_e = np.zeros((channels, _HISTORY_SUBS))
        self._recent: deque[np.ndarray] = deque()  # the latest blocks' sub-blocks, raw
        self._recent_subs = 0
        self._remainder = np.zeros((0, channels))
        self._subs_done = 0
        self.trackers = [DigitTracker(c, self._sub) for c in channel_numbers]

    @property
    def start_latency(self) -> int:
        return (LOW_FRAME_SUBS + CONFIRM_FRAMES - 1) * self._sub

    @property
    def end_latency(self) -> int:
        return END_FRAMES * self._sub

    def flush(self) -> list[DtmfEvent]:
        """End of stream: end every digit still sounding, at its last accepted frame."""
        events = []
        for tracker in self.trackers:
            if tracker.active_code >= 0:
                events.append(tracker.end_active())
            tracker.run_code, tracker.run_length = -1, 0
        return events

    def feed(self, frames: np.ndarray, events: list[DtmfToneOn | DtmfEvent]) -> None:
        """Analyse (n, channels) samples; append what was decided to ``events``."""
        x = np.concatenate([self._remainder, frames]) if len(self._remainder) else frames
        n_subs = len(x) // self._sub
        cut = n_subs * self._sub
        self._remainder = x[cut:].astype(np.float64) if cut < len(x) else self._no_remainder
        if n_subs == 0:
            return
        subs = x[:cut].T.astype(np.float64, order="C").reshape(self.channels, n_subs, self._sub)
        energy = np.einsum("cij,cij->ci", subs, subs)
        all_energy = np.concatenate((self._history_e, energy), axis=1)
        self._history_e = all_energy[:, -_HISTORY_SUBS:]
        while self._recent and self._recent_subs - self._recent[0].shape[1] >= _HISTORY_SUBS:
            self._recent_subs -= self._recent.popleft().shape[1]
        self._recent.append(subs)
        self._recent_subs += n_subs
        first_end = (self._subs_done + 1) * self._sub
        self._subs_done += n_subs
        # Every frame ending in this block ends with one of its sub-blocks, and a frame that
        # can pass has each of its sub-blocks above the gate (2 and 7 together).
        if (energy >= self._gate_sub_energy).any():
            maybe = self._maybe_tones(all_energy, n_subs)
        else:
            maybe = self._nothing
        if any(maybe):
            values = self._values(n_subs)
        for channel, (tracker, maybe_tone) in enumerate(zip(self.trackers, maybe)):
            if maybe_tone:
                codes = self._classify(values[channel], all_energy[channel], n_subs)
                if tracker.active_code >= 0 or tracker.run_length or (codes >= 0).any():
                    events += tracker.track(codes.tolist(), first_end)
            elif tracker.active_code >= 0 or tracker.run_length:
                events += tracker.track([-1] * n_subs, first_end)

    def _maybe_tones(self, all_energy: np.ndarray, n_subs: int) -> list[bool]:
        """Per channel: whether any frame ending in the new sub-blocks could pass 2 and 7.

        A feed holds a handful of frames, so plain floats beat numpy calls here,
        and a channel's search stops at its first passing frame.
        """
        first = _HISTORY_SUBS - LOW_FRAME_SUBS + 1
        least, fill = self._gate_sub_energy, self._gate_fill
        maybe = []
        for energies in all_energy.tolist():
            for start in range(first, first + n_subs):
                window = energies[start:start + LOW_FRAME_SUBS]
                lowest = min(window)
                if lowest >= least and lowest >= max(window) / fill:
                    maybe.append(True)
                    break
            else:
                maybe.append(False)
        return maybe

    def _values(self, n_subs: int) -> np.ndarray:
        """Phase-referenced filter values of the history and new sub-blocks, per channel."""
        recent = np.concatenate(self._recent, axis=1) if len(self._recent) > 1 else self._recent[0]
        total = _HISTORY_SUBS + n_subs
        if recent.shape[1] < total:  # the stream's start: silence before it
            recent = np.concatenate(
                (np.zeros((self.channels, total - recent.shape[1], self._sub)), recent), axis=1)
        values = (recent[:, -total:] @ self._basis).view(np.complex128)
        values *= self._rotation(self._subs_done - total, total)
        return values

    def _classify(self, all_values: np.ndarray, all_energy: np.ndarray, n: int) -> np.ndarray:
        """Digit code (0..15) accepted by each of the last ``n`` frames, or -1.

        ``all_values`` and ``all_energy`` hold the history sub-blocks, then the new ones.
        """
        codes = np.full(n, -1)
        frames = self._frames(all_values, all_energy)
        found = self._candidates(frames)
        if found is None:
            return codes
        valid = self._tones_pass(frames, found) & self._filled(all_energy, found.f)
        codes[found.f[valid]] = (4 * found.row + found.column)[valid]
        return codes

    def _frames(self, all_values: np.ndarray, all_energy: np.ndarray) -> _Frames:
        # Inclusive running sums: the frame ending at sub-block e is sums[e] - sums[e - 5].
        # Row 0 is the previous frame of the first new one (for the phase step).
        sums = np.cumsum(all_values, axis=0)
        last = len(all_values)
        low = (sums[_HISTORY_SUBS - 1:]
               - sums[_HISTORY_SUBS - 1 - LOW_FRAME_SUBS:last - LOW_FRAME_SUBS])
        high = (sums[_HISTORY_SUBS - 2:last - 1]
                - sums[_HISTORY_SUBS - 2 - HIGH_FRAME_SUBS:last - 1 - HIGH_FRAME_SUBS])
        energy_sums = np.cumsum(all_energy)
        mean_square = ((energy_sums[_HISTORY_SUBS:] - energy_sums[_HISTORY_SUBS - LOW_FRAME_SUBS:
                                                                   last - LOW_FRAME_SUBS])
                       / self._low_length)
        return _Frames(low, high, np.abs(low[1:]) ** 2 * self._low_scale,
                       np.abs(high[1:]) ** 2 * self._high_scale, mean_square)

    def _candidates(self, frames: _Frames) -> _Candidates | None:
        """The frames past the cheap screen and the frequency check (1); None if there are none.

        Cheap screen first: most audio fails the relative-energy check, and the rest of the
        checks then run only on the few frames that pass it.
        """
        rows = frames.low_power[:, 0:4]
        columns = frames.high_power[:, 4:8]
        tonal = rows.max(axis=1) + columns.max(axis=1) >= SCREEN_TONE_SHARE * frames.mean_square
        if not tonal.any():
            return None
        f = np.flatnonzero(tonal)
        row = rows[f].argmax(axis=1)
        column = columns[f].argmax(axis=1)
        hz_per_radian = self.rate / (2 * np.pi * self._sub)
        row_offset = np.angle(frames.low[f + 1, row] * np.conj(frames.low[f, row])) * hz_per_radian
        column_offset = np.angle(frames.high[f + 1, 4 + column] * np.conj(frames.high[f, 4 + column])) \
            * hz_per_radian
        on_frequency = ((np.abs(row_offset) <= FREQ_TOLERANCE * _ROW_HZ[row])
                        & (np.abs(column_offset) <= FREQ_TOLERANCE * _COLUMN_HZ[column]))
        if not on_frequency.any():  # the usual fate of speech that passed the screen
            return None
        keep = np.flatnonzero(on_frequency)
        return _Candidates(f[keep], row[keep], column[keep], row_offset[keep], column_offset[keep])

    def _tones_pass(self, frames: _Frames, found: _Candidates) -> np.ndarray:
        """Checks 2 to 6 on each candidate, tone powers corrected for the filter loss."""
        f, row, column = found.f, found.row, found.column
        rows, columns = frames.low_power[f, 0:4], frames.high_power[f, 4:8]
        row_power, column_power = frames.low_power[f, row], frames.high_power[f, 4 + column]
        row_hz, column_hz = _ROW_HZ[row], _COLUMN_HZ[column]
        true_row = row_power / filter_gain(found.row_offset, self._low_length, self.rate) ** 2
        true_column = column_power / filter_gain(found.column_offset, self._high_length, self.rate) ** 2
        tonal = true_row + true_column >= MIN_TONE_SHARE * frames.mean_square[f]
        dominant = (self._dominates(rows, row, _ROW_HZ, row_hz + found.row_offset, true_row,
                                    self._low_length)
                    & self._dominates(columns, column, _COLUMN_HZ, column_hz + found.column_offset,
                                      true_column, self._high_length))
        loud = (true_row >= self._min_tone_power) & (true_column >= self._min_tone_power)
        twist = true_column / np.maximum(true_row, 1e-30)
        twist_ok = ((twist <= 10 ** (NORMAL_TWIST_DB / 10))
                    & (twist >= 10 ** (-REVERSE_TWIST_DB / 10)))

        # 2 x 697..941 Hz falls among the high-group tones, so the row harmonic's probe also
        # hears the column tone; allow for that leakage (computed from the measured column tone)
        # before holding the probe against the row tone.
        harmonic = 10 ** (-HARMONIC_MARGIN_DB / 20)
        leak = filter_gain(2 * row_hz - (column_hz + found.column_offset), self._low_length, self.rate)
        row_harmonic = np.sqrt(frames.low_power[f, 8 + row])
        column_harmonic = np.sqrt(frames.high_power[f, 12 + column])
        clean = ((row_harmonic <= harmonic * np.sqrt(row_power) + leak * np.sqrt(true_column))
                 & (column_harmonic <= harmonic * np.sqrt(column_power)))
        return tonal & loud & twist_ok & dominant & clean

    @staticmethod
    def _filled(all_energy: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Check 7: every sub-block of each frame ``f`` within FILL_DB of its loudest."""
        window = _HISTORY_SUBS - LOW_FRAME_SUBS + 1 + f  # first sub-block of each frame
        sub_energies = all_energy[window[:, None] + np.arange(LOW_FRAME_SUBS)]
        return sub_energies.min(axis=1) * 10 ** (FILL_DB / 10) >= sub_energies.max(axis=1)

    def _dominates(self, powers: np.ndarray, strongest: np.ndarray, group_hz: np.ndarray,
                   tone_hz: np.ndarray, tone_power: np.ndarray, length: int) -> np.ndarray:
        """Whether each frame's strongest tone of a group stands out from the group's others.

        The tone itself leaks into its neighbours' filters (more so when it is
        off-nominal); that leakage, computed from the measured tone, is allowed
        for, and what is left must be GROUP_DOMINANCE_DB below the tone.
        """
        leak = np.sqrt(tone_power)[:, None] * filter_gain(
            group_hz[None, :] - tone_hz[:, None], length, self.rate)
        excess = np.sqrt(powers) - leak
        excess[np.arange(len(powers)), strongest] = 0.0
        return excess.max(axis=1) <= 10 ** (-GROUP_DOMINANCE_DB / 20) * np.sqrt(
            powers[np.arange(len(powers)), strongest])

    def _rotation(self, first: int, n: int) -> np.ndarray:
        """exp(-j w m S) for sub-blocks m = first .. first + n - 1: the absolute phase reference.

        Every probe is a whole number of hertz, so the phases repeat every second
        (SUB_BLOCKS_PER_SECOND sub-blocks) and one table serves the whole stream.
        """
        start = first % SUB_BLOCKS_PER_SECOND
        if start + n > len(self._phases):
            index = np.arange(SUB_BLOCKS_PER_SECOND + n)[:, None]
            self._phases = np.exp(-2j * np.pi * np.mod(index * self._cycles_per_sub, 1.0))
        return self._phases[start:start + n]


class DtmfDetector:
    """Streaming DTMF detector for one channel: see the package docstring for the method.

    ``feed()`` returns a :class:`DtmfToneOn` as soon as a digit is confirmed
    and a :class:`DtmfEvent` when it has ended. Positions are sample indices
    since the first sample fed. Not thread-safe: feed it from one thread.
    """

    def __init__(self, rate: int, *, channel: int = 0) -> None:
        self._bank = DetectorBank(rate, (channel,))
        self._tracker = self._bank.trackers[0]
        self.rate = rate
        self.channel = channel

    @property
    def start_latency(self) -> int:
        """Samples from a digit's reported start to the sample that confirms it, at most.

        The feed that contains that sample returns the DtmfToneOn.
        """
        return self._bank.start_latency

    @property
    def end_latency(self) -> int:
        """Samples from a digit's reported end to the sample that ends it, at most.

        The feed that contains that sample returns the DtmfEvent.
        """
        return self._bank.end_latency

    @property
    def in_tone(self) -> bool:
        """True between a DtmfToneOn and its DtmfEvent."""
        return self._tracker.active_code >= 0

    def feed(self, samples: np.ndarray) -> list[DtmfToneOn | DtmfEvent]:
        """Analyse the next samples (1-D, int16 scale); return what was decided."""
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"DtmfDetector.feed() takes one channel (1-D), got shape {x.shape}; "
                             f"use one detector per channel or DtmfMasker for stereo")
        events: list[DtmfToneOn | DtmfEvent] = []
        self._bank.feed(x.reshape(-1, 1), events)
        return events

    def flush(self) -> list[DtmfEvent]:
        """End of stream: report a digit still sounding, ending at its last accepted frame."""
        return self._bank.flush()
