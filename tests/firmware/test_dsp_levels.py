"""Levels, clipping, tone generation, voice activity and call activity."""

from __future__ import annotations

import numpy as np
import pytest

from linetap.firmware.dsp.levels import (
    MIN_DBFS,
    CallActivity,
    CallEnded,
    CallStarted,
    FrameLevels,
    VadSettings,
    VoiceActivityDetector,
    clip_count,
    peak_dbfs,
    rms_dbfs,
)
from linetap.firmware.dsp.tones import dtmf_tone, mix, silence, tone, warning_tone, white_noise
from linetap.firmware.errors import ConfigError

RATE = 16000


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("level", [-3.0, -20.0, -45.0])
def test_tone_level_reads_back(rate: int, level: float) -> None:
    signal = tone(1000.0, 1.0, rate, level)
    assert rms_dbfs(signal) == pytest.approx(level, abs=0.1)
    assert peak_dbfs(signal) == pytest.approx(level, abs=0.05)


def test_warning_tone_is_1400_hz_for_half_a_second_without_clicks() -> None:
    beep = warning_tone(RATE)
    assert len(beep) == RATE // 2
    spectrum = np.abs(np.fft.rfft(beep.astype(float)))
    assert np.fft.rfftfreq(len(beep), 1 / RATE)[spectrum.argmax()] == pytest.approx(1400, abs=2)
    # The raised-cosine ramps start and end at (near) zero: no step, no click.
    assert abs(int(beep[0])) < 50 and abs(int(beep[-1])) < 50
    assert np.abs(np.diff(beep.astype(int))).max() < 2 * np.pi * 1400 / RATE * 32767 * 0.11


def test_dtmf_tone_twist_and_level() -> None:
    signal = dtmf_tone("1", 1.0, RATE, -20.0, twist_db=6.0)
    spectrum = np.abs(np.fft.rfft(signal.astype(float))) / (len(signal) / 2)
    freqs = np.fft.rfftfreq(len(signal), 1 / RATE)
    low = spectrum[np.argmin(np.abs(freqs - 697))]
    high = spectrum[np.argmin(np.abs(freqs - 1209))]
    assert 20 * np.log10(high / low) == pytest.approx(6.0, abs=0.2)
    assert 20 * np.log10(low / 32767) == pytest.approx(-20.0, abs=0.2)
    with pytest.raises(ConfigError, match="clip"):
        dtmf_tone("1", 0.1, RATE, -1.0)
    with pytest.raises(ConfigError, match="not a DTMF digit"):
        dtmf_tone("E", 0.1, RATE)


def test_stereo_levels_are_per_channel_and_silence_is_floored() -> None:
    stereo = np.stack([tone(440.0, 0.5, RATE, -10.0), silence(0.5, RATE)], axis=1)
    levels = rms_dbfs(stereo)
    assert levels.shape == (2,)
    assert levels[0] == pytest.approx(-10.0, abs=0.1) and levels[1] == MIN_DBFS
    assert rms_dbfs(np.zeros(0, np.int16)) == MIN_DBFS


def test_clipping_counts_samples_at_or_near_full_scale() -> None:
    signal = np.array([0, 32767, -32768, 32700, 32699, -32700, 1000], dtype=np.int16)
    assert clip_count(signal) == 4
    stereo = np.stack([signal, np.zeros_like(signal)], axis=1)
    assert list(clip_count(stereo)) == [4, 0]


def test_mix_saturates_instead_of_wrapping() -> None:
    loud = np.full(10, 30000, dtype=np.int16)
    assert mix(loud, loud).max() == 32767
    assert list(mix(np.ones(2, np.int16), np.ones(3, np.int16), offsets=(0, 2))) == [1, 1, 1, 1, 1]


# ----------------------------------------------------------- voice activity --

def bursts(spans: list[tuple[float, float]], seconds: float, *, level: float = -20.0,
           background: float = -65.0, seed: int = 0) -> np.ndarray:
    """Background hiss with noise bursts (a stand-in for speech) in the given spans."""
    rng = np.random.default_rng(seed)
    signal = white_noise(seconds, RATE, background, rng)
    for start, end in spans:
        signal = mix(signal, white_noise(end - start, RATE, level, rng),
                     offsets=(0, int(start * RATE)))
    return signal


def active_seconds(decisions: np.ndarray, frame_s: float) -> list[tuple[float, float]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], decisions.astype(int), [0]])))
    return [(round(a * frame_s, 3), round(b * frame_s, 3)) for a, b in zip(edges[::2], edges[1::2])]


