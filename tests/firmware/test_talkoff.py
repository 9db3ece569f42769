"""Talk-off: speech must never be taken for a DTMF digit.

A false digit would silence speech in the recording, or worse, be taken for
the caller's opt-out key. Ten minutes of varied synthesised speech per channel
(voices, pitches, speeds; texts full of numbers, sustained and sung vowels)
go through the masker, which runs a detector on each channel.
"""

from __future__ import annotations

import numpy as np
import pytest
from speech import corpus, speech_dir

from linetap.firmware.dsp.dtmf import DtmfDetector, DtmfMasker

pytestmark = pytest.mark.slow

TEN_MINUTES = 600.0


def _stereo(tmp_path_factory: pytest.TempPathFactory, rate: int, seconds: float) -> np.ndarray:
    cache = speech_dir(tmp_path_factory)
    near = corpus(cache, rate=rate, seconds=seconds, seed=0)
    far = corpus(cache, rate=rate, seconds=seconds, seed=1)
    length = min(len(near), len(far))
    return np.stack([near[:length], far[:length]], axis=1)


def test_ten_minutes_of_speech_on_each_channel_give_no_digit(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    rate = 16000
    stereo = _stereo(tmp_path_factory, rate, TEN_MINUTES)
    assert len(stereo) >= TEN_MINUTES * rate
    masker = DtmfMasker(rate)
    block = rate // 50
    found = []
    stored = []
    for i in range(0, len(stereo), block):
        result = masker.feed(stereo[i:i + block])
        found += result.events
        stored.append(result.audio)
    found += masker.flush().events
    assert found == []
    delayed = np.concatenate(stored)[masker.lookahead_frames:]
    np.testing.assert_array_equal(delayed, stereo[:len(delayed)])


@pytest.mark.parametrize("rate", [8000, 48000])
def test_speech_at_other_rates_gives_no_digit(tmp_path_factory: pytest.TempPathFactory,
                                              rate: int) -> None:
    seconds = TEN_MINUTES if rate == 8000 else 120.0
    speech = corpus(speech_dir(tmp_path_factory), rate=rate, seconds=seconds, seed=2)
    detector = DtmfDetector(rate)
    block = rate // 50
    found = []
    for i in range(0, len(speech), block):
        found += detector.feed(speech[i:i + block])
    assert found + detector.flush() == []
