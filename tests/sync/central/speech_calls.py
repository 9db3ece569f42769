"""Calls with known speech for the analytics tests and bench: espeak-ng on both channels, recorded by a
real box's spool at 16 kHz or 8 kHz and brought into a central store with ``linetap-central import``."""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
import soxr

from central_boxes import Box, uuid7_at
from linetap.drivers.events import CallerId
from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, SpoolSink

VOICES = {"near": ["-v", "en-us", "-s", "150"], "far": ["-v", "en-gb", "-s", "145"]}
CARD = "4111 1111 1111 1111"  # a Luhn-valid test card number


@dataclass(frozen=True)
class Turn:
    channel: str  # near (agent) or far (caller)
    text: str
    at_s: float  # when it starts in the call
    masked: bool = False  # listed as a masked span (DTMF) in the manifest, audio left in on purpose


@dataclass
class SpeechCall:
    rate: int
    turns: list[Turn]
    private: bool = False
    seconds: float = field(default=0.0)

    def said(self, channel: str) -> str:
        return " ".join(t.text for t in self.turns if t.channel == channel and not t.masked)


def speak(channel: str, text: str, rate: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", *VOICES[channel], "-w", wav.name, text], check=True)
        audio, source = soundfile.read(wav.name, dtype="float32")
    return soxr.resample(audio, source, rate) * 0.5


def frames_of(call: SpeechCall) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(n, 2) int16 stereo at the call's rate, and the masked spans in seconds."""
    pieces = [(t, speak(t.channel, t.text, call.rate)) for t in call.turns]
    call.seconds = max(t.at_s + len(a) / call.rate for t, a in pieces) + 0.5
    out = np.zeros((int(call.seconds * call.rate), 2), dtype=np.float32)
    masks = []
    for turn, audio in pieces:
        start = int(turn.at_s * call.rate)
        out[start:start + len(audio), 0 if turn.channel == "near" else 1] += audio
        if turn.masked:
            masks.append((turn.at_s, turn.at_s + len(audio) / call.rate))
    return (np.clip(out, -1, 1) * 32767).astype(np.int16), masks


def record(box: Box, call: SpeechCall) -> str:
    """Record the call on the box's spool (as the recorder hands it over); returns its recording id."""
    frames, masks = frames_of(call)
    codec = CodecParams(rate=call.rate, segment_s=5.0)
    sink = SpoolSink(box.spool, codec)
    rid = uuid7_at(box.clock.wall(), len(box.calls) + 1)
    record_ = CallRecord(rid, box.clock.monotonic(), box.clock.wall(), True,
                         caller=CallerId(number="+15551230001", name="ACME Corp"))
    sink.open(record_)
    block = call.rate // 50
    for start in range(0, len(frames), block):
        sink.write(frames[start:start + block])
        box.clock.advance(0.02)
    events = [CallEvent(0.0, "call-start", {"source": "gpio"})]
    if call.private:
        events.append(CallEvent(0.0, "private", {}))
    ended = CallRecord(**{**record_.__dict__, "recorded": True, "ended_by": "hang-up",
                          "ended_mono": box.clock.monotonic(), "events": tuple(events)})
    sink.close(Recording(ended, len(frames), 0.0, tuple(masks), {}))
    box.calls.append(rid)
    box.clock.advance(60)
    return rid


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's words (case and punctuation ignored, digits spelled
    as Whisper may write them count as they are said)."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())