def test_vad_marks_bursts_with_hangover() -> None:
    settings = VadSettings(hangover_s=0.2)
    vad = VoiceActivityDetector(RATE, settings)
    signal = bursts([(1.0, 2.0), (3.0, 3.5)], 5.0)
    decisions = np.concatenate([vad.feed(signal[i:i + 333]) for i in range(0, len(signal), 333)])
    assert len(decisions) == 500
    assert active_seconds(decisions, settings.frame_s) == [(1.0, 2.2), (3.0, 3.7)]
    assert vad.noise_floor_dbfs == pytest.approx(-65.0, abs=3.0)


def test_stereo_frame_levels_match_one_detector_per_channel() -> None:
    stereo = np.stack([bursts([(0.3, 0.9)], 1.5), bursts([(0.7, 1.2)], 1.5, level=-30.0)], axis=1)
    levels = FrameLevels(VoiceActivityDetector(RATE).frame_frames, 2)
    per_channel = (VoiceActivityDetector(RATE), VoiceActivityDetector(RATE))
    steps = np.random.default_rng(2).choice([1, 37, 160, 320, 1111], size=200)
    together, alone = [], []
    i = 0
    for step in steps:
        together.append(levels.feed(stereo[i:i + step]))
        alone.append(np.stack([vad.frame_levels(stereo[i:i + step, c])
                               for c, vad in enumerate(per_channel)]))
        i += step
    assert i >= len(stereo)
    together_all, alone_all = np.concatenate(together, axis=1), np.concatenate(alone, axis=1)
    assert together_all.shape == (2, 150)
    np.testing.assert_array_equal(together_all, alone_all)
    assert together_all[0, 50] > together_all[0, 10] + 20


def test_vad_absorbs_a_new_steady_background() -> None:
    settings = VadSettings(hangover_s=0.1, floor_rise_db_per_s=5.0)
    vad = VoiceActivityDetector(RATE, settings)
    hum = mix(white_noise(10.0, RATE, -65.0, np.random.default_rng(1)),
              tone(100.0, 8.0, RATE, -40.0), offsets=(0, 2 * RATE))
    decisions = vad.feed(hum)
    assert decisions[200:205].all(), "a sudden hum is heard at first"
    assert not decisions[700:].any(), "and becomes background within a few seconds"


def test_vad_ignores_a_quiet_line_whatever_its_floor() -> None:
    vad = VoiceActivityDetector(RATE, VadSettings(initial_floor_dbfs=-110.0))
    assert not vad.feed(bursts([(0.5, 1.0)], 2.0, level=-58.0, background=-90.0)).any()


def test_vad_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="threshold_db"):
        VadSettings(threshold_db=0.0)


# ----------------------------------------------------------- call activity --

def stereo(near: list[tuple[float, float]], far: list[tuple[float, float]],
           seconds: float) -> np.ndarray:
    return np.stack([bursts(near, seconds, seed=1), bursts(far, seconds, seed=2)], axis=1)


def feed_all(activity: CallActivity, audio: np.ndarray) -> list[CallStarted | CallEnded]:
    events: list[CallStarted | CallEnded] = []
    for i in range(0, len(audio), 320):
        events += activity.feed(audio[i:i + 320])
    return events


def test_a_call_starts_when_both_sides_speak_and_ends_after_two_sided_silence() -> None:
    vad = VadSettings(hangover_s=0.2)
    activity = CallActivity(RATE, start_window_s=2.0, end_silence_s=4.0, vad=vad)
    # Near speaks at 1 s, far answers at 2.5 s; a 3 s hold at 5..8 s; last voice 9.5 s.
    audio = stereo([(1.0, 2.0), (4.0, 5.0)], [(2.5, 3.5), (8.0, 9.5)], 16.0)
    events = feed_all(activity, audio)
    assert events == [CallStarted(pytest.approx(1.0)), CallEnded(pytest.approx(9.7))]
    assert not activity.in_call


def test_one_sided_sound_does_not_start_a_call() -> None:
    activity = CallActivity(RATE, start_window_s=2.0, end_silence_s=4.0)
    audio = stereo([(1.0, 3.0), (6.0, 8.0)], [], 10.0)
    assert feed_all(activity, audio) == []
    assert not activity.in_call


def test_voices_too_far_apart_do_not_start_a_call() -> None:
    activity = CallActivity(RATE, start_window_s=1.0, end_silence_s=4.0,
                            vad=VadSettings(hangover_s=0.1))
    assert feed_all(activity, stereo([(0.5, 1.0)], [(3.0, 3.5)], 5.0)) == []
