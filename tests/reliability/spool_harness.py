"""A recorder process for the power-loss test: opens the spool and records calls until killed.

Usage: ``python spool_harness.py DATA_DIR SEED [--recover-only]``

Each line on stdout reports a step that is durable by the time it is printed:
``ready <findings>``, ``open <rec> <seq>``, ``seg <rec> <index>``,
``closed <rec> <seq>``. The parent kills this process at random points.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.clock import SystemClock
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, OpenRecording, Spool, SpoolSink

RATE = 8000
CODEC = CodecParams(rate=RATE, segment_s=0.5)
BLOCK = 160  # 20 ms, as the audio reader delivers it


class ReportingSpool(Spool):
    """Prints each step after the spool has made it durable."""

    def begin(self, call: CallRecord, codec: CodecParams) -> OpenRecording:
        rec = super().begin(call, codec)
        say(f"open {rec.recording_id} {rec.seq}")
        return rec

    def add_segment(self, rec: OpenRecording, plaintext: bytes) -> dict[str, Any]:
        entry = super().add_segment(rec, plaintext)
        say(f"seg {rec.recording_id} {entry['index']}")
        return entry

    def finish(self, rec: OpenRecording, recording: Recording) -> str:
        digest = super().finish(rec, recording)
        say(f"closed {rec.recording_id} {rec.seq}")
        return digest


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    clock = SystemClock()
    rng = np.random.default_rng(seed)
    with ReportingSpool(data_dir, device_id="lt-harness", clock=clock) as spool:
        say("ready " + json.dumps([f.as_dict() for f in spool.recovery.findings]))
        if "--recover-only" in sys.argv:
            return 0
        sink = SpoolSink(spool, CODEC)  # the real Opus encoder
        while True:
            call = CallRecord(str(uuid.uuid4()), clock.monotonic(), clock.wall(), False)
            sink.open(call)
            frames = int(RATE * rng.uniform(0.8, 2.6))
            t = np.arange(frames) / RATE
            audio = (np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1)
                     * 3000).astype(np.int16)
            for start in range(0, frames, BLOCK):
                sink.write(audio[start:start + BLOCK])
            ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                                  "ended_mono": clock.monotonic(),
                                  "events": (CallEvent(0.0, "call-start", {"source": "harness"}),)})
            sink.close(Recording(ended, frames, 0.0, (), {}))


if __name__ == "__main__":
    sys.exit(main())
