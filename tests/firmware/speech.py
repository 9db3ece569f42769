"""Synthesised speech for tests: varied voices, pitches, speeds and texts, made with espeak-ng.

The audio is cached under the test session's temporary folder, so a session
synthesises each utterance once however many tests use it::

    from speech import corpus, speech_dir  # tests/firmware is on sys.path under pytest
    near = corpus(speech_dir(tmp_path_factory), rate=16000, seconds=60.0, seed=1)

Each utterance is made at espeak-ng's own rate and resampled with soxr.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soxr

VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3", "en+f2", "en-gb-scotland", "en-029+f4",
          "en-us+m7", "en-gb-x-rp+f1", "en-us+croak", "en+whisper", "en-gb-x-gbclan+m1")
PITCHES = (20, 35, 50, 65, 80, 99)
SPEEDS = (110, 140, 175, 210, 260)

TEXTS = (
    "Thank you for calling the service desk, my name is Anna, how can I help you today? "
    "I can see your account here, it was opened in March two thousand and nineteen.",
    "My card number is four five three nine, one two eight seven, six six zero one, "
    "and the expiry date is zero nine slash twenty seven. The security code is three one four.",
    "Please call me back on oh two oh seven, nine four six, one three five eight, extension "
    "forty two, between nine and five. Or try zero seven seven double eight one two three.",
    "Ooooooooh, aaaaaaaaah, eeeeeeeeee, mmmmmmmmm, la la la la la, do re mi fa so la ti do, "
    "hmmmmm, well, uhhhhh, let me think, ahhhh yes, noooooo, wooooow, yeeeees.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.",
    "We shipped one hundred and twenty three units on the fourth, another eight hundred "
    "and ninety on the eleventh, and the balance of sixteen thousand four hundred is due.",
    "Hello? Hello, can you hear me? The line is really bad. Sorry, you are breaking up. "
    "Could you repeat that please? I said the reference is alpha bravo seven seven nine.",
    "I would like to speak to a manager about my bill. I have been charged twice for the "
    "same service, once on the first and again on the fifteenth, and nobody has called back.",
    "Rain in Spain stays mainly in the plain. She sells sea shells by the sea shore. "
    "Peter Piper picked a peck of pickled peppers. Round and round the rugged rock.",
    "Okay, so, just to confirm: your new PIN is one nine eight four, your appointment is on "
    "Tuesday at half past two, and your case number is five five five, two one two, zero.",
    "<speak><prosody rate='x-slow' pitch='x-high'>oooooooooh aaaaaaaaah</prosody> "
    "<prosody rate='slow' pitch='x-low'>mmmmmmm hmmmmm ooooom</prosody> "
    "<prosody pitch='high'>la la la laaaa, tra la la, do do do</prosody></speak>",
    "<speak>Seven <break time='300ms'/> eight <break time='300ms'/> nine. "
    "<prosody rate='x-fast'>one two three four five six seven eight nine zero</prosody> "
    "<prosody pitch='x-high'>star, hash, pound, zero, operator!</prosody></speak>",
)


def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session-wide folder that caches synthesised speech."""
    folder = tmp_path_factory.getbasetemp() / "speech-cache"
    folder.mkdir(exist_ok=True)
    return folder


def _need_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError("espeak-ng is not installed; install it with: apt-get install espeak-ng")
    return path


def synthesize(text: str, *, voice: str, pitch: int, speed: int, rate: int,
               cache: Path) -> np.ndarray:
    """One utterance as mono int16 at ``rate``, cached in ``cache``."""
    key = hashlib.sha256(f"{text}|{voice}|{pitch}|{speed}|{rate}".encode()).hexdigest()[:24]
    cached = cache / f"{key}.npy"
    if cached.exists():
        return np.load(cached)
    wav_path = cache / f"{key}.wav"
    command = [_need_espeak(), "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav_path)]
    if text.startswith("<speak>"):
        command.append("-m")
    subprocess.run([*command, text], check=True, capture_output=True, timeout=60)
    with wave.open(str(wav_path), "rb") as wav:
        source_rate = wav.getframerate()
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    wav_path.unlink()
    resampled = soxr.resample(audio.astype(np.float32) / 32768, source_rate, rate)
    samples = np.clip(np.round(resampled * 32768), -32768, 32767).astype(np.int16)
    np.save(cached, samples)
    return samples


def utterance_plan(count: int, seed: int) -> list[tuple[str, str, int, int]]:
    """``count`` (text, voice, pitch, speed) combinations, varied and repeatable for ``seed``."""
    rng = np.random.default_rng(seed)
    return [(TEXTS[(seed + i) % len(TEXTS)], VOICES[int(rng.integers(len(VOICES)))],
             PITCHES[int(rng.integers(len(PITCHES)))], SPEEDS[int(rng.integers(len(SPEEDS)))])
            for i in range(count)]


def corpus(cache: Path, *, rate: int, seconds: float, seed: int = 0,
           level_dbfs: float = -20.0) -> np.ndarray:
    """At least ``seconds`` of varied speech (mono int16), utterances joined by short pauses.

    Each utterance is normalised to ``level_dbfs`` RMS (AES17: a full-scale
    sine is 0 dBFS), roughly a talker's level on a well-set line.
    """
    rng = np.random.default_rng(seed + 1_000)
    pieces: list[np.ndarray] = []
    total = 0
    plan = utterance_plan(int(seconds) // 2 + 8, seed)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="espeak") as pool:
        while total < seconds * rate:
            if not plan:
                plan = utterance_plan(16, seed + 7_919 * (len(pieces) + 1))
            batch, plan = plan[:4], plan[4:]
            for samples in pool.map(lambda item: synthesize(
                    item[0], voice=item[1], pitch=item[2], speed=item[3], rate=rate,
                    cache=cache), batch):
                floats = samples.astype(np.float64)
                rms = np.sqrt(np.mean(floats ** 2)) or 1.0
                target = 32767 * 10 ** (level_dbfs / 20) / np.sqrt(2)
                pieces.append(np.clip(np.round(floats * target / rms), -32768, 32767)
                              .astype(np.int16))
                pause = int(rate * rng.uniform(0.1, 0.8))
                pieces.append(np.zeros(pause, dtype=np.int16))
                total += len(samples) + pause
                if total >= seconds * rate:
                    break
    return np.concatenate(pieces)
