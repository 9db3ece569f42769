"""DTMF detection to ITU-T Q.24, and masking of digits in what is stored.

Why a recorder detects DTMF: the caller's opt-out key is a digit, and digits
typed during a call (card numbers, PINs) must not be kept, so every digit
becomes silence in the stored audio and only "masked from t1 to t2" is
recorded, never the digit.

Detector
========

:class:`DtmfDetector` is streaming and sans-IO: int16 samples in, events out,
positions in samples since the first sample fed. Make one per channel.

How it measures
---------------
The signal is cut into 5 ms sub-blocks. For each sub-block the detector takes
the single-bin DFT (the value a Goertzel filter ends with) at 16 probe
frequencies: the eight Q.23 tones and their second harmonics. The Goertzel
recurrence is a per-sample loop; the same numbers come out of one matrix
product per fed block (``sub-blocks x basis``), which numpy does in BLAS, so
the cost is about 32 multiply-adds per sample and channel. Each sub-block's
value is phase-referenced to absolute time, so consecutive sub-blocks add up
coherently into longer analysis frames at no further cost, and a frame is
formed every 5 ms (the hop).

Frame lengths, and the +-1.5 % / +-3.5 % window
-----------------------------------------------
The Q.23 tones are about 10 % apart within each group, so the frame must be
long enough to tell neighbours apart (697 Hz from 770 Hz is 73 Hz), yet short
enough that a tone 1.5 % off still lands in its filter's main lobe, and that a
40 ms digit fills several frames.

- low group (697..941 Hz): 25 ms frames (bins 40 Hz wide). A neighbour tone
  73..89 Hz away is 17..21 dB down; +-1.5 % (10..14 Hz) costs at most 1.8 dB.
- high group (1209..1633 Hz): 15 ms frames (67 Hz bins), centred in the
  low-group frame. A neighbour 127..156 Hz away is about 15..26 dB down even
  with the tone 1.5 % off; +-1.5 % (18..24 Hz) costs at most 2 dB. A 25 ms
  frame here would leave 1633 Hz +2 % 13 dB down, close to the filter's
  first null, where its level can no longer be measured.

The frame lengths are fixed in seconds, so they hold at 8, 16 and 48 kHz
alike (200/400/1200 and 120/240/720 samples). A filter's magnitude alone
cannot separate 1.5 % from 3.5 %, so the frequency is measured: a tone
``d`` Hz off a probe turns that probe's frame value by ``2 pi d 5 ms`` per
hop, whatever the window, so the phase step between consecutive frames gives
``d`` (unambiguous within +-100 Hz, beyond which a tone is another probe's or
none). A frame is accepted when both tones are within +-2 % of nominal
(:data:`FREQ_TOLERANCE`): Q.24's must-accept 1.5 % (plus the 2 Hz some
administrations add) with margin for noise, well short of the must-reject
3.5 %. Both tone powers are then corrected for the filter's loss at the
measured offset (at most 4 dB at 2 %) before the level, twist and energy
checks.

Checks on every frame (all must pass)
-------------------------------------
1. frequency: both tones within +-2 % of a Q.23 frequency (above);
2. level: each tone at least :data:`MIN_TONE_DBFS` (-42 dBFS, about -39 dBm0;
   Q.24 asks for operation down to about -36 dBm0 per tone for most
   administrations). The top of the range is full scale;
3. twist: high group at most 8 dB above the low group (normal twist) and at
   most 4 dB below it (reverse twist), the Bell / ITU figures; decisions fall
   at 9 and 5 dB (:data:`NORMAL_TWIST_DB`, :data:`REVERSE_TWIST_DB`) so the
   documented limits hold with measurement margin, and 10 / 6 dB are refused;
4. relative energy: the two tones carry at least :data:`MIN_TONE_SHARE` (85 %)
   of the frame's total energy (speech spreads its energy; a digit does not).
   An uncorrected version of this check (:data:`SCREEN_TONE_SHARE`) runs
   first on every frame and spares the rest of the work on most audio;
5. group dominance: within each group, what the other three filters hear
   beyond the detected tone's own leakage into them (computed from its
   measured frequency and power) is at least :data:`GROUP_DOMINANCE_DB` below
   the tone;
6. second harmonic: each tone's second harmonic at least
   :data:`HARMONIC_MARGIN_DB` below it (voiced speech is rich in harmonics);
   twice a row frequency lies among the column tones, so the column tone's
   computed leakage into that probe is allowed for;
7. fill: every 5 ms sub-block of the frame within :data:`FILL_DB` of the
   loudest (a frame the tone only partly covers does not count, so durations
   are measured in time, not inferred from level).

Checks 2 and 7 have a looser form that needs only the sub-blocks' energies
(a tone of the least level needs a frame energy of at least so much, and fill
bounds each sub-block's share of it). It runs first, for all channels at
once, and a block in which no frame passes it (silence, line noise, most of
speech) is not filtered at all: it cannot pass the full checks, so the
decisions are those of the full method.

Timing (Q.24 figures)
---------------------
A digit is confirmed after :data:`CONFIRM_FRAMES` consecutive accepted frames
for the same digit: 25 ms + 2 hops, so tones of 40 ms or more are always
accepted and tones of 28 ms or less never are (Q.24 rejects <= 20..24 ms).
A digit ends after :data:`END_FRAMES` frames without it: interruptions of up
to 10 ms are bridged and pauses of 40 ms or more always separate repeated
digits. Decision latency: the start is known at most 35 ms after the reported
start, the end 45 ms after the reported end (:attr:`DtmfDetector.start_latency`
and :attr:`~DtmfDetector.end_latency`).

Masking
=======
:class:`DtmfMasker` runs one detector per channel and delays the stored audio
by a lookahead ``K`` (:data:`DEFAULT_LOOKAHEAD_S`, 50 ms) so that the first
milliseconds of a tone, heard before it was confirmed, are silenced too:
``K`` covers the detector's decision latency plus the guard
(:data:`MASK_GUARD_S`) kept on each side of a tone. A tone seen on either
channel silences both: the near-end keypad is also heard on the far-end
channel through the line's sidetone and echo (and the far end's digits in the
near-end microphone), possibly too weak there to be detected but still
decodable by anyone listening.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from linetap.firmware.errors import ConfigError

logger = logging.getLogger(__name__)

ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COLUMN_HZ = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")
DIGITS = "".join(KEYPAD)  # code = 4 * row + column

SUB_BLOCKS_PER_SECOND = 200  # 5 ms sub-blocks and hop
LOW_FRAME_SUBS = 5  # 25 ms
HIGH_FRAME_SUBS = 3  # 15 ms, the middle of the low-group frame
FREQ_TOLERANCE = 0.02
MIN_TONE_DBFS = -42.0
NORMAL_TWIST_DB = 9.0
REVERSE_TWIST_DB = 5.0
GROUP_DOMINANCE_DB = 15.0
MIN_TONE_SHARE = 0.85
SCREEN_TONE_SHARE = 0.5  # before the filter-loss correction: a tone 1.5 % off loses up to 2 dB
HARMONIC_MARGIN_DB = 12.0
FILL_DB = 4.0
CONFIRM_FRAMES = 3
END_FRAMES = 9

DEFAULT_LOOKAHEAD_S = 0.05
MASK_GUARD_S = 0.01

_FULL_SCALE = 32767.0
_HISTORY_SUBS = LOW_FRAME_SUBS + 1  # the previous frame is needed for the phase step
_PROBES_HZ = np.array(ROW_HZ + COLUMN_HZ)
_ALL_PROBES_HZ = np.concatenate([_PROBES_HZ, 2 * _PROBES_HZ])
_N_PROBES = len(_ALL_PROBES_HZ)
_ROW_HZ = np.array(ROW_HZ)
_COLUMN_HZ = np.array(COLUMN_HZ)


@dataclass(frozen=True, slots=True)
class DtmfToneOn:
    """A digit was confirmed; it began at sample ``start``. Its end comes later as a DtmfEvent."""

    digit: str
    start: int
    channel: int = 0


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A digit, from sample ``start`` to sample ``end`` (exclusive), reported when it ended."""

    digit: str
    start: int
    end: int
    channel: int = 0


