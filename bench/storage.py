"""Storage cost of a call: CPU, bytes and quality of the secure-spool pipeline.

Audio: a one-minute two-sided espeak-ng conversation, 16 kHz stereo (near =
left, far = right), turns alternating with gaps and short overlaps, each
utterance at -20 dBFS. Built once and cached in the temp folder.

Ours, timed with ``time.process_time`` (user + system CPU of this process)
and scaled to one stereo call-hour: frames in 20 ms blocks through the DTMF
masker, the segmenting Ogg Opus encoder (10 s segments), pyrage encryption of
each segment to an X25519 recipient, and the spool's durable write (temp
file, fsync, rename, fsync of the folder) into a temp folder.

Peer, in the same run on the same audio: ``opusenc --bitrate 24`` (its
defaults otherwise: complexity 10, 20 ms frames, VBR) on a WAV piped into
``age -r <recipient>`` writing a file; CPU is the children's user + system
time (``RUSAGE_CHILDREN`` delta). It neither masks nor fsyncs, and opusenc
resamples to 48 kHz first; it codes the call as stereo wide-band SILK as we
do. Its stored audio is scored like ours, so the ratio compares equal work.
Our CPU is also given per stage; process time counts every thread of the
process, numpy's BLAS helper threads (used by the masker) included, so run
with ``OPENBLAS_NUM_THREADS=1`` to see the stages without them. The encoder
alone, given the whole masked call in one write, shows what libopus itself
costs: the floor under our encode stage.

CPU time on a shared or throttled machine varies from run to run by 10-20 %,
so ours, the encoder alone and the peer run :data:`REPEATS` times, taking
turns, and the figures are medians; the ratio is of the medians, with the
lowest and highest ratio of a single round beside it.

Bytes per stereo call-hour count what is stored (age files, headers
included). Speech synthesis has digitally silent pauses; a real line has a
noise floor that the encoder must also code, so the same audio with -66 dBFS
of white noise added is encoded too, to show how much that moves the figure.

Quality: wide-band PESQ (ITU-T P.862.2, ``pesq`` package, 16 kHz) per
channel, of the stored audio decrypted and decoded in memory against the
captured audio. The masker delays what it passes on by its lookahead, and
the decoder removes the Opus pre-skip itself, so stored sample
``lookahead + i`` is captured sample ``i``; the residual lag found by
cross-correlation is reported to show the alignment holds. P.862 is
specified for speech files of about 8-12 s with pauses, not for a minute in
which one side is silent half of the time, so the headline score is the mean
over each talker's turns (each with 0.25 s of context either side); the
whole-call score per channel is reported as well. The same scores for the
call encoded as one un-segmented stream show what cutting into segments
costs: the encoder is never restarted at a cut, so nothing.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pyrage
import soxr
from pesq import pesq

from linetap.firmware.dsp.dtmf import DtmfMasker
from linetap.firmware.encoder import DEFAULT_BITRATE, OpusSegmenter, segments_to_pcm
from linetap.firmware.spool import DurableFiles, segment_name

RATE = 16000
BLOCK = RATE // 50
SECONDS = 60.0
SEGMENT_S = 10.0
LEVEL_DBFS = -20.0
NOISE_DBFS = -66.0
TURN_CONTEXT = RATE // 4
REPEATS = 5
TARGETS = {"cpu_ratio_max": 0.75, "mb_per_call_hour_max": 9.0, "pesq_wb_min": 4.0}

NEAR = (("en-us", 45, 165), (
    "Thank you for calling the service desk, my name is Anna. How can I help you today?",
    "I can see your account here. It was opened in March two thousand and nineteen.",
    "Let me check that for you. Could you confirm the post code on the account please?",
    "Thank you. I can see two payments of forty two pounds, on the first and on the fifteenth.",
    "You are right, that second payment should not have been taken. I will refund it today.",
    "The refund takes three to five working days. Your reference is alpha bravo seven seven nine.",
    "Is there anything else I can help you with today?",
))
FAR = (("en-gb+f3", 70, 175), (
    "Hello, yes. I am calling about my bill, I think I have been charged twice this month.",
    "My account number is four five three nine, one two eight seven, six six zero one.",
    "It is nine oh two one oh. I moved there last year, in the summer.",
    "Yes, that is it. I only have one subscription, so I should only pay once.",
    "Thank you, that is a relief. How long will it take to come back to my card?",
    "Alpha bravo seven seven nine. Got it, I have written it down.",
    "No, that is everything. Thanks for your help, goodbye.",
))

Turn = tuple[int, int, int]  # channel, first sample, end sample


def _say(text: str, voice: tuple[str, int, int], cache: Path) -> np.ndarray:
    name, pitch, speed = voice
    key = hashlib.sha256(f"{text}|{name}|{pitch}|{speed}|{RATE}".encode()).hexdigest()[:24]
    cached = cache / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("the storage benchmark speaks with espeak-ng; install it: "
                           "apt-get install espeak-ng")
    path = cache / f"{key}.wav"
    subprocess.run([espeak, "-v", name, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True, timeout=60)
    with wave.open(str(path), "rb") as wav:
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        source_rate = wav.getframerate()
    path.unlink()
    samples = soxr.resample(audio.astype(np.float32) / 32768, source_rate, RATE).astype(np.float64)
    np.save(cached, samples)
    return samples


def _conversation() -> tuple[np.ndarray, list[Turn]]:
    """One minute of alternating turns; gaps of -0.4 s (overlap) to 0.9 s between them."""
    cache = Path(tempfile.gettempdir()) / "linetap-bench-speech"
    cache.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    total = int(SECONDS * RATE)
    audio = np.zeros((total, 2))
    turns: list[Turn] = []
    start, index = int(0.3 * RATE), 0
    rms = 10 ** (LEVEL_DBFS / 20) / np.sqrt(2)  # AES17: a full-scale sine is 0 dBFS
    while True:
        channel = index % 2
        voice, lines = (NEAR, FAR)[channel]
        speech = _say(lines[(index // 2) % len(lines)], voice, cache)
        if start + len(speech) > total:
            break
        audio[start:start + len(speech), channel] += speech * rms / np.sqrt(np.mean(speech ** 2))
        turns.append((channel, start, start + len(speech)))
        start += len(speech) + int(rng.uniform(-0.4, 0.9) * RATE)
        index += 1
    return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16), turns


def _with_noise(audio: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(7).normal(0, 32768 * 10 ** (NOISE_DBFS / 20), audio.shape)
    return np.clip(np.round(audio + noise), -32768, 32767).astype(np.int16)


def _our_pipeline(audio: np.ndarray, recipient: pyrage.x25519.Recipient, folder: Path,
                  segment_s: float = SEGMENT_S) -> tuple[dict[str, float], list[Path], int]:
    """CPU seconds per stage, the age files written, and the masker's delay in frames."""
    files = DurableFiles()
    written: list[Path] = []
    spent = dict.fromkeys(("mask", "encode", "encrypt", "durable_write"), 0.0)
    clock = time.process_time

    def store(segments: list[bytes]) -> None:
        for segment in segments:
            started = clock()
            sealed = pyrage.encrypt(segment, [recipient])
            encrypted = clock()
            path = folder / segment_name(len(written))
            files.write(path, sealed)
            written.append(path)
            spent["encrypt"] += encrypted - started
            spent["durable_write"] += clock() - encrypted

    def encode(frames: np.ndarray) -> None:
        started = clock()
        segments = encoder.write(frames)
        spent["encode"] += clock() - started
        store(segments)

    masker = DtmfMasker(RATE)
    with OpusSegmenter(RATE, bitrate=DEFAULT_BITRATE, segment_s=segment_s) as encoder:
        for i in range(0, len(audio), BLOCK):
            started = clock()
            masked = masker.feed(audio[i:i + BLOCK]).audio
            spent["mask"] += clock() - started
            encode(masked)
        encode(masker.flush().audio)
        started = clock()
        tail = encoder.finish()
        spent["encode"] += clock() - started
        store([tail])
    return spent, written, masker.lookahead_frames


