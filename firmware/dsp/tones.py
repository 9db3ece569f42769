"""Tone generation: the recorder warning beep, DTMF digits for tests, mixing.

Levels are in dBFS with the AES17 convention used throughout
:mod:`linetap.firmware.dsp`: a full-scale sine reads 0 dBFS, so
``tone(f, s, rate, -20)`` measures -20 dBFS with :func:`~.levels.rms_dbfs`.
For orientation, 0 dBm0 (the G.711 reference level) is about -3 dBFS.

Every tone starts and stops on a short raised-cosine ramp: a sine switched on
at full amplitude splatters energy across the band and is heard as a click.
"""

from __future__ import annotations

import numpy as np

from linetap.firmware.dsp.dtmf import COLUMN_HZ, KEYPAD, ROW_HZ
from linetap.firmware.errors import ConfigError

FULL_SCALE = 32767
DEFAULT_RAMP_S = 0.005
DTMF_RAMP_S = 0.001  # short, so that a 40 ms test digit really lasts 40 ms
WARNING_TONE_HZ = 1400.0
WARNING_TONE_S = 0.5


def _amplitude(level_dbfs: float) -> float:
    if level_dbfs > 0:
        raise ConfigError(f"tone level {level_dbfs} dBFS is above full scale; use 0 dBFS or less")
    return FULL_SCALE * 10 ** (level_dbfs / 20)


def _check(freq: float, seconds: float, rate: int) -> None:
    if rate <= 0:
        raise ConfigError(f"sample rate {rate} Hz is not positive")
    if seconds < 0:
        raise ConfigError(f"tone duration {seconds} s is negative")
    if not 0 < freq < rate / 2:
        raise ConfigError(f"tone frequency {freq} Hz is outside 0..{rate / 2:g} Hz "
                          f"(half the {rate} Hz sample rate); choose a lower tone or a higher rate")


def _ramped_sines(freqs: list[float], amplitudes: list[float], seconds: float, rate: int,
                  ramp_s: float) -> np.ndarray:
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    signal = np.zeros(n)
    for freq, amplitude in zip(freqs, amplitudes, strict=True):
        signal += amplitude * np.sin(2 * np.pi * freq * t)
    ramp = min(int(round(ramp_s * rate)), n // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        signal[:ramp] *= rise
        signal[n - ramp:] *= rise[::-1]
    return np.clip(np.round(signal), -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)


def tone(freq: float, seconds: float, rate: int, level_dbfs: float = -20.0, *,
         ramp_s: float = DEFAULT_RAMP_S) -> np.ndarray:
    """A sine of ``freq`` Hz, ``seconds`` long, as int16, with raised-cosine ramps."""
    _check(freq, seconds, rate)
    return _ramped_sines([freq], [_amplitude(level_dbfs)], seconds, rate, ramp_s)


def warning_tone(rate: int, level_dbfs: float = -20.0) -> np.ndarray:
    """The recorder warning beep: 1400 Hz for 0.5 s (the US recorder-warning convention)."""
    return tone(WARNING_TONE_HZ, WARNING_TONE_S, rate, level_dbfs)


def dtmf_frequencies(digit: str) -> tuple[float, float]:
    """(row Hz, column Hz) of a keypad digit, per ITU-T Q.23."""
    for row, keys in enumerate(KEYPAD):
        column = keys.find(digit.upper()) if len(digit) == 1 else -1
        if column >= 0:
            return ROW_HZ[row], COLUMN_HZ[column]
    raise ConfigError(f"{digit!r} is not a DTMF digit; use one of {''.join(KEYPAD)}")


def dtmf_tone(digit: str, seconds: float, rate: int, level_dbfs: float = -10.0, *,
              twist_db: float = 0.0, freq_error: float | tuple[float, float] = 0.0,
              ramp_s: float = DTMF_RAMP_S) -> np.ndarray:
    """A DTMF digit as int16, for tests and line simulation.

    ``level_dbfs`` is the level of the row (low-group) tone; the column tone is
    ``twist_db`` louder (positive: normal twist, the high group stronger, as a
    line's loss at low frequencies makes it; negative: reverse twist).
    ``freq_error`` is a relative offset from the nominal frequencies, for both
    tones, or ``(row, column)`` separately: ``0.015`` is +1.5 %.
    """
    row_hz, column_hz = dtmf_frequencies(digit)
    row_error, column_error = (freq_error if isinstance(freq_error, tuple)
                               else (freq_error, freq_error))
    freqs = [row_hz * (1 + row_error), column_hz * (1 + column_error)]
    for freq in freqs:
        _check(freq, seconds, rate)
    amplitudes = [_amplitude(level_dbfs), _amplitude(min(level_dbfs + twist_db, 0.0))]
    if sum(amplitudes) > FULL_SCALE:
        raise ConfigError(f"DTMF at {level_dbfs} dBFS with {twist_db} dB twist would clip "
                          f"(peak {sum(amplitudes) / FULL_SCALE:.2f} of full scale); "
                          f"lower the level")
    return _ramped_sines(freqs, amplitudes, seconds, rate, ramp_s)


def silence(seconds: float, rate: int, channels: int | None = None) -> np.ndarray:
    """Digital silence as int16: shape (n,) or, with ``channels``, (n, channels)."""
    n = int(round(seconds * rate))
    return np.zeros(n if channels is None else (n, channels), dtype=np.int16)


def white_noise(seconds: float, rate: int, level_dbfs: float,
                rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise at an RMS of ``level_dbfs`` (AES17, as for tones), int16."""
    n = int(round(seconds * rate))
    rms = _amplitude(level_dbfs) / np.sqrt(2)
    return np.clip(np.round(rng.normal(0.0, rms, n)), -FULL_SCALE - 1,
                   FULL_SCALE).astype(np.int16)


def mix(*signals: np.ndarray, offsets: tuple[int, ...] | None = None) -> np.ndarray:
    """Sum int16 signals (each placed at its sample offset, default 0), saturating.

    The result is as long as the longest placed signal; overflow saturates at
    full scale as a codec would, rather than wrapping round.
    """
    if not signals:
        raise ValueError("mix() needs at least one signal")
    offsets = offsets or (0,) * len(signals)
    if len(offsets) != len(signals):
        raise ValueError(f"mix() got {len(signals)} signals but {len(offsets)} offsets")
    shape_tail = signals[0].shape[1:]
    length = max(offset + len(s) for s, offset in zip(signals, offsets, strict=True))
    total = np.zeros((length, *shape_tail), dtype=np.int32)
    for signal, offset in zip(signals, offsets, strict=True):
        total[offset:offset + len(signal)] += signal
    return np.clip(total, -FULL_SCALE - 1, FULL_SCALE).astype(np.int16)
