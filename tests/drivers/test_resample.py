"""The 48 kHz codec path's rate converters: level, frequency, alias rejection, streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linetap.drivers.audio import tone
from linetap.drivers.resample import Decimator, Interpolator, lowpass_taps


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level re a full-scale sine (AES17), so a sine made at X dBFS measures X."""
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2))
    return 20 * np.log10(max(rms, 1e-9) * np.sqrt(2) / 32767)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("factor", [3, 6])
def test_decimator_keeps_a_speech_band_tone(factor: int) -> None:
    stereo = np.column_stack([tone(1000, 1.0, 48000, -6.0), tone(2500, 1.0, 48000, -20.0)])
    out = Decimator(factor).process(stereo)[100:]  # past the filter's start-up
    low_rate = 48000 // factor
    assert peak_hz(out[:, 0], low_rate) == pytest.approx(1000, abs=2)
    assert peak_hz(out[:, 1], low_rate) == pytest.approx(2500, abs=2)
    assert level_dbfs(out[:, 0]) == pytest.approx(-6.0, abs=0.1)
    assert level_dbfs(out[:, 1]) == pytest.approx(-20.0, abs=0.1)


@pytest.mark.parametrize(("factor", "freq"), [(3, 12000), (3, 9500), (6, 5000)])
def test_decimator_keeps_out_of_band_tones_from_folding_into_the_band(factor: int, freq: int) -> None:
    out = Decimator(factor, channels=1).process(tone(freq, 1.0, 48000, 0.0))[100:]
    assert level_dbfs(out) < -70


@pytest.mark.parametrize("factor", [3, 6])
def test_interpolator_keeps_level_and_pitch_and_removes_images(factor: int) -> None:
    low_rate = 48000 // factor
    interpolator = Interpolator(factor)
    out = np.concatenate([interpolator.process(tone(1000, 1.0, low_rate, -6.0)), interpolator.flush()])
    steady = out[1000:-1000]
    assert peak_hz(steady, 48000) == pytest.approx(1000, abs=2)
    assert level_dbfs(steady) == pytest.approx(-6.0, abs=0.1)
    spectrum = np.fft.rfft(steady * np.hanning(len(steady)))
    freqs = np.fft.rfftfreq(len(steady), 1 / 48000)
    images = np.abs(spectrum[freqs > low_rate / 2 * 1.15]).max()
    assert 20 * np.log10(images / np.abs(spectrum).max()) < -70


def test_both_delay_by_a_whole_number_of_samples() -> None:
    impulse = np.zeros(3000, dtype=np.int16)
    impulse[300] = 30000  # at a kept sample (a multiple of the factor)
    decimated = Decimator(3, channels=1).process(impulse)
    assert np.argmax(decimated) == 100 + Decimator(3).delay

    interpolator = Interpolator(3)
    up = np.concatenate([interpolator.process(impulse[:1000]), interpolator.flush()])
    assert np.argmax(up) == 3 * (300 + interpolator.delay)
    assert len(up) == 3 * (1000 + 2 * interpolator.delay)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 2400), max_size=12))
def test_streaming_in_any_pieces_equals_one_piece(cuts: list[int]) -> None:
    rng = np.random.default_rng(7)
    signal = rng.integers(-20000, 20000, size=(2400, 2), dtype=np.int16)
    bounds = [0, *sorted(cuts), len(signal)]
    whole = Decimator(3).process(signal)
    pieced = Decimator(3)
    assert np.array_equal(np.concatenate([pieced.process(signal[a:b]) for a, b in zip(bounds, bounds[1:])]),
                          whole)

    mono = signal[:, 0]
    whole_up = Interpolator(3).process(mono)
    pieced_up = Interpolator(3)
    assert np.array_equal(np.concatenate([pieced_up.process(mono[a:b]) for a, b in zip(bounds, bounds[1:])]),
                          whole_up)


def test_flush_leaves_the_interpolator_as_new() -> None:
    used = Interpolator(3)
    used.process(tone(1000, 0.1, 16000, 0.0))
    used.flush()
    sound = tone(440, 0.05, 16000, -3.0)
    assert np.array_equal(used.process(sound), Interpolator(3).process(sound))


def test_full_scale_overshoot_clips_instead_of_wrapping() -> None:
    square = np.where(tone(1000, 0.1, 16000, 0.0) >= 0, 32767, -32768).astype(np.int16)
    up = Interpolator(3).process(square)
    delay = 3 * Interpolator(3).delay
    expected_sign = np.sign(np.repeat(square, 3).astype(np.int32))
    # Mid-half-period samples (away from the edges) keep the input's sign when clipped.
    middles = np.arange(24 + 8, len(square) * 3 - delay, 24)
    assert up.max() == 32767
    assert np.all(np.sign(up[middles + delay]) == expected_sign[middles])


def test_a_factor_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="factor must be 2 or more"):
        lowpass_taps(1)
