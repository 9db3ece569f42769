"""The segmented Ogg Opus encoder: segments are page-aligned pieces of one continuous stream.

Decoding is checked with the standard tool (``opusdec`` from opus-tools) on
the concatenated segments, as the central store or anyone with the key would
do it, and with the module's own in-memory decoder.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pyrage
import pytest
from speech import corpus, speech_dir

from linetap.firmware.encoder import (GRANULE_RATE, MAX_PAGE_MS, OpusSegmenter, ogg_pages,
                                      segments_to_pcm)
from linetap.firmware.errors import ConfigError, SpoolError

pytestmark = pytest.mark.skipif(shutil.which("opusdec") is None,
                                reason="needs opusdec: apt-get install opus-tools")

BLOCK_S = 0.02


def _stereo(tmp_path_factory: pytest.TempPathFactory, rate: int, seconds: float) -> np.ndarray:
    """Two different talkers: near (left) and far (right)."""
    cache = speech_dir(tmp_path_factory)
    near = corpus(cache, rate=rate, seconds=seconds, seed=3)
    far = corpus(cache, rate=rate, seconds=seconds, seed=4)
    length = int(seconds * rate)
    return np.stack([near[:length], far[:length]], axis=1)


@pytest.fixture(scope="module")
def call16(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return _stereo(tmp_path_factory, 16000, 9.3)


def _encode(audio: np.ndarray, rate: int, segment_s: float,
            block: int | None = None) -> tuple[list[bytes], list[int]]:
    """All segments of ``audio``, and how many frames had gone in when each came out."""
    block = block or int(rate * BLOCK_S)
    segments: list[bytes] = []
    emitted_at: list[int] = []
    with OpusSegmenter(rate, segment_s=segment_s) as encoder:
        for start in range(0, len(audio), block):
            done = encoder.write(audio[start:start + block])
            segments += done
            emitted_at += [min(start + block, len(audio))] * len(done)
        segments.append(encoder.finish())
    return segments, emitted_at


def _opusdec(data: bytes, rate: int, folder: Path) -> np.ndarray:
    source, target = folder / "call.opus", folder / "call.wav"
    source.write_bytes(data)
    subprocess.run(["opusdec", "--quiet", "--rate", str(rate), str(source), str(target)],
                   check=True, capture_output=True, timeout=60)
    with wave.open(str(target), "rb") as wav:
        assert wav.getnchannels() == 2
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation at zero lag (the decoders compensate the codec delay)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def _envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    block = rate // 50
    count = len(samples) // block
    return np.sqrt(np.mean(samples[:count * block].astype(np.float64).reshape(count, block) ** 2,
                           axis=1))


def _assert_same_call(decoded: np.ndarray, source: np.ndarray, rate: int) -> None:
    """Right length (to a few ms), near still left, far still right.

    Opus keeps the waveform only roughly at 24 kbit/s (less so at 48 kHz,
    where the high band is coded parametrically), and the test talkers speak
    at once all the time, so a channel's own source correlates from about 0.6
    and the other channel's near 0; its loudness contour matches its own
    source almost exactly.
    """
    assert abs(len(decoded) - len(source)) <= rate * 0.003
    length = min(len(decoded), len(source))
    for channel, other in ((0, 1), (1, 0)):
        assert _similarity(decoded[:length, channel], source[:length, channel]) > 0.5
        assert abs(_similarity(decoded[:length, channel], source[:length, other])) < 0.15
        assert _similarity(_envelope(decoded[:length, channel], rate),
                           _envelope(source[:length, channel], rate)) > 0.95


def test_segments_are_consecutive_whole_pages_of_one_stream(call16: np.ndarray) -> None:
    segments, _ = _encode(call16, 16000, segment_s=2.0)
    assert len(segments) == 5  # 2, 2, 2, 2, then the 1.3 s left when the call ends
    pages_per_segment = [ogg_pages(segment) for segment in segments]
    pages = [page for group in pages_per_segment for page in group]
    assert all(segment.startswith(b"OggS") for segment in segments)
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert len({p.serial for p in pages}) == 1
    assert [p.bos for p in pages].count(True) == 1 and pages[0].bos
    assert pages_per_segment[0][0].body.startswith(b"OpusHead")
    assert pages_per_segment[0][1].body.startswith(b"OpusTags")
    assert not any(p.body.startswith((b"OpusHead", b"OpusTags")) for p in pages[2:])
    assert [p.eos for p in pages] == [False] * (len(pages) - 1) + [True]
    ends = [group[-1].granule for group in pages_per_segment]
    assert np.diff([0, *ends[:-1]]).tolist() == [2 * GRANULE_RATE] * 4
    audio_granules = [p.granule for p in pages if p.granule > 0]
    assert max(np.diff(audio_granules)) <= MAX_PAGE_MS * GRANULE_RATE // 1000


def test_opusdec_decodes_the_concatenation_as_one_continuous_call(
        call16: np.ndarray, tmp_path: Path) -> None:
    segments, _ = _encode(call16, 16000, segment_s=2.0)
    decoded = _opusdec(b"".join(segments), 16000, tmp_path)
    _assert_same_call(decoded, call16, 16000)


def test_in_memory_decoder_gives_the_call_back(call16: np.ndarray) -> None:
    segments, _ = _encode(call16, 16000, segment_s=2.0)
    decoded = segments_to_pcm(segments, 16000)
    assert decoded.dtype == np.int16
    assert len(decoded) == len(call16)
    _assert_same_call(decoded, call16, 16000)


def test_how_frames_are_split_into_writes_does_not_change_the_stream(call16: np.ndarray) -> None:
    in_20ms, _ = _encode(call16, 16000, segment_s=2.0)
    in_odd_blocks, _ = _encode(call16, 16000, segment_s=2.0, block=997)
    # Only the stream serial differs: it is random so that streams never collide.
    assert [[(p.granule, p.body) for p in ogg_pages(s)] for s in in_odd_blocks] == \
        [[(p.granule, p.body) for p in ogg_pages(s)] for s in in_20ms]


def test_a_whole_call_in_one_write_gives_the_same_stream(call16: np.ndarray) -> None:
    in_20ms, _ = _encode(call16, 16000, segment_s=2.0)
    at_once, emitted_at = _encode(call16, 16000, segment_s=2.0, block=len(call16))
    assert emitted_at == [len(call16)] * 4
    assert [[(p.granule, p.body) for p in ogg_pages(s)] for s in at_once] == \
        [[(p.granule, p.body) for p in ogg_pages(s)] for s in in_20ms]


def test_a_segment_comes_out_about_a_page_after_its_end(call16: np.ndarray) -> None:
    rate = 16000
    _, emitted_at = _encode(call16, rate, segment_s=2.0)
    boundaries = [2 * rate * (i + 1) for i in range(len(emitted_at))]
    lag_s = [(at - end) / rate for at, end in zip(emitted_at, boundaries)]
    assert len(lag_s) == 4
    # The muxer holds the newest page (1 s) back; one more 40 ms Opus frame of codec delay.
    assert all(0 < lag <= 1.1 for lag in lag_s)


def test_segment_length_that_is_not_whole_seconds_ends_a_few_frames_late(
        call16: np.ndarray) -> None:
    segments, _ = _encode(call16, 16000, segment_s=1.3)
    ends = [ogg_pages(segment)[-1].granule for segment in segments]
    spans = np.diff([0, *ends[:-1]]) / GRANULE_RATE
    # 1.3 s is 32.5 frames of 40 ms: rounded up to 33, in two pages of 17 frames.
    assert spans.tolist() == [1.36] * 6
    assert len(segments) == 7


def test_a_call_shorter_than_a_segment_is_one_segment(tmp_path: Path,
                                                       call16: np.ndarray) -> None:
    short = call16[:int(1.3 * 16000)]
    segments, _ = _encode(short, 16000, segment_s=10.0)
    assert len(segments) == 1
    pages = ogg_pages(segments[0])
    assert pages[0].body.startswith(b"OpusHead") and pages[-1].eos
    _assert_same_call(_opusdec(segments[0], 16000, tmp_path), short, 16000)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_other_rates(rate: int, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    audio = _stereo(tmp_path_factory, rate, 4.5)
    segments, _ = _encode(audio, rate, segment_s=2.0)
    assert len(segments) == 2
    _assert_same_call(_opusdec(b"".join(segments), rate, tmp_path), audio, rate)
    assert len(segments_to_pcm(segments, rate)) == len(audio)


@pytest.mark.skipif(shutil.which("age") is None or shutil.which("age-keygen") is None,
                    reason="needs age: apt-get install age")
def test_encrypted_segments_decrypt_with_age_and_decode_as_one_call(
        call16: np.ndarray, tmp_path: Path) -> None:
    key = tmp_path / "central.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True, timeout=30)
    public = next(line.split(": ", 1)[1] for line in key.read_text().splitlines()
                  if line.startswith("# public key: "))
    recipient = pyrage.x25519.Recipient.from_str(public)
    segments, _ = _encode(call16, 16000, segment_s=2.0)
    plaintext = b""
    for index, segment in enumerate(segments):
        sealed = tmp_path / f"{index:06d}.age"
        sealed.write_bytes(pyrage.encrypt(segment, [recipient]))
        assert b"OggS" not in sealed.read_bytes()
        opened = subprocess.run(["age", "-d", "-i", str(key), str(sealed)], check=True,
                                capture_output=True, timeout=30).stdout
        assert opened == segment
        plaintext += opened
    _assert_same_call(_opusdec(plaintext, 16000, tmp_path), call16, 16000)


def test_no_audio_gives_no_segment() -> None:
    encoder = OpusSegmenter(16000)
    assert encoder.write(np.zeros((0, 2), dtype=np.int16)) == []
    assert encoder.finish() == b""


def test_misuse_is_refused_with_the_value_named() -> None:
    with pytest.raises(ConfigError, match="44100"):
        OpusSegmenter(44100)
    with pytest.raises(ConfigError, match="16000.*mono"):
        OpusSegmenter(16000, bitrate=16000)
    with pytest.raises(ConfigError, match="segment_s = 0.1"):
        OpusSegmenter(16000, segment_s=0.1)
    encoder = OpusSegmenter(16000)
    with pytest.raises(SpoolError, match=r"\(320,\).*int16"):
        encoder.write(np.zeros(320, dtype=np.int16))
    with pytest.raises(SpoolError, match="float32"):
        encoder.write(np.zeros((320, 2), dtype=np.float32))
    encoder.close()
    encoder.close()
    with pytest.raises(SpoolError, match="after finish"):
        encoder.write(np.zeros((320, 2), dtype=np.int16))


def test_data_that_is_not_whole_ogg_pages_is_refused(call16: np.ndarray) -> None:
    segments, _ = _encode(call16[:16000], 16000, segment_s=2.0)
    with pytest.raises(SpoolError, match="ends inside a page"):
        ogg_pages(segments[0][:-1])
    with pytest.raises(SpoolError, match="no Ogg page at byte 0"):
        ogg_pages(segments[0][1:])
