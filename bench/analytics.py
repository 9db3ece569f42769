"""Speech analytics: transcription real-time factor through the worker against the bare engine, and WER.

The tests' espeak-ng calls (``tests/sync/central/speech_calls.py``: both
channels, known text) are recorded by the box's own spool at 16 kHz and at
8 kHz, imported into a fresh central store, then:

- the worker (``Worker.run``: claim, read back checked, decrypt, decode,
  silence, transcribe both channels, redact, score, one write transaction)
  against the bare engine (``WhisperEngine.transcribe``) on the same decoded
  channels, in the same run; each the best of :data:`RUNS`. Real-time factor
  is seconds of work per second of channel audio; ``throughput_ratio`` is the
  bare engine's time over the worker's (1.0: no overhead; the target is at
  least 0.9);
- word error rate of the stored transcripts against the spoken text, per
  rate (16 kHz wide band, 8 kHz telephone band).
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sync" / "central"))

from central_boxes import make_box  # noqa: E402  (the tests' box and speech, so the figures match the tests)
from speech_calls import SpeechCall, Turn, record, word_error_rate  # noqa: E402

from linetap.sync.central.analytics.engine import WhisperEngine  # noqa: E402
from linetap.sync.central.analytics.worker import Worker, channel_audio  # noqa: E402
from linetap.sync.central.cli import main  # noqa: E402
from linetap.sync.central.keys import load_identity  # noqa: E402
from linetap.sync.central.stored import Stored  # noqa: E402

RUNS = 2
TURNS = [
    Turn("near", "Thank you for calling Acme, my name is Sam. How can I help you today?", 0.3),
    Turn("far", "I am calling about the invoice I received last week.", 5.5),
    Turn("near", "Of course. Could you give me the account number on the invoice?", 9.5),
    Turn("far", "Yes, it is in my email. The delivery charge is what I wanted to ask about.", 14.0),
]


def _cli(central: Path, *argv: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if main(["--data-dir", str(central), *argv]) != 0:
            raise RuntimeError(f"linetap-central {' '.join(argv)} failed")


def _store(root: Path) -> tuple[Path, dict[int, str]]:
    central = root / "central"
    _cli(central, "keys", "init")
    box = make_box(root / "boxes", "bench-1", load_identity(central))
    _cli(central, "enroll", box.device_id, "--signing-key", box.public_key_b64)
    ids = {rate: record(box, SpeechCall(rate, list(TURNS))) for rate in (16000, 8000)}
    box.spool.close()
    _cli(central, "import", str(box.data_dir))
    return central, ids


def _requeue(stored: Stored) -> None:
    with stored.index._sql() as db:
        db.execute("UPDATE analysis_jobs SET state = 'queued', attempts = 0")


def run() -> dict[str, Any]:
    engine = WhisperEngine()
    with tempfile.TemporaryDirectory() as tmp:
        central, ids = _store(Path(tmp))
        with Stored(central) as stored:
            rows = [stored.recording(rid) for rid in ids.values()]
            channels = [a for row in rows for a in channel_audio(stored, row)[0].values()]
            audio_s = sum(len(a) for a in channels) / 16000
            bare, worker_s = [], []
            for _ in range(RUNS):
                start = time.perf_counter()
                for samples in channels:
                    engine.transcribe(samples)
                bare.append(time.perf_counter() - start)
                _requeue(stored)
                worker = Worker(stored, engine, name="bench")
                start = time.perf_counter()
                worker.run(once=True)
                worker_s.append(time.perf_counter() - start)
            wer = {}
            for rate, rid in ids.items():
                said = " ".join(t.text for t in TURNS if t.channel == "near") + " " + \
                    " ".join(t.text for t in TURNS if t.channel == "far")
                lines = stored.index.transcript("bench-1", rid)
                heard = " ".join(line["text"] for ch in ("near", "far") for line in lines if line["channel"] == ch)
                wer[f"wer_{rate // 1000}khz"] = round(word_error_rate(said, heard), 3)
    return {"engine": engine.name, "channel_audio_s": round(audio_s, 1),
            "bare_engine_s": round(min(bare), 2), "worker_s": round(min(worker_s), 2),
            "bare_engine_rtf": round(min(bare) / audio_s, 3), "worker_rtf": round(min(worker_s) / audio_s, 3),
            "throughput_ratio": round(min(bare) / min(worker_s), 3), **wer}
