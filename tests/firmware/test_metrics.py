"""Per-call QA metrics on a synthetic conversation with known talk spans."""

from __future__ import annotations

import json

import numpy as np
import pytest

from linetap.firmware.dsp.levels import MIN_DBFS, VadSettings
from linetap.firmware.dsp.metrics import CallMetrics
from linetap.firmware.dsp.tones import mix, white_noise
from linetap.firmware.errors import ConfigError

RATE = 16000
SECONDS = 18.0
HANGOVER = 0.2
VAD = VadSettings(hangover_s=HANGOVER)

# Talk spans (noise bursts standing in for speech). The near end talks 1..6 s
# with a short pause, the far end answers, they talk over each other at 7.5..8.2,
# then both are silent (a hold) until the far end comes back at 14 s.
NEAR = [(1.0, 4.0), (4.5, 6.0), (7.5, 8.5), (15.5, 16.0)]
FAR = [(6.5, 8.0), (14.0, 15.0)]
CLIPPED_AT, CLIPPED_SAMPLES = 2.0, 100


def side(spans: list[tuple[float, float]], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = white_noise(SECONDS, RATE, -65.0, rng)
    for start, end in spans:
        signal = mix(signal, white_noise(end - start, RATE, -20.0, rng),
                     offsets=(0, int(start * RATE)))
    return signal


@pytest.fixture(scope="module")
def call() -> np.ndarray:
    near = side(NEAR, 1)
    near[int(CLIPPED_AT * RATE):int(CLIPPED_AT * RATE) + CLIPPED_SAMPLES] = 32767
    return np.stack([near, side(FAR, 2)], axis=1)


def measure(audio: np.ndarray, block: int = 320, **options) -> dict:
    metrics = CallMetrics(RATE, vad=VAD, **options)
    for i in range(0, len(audio), block):
        metrics.feed(audio[i:i + block])
    return metrics.result()


def speech_level(audio: np.ndarray, active: list[tuple[float, float]]) -> float:
    parts = np.concatenate([audio[int(a * RATE):int(b * RATE)] for a, b in active])
    return 10 * np.log10(np.mean(parts.astype(float) ** 2) * 2 / 32767 ** 2)


def test_conversation_metrics(call: np.ndarray) -> None:
    result = measure(call, hold_min_s=3.0, monologue_pause_s=1.0)
    # Each span is active until HANGOVER after it ends.
    near_active = [(1.0, 4.2), (4.5, 6.2), (7.5, 8.7), (15.5, 16.2)]
    far_active = [(6.5, 8.2), (14.0, 15.2)]

    assert result["duration_s"] == SECONDS
    assert result["talk_s"] == {"near": pytest.approx(6.8), "far": pytest.approx(2.9)}
    assert result["overtalk_share"] == pytest.approx(0.7 / SECONDS, abs=1e-3)
    assert result["silence_share"] == pytest.approx(9.0 / SECONDS, abs=1e-3)
    # Near: 1.0 .. 6.2 s, its 0.3 s pause bridged, ended by the far end at 6.5 s.
    # Far: 6.5 .. 7.5 s is cut by the near end talking over it; 14.0 .. 15.2 s is longer.
    assert result["longest_monologue_s"] == {"near": pytest.approx(5.2), "far": pytest.approx(1.2)}
    assert result["hold_spans"] == [[pytest.approx(8.7), pytest.approx(14.0)]]
    assert result["clipping_share"]["near"] == pytest.approx(CLIPPED_SAMPLES / (SECONDS * RATE))
    assert result["clipping_share"]["far"] == 0.0
    assert result["rms_dbfs"]["near"] == pytest.approx(speech_level(call[:, 0], near_active),
                                                       abs=0.05)
    assert result["rms_dbfs"]["far"] == pytest.approx(speech_level(call[:, 1], far_active),
                                                      abs=0.05)
    assert json.loads(json.dumps(result)) == result


def test_a_short_pause_limit_splits_the_monologue(call: np.ndarray) -> None:
    result = measure(call, hold_min_s=3.0, monologue_pause_s=0.2)
    assert result["longest_monologue_s"]["near"] == pytest.approx(3.2)


def test_results_do_not_depend_on_block_size(call: np.ndarray) -> None:
    assert measure(call, block=320) == measure(call, block=1237) == measure(call, block=48000)


def test_a_hold_still_open_at_the_end_is_reported(call: np.ndarray) -> None:
    metrics = CallMetrics(RATE, vad=VAD, hold_min_s=3.0)
    metrics.feed(call[:int(12.0 * RATE)])
    assert metrics.result()["hold_spans"] == [[pytest.approx(8.7), pytest.approx(12.0)]]


def test_silent_call() -> None:
    result = measure(np.zeros((RATE * 2, 2), np.int16), hold_min_s=1.0)
    assert result["talk_s"] == {"near": 0.0, "far": 0.0}
    assert result["silence_share"] == 1.0 and result["overtalk_share"] == 0.0
    assert result["rms_dbfs"] == {"near": MIN_DBFS, "far": MIN_DBFS}
    assert result["hold_spans"] == [[0.0, 2.0]]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="hold_min_s"):
        CallMetrics(RATE, hold_min_s=0)
    with pytest.raises(ValueError, match="stereo"):
        CallMetrics(RATE).feed(np.zeros(320, np.int16))
