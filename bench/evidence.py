"""Evidence bundle cost: making and checking one against the plain export and a plain hash of the same bytes.

A 5-minute call (16 kHz stereo tones, 24 kbit/s Opus in 10 s segments) is
recorded by the box's own spool, imported into a fresh central store, then:

- ``evidence ID -o call.zip`` against ``export ID -o call.wav`` of the same
  recording (the peer: the decrypting and decoding a bundle cannot avoid);
- ``evidence verify call.zip`` against ``sha256sum`` over the unzipped
  bundle's files (the peer: the hashing a verifier cannot avoid).

Each is the best of three runs (wall seconds). The figures say how much the
bundle adds to an export and to hashing its bytes.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from linetap.firmware.callflow import CallEvent, CallRecord
from linetap.firmware.callrecord import uuid7
from linetap.firmware.clock import ManualClock
from linetap.firmware.keys import keys_init as box_keys_init
from linetap.firmware.recorder import Recording
from linetap.firmware.spool import CodecParams, Spool, SpoolSink
from linetap.sync.central.cli import main
from linetap.sync.central.keys import keys_init, load_identity

RATE = 16000
CALL_S = 300
RUNS = 3


def _record(box: Path, central: Path, seconds: int = CALL_S) -> str:
    info = box_keys_init(box, str(load_identity(central).to_public()))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--data-dir", str(central), "enroll", "bench-1", "--signing-key", info.public_key_b64]) == 0
    clock = ManualClock()
    with Spool(box, device_id="bench-1", clock=clock) as spool:
        sink = SpoolSink(spool, CodecParams(rate=RATE, segment_s=10.0))
        call = CallRecord(uuid7(), clock.monotonic(), clock.wall(), True)
        sink.open(call)
        t = np.arange(RATE) / RATE
        second = (np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1) * 6000).astype(np.int16)
        for _ in range(seconds):
            sink.write(second)
            clock.advance(1.0)
        ended = CallRecord(**{**call.__dict__, "recorded": True, "ended_by": "hang-up",
                              "ended_mono": clock.monotonic(), "events": (CallEvent(0.0, "call-start", {}),)})
        sink.close(Recording(ended, RATE * seconds, 0.0, (), {}))
    return call.call_id


def _best(job: Callable[[int], Any]) -> float:
    """The shortest of RUNS runs; the commands' own output is kept off the benchmark's JSON."""
    times = []
    for i in range(RUNS):
        with contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            job(i)
            times.append(time.perf_counter() - start)
    return round(min(times), 3)


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        central = work / "central"
        keys_init(central)
        rid = _record(work / "box", central)
        store = ["--data-dir", str(central)]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*store, "import", str(work / "box")]) == 0
        export_s = _best(lambda i: main([*store, "export", rid, "-o", str(work / f"e{i}.wav")]))
        bundle_s = _best(lambda i: main([*store, "evidence", rid, "-o", str(work / f"b{i}.zip")]))
        verify_s = _best(lambda i: main(["evidence", "verify", str(work / "b0.zip")]))
        unzipped = work / "unzipped"
        with zipfile.ZipFile(work / "b0.zip") as zf:
            zf.extractall(unzipped)
        files = sorted(str(p.relative_to(unzipped)) for p in unzipped.rglob("*") if p.is_file())
        hash_s = _best(lambda i: subprocess.run(["sha256sum", *files], cwd=unzipped, check=True,
                                                capture_output=True))
        size = (work / "b0.zip").stat().st_size
    return {"call_s": CALL_S, "rate": RATE, "bundle_bytes": size, "members": len(files),
            "evidence_s": bundle_s, "export_wav_s": export_s, "evidence_over_export": round(bundle_s / export_s, 2),
            "evidence_verify_s": verify_s, "sha256sum_s": hash_s, "verify_over_sha256sum": round(verify_s / hash_s, 2),
            "runs": RUNS}
