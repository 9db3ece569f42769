"""The Q.23 keypad and the Q.24 figures the detector works to.

Why each figure is what it is: the package docstring (:mod:`linetap.firmware.dsp.dtmf`).
"""

from __future__ import annotations

from linetap.firmware.errors import ConfigError

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


def check_rate(rate: int) -> None:
    """Raise ConfigError unless ``rate`` is one the DSP modules can work at."""
    if not isinstance(rate, int) or rate < 8000 or rate % SUB_BLOCKS_PER_SECOND:
        raise ConfigError(f"sample rate {rate!r} Hz is not supported by the DSP: it must be an "
                          f"integer of at least 8000 Hz divisible by {SUB_BLOCKS_PER_SECOND} "
                          f"(8000, 16000 and 48000 are); set the audio rate to one of these")