def check_rate(rate: int) -> None:
    """Raise ConfigError unless ``rate`` is one the DSP modules can work at."""
    if not isinstance(rate, int) or rate < 8000 or rate % SUB_BLOCKS_PER_SECOND:
        raise ConfigError(f"sample rate {rate!r} Hz is not supported by the DSP: it must be an "
                          f"integer of at least 8000 Hz divisible by {SUB_BLOCKS_PER_SECOND} "
                          f"(8000, 16000 and 48000 are); set the audio rate to one of these")


def _filter_gain(offset_hz: np.ndarray, length: int, rate: int) -> np.ndarray:
    """Magnitude response of a ``length``-sample rectangular DFT bin, ``offset_hz`` off centre."""
    x = np.pi * offset_hz / rate
    small = np.abs(x) < 1e-12
    safe = np.where(small, 1.0, x)
    gain = np.abs(np.sin(length * safe) / (length * np.sin(safe)))
    return np.where(small, 1.0, np.maximum(gain, 1e-3))


class _Tracker:
    """One channel's digit state machine: accepted frame codes in, events out."""

    def __init__(self, channel: int, sub: int) -> None:
        self.channel = channel
        self._sub = sub
        self._frame_length = LOW_FRAME_SUBS * sub
        self.run_code = -1
        self.run_length = 0
        self._run_start = 0
        self.active_code = -1
        self._active_start = 0
        self._last_valid_end = 0
        self._frames_without = 0

    def track(self, codes: list[int], first_end: int) -> list[DtmfToneOn | DtmfEvent]:
        events: list[DtmfToneOn | DtmfEvent] = []
        for i, code in enumerate(codes):
            frame_end = first_end + i * self._sub
            if code >= 0:
                if code == self.run_code:
                    self.run_length += 1
                else:
                    self.run_code, self.run_length = code, 1
                    self._run_start = frame_end - self._frame_length
                if code == self.active_code:
                    self._last_valid_end = frame_end
                    self._frames_without = 0
                    continue
                if self.run_length >= CONFIRM_FRAMES:
                    if self.active_code >= 0:
                        events.append(self.end_active())
                    self.active_code = code
                    self._active_start = self._run_start
                    self._last_valid_end = frame_end
                    self._frames_without = 0
                    events.append(DtmfToneOn(DIGITS[code], self._run_start, self.channel))
                    continue
            else:
                self.run_code, self.run_length = -1, 0
            if self.active_code >= 0:
                self._frames_without += 1
                if self._frames_without >= END_FRAMES:
                    events.append(self.end_active())
        return events

    def end_active(self) -> DtmfEvent:
        event = DtmfEvent(DIGITS[self.active_code], self._active_start, self._last_valid_end,
                          self.channel)
        self.active_code = -1
        self._frames_without = 0
        return event


