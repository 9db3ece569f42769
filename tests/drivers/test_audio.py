"""The capture ring, the playback queue, the simulated codec and the device-rate choice."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest

from linetap.drivers.audio import (
    AudioFileSource,
    CaptureRing,
    CodecStats,
    PlaybackQueue,
    SimCodec,
    SoundDeviceCodec,
    choose_device_rate,
    tone,
)
from linetap.firmware.clock import ManualClock
from linetap.firmware.errors import ConfigError, DeviceError, DeviceLost, DeviceTimeout

JOIN_TIMEOUT = 5.0


def ramp_block(seq: int, frames: int = 320, channels: int = 2) -> np.ndarray:
    return (np.arange(frames * channels).reshape(frames, channels) + 1000 * seq).astype(np.int16)


# --- CaptureRing ---------------------------------------------------------------------------

def test_ring_hands_blocks_over_in_order_with_the_channel_map() -> None:
    ring = CaptureRing(4, 320, columns=(3, 1))
    for seq in range(3):
        assert ring.push(ramp_block(seq, channels=4))
    for seq in range(3):
        got_seq, frames = ring.pop(timeout=0)
        assert got_seq == seq
        assert np.array_equal(frames, ramp_block(seq, channels=4)[:, [3, 1]])
    assert ring.pushed == 3 and ring.dropped == 0


def test_a_full_ring_drops_the_new_block_and_the_reader_sees_the_gap() -> None:
    ring = CaptureRing(2, 320)
    assert ring.push(ramp_block(0)) and ring.push(ramp_block(1))
    assert not ring.push(ramp_block(2))
    assert [ring.pop(timeout=0)[0] for _ in range(2)] == [0, 1]
    assert ring.push(ramp_block(3))
    seq, frames = ring.pop(timeout=0)
    assert seq == 3 and np.array_equal(frames, ramp_block(3))
    assert ring.dropped == 1 and ring.pushed == 3


def test_popped_frames_stay_valid_after_the_slot_is_reused() -> None:
    ring = CaptureRing(2, 320)
    ring.push(ramp_block(0))
    _, first = ring.pop(timeout=0)
    ring.push(ramp_block(1))
    ring.push(ramp_block(2))
    assert np.array_equal(first, ramp_block(0))


def test_push_allocates_no_audio_buffers() -> None:
    ring = CaptureRing(64, 320, columns=(1, 0))
    block = ramp_block(0)
    ring.push(block)  # first call warms up numpy's caches
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(50):
            ring.push(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < block.nbytes  # one copied block would already exceed this


def test_pop_times_out_with_device_timeout() -> None:
    with pytest.raises(DeviceTimeout, match="within 0 s"):
        CaptureRing(2, 320).pop(timeout=0)


def test_a_waiting_reader_wakes_for_a_push_from_another_thread() -> None:
    ring = CaptureRing(4, 320)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(ring.pop(timeout=JOIN_TIMEOUT)), name="test-ring-reader")
    reader.start()
    ring.push(ramp_block(0))
    reader.join(JOIN_TIMEOUT)
    assert not reader.is_alive()
    assert got[0][0] == 0


def test_close_wakes_a_waiting_reader_with_none() -> None:
    ring = CaptureRing(4, 320)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(ring.pop(timeout=JOIN_TIMEOUT)), name="test-ring-reader")
    reader.start()
    ring.close()
    reader.join(JOIN_TIMEOUT)
    assert not reader.is_alive()
    assert got == [None]


def test_a_failure_comes_after_the_blocks_captured_before_it_and_stays() -> None:
    ring = CaptureRing(4, 320)
    ring.push(ramp_block(0))
    ring.fail(DeviceLost("gone"))
    assert ring.pop(timeout=0)[0] == 0
    for _ in range(2):
        with pytest.raises(DeviceLost, match="gone"):
            ring.pop(timeout=0)


def test_a_ring_needs_two_slots() -> None:
    with pytest.raises(ConfigError, match="2 or more"):
        CaptureRing(1, 320)


# --- PlaybackQueue -------------------------------------------------------------------------

def test_playback_queue_plays_chunks_back_to_back_then_silence() -> None:
    queue = PlaybackQueue()
    queue.push(np.arange(1, 6, dtype=np.int16))
    queue.push(np.arange(6, 9, dtype=np.int16))
    assert queue.pending() == 8
    out = np.full(6, -1, dtype=np.int16)
    assert queue.read_into(out) == 6
    assert out.tolist() == [1, 2, 3, 4, 5, 6]
    assert queue.read_into(out) == 2
    assert out.tolist() == [7, 8, 0, 0, 0, 0]
    assert queue.pending() == 0


# --- SimCodec ------------------------------------------------------------------------------

def make_sim(clock: ManualClock, seconds: float = 0.2, **kwargs) -> tuple[SimCodec, np.ndarray, np.ndarray]:
    near = tone(440, seconds, 16000, -10.0)
    far = tone(1000, seconds / 2, 16000, -20.0)  # the shorter side is padded with silence
    return SimCodec(near, far, clock=clock, **kwargs), near, far


def test_sim_delivers_the_sources_block_by_block_then_none(clock: ManualClock) -> None:
    codec, near, far = make_sim(clock, seconds=0.21)  # 10.5 blocks: the last one is padded
    codec.start()
    blocks = []
    while (block := codec.read()) is not None:
        blocks.append(block)
    assert [b.seq for b in blocks] == list(range(11))
    captured = np.concatenate([b.frames for b in blocks])
    assert np.array_equal(captured[: len(near), 0], near)
    assert np.array_equal(captured[: len(far), 1], far)
    assert not captured[len(far):, 1].any() and not captured[len(near):, 0].any()
    assert codec.stats() == CodecStats(blocks=11, overruns=0, underruns=0, dropped_blocks=0)


def test_sim_is_paced_by_the_clock(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock)
    codec.start()
    for k in range(3):
        block = codec.read()
        assert block.t == pytest.approx(k * 0.02)
        assert clock.monotonic() == pytest.approx(1000.0 + (k + 1) * 0.02)
    clock.advance(1.0)  # a reader running late finds the blocks already due
    codec.read()
    assert clock.monotonic() == pytest.approx(1001.06)


def test_sim_times_out_when_the_next_block_is_not_due_in_time(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock)
    codec.start()
    with pytest.raises(DeviceTimeout, match="within 0.005 s"):
        codec.read(timeout=0.005)
    assert clock.monotonic() == pytest.approx(1000.005)
    assert codec.read(timeout=0.05).seq == 0


def test_sim_plays_into_the_line_from_the_next_block_and_logs_when(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock, seconds=0.4)
    codec.start()
    codec.read()
    codec.read()
    first, second = tone(1000, 0.05, 16000), tone(500, 0.01, 16000)
    codec.play(first)
    codec.play(second)
    assert codec.play_pending() == len(first) + len(second)
    while codec.play_pending():
        codec.read()
    line = codec.played
    assert not line[:640].any()
    assert np.array_equal(line[640:640 + len(first)], first)
    assert np.array_equal(line[640 + len(first):640 + len(first) + len(second)], second)
    assert not line[640 + len(first) + len(second):].any()
    assert [(r.stream_t, r.frames) for r in codec.play_log] == [
        (pytest.approx(0.04), len(first)), (pytest.approx(0.04 + 0.05), len(second))]
    assert codec.play_log[0].clock_t == pytest.approx(1000.04)


def test_sim_injected_overrun_leaves_a_gap_in_seq_and_time(clock: ManualClock) -> None:
    codec, near, _ = make_sim(clock)
    codec.start()
    codec.read()
    codec.inject_overrun(blocks=3)
    block = codec.read()
    assert block.seq == 4 and block.t == pytest.approx(0.08)
    assert np.array_equal(block.frames[:, 0], near[4 * 320:5 * 320])
    assert clock.monotonic() == pytest.approx(1000.1)
    assert codec.stats() == CodecStats(blocks=2, overruns=1, underruns=0, dropped_blocks=3)


def test_sim_lost_device_raises_after_the_given_blocks(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock)
    codec.start()
    codec.lose_device(after_blocks=2)
    assert [codec.read().seq for _ in range(2)] == [0, 1]
    for _ in range(2):
        with pytest.raises(DeviceLost, match="lost"):
            codec.read()


def test_sim_read_before_start_is_an_error(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock)
    with pytest.raises(DeviceError, match="start"):
        codec.read()


def test_sim_close_is_idempotent_and_read_then_returns_none(clock: ManualClock) -> None:
    with make_sim(clock)[0] as codec:
        codec.start()
        codec.read()
    codec.close()
    assert codec.read() is None


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def test_sim_reads_wav_files(tmp_path: Path, clock: ManualClock) -> None:
    near, far = tone(300, 0.04, 8000), tone(900, 0.04, 8000)
    codec = SimCodec(write_wav(tmp_path / "near.wav", near, 8000), str(write_wav(tmp_path / "far.wav", far, 8000)),
                     rate=8000, block_frames=160, clock=clock)
    codec.start()
    frames = np.concatenate([codec.read().frames for _ in range(2)])
    assert np.array_equal(frames, np.column_stack([near, far]))


@pytest.mark.parametrize(("rate", "channels", "expected"), [
    (8000, 1, r"8000 Hz, 1 channel"), (16000, 2, r"16000 Hz, 2 channel")])
def test_sim_refuses_wav_files_it_would_have_to_convert(tmp_path: Path, clock: ManualClock, rate: int,
                                                        channels: int, expected: str) -> None:
    path = write_wav(tmp_path / "far.wav", np.zeros(800 * channels, np.int16), rate, channels)
    with pytest.raises(ConfigError, match=expected) as caught:
        SimCodec(np.zeros(10, np.int16), path, clock=clock)
    assert str(path) in str(caught.value) and "sox" in str(caught.value)


def test_sim_refuses_missing_files_and_non_int16_arrays(tmp_path: Path, clock: ManualClock) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SimCodec(tmp_path / "none.wav", np.zeros(10, np.int16), clock=clock)
    with pytest.raises(ConfigError, match="int16"):
        SimCodec(np.zeros(10, np.float32), np.zeros(10, np.int16), clock=clock)


class CountingSource:
    """A sample source that says how far the codec has read it."""

    def __init__(self, samples: np.ndarray) -> None:
        self.samples, self.taken, self.closed = samples, 0, False

    def read(self, frames: int) -> np.ndarray:
        chunk = self.samples[self.taken:self.taken + frames]
        self.taken += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed = True


def test_sim_reads_its_sources_only_as_blocks_fall_due(clock: ManualClock) -> None:
    near, far = CountingSource(tone(300, 1.0, 16000)), CountingSource(tone(900, 0.5, 16000))
    codec = SimCodec(near, far, clock=clock, keep_played=False)
    assert near.taken == far.taken == 0
    codec.start()
    for k in range(1, 4):
        codec.read()
        assert near.taken == far.taken == k * 320
    codec.inject_overrun(blocks=2)
    assert codec.read().seq == 5 and near.taken == 6 * 320
    blocks = 6
    while codec.read() is not None:
        blocks += 1
    assert blocks == 50 and far.taken == len(far.samples)  # the shorter side padded with silence
    with pytest.raises(DeviceError, match="keep_played"):
        codec.played
    codec.close()
    assert near.closed and far.closed


def write_long_file(path: Path, seconds: float, rate: int, channels: int, fmt: str, subtype: str) -> np.ndarray:
    """A file of a swept tone, written a second at a time; returns its first channel as float32."""
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    signal = (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t)).astype(np.float32)
    with soundfile.SoundFile(path, "w", rate, channels, subtype, format=fmt) as out:
        for start in range(0, len(signal), rate):
            out.write(np.repeat(signal[start:start + rate, None], channels, axis=1))
    return signal


@pytest.mark.parametrize(("rate", "channels", "fmt", "subtype"), [
    (48000, 2, "WAV", "PCM_16"), (8000, 1, "OGG", "VORBIS"), (16000, 2, "WAV", "FLOAT")])
def test_file_source_streams_any_rate_and_layout_as_mono_at_the_pipeline_rate(
        tmp_path: Path, rate: int, channels: int, fmt: str, subtype: str) -> None:
    import soxr

    path = tmp_path / f"in.{fmt.lower()}"
    signal = write_long_file(path, 3.0, rate, channels, fmt, subtype)
    source = AudioFileSource(path, 16000)
    parts = []
    while len(part := source.read(320)):
        assert part.dtype == np.int16 and len(part) <= 320
        parts.append(part)
    source.close()
    got = np.concatenate(parts).astype(np.float64) / 32767
    expected = soxr.resample(signal, rate, 16000) if rate != 16000 else signal
    assert abs(len(got) - len(expected)) <= 2
    n = min(len(got), len(expected))
    tolerance = 0.05 if subtype == "VORBIS" else 0.002  # a lossy codec is near, not exact
    assert np.sqrt(np.mean((got[:n] - expected[:n]) ** 2)) < tolerance


def test_file_source_passes_pipeline_rate_pcm_through_exactly(tmp_path: Path) -> None:
    samples = tone(700, 1.3, 16000, -6.0)
    path = write_wav(tmp_path / "exact.wav", samples, 16000)
    source = AudioFileSource(path, 16000)
    got = np.concatenate([source.read(500) for _ in range(len(samples) // 500 + 2)])
    assert np.array_equal(got, samples)


def _peak_while_streaming(path: Path, clock: ManualClock) -> int:
    codec = SimCodec(AudioFileSource(path, 16000), np.zeros(0, np.int16), clock=clock, keep_played=False)
    codec.start()
    codec.read()
    tracemalloc.start()
    try:
        while codec.read() is not None:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        codec.close()
    return peak


def test_file_source_holds_a_chunk_not_the_file(tmp_path: Path, clock: ManualClock) -> None:
    """Peak traced memory does not grow with the file: 210 s more of 48 kHz stereo input would be
    40 MB decoded and 6.7 MB at the pipeline's rate if it were held. (Compared, not bounded
    absolutely, because tracemalloc also sees whatever other threads of the session allocate.)"""
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    write_long_file(short, 30.0, 48000, 2, "WAV", "PCM_16")
    write_long_file(long, 240.0, 48000, 2, "WAV", "PCM_16")  # 46 MB on disk
    assert _peak_while_streaming(long, clock) < _peak_while_streaming(short, clock) + 3_000_000


def test_file_source_names_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audio file .*none.wav does not exist"):
        AudioFileSource(tmp_path / "none.wav", 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really")
    with pytest.raises(ConfigError, match="not a readable WAV or Ogg file.*sox"):
        AudioFileSource(tmp_path / "junk.wav", 16000)


def test_play_takes_mono_int16_only(clock: ManualClock) -> None:
    codec, _, _ = make_sim(clock)
    with pytest.raises(ValueError, match="mono int16"):
        codec.play(np.zeros((10, 2), np.int16))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": 44100}, "rate 44100"), ({"block_frames": 0}, "block_frames"), ({"queue_blocks": 1}, "queue_blocks")])
def test_codec_layout_is_checked(clock: ManualClock, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimCodec(np.zeros(10, np.int16), np.zeros(10, np.int16), clock=clock, **kwargs)


# --- SoundDeviceCodec: what needs no device ------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"near": 1, "far": 1}, "two different capture channels"),
    ({"near": 0, "far": 2}, r"0\.\.1"),
    ({"line_out": (2,)}, "line_out"),
])
def test_device_codec_refuses_an_impossible_channel_map(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SoundDeviceCodec("any", rate=16000, block_frames=320, **kwargs)


def accepting(*rates: int):
    return lambda rate: rate in rates


@pytest.mark.parametrize(("rate", "native", "accepted", "expected"), [
    (16000, None, (16000, 48000), 16000),
    (16000, None, (44100, 48000), 48000),
    (8000, None, (48000,), 48000),
    (16000, 48000, (16000, 48000), 48000),
    (8000, 16000, (16000,), 16000),
])
def test_device_rate_choice(rate: int, native: int | None, accepted: tuple, expected: int) -> None:
    assert choose_device_rate(rate, native, accepting(*accepted)) == expected


def test_device_rate_choice_explains_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="44100 is not a whole multiple of the pipeline rate 16000"):
        choose_device_rate(16000, 44100, accepting(44100))
    with pytest.raises(DeviceError, match="refuses audio.native_rate 48000"):
        choose_device_rate(16000, 48000, accepting(16000))
    with pytest.raises(DeviceError, match="neither 16000 Hz nor 48000 Hz"):
        choose_device_rate(16000, None, accepting(44100))


def run_python(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_importing_the_driver_does_not_load_portaudio() -> None:
    done = run_python("import sys, linetap.drivers.audio; print('sounddevice' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_missing_portaudio_says_which_package_to_install(tmp_path: Path) -> None:
    # sounddevice raises exactly this when libportaudio2 is not installed.
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    done = run_python(
        "from linetap.drivers.audio import SoundDeviceCodec\n"
        "from linetap.firmware.errors import DeviceError\n"
        "try:\n"
        "    SoundDeviceCodec('USB', rate=16000, block_frames=320)\n"
        "except DeviceError as error:\n"
        "    print(error)\n", extra_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "apt-get install libportaudio2" in done.stdout
    assert "PortAudio library not found" in done.stdout


def test_stop_playing_cuts_a_prompt_short() -> None:
    rate, block = 16000, 320
    codec = SimCodec(np.zeros(rate, np.int16), np.zeros(rate, np.int16), rate=rate,
                     block_frames=block, clock=ManualClock())
    codec.start()
    codec.play(np.full(10 * block, 1000, np.int16))
    codec.read()
    codec.read()
    codec.stop_playing()
    assert codec.play_pending() == 0
    codec.read()
    played = codec.played
    assert (played[:2 * block] == 1000).all() and not played[2 * block:].any()
