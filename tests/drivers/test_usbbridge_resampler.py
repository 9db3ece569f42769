"""The bridge's building blocks: the fractional resampler, the sample ring, the rate controller."""

from __future__ import annotations

import numpy as np
import pytest

from linetap.drivers.usbbridge import FractionalResampler, RateController, SampleRing

PAIRS = [(48000, 48000), (48000, 16000), (44100, 16000), (16000, 48000), (8000, 48000), (48000, 44100),
         (44100, 8000), (32000, 16000), (16000, 8000)]


def tone(frequency: float, rate: int, count: int, amplitude: float = 10000.0) -> np.ndarray:
    return np.rint(amplitude * np.sin(2 * np.pi * frequency * np.arange(count) / rate)).astype(np.int16)


def snr_db(reference: np.ndarray, got: np.ndarray) -> float:
    error = got.astype(np.float64) - reference
    return 10 * np.log10(np.mean(reference.astype(np.float64) ** 2) / max(np.mean(error ** 2), 1e-12))


@pytest.mark.parametrize("in_rate, out_rate", PAIRS)
def test_a_tone_comes_out_as_clean_as_int16_allows(in_rate: int, out_rate: int) -> None:
    frequency = 1000 if min(in_rate, out_rate) > 8000 else 440
    out = FractionalResampler(in_rate, out_rate).process(tone(frequency, in_rate, in_rate * 2))
    # Output j is the input at time j / out_rate: compare with the ideal tone sampled there.
    ideal = tone(frequency, out_rate, len(out))
    held_back = FractionalResampler(in_rate, out_rate).delay_in * out_rate / in_rate  # waits for more input
    assert len(out) == pytest.approx(2 * out_rate - held_back, abs=2)
    assert snr_db(ideal[100:-100], out[100:-100]) > 80


@pytest.mark.parametrize("in_rate, out_rate", [(48000, 16000), (44100, 8000), (32000, 8000)])
def test_what_the_lower_rate_cannot_carry_is_filtered_out(in_rate: int, out_rate: int) -> None:
    above = 0.6 * out_rate  # would alias to 0.4 * out_rate
    out = FractionalResampler(in_rate, out_rate).process(tone(above, in_rate, in_rate))
    assert np.sqrt(np.mean(out[200:-200].astype(float) ** 2)) < 10000 * 10 ** (-70 / 20)


@pytest.mark.parametrize("in_rate, out_rate", PAIRS)
def test_a_fixed_ratio_gives_the_same_samples_however_the_input_is_cut(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(7)
    signal = rng.integers(-8000, 8000, in_rate, dtype=np.int16)
    whole = FractionalResampler(in_rate, out_rate).process(signal)
    for chunk in (1, 137, 480):
        pieces = FractionalResampler(in_rate, out_rate)
        if chunk == 1:
            signal_part = signal[:2000]
            cut = np.concatenate([pieces.process(signal_part[i:i + 1]) for i in range(len(signal_part))])
        else:
            cut = np.concatenate([pieces.process(signal[i:i + chunk]) for i in range(0, len(signal), chunk)])
        assert np.array_equal(cut, whole[:len(cut)]) and len(cut) >= len(whole) - 1 - (len(signal) - 2000) * (
            chunk == 1) * out_rate / in_rate - 2


def test_a_steered_ratio_moves_the_output_count_and_stays_clean() -> None:
    resampler = FractionalResampler(48000, 48000, adaptive=True)
    signal = tone(1000, 48000, 48000 * 4)
    out = []
    for i, start in enumerate(range(0, len(signal), 480)):
        resampler.set_correction(300e-6 if (i // 50) % 2 else -300e-6)  # a 600 ppm swing every 0.5 s
        out.append(resampler.process(signal[start:start + 480]))
    got = np.concatenate(out)
    assert abs(len(got) - len(signal)) < 40
    # Every 10 ms window still fits one tone closely: no click where the step changed.
    window = 480
    t = np.arange(window) / 48000
    basis = np.stack([np.sin(2 * np.pi * 1000 * t), np.cos(2 * np.pi * 1000 * t),
                      t * np.sin(2 * np.pi * 1000 * t), t * np.cos(2 * np.pi * 1000 * t)], axis=1)
    for start in range(480, len(got) - window, window):
        piece = got[start:start + window].astype(float)
        fit, *_ = np.linalg.lstsq(basis, piece, rcond=None)
        assert snr_db(basis @ fit, piece) > 70
    more = FractionalResampler(48000, 48000, adaptive=True)
    more.set_correction(1e-3)
    assert len(more.process(signal)) == pytest.approx(len(signal) / 1.001, abs=40)


def test_a_fixed_resampler_cannot_be_steered() -> None:
    with pytest.raises(ValueError, match="adaptive=True"):
        FractionalResampler(48000, 16000).set_correction(1e-4)
    with pytest.raises(ValueError, match="positive"):
        FractionalResampler(0, 16000)


def test_the_sample_ring_wraps_refuses_what_does_not_fit_and_pads_with_silence() -> None:
    ring = SampleRing(5)
    assert ring.write(np.arange(1, 4, dtype=np.int16)) == 3
    out = np.full(2, 99, np.int16)
    assert ring.read_into(out) == 2 and list(out) == [1, 2]
    assert ring.write(np.arange(4, 9, dtype=np.int16)) == 4  # room for 4 of 5
    assert ring.level == 5 and ring.room() == 0
    out = np.full(7, 99, np.int16)
    assert ring.read_into(out) == 5 and list(out) == [3, 4, 5, 6, 7, 0, 0]
    assert ring.write_silence(9) == 5 and ring.discard(2) == 2 and list(ring.read(10)) == [0, 0, 0]
    with pytest.raises(ValueError, match="capacity"):
        SampleRing(0)


def test_the_controller_settles_on_the_mismatch_with_the_level_at_its_target() -> None:
    controller = RateController(target_s=0.013, max_ppm=1000)
    level, mismatch, t = 0.010, 450e-6, 0.0
    for _ in range(12000):  # 120 s of 10 ms updates on the plant dL/dt = mismatch - u
        t += 0.01
        level += (mismatch - controller.update(level, t)) * 0.01
    assert controller.ppm == pytest.approx(450, abs=1)
    assert level == pytest.approx(0.013, abs=1e-4)
    far_off = RateController(target_s=0.013, max_ppm=1000)
    for i in range(2000):
        far_off.update(1.0, i * 0.01)
    assert far_off.correction == pytest.approx(1e-3)  # clamped, not wound up past the range
