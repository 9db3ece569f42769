"""DTMF detection against ITU-T Q.24 figures, and masking, with synthesised tones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from speech import corpus, speech_dir

from linetap.firmware.dsp.dtmf import (
    DIGITS,
    MASK_GUARD_S,
    DtmfDetector,
    DtmfEvent,
    DtmfMasker,
    DtmfToneOn,
    MaskSpan,
)
from linetap.firmware.dsp.tones import dtmf_tone, mix, silence, white_noise
from linetap.firmware.errors import ConfigError

RATES = (8000, 16000, 48000)


def run(signal: np.ndarray, rate: int, block: int | None = None) -> list[DtmfToneOn | DtmfEvent]:
    detector = DtmfDetector(rate)
    block = block or rate // 50
    events: list[DtmfToneOn | DtmfEvent] = []
    for i in range(0, len(signal), block):
        events += detector.feed(signal[i:i + block])
    return events + detector.flush()


def digits(signal: np.ndarray, rate: int, block: int | None = None) -> str:
    return "".join(e.digit for e in run(signal, rate, block) if isinstance(e, DtmfEvent))


def sequence(keys: str, rate: int, *, on_s: float = 0.08, off_s: float = 0.08,
             lead_s: float = 0.1, **tone_options) -> np.ndarray:
    parts = [silence(lead_s, rate)]
    for key in keys:
        parts += [dtmf_tone(key, on_s, rate, **tone_options), silence(off_s, rate)]
    parts.append(silence(0.1, rate))
    return np.concatenate(parts)


@pytest.mark.parametrize("rate", RATES)
def test_every_digit_is_accepted_at_nominal_frequencies(rate: int) -> None:
    assert digits(sequence(DIGITS, rate), rate) == DIGITS


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("error", [(0.015, 0.0), (-0.015, 0.0), (0.0, 0.015), (0.0, -0.015),
                                   (0.015, 0.015), (-0.015, -0.015), (0.015, -0.015)])
def test_frequency_errors_of_1_5_percent_are_accepted(rate: int,
                                                      error: tuple[float, float]) -> None:
    assert digits(sequence(DIGITS, rate, freq_error=error), rate) == DIGITS


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("error", [(0.035, 0.0), (-0.035, 0.0), (0.0, 0.035), (0.0, -0.035)])
def test_frequency_errors_of_3_5_percent_are_rejected(rate: int,
                                                      error: tuple[float, float]) -> None:
    assert digits(sequence(DIGITS, rate, freq_error=error), rate) == ""


@pytest.mark.parametrize("rate", RATES)
def test_40_ms_tones_are_accepted_at_any_alignment(rate: int) -> None:
    # The detector works on a 5 ms grid: start the tones at every 0.5 ms across it.
    for shift in range(10):
        signal = sequence(DIGITS, rate, on_s=0.040, off_s=0.060, lead_s=0.1 + shift * 0.0005)
        assert digits(signal, rate) == DIGITS, f"tone start shifted by {shift * 0.5} ms"


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("on_s", [0.020, 0.023])
def test_short_tones_are_rejected(rate: int, on_s: float) -> None:
    for shift in range(10):
        signal = sequence(DIGITS, rate, on_s=on_s, off_s=0.060, lead_s=0.1 + shift * 0.0005)
        assert digits(signal, rate) == "", f"tone start shifted by {shift * 0.5} ms"


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("twist_db", "accepted"), [(8.0, True), (-4.0, True),
                                                    (10.0, False), (-6.0, False)])
def test_twist_limits_are_8_db_normal_and_4_db_reverse(rate: int, twist_db: float,
                                                       accepted: bool) -> None:
    level = -20.0 if twist_db > 0 else -12.0
    found = digits(sequence(DIGITS, rate, level_dbfs=level, twist_db=twist_db), rate)
    assert found == (DIGITS if accepted else "")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("level_dbfs", "accepted"), [(-7.0, True), (-39.0, True), (-48.0, False)])
def test_level_range(rate: int, level_dbfs: float, accepted: bool) -> None:
    found = digits(sequence(DIGITS, rate, level_dbfs=level_dbfs), rate)
    assert found == (DIGITS if accepted else "")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("snr_db", [15.0, 20.0])
def test_digits_are_found_in_white_noise(rate: int, snr_db: float) -> None:
    rng = np.random.default_rng(int(snr_db) + rate)
    clean = sequence(DIGITS, rate, on_s=0.05, off_s=0.05, level_dbfs=-20.0)
    tone_power_dbfs = -20.0 + 10 * np.log10(2)  # two tones at -20 dBFS each
    noisy = mix(clean, white_noise(len(clean) / rate, rate, tone_power_dbfs - snr_db, rng))
    assert digits(noisy, rate) == DIGITS


@pytest.mark.parametrize("rate", RATES)
def test_40_ms_pauses_separate_repeated_digits(rate: int) -> None:
    signal = sequence("1111999##", rate, on_s=0.04, off_s=0.04)
    assert digits(signal, rate) == "1111999##"


@pytest.mark.parametrize("rate", RATES)
def test_a_10_ms_interruption_does_not_split_a_digit(rate: int) -> None:
    tone_part = dtmf_tone("7", 0.06, rate, ramp_s=0.0005)
    signal = np.concatenate([silence(0.1, rate), tone_part, silence(0.010, rate), tone_part,
                             silence(0.1, rate)])
    assert digits(signal, rate) == "7"


@pytest.mark.parametrize("rate", RATES)
def test_positions_and_latency(rate: int) -> None:
    start, length = int(0.2037 * rate), int(0.1 * rate)
    signal = np.concatenate([np.zeros(start, np.int16), dtmf_tone("0", 0.1, rate),
                             silence(0.3, rate)])
    detector = DtmfDetector(rate)
    seen: list[tuple[int, DtmfToneOn | DtmfEvent]] = []
    block = rate // 100
    for i in range(0, len(signal), block):
        seen += [(i + block, e) for e in detector.feed(signal[i:i + block])]
    (on_at, on), (end_at, event) = seen
    tolerance = int(0.006 * rate)
    assert isinstance(on, DtmfToneOn) and isinstance(event, DtmfEvent)
    assert on.digit == event.digit == "0"
    assert abs(on.start - start) <= tolerance and on.start == event.start
    assert abs(event.end - (start + length)) <= tolerance
    assert on_at - on.start <= detector.start_latency + block
    assert end_at - event.end <= detector.end_latency + block


@pytest.mark.parametrize("rate", RATES)
def test_results_do_not_depend_on_how_the_stream_is_cut(rate: int) -> None:
    signal = sequence("159#", rate, on_s=0.045, off_s=0.045)
    reference = run(signal, rate, block=len(signal))
    rng = np.random.default_rng(rate)
    detector = DtmfDetector(rate)
    events: list[DtmfToneOn | DtmfEvent] = []
    i = 0
    while i < len(signal):
        step = int(rng.choice([1, 7, 39, 160, 333, 1024]))
        events += detector.feed(signal[i:i + step])
        i += step
    assert events + detector.flush() == reference
    assert "".join(e.digit for e in reference if isinstance(e, DtmfEvent)) == "159#"


def test_unsupported_rates_and_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match="44100"):
        DtmfDetector(44100)
    with pytest.raises(ValueError, match="one channel"):
        DtmfDetector(8000).feed(np.zeros((10, 2), np.int16))
    with pytest.raises(ConfigError, match="lookahead"):
        DtmfMasker(16000, lookahead_s=0.02)


# ---------------------------------------------------------------- masking --

RATE = 16000


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    cache = speech_dir(tmp_path_factory)
    near = corpus(cache, rate=RATE, seconds=6.0, seed=11)[:6 * RATE]
    far = corpus(cache, rate=RATE, seconds=6.0, seed=12)[:6 * RATE]
    return np.stack([near, far], axis=1)


def mask_all(stereo: np.ndarray, block: int = 320) -> tuple[np.ndarray, list[MaskSpan], list]:
    masker = DtmfMasker(RATE)
    out, spans, events = [], [], []
    for i in range(0, len(stereo), block):
        result = masker.feed(stereo[i:i + block])
        assert result.audio.shape == stereo[i:i + block].shape
        out.append(result.audio)
        spans += result.spans
        events += result.events
    tail = masker.flush()
    assert len(tail.audio) == masker.lookahead_frames
    return np.concatenate(out + [tail.audio]), spans + tail.spans, events + tail.events


@pytest.mark.parametrize(("channel", "block"), [(0, 320), (1, 320), (0, 4000)])
def test_a_digit_in_speech_is_silenced_on_both_channels(conversation: np.ndarray,
                                                        channel: int, block: int) -> None:
    start, end = int(3.0 * RATE), int(3.09 * RATE)
    stereo = conversation.copy()
    stereo[start:end, channel] = mix(stereo[start:end, channel],
                                     dtmf_tone("5", (end - start) / RATE, RATE, -8.0))
    out, spans, events = mask_all(stereo, block)
    lag = DtmfMasker(RATE).lookahead_frames

    assert [e.digit for e in events if isinstance(e, DtmfEvent)] == ["5"]
    (span,) = spans
    assert span.channel == channel
    assert [f.name for f in dataclasses.fields(MaskSpan)] == ["start_s", "end_s", "channel"]
    slack = 0.006 + MASK_GUARD_S
    assert start / RATE - slack <= span.start_s <= start / RATE
    assert end / RATE <= span.end_s <= end / RATE + slack

    masked_from, masked_to = int(span.start_s * RATE), int(span.end_s * RATE)
    delayed = out[lag:]
    assert not delayed[masked_from:masked_to].any(), "the digit must be silent on both channels"
    np.testing.assert_array_equal(delayed[:masked_from], stereo[:masked_from])
    np.testing.assert_array_equal(delayed[masked_to:], stereo[masked_to:])
    assert not out[:lag].any()


def test_speech_alone_passes_unchanged_and_delayed(conversation: np.ndarray) -> None:
    out, spans, events = mask_all(conversation, block=480)
    lag = DtmfMasker(RATE).lookahead_frames
    assert spans == [] and events == []
    np.testing.assert_array_equal(out[lag:], conversation)


def test_mono_masking_and_flush_twice() -> None:
    signal = sequence("9", RATE, on_s=0.1)
    masker = DtmfMasker(RATE, channels=1)
    out = [masker.feed(signal[i:i + 320]).audio for i in range(0, len(signal), 320)]
    first, second = masker.flush(), masker.flush()
    assert len(second.audio) == 0 and second.spans == []
    stored = np.concatenate(out + [first.audio])
    assert stored.ndim == 1 and len(stored) == len(signal) + masker.lookahead_frames
    assert not stored.any(), "only silence and the digit went in; only silence may come out"


def _digits_in_speech(conversation: np.ndarray) -> np.ndarray:
    """Speech on both sides, line noise, and digits near and far from the level limits."""
    rng = np.random.default_rng(5)
    stereo = conversation.astype(np.float64) + rng.normal(0, 20, conversation.shape)
    at = int(0.3 * RATE)
    for key, level, on_s in zip("1A5*9#0D", (-8, -30, -41, -44, -47, -20, -38, -12),
                                (0.045, 0.03, 0.09, 0.06, 0.05, 0.025, 0.2, 0.07), strict=True):
        tone_samples = dtmf_tone(key, on_s, RATE, level)
        stereo[at:at + len(tone_samples), at % 2] += tone_samples
        at += int(0.65 * RATE)
    # A pause in the talk with a digit just above the level limit: the gate must let it by.
    stereo[-RATE:] = rng.normal(0, 20, (RATE, 2))
    stereo[-RATE // 2:-RATE // 2 + int(0.05 * RATE), 1] += dtmf_tone("7", 0.05, RATE, -41.5)
    return np.clip(np.round(stereo), -32768, 32767).astype(np.int16)


def _mask_chunked(masker: DtmfMasker, stereo: np.ndarray, steps: list[int]) -> tuple:
    out, spans, events = [], [], []
    i = 0
    for step in steps * (len(stereo) // sum(steps) + 1):
        if i >= len(stereo):
            break
        result = masker.feed(stereo[i:i + step])
        out.append(result.audio)
        spans += result.spans
        events += result.events
        i += step
    tail = masker.flush()
    return np.concatenate(out + [tail.audio]), spans + tail.spans, events + tail.events


@pytest.mark.parametrize("steps", [[320], [1, 7, 333, 80, 1024, 2], [96_000]])
def test_the_energy_gate_changes_no_decision(conversation: np.ndarray, steps: list[int]) -> None:
    stereo = _digits_in_speech(conversation)
    gated = DtmfMasker(RATE)
    ungated = DtmfMasker(RATE)
    # Opening the gate sends every block through the filters and all seven checks.
    ungated._detectors._gate_sub_energy = -np.inf
    ungated._detectors._maybe_tones = lambda energy, n_subs: np.ones(2, dtype=bool)
    out, spans, events = _mask_chunked(gated, stereo, steps)
    reference = _mask_chunked(ungated, stereo, [320])
    assert events == reference[2]
    assert spans == reference[1]
    np.testing.assert_array_equal(out, reference[0])
    assert {e.digit for e in events if isinstance(e, DtmfEvent)} >= set("1D7")


def test_the_stereo_masker_decides_as_one_detector_per_channel(conversation: np.ndarray) -> None:
    stereo = _digits_in_speech(conversation)
    _, _, events = _mask_chunked(DtmfMasker(RATE), stereo, [320])
    detectors = [DtmfDetector(RATE, channel=c) for c in range(2)]
    alone: list[DtmfToneOn | DtmfEvent] = []
    for channel, detector in enumerate(detectors):
        for i in range(0, len(stereo), 320):
            alone += detector.feed(stereo[i:i + 320, channel])
        alone += detector.flush()
    assert events and sorted(events, key=repr) == sorted(alone, key=repr)