def _peer_pipeline(audio: np.ndarray, recipient: str, folder: Path) -> tuple[float, int]:
    """CPU seconds of opusenc | age, and the bytes of the file they wrote."""
    source, target = folder / "call.wav", folder / "call.opus.age"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(audio.tobytes())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    encoder = subprocess.Popen(["opusenc", "--quiet", "--bitrate", str(DEFAULT_BITRATE // 1000),
                                str(source), "-"], stdout=subprocess.PIPE)
    sealer = subprocess.Popen(["age", "-r", recipient, "-o", str(target)], stdin=encoder.stdout)
    encoder.stdout.close()  # age alone holds the pipe, so it sees the end of the stream
    if sealer.wait(timeout=120) != 0 or encoder.wait(timeout=120) != 0:
        raise RuntimeError(f"peer pipeline failed: opusenc exit {encoder.returncode}, "
                           f"age exit {sealer.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, target.stat().st_size


def _encoder_alone(audio: np.ndarray) -> float:
    """CPU seconds of the encoder given the whole call in one write."""
    started = time.process_time()
    with OpusSegmenter(RATE, bitrate=DEFAULT_BITRATE, segment_s=SEGMENT_S) as encoder:
        encoder.write(audio)
        encoder.finish()
    return time.process_time() - started


def _lag(captured: np.ndarray, stored: np.ndarray, most: int = 64) -> int:
    """Where ``stored`` best matches ``captured``, in samples (0 = aligned)."""
    a = captured[RATE:-RATE].astype(np.float64)
    scores = [np.dot(a, stored[RATE + lag:RATE + lag + len(a)].astype(np.float64))
              for lag in range(-most, most + 1)]
    return int(np.argmax(scores)) - most


def _pesq_figures(captured: np.ndarray, stored: np.ndarray, turns: list[Turn]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for channel, name in enumerate(("near", "far")):
        scores = [pesq(RATE, captured[max(0, a - TURN_CONTEXT):b + TURN_CONTEXT, channel],
                       stored[max(0, a - TURN_CONTEXT):b + TURN_CONTEXT, channel], "wb")
                  for c, a, b in turns if c == channel]
        figures[name] = {
            "turns_mean": round(float(np.mean(scores)), 3),
            "turns_min": round(float(np.min(scores)), 3),
            "whole_call": round(float(pesq(RATE, captured[:, channel], stored[:, channel], "wb")), 3),
            "residual_lag_samples": _lag(captured[:, channel], stored[:, channel]),
        }
    return figures


def _decode(paths: list[Path], identity: pyrage.x25519.Identity, delay: int,
            length: int) -> np.ndarray:
    segments = [pyrage.decrypt(path.read_bytes(), [identity]) for path in paths]
    return segments_to_pcm(segments, RATE)[delay:delay + length]


def run() -> dict[str, Any]:
    clean, turns = _conversation()
    noisy = _with_noise(clean)
    identity = pyrage.x25519.Identity.generate()
    recipient = identity.to_public()
    hour = 3600 / SECONDS
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="linetap-bench-storage-") as tmp:
        for index in range(REPEATS):
            folders = [Path(tmp) / f"{name}-{index}" for name in ("ours", "peer")]
            for folder in folders:
                folder.mkdir()
            stages, ours, delay = _our_pipeline(clean, recipient, folders[0])
            peer_cpu, peer_bytes = _peer_pipeline(clean, str(recipient), folders[1])
            encoder_alone = _encoder_alone(clean)
            rounds.append({**stages, "peer": peer_cpu, "encoder_alone": encoder_alone})
        folders = [Path(tmp) / name for name in ("noisy", "one-stream")]
        for folder in folders:
            folder.mkdir()
        noisy_folder, whole_folder = folders
        _, ours_noisy, _ = _our_pipeline(noisy, recipient, noisy_folder)
        _, whole, _ = _our_pipeline(clean, recipient, whole_folder, segment_s=SECONDS * 2)
        stored_bytes = sum(path.stat().st_size for path in ours)
        noisy_bytes = sum(path.stat().st_size for path in ours_noisy)
        segmented = _decode(ours, identity, delay, len(clean))
        one_stream = _decode(whole, identity, delay, len(clean))
        peer_audio = _decode([Path(tmp) / f"peer-{REPEATS - 1}" / "call.opus.age"], identity, 0,
                             len(clean))
    stage_names = ("mask", "encode", "encrypt", "durable_write")
    median = {name: float(np.median([r[name] for r in rounds]))
              for name in (*stage_names, "peer", "encoder_alone")}
    ours_per_round = [sum(r[name] for name in stage_names) for r in rounds]
    cpu = float(np.median(ours_per_round))
    ratio = cpu / median["peer"]
    round_ratios = [ours / r["peer"] for ours, r in zip(ours_per_round, rounds)]
    mb_per_hour = stored_bytes * hour / 1e6
    quality = _pesq_figures(clean, segmented, turns)
    worst = min(quality[side]["turns_mean"] for side in ("near", "far"))
    return {
        "audio": {"seconds": SECONDS, "rate": RATE, "channels": ["near", "far"],
                  "turns": len(turns), "bitrate": DEFAULT_BITRATE, "segment_s": SEGMENT_S,
                  "segments": len(ours)},
        "rounds": REPEATS,
        "ours_cpu_s_per_call_hour": round(cpu * hour, 2),
        "ours_cpu_s_per_call_hour_by_stage": {stage: round(median[stage] * hour, 2)
                                              for stage in stage_names},
        "encoder_alone_cpu_s_per_call_hour": round(median["encoder_alone"] * hour, 2),
        "peer_cpu_s_per_call_hour": round(median["peer"] * hour, 2),
        "cpu_ratio_ours_to_peer": round(ratio, 3),
        "cpu_ratio_ours_to_peer_lowest_highest_round": [round(min(round_ratios), 3),
                                                        round(max(round_ratios), 3)],
        "cpu_ratio_encode_stage_to_peer": round(median["encode"] / median["peer"], 3),
        "cpu_ratio_encoder_alone_to_peer": round(median["encoder_alone"] / median["peer"], 3),
        "stored_mb_per_call_hour": round(mb_per_hour, 3),
        "peer_stored_mb_per_call_hour": round(peer_bytes * hour / 1e6, 3),
        "stored_mb_per_call_hour_with_line_noise": round(noisy_bytes * hour / 1e6, 3),
        "pesq_wb_segmented": quality,
        "pesq_wb_one_stream": _pesq_figures(clean, one_stream, turns),
        "pesq_wb_peer": _pesq_figures(clean, peer_audio, turns),
        "segmented_equals_one_stream": bool(np.array_equal(segmented, one_stream)),
        "targets": TARGETS,
        "meets": {"cpu_ratio": ratio <= TARGETS["cpu_ratio_max"],
                  "mb_per_call_hour": mb_per_hour <= TARGETS["mb_per_call_hour_max"],
                  "pesq_wb": worst >= TARGETS["pesq_wb_min"]},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
