"""DSP cost per call-second: what the per-call signal processing takes on a box.

Measured on a minute of two-sided espeak-ng speech (16 kHz stereo), fed in
20 ms blocks as the audio path feeds it: the DTMF masker (a detector on each
channel plus the masking delay line) and the QA metrics (voice activity on
each channel). Figures are CPU milliseconds per second of stereo audio.

Peer, in the same run: numpy's real FFT over the same audio on the same
analysis grid (25 ms frames every 5 ms, both channels, per 20 ms block). That
is the least an FFT-based detector at this time resolution would do before
any decision logic, so it shows what the Goertzel-style design costs relative
to the obvious alternative.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soxr

from linetap.firmware.dsp.dtmf import DtmfDetector, DtmfMasker
from linetap.firmware.dsp.metrics import CallMetrics

RATE = 16000
BLOCK = RATE // 50
SECONDS = 60.0
TEXTS = (
    "Thank you for calling, my name is Sam. Could I take your account number please? "
    "That is four one seven, two two nine, and the post code is nine oh two one oh.",
    "Yes, I called last week about the invoice for three hundred and twelve pounds, "
    "and I was promised a call back on Tuesday, but nobody rang. Can you look into it?",
)


def _speech(voice: str, pitch: int, folder: Path) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("the DSP benchmark speaks with espeak-ng; install it: "
                           "apt-get install espeak-ng")
    pieces = []
    for i, text in enumerate(TEXTS):
        path = folder / f"{voice}-{i}.wav"
        subprocess.run([espeak, "-v", voice, "-p", str(pitch), "-w", str(path), text],
                       check=True, capture_output=True, timeout=60)
        with wave.open(str(path), "rb") as wav:
            audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
            pieces.append(soxr.resample(audio.astype(np.float32), wav.getframerate(), RATE))
        pieces.append(np.zeros(RATE // 2, dtype=np.float32))
    one_pass = np.concatenate(pieces)
    repeats = int(np.ceil(SECONDS * RATE / len(one_pass)))
    return np.clip(np.tile(one_pass, repeats)[:int(SECONDS * RATE)], -32768, 32767).astype(np.int16)


def _conversation() -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="linetap-bench-") as folder:
        near = _speech("en-us", 40, Path(folder))
        far = _speech("en-gb+f3", 70, Path(folder))
    return np.stack([near, np.roll(far, RATE // 3)], axis=1)


def _cpu_ms_per_second(process: Callable[[np.ndarray], object], audio: np.ndarray) -> float:
    started = time.process_time()
    for i in range(0, len(audio), BLOCK):
        process(audio[i:i + BLOCK])
    return (time.process_time() - started) * 1000 / (len(audio) / RATE)


def _fft_peer() -> Callable[[np.ndarray], object]:
    frame, hop = RATE // 40, RATE // 200
    held = np.zeros((frame - hop, 2))

    def process(block: np.ndarray) -> object:
        nonlocal held
        joined = np.concatenate([held, block.astype(np.float64)])
        held = joined[-(frame - hop):]
        windows = np.lib.stride_tricks.sliding_window_view(joined, frame, axis=0)[::hop]
        return np.abs(np.fft.rfft(windows, axis=-1))

    return process


def run() -> dict[str, Any]:
    audio = _conversation()
    detectors = (DtmfDetector(RATE, channel=0), DtmfDetector(RATE, channel=1))
    masker = DtmfMasker(RATE)
    metrics = CallMetrics(RATE)
    pipeline_masker = DtmfMasker(RATE)
    pipeline_metrics = CallMetrics(RATE)

    def pipeline(block: np.ndarray) -> None:
        pipeline_metrics.feed(block)
        pipeline_masker.feed(block)

    detectors_ms = _cpu_ms_per_second(
        lambda block: [d.feed(block[:, c]) for c, d in enumerate(detectors)], audio)
    figures = {
        "detectors_both_channels": detectors_ms,
        "masker_with_detectors": _cpu_ms_per_second(masker.feed, audio),
        "metrics_with_vad": _cpu_ms_per_second(metrics.feed, audio),
    }
    total = _cpu_ms_per_second(pipeline, audio)
    peer = _cpu_ms_per_second(_fft_peer(), audio)
    return {
        "audio": f"{SECONDS:g} s two-sided espeak-ng speech, {RATE} Hz stereo, "
                 f"{BLOCK}-frame blocks",
        "unit": "CPU ms per second of stereo audio",
        "linetap_dsp_ms_per_s": round(total, 3),
        "components_ms_per_s": {name: round(value, 3) for name, value in figures.items()},
        "peer": "numpy rfft, 25 ms frames every 5 ms, both channels, per block (no decisions)",
        "peer_ms_per_s": round(peer, 3),
        "ratio_to_peer": round(total / peer, 2) if peer > 0 else None,
        "share_of_one_core": round(total / 1000, 4),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
