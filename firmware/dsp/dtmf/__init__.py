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

The package, one module per job:

- :mod:`.figures`: the Q.23 keypad and the figures above, :func:`check_rate`;
- :mod:`.tracker`: the events, and one channel's digit state machine (timing);
- :mod:`.detector`: the filters and checks for several channels at once, and
  :class:`DtmfDetector` for one;
- :mod:`.masker`: :class:`DtmfMasker`.
"""

from linetap.firmware.dsp.dtmf.detector import DtmfDetector
from linetap.firmware.dsp.dtmf.figures import (
    COLUMN_HZ,
    CONFIRM_FRAMES,
    DIGITS,
    END_FRAMES,
    FILL_DB,
    FREQ_TOLERANCE,
    GROUP_DOMINANCE_DB,
    HARMONIC_MARGIN_DB,
    HIGH_FRAME_SUBS,
    KEYPAD,
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
from linetap.firmware.dsp.dtmf.masker import (
    DEFAULT_LOOKAHEAD_S,
    MASK_GUARD_S,
    DtmfMasker,
    MaskedBlock,
    MaskSpan,
)
from linetap.firmware.dsp.dtmf.tracker import DtmfEvent, DtmfToneOn

__all__ = [
    "COLUMN_HZ", "CONFIRM_FRAMES", "DEFAULT_LOOKAHEAD_S", "DIGITS", "END_FRAMES", "FILL_DB",
    "FREQ_TOLERANCE", "GROUP_DOMINANCE_DB", "HARMONIC_MARGIN_DB", "HIGH_FRAME_SUBS", "KEYPAD",
    "LOW_FRAME_SUBS", "MASK_GUARD_S", "MIN_TONE_DBFS", "MIN_TONE_SHARE", "NORMAL_TWIST_DB",
    "REVERSE_TWIST_DB", "ROW_HZ", "SCREEN_TONE_SHARE", "SUB_BLOCKS_PER_SECOND", "DtmfDetector",
    "DtmfEvent", "DtmfMasker", "DtmfToneOn", "MaskSpan", "MaskedBlock", "check_rate",
]
