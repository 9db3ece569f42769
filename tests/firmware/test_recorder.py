"""The recorder's keep gate: decisions taken at the input position apply sample-exactly to the delayed output."""

from __future__ import annotations

import numpy as np
import pytest

from linetap.firmware.callevents import DtmfDetected, FarSpeech
from linetap.firmware.callrecord import CallRecord
from linetap.firmware.dsp import dtmf_tone, tone
from linetap.firmware.recorder import MemorySink, Recorder

RATE = 16000
BLOCK = 320


def counting(n: int) -> np.ndarray:
    """Stereo frames whose values say where they are: sample i holds (i % 20000) + 1 on both sides."""
    values = (np.arange(n) % 20000 + 1).astype(np.int16)
    return np.stack([values, values], axis=1)


def call(call_id: str = "c1") -> CallRecord:
    return CallRecord(call_id=call_id, started_mono=0.0, started_wall=0.0, clock_synced=True)


def feed(recorder: Recorder, audio: np.ndarray, actions: dict[int, list]) -> list:
    events = []
    for index, start in enumerate(range(0, len(audio), BLOCK)):
        for act in actions.get(index, []):
            act()
        events += recorder.feed(audio[start:start + BLOCK])
    return events


def test_keep_applies_from_the_exact_input_sample_despite_the_delay() -> None:
    sink = MemorySink()
    recorder = Recorder(RATE, sink)
    audio = counting(100 * BLOCK)
    c = call()
    feed(recorder, audio, {10: [lambda: recorder.open(c), lambda: recorder.keep(True)],
                           60: [lambda: recorder.keep(False), lambda: recorder.close(c)]})
    recorder.flush()
    (recording, kept), = sink.recordings
    assert np.array_equal(kept, audio[10 * BLOCK:60 * BLOCK])
    assert recording.frames == 50 * BLOCK and recording.audio_start_s == 0.0


def test_pause_stores_silence_for_exactly_the_paused_samples() -> None:
    sink = MemorySink()
    recorder = Recorder(RATE, sink)
    audio = counting(100 * BLOCK)
    c = call()
    feed(recorder, audio, {0: [lambda: recorder.open(c), lambda: recorder.keep(True)],
                           20: [lambda: recorder.pause(True)], 30: [lambda: recorder.pause(False)],
                           90: [lambda: recorder.keep(False), lambda: recorder.close(c)]})
    recorder.flush()
    (_, kept), = sink.recordings
    assert not kept[20 * BLOCK:30 * BLOCK].any()
    assert np.array_equal(kept[:20 * BLOCK], audio[:20 * BLOCK])
    assert np.array_equal(kept[30 * BLOCK:], audio[30 * BLOCK:90 * BLOCK])


def test_discard_destroys_what_was_kept_including_the_delay_line() -> None:
    sink = MemorySink()
    recorder = Recorder(RATE, sink)
    audio = counting(60 * BLOCK)
    c = call()
    feed(recorder, audio, {0: [lambda: recorder.open(c), lambda: recorder.keep(True)],
                           30: [lambda: recorder.keep(False), recorder.discard],
                           50: [lambda: recorder.close(c)]})
    recorder.flush()
    (recording, kept), = sink.recordings
    assert len(kept) == 0 and recording.frames == 0 and recording.audio_start_s is None


def test_audio_start_is_on_the_call_axis_when_keeping_starts_later() -> None:
    sink = MemorySink()
    recorder = Recorder(RATE, sink)
    c = call()
    feed(recorder, counting(40 * BLOCK), {5: [lambda: recorder.open(c)], 15: [lambda: recorder.keep(True)],
                                          35: [lambda: recorder.keep(False), lambda: recorder.close(c)]})
    recorder.flush()
    (recording, _), = sink.recordings
    assert recording.audio_start_s == pytest.approx(10 * BLOCK / RATE)


def test_dtmf_is_reported_masked_and_far_speech_detected() -> None:
    sink = MemorySink()
    recorder = Recorder(RATE, sink)
    c = call()
    silence = np.zeros((RATE, 2), np.int16)
    talk = np.stack([np.zeros(RATE, np.int16), tone(300, 1.0, RATE, -15)], axis=1)
    digit = dtmf_tone("7", 0.1, RATE)
    keyed = np.zeros((RATE, 2), np.int16)
    keyed[: len(digit), 0] = digit
    audio = np.concatenate([silence, talk, keyed, silence])
    events = feed(recorder, audio, {0: [lambda: recorder.open(c), lambda: recorder.keep(True)]})
    recorder.close(c)
    recorder.flush()
    assert events.count(FarSpeech()) == 1
    assert events.count(DtmfDetected("7", "near")) == 1
    (recording, kept), = sink.recordings
    (start, end), = recording.masks
    assert start == pytest.approx(2.0 - 0.01, abs=0.005) and end >= 2.1
    assert not kept[2 * RATE:int(2.1 * RATE)].any()


class FullSink(MemorySink):
    """A sink whose disk fills after ``room`` frames."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, frames: np.ndarray) -> None:
        from linetap.firmware.errors import SpoolError

        if self.room < len(frames):
            raise SpoolError("disk full")
        self.room -= len(frames)
        super().write(frames)


def test_a_failing_sink_becomes_a_fault_and_nothing_more_is_written() -> None:
    from linetap.firmware.callevents import Fault

    sink = FullSink(room=20 * BLOCK)
    recorder = Recorder(RATE, sink)
    c = call()
    events = feed(recorder, counting(60 * BLOCK), {0: [lambda: recorder.open(c), lambda: recorder.keep(True)],
                                                    55: [lambda: recorder.keep(False), lambda: recorder.close(c)]})
    recorder.flush()
    assert events.count(Fault("disk full")) == 1
    (recording, kept), = sink.recordings
    assert 19 * BLOCK < len(kept) <= 20 * BLOCK and recording.frames == len(kept)