class _DetectorBank:
    """The detector of the module docstring for several channels at once.

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
        least_gain = _filter_gain(np.array([FREQ_TOLERANCE * max(ROW_HZ)]), self._low_length,
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
        self.trackers = [_Tracker(c, self._sub) for c in channel_numbers]

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
        # Inclusive running sums: the frame ending at sub-block e is sums[e] - sums[e - 5].
        # Row 0 is the previous frame of the first new one (for the phase step).
        sums = np.cumsum(all_values, axis=0)
        last = len(all_values)
        low = (sums[_HISTORY_SUBS - 1:]
               - sums[_HISTORY_SUBS - 1 - LOW_FRAME_SUBS:last - LOW_FRAME_SUBS])
        high = (sums[_HISTORY_SUBS - 2:last - 1]
                - sums[_HISTORY_SUBS - 2 - HIGH_FRAME_SUBS:last - 1 - HIGH_FRAME_SUBS])
        low_power = np.abs(low[1:]) ** 2 * self._low_scale
        high_power = np.abs(high[1:]) ** 2 * self._high_scale
        energy_sums = np.cumsum(all_energy)
        mean_square = ((energy_sums[_HISTORY_SUBS:] - energy_sums[_HISTORY_SUBS - LOW_FRAME_SUBS:
                                                                   last - LOW_FRAME_SUBS])
                       / self._low_length)

        # Cheap screen first: most audio fails the relative-energy check, and the rest of the
        # checks then run only on the few frames that pass it.
        rows = low_power[:, 0:4]
        columns = high_power[:, 4:8]
        tonal = rows.max(axis=1) + columns.max(axis=1) >= SCREEN_TONE_SHARE * mean_square
        codes = np.full(n, -1)
        if not tonal.any():
            return codes
        f = np.flatnonzero(tonal)
        rows, columns = rows[f], columns[f]
        row = rows.argmax(axis=1)
        column = columns.argmax(axis=1)
        row_power = rows[np.arange(len(f)), row]
        column_power = columns[np.arange(len(f)), column]
        row_hz = _ROW_HZ[row]
        column_hz = _COLUMN_HZ[column]
        hz_per_radian = self.rate / (2 * np.pi * self._sub)
        row_offset = np.angle(low[f + 1, row] * np.conj(low[f, row])) * hz_per_radian
        column_offset = np.angle(high[f + 1, 4 + column] * np.conj(high[f, 4 + column])) \
            * hz_per_radian
        on_frequency = ((np.abs(row_offset) <= FREQ_TOLERANCE * row_hz)
                        & (np.abs(column_offset) <= FREQ_TOLERANCE * column_hz))
        if not on_frequency.any():  # the usual fate of speech that passed the screen
            return codes
        keep = np.flatnonzero(on_frequency)
        f, rows, columns, row, column = f[keep], rows[keep], columns[keep], row[keep], column[keep]
        row_power, column_power = row_power[keep], column_power[keep]
        row_hz, column_hz = row_hz[keep], column_hz[keep]
        row_offset, column_offset = row_offset[keep], column_offset[keep]

        true_row = row_power / _filter_gain(row_offset, self._low_length, self.rate) ** 2
        true_column = column_power / _filter_gain(column_offset, self._high_length, self.rate) ** 2
        tonal = true_row + true_column >= MIN_TONE_SHARE * mean_square[f]
        dominant = (self._dominates(rows, row, _ROW_HZ, row_hz + row_offset, true_row,
                                    self._low_length)
                    & self._dominates(columns, column, _COLUMN_HZ, column_hz + column_offset,
                                      true_column, self._high_length))
        loud = (true_row >= self._min_tone_power) & (true_column >= self._min_tone_power)
        twist = true_column / np.maximum(true_row, 1e-30)
        twist_ok = ((twist <= 10 ** (NORMAL_TWIST_DB / 10))
                    & (twist >= 10 ** (-REVERSE_TWIST_DB / 10)))

        # 2 x 697..941 Hz falls among the high-group tones, so the row harmonic's probe also
        # hears the column tone; allow for that leakage (computed from the measured column tone)
        # before holding the probe against the row tone.
        harmonic = 10 ** (-HARMONIC_MARGIN_DB / 20)
        leak = _filter_gain(2 * row_hz - (column_hz + column_offset), self._low_length, self.rate)
        row_harmonic = np.sqrt(low_power[f, 8 + row])
        column_harmonic = np.sqrt(high_power[f, 12 + column])
        clean = ((row_harmonic <= harmonic * np.sqrt(row_power) + leak * np.sqrt(true_column))
                 & (column_harmonic <= harmonic * np.sqrt(column_power)))

        window = _HISTORY_SUBS - LOW_FRAME_SUBS + 1 + f  # first sub-block of each frame
        sub_energies = all_energy[window[:, None] + np.arange(LOW_FRAME_SUBS)]
        filled = sub_energies.min(axis=1) * 10 ** (FILL_DB / 10) >= sub_energies.max(axis=1)

        valid = tonal & loud & twist_ok & dominant & clean & filled
        codes[f[valid]] = (4 * row + column)[valid]
        return codes

    def _dominates(self, powers: np.ndarray, strongest: np.ndarray, group_hz: np.ndarray,
                   tone_hz: np.ndarray, tone_power: np.ndarray, length: int) -> np.ndarray:
        """Whether each frame's strongest tone of a group stands out from the group's others.

        The tone itself leaks into its neighbours' filters (more so when it is
        off-nominal); that leakage, computed from the measured tone, is allowed
        for, and what is left must be GROUP_DOMINANCE_DB below the tone.
        """
        leak = np.sqrt(tone_power)[:, None] * _filter_gain(
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
    """Streaming DTMF detector for one channel: see the module docstring for the method.

    ``feed()`` returns a :class:`DtmfToneOn` as soon as a digit is confirmed
    and a :class:`DtmfEvent` when it has ended. Positions are sample indices
    since the first sample fed. Not thread-safe: feed it from one thread.
    """

    def __init__(self, rate: int, *, channel: int = 0) -> None:
        self._bank = _DetectorBank(rate, (channel,))
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


@dataclass(frozen=True, slots=True)
class MaskSpan:
    """Stored audio silenced from ``start_s`` to ``end_s`` for a tone seen on ``channel``.

    Times are on the input stream's time axis (sample index / rate), the
    same axis as the detector's; the masker's output lags it by
    :attr:`DtmfMasker.lookahead_s`. The digit is deliberately not recorded.
    """

    start_s: float
    end_s: float
    channel: int


@dataclass(frozen=True, slots=True)
class MaskedBlock:
    """What one :meth:`DtmfMasker.feed` gives back.

    ``audio`` is the input delayed by the lookahead, digits silenced on every
    channel; ``spans`` are the mask spans completed during this feed;
    ``events`` are the detectors' events (with digits) for the call logic,
    which must not store them.
    """

    audio: np.ndarray
    spans: list[MaskSpan]
    events: list[DtmfToneOn | DtmfEvent]


class DtmfMasker:
    """Silence DTMF digits in a multichannel stream, delaying it by a fixed lookahead.

    ``feed(block)`` takes blocks of shape (n, channels) (or (n,) for one
    channel) and returns a block of the same shape holding the input from
    ``lookahead_frames`` samples earlier (the first call's output starts with
    that much silence); ``flush()`` returns the held tail at the end of the
    stream. Output sample ``p`` is input sample ``p - lookahead_frames``.
    Each tone is silenced on all channels from :data:`MASK_GUARD_S` before
    its start to ``MASK_GUARD_S`` after its end. Not thread-safe.
    """

    def __init__(self, rate: int, channels: int = 2, *,
                 lookahead_s: float = DEFAULT_LOOKAHEAD_S, guard_s: float = MASK_GUARD_S) -> None:
        check_rate(rate)
        if channels < 1:
            raise ConfigError(f"DtmfMasker needs at least one channel, got {channels}")
        self.rate = rate
        self.channels = channels
        self._detectors = _DetectorBank(rate, tuple(range(channels)))
        self._guard = int(round(guard_s * rate))
        self.lookahead_frames = int(round(lookahead_s * rate))
        needed = max(self._detectors.start_latency + self._guard, self._detectors.end_latency)
        if self.lookahead_frames < needed:
            raise ConfigError(f"DTMF mask lookahead {lookahead_s} s is shorter than the detector's "
                              f"decision latency plus guard ({needed / rate:.3f} s); digit onsets "
                              f"would leak into the recording: raise it to at least that")
        self._held = np.zeros((self.lookahead_frames, channels), dtype=np.int16)
        self._fed = 0
        self._closed: list[tuple[int, int]] = []
        self._open: dict[int, int] = {}  # channel -> masked-from sample of a sounding tone

    @property
    def lookahead_s(self) -> float:
        return self.lookahead_frames / self.rate

    def feed(self, block: np.ndarray) -> MaskedBlock:
        """Take the next block; return the block from ``lookahead_s`` ago, masked."""
        samples = np.asarray(block)
        mono = samples.ndim == 1
        frames = samples.reshape(-1, 1) if mono else samples
        if frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"DtmfMasker for {self.channels} channel(s) got a block of shape "
                             f"{samples.shape}; expected (n, {self.channels})")
        events: list[DtmfToneOn | DtmfEvent] = []
        spans: list[MaskSpan] = []
        self._detectors.feed(frames, events)
        for event in events:
            self._apply(event, spans)
        joined = np.concatenate([self._held, frames.astype(np.int16, copy=False)])
        n = len(frames)
        out, self._held = joined[:n], joined[n:]  # disjoint views: masking out spares held
        self._mask(out, self._fed - self.lookahead_frames)
        self._fed += n
        return MaskedBlock(out.reshape(-1) if mono else out, spans, events)

    def flush(self) -> MaskedBlock:
        """End of stream: close sounding tones and return the held audio, masked."""
        events: list[DtmfToneOn | DtmfEvent] = list(self._detectors.flush())
        spans: list[MaskSpan] = []
        for event in events:
            self._apply(event, spans)
        out, self._held = self._held.copy(), self._held[:0]
        self._mask(out, self._fed - self.lookahead_frames)
        self._fed += len(out)  # a second flush finds nothing held and masks nothing
        return MaskedBlock(out.reshape(-1) if self.channels == 1 else out, spans, events)

    def _apply(self, event: DtmfToneOn | DtmfEvent, spans: list[MaskSpan]) -> None:
        start = max(0, event.start - self._guard)
        if isinstance(event, DtmfToneOn):
            self._open[event.channel] = start
            return
        self._open.pop(event.channel, None)
        end = event.end + self._guard
        self._closed.append((start, end))
        spans.append(MaskSpan(start / self.rate, end / self.rate, event.channel))
        logger.debug("dtmf masked channel=%d start_s=%.3f end_s=%.3f", event.channel,
                     start / self.rate, end / self.rate)

    def _mask(self, out: np.ndarray, first: int) -> None:
        """Silence the parts of ``out`` (input samples ``first`` onwards) inside any span."""
        if not (self._closed or self._open):
            return
        last = first + len(out)
        # Spans wholly behind the output are done with; dropping them keeps a
        # box that runs for months from growing this list without bound.
        self._closed = [(start, end) for start, end in self._closed if end > first]
        for start, end in self._closed:
            if start < last and end > first:
                out[max(start - first, 0):min(end - first, len(out))] = 0
        for start in self._open.values():
            if start < last:
                out[max(start - first, 0):] = 0
        self._closed = [(s, e) for s, e in self._closed if e > last]
