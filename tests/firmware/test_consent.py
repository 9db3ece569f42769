"""Consent prompts: loaded, converted and checked at start-up."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile

from linetap.firmware.consent import builtin_prompts, load_prompt
from linetap.firmware.errors import ConfigError


def rms_dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean((x.astype(np.float64) / 32768) ** 2)))


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_builtin_english_prompt_loads_at_every_pipeline_rate(rate: int) -> None:
    prompt = load_prompt("en", "builtin:en", rate=rate, max_seconds=15)
    assert prompt.rate == rate and prompt.samples.dtype == np.int16
    assert 2.0 < prompt.seconds < 6.0
    shipped = (resources.files("linetap.firmware") / "data" / "prompt-en.ogg").read_bytes()
    assert prompt.sha256 == hashlib.sha256(shipped).hexdigest()
    assert rms_dbfs(prompt.samples) > -30


def test_builtin_languages_listed() -> None:
    assert "en" in builtin_prompts()


def test_wav_at_another_rate_and_stereo_is_converted(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(int(rate * 1.0)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "prompt.wav"
    soundfile.write(path, np.stack([tone, tone], axis=1), rate, subtype="PCM_16")
    prompt = load_prompt("de", str(path), rate=16000, max_seconds=5, level_dbfs=-20)
    assert len(prompt.samples) == pytest.approx(16000, abs=2)
    assert rms_dbfs(prompt.samples) == pytest.approx(-20, abs=0.5)
    spectrum = np.abs(np.fft.rfft(prompt.samples.astype(float)))
    assert np.argmax(spectrum) * 16000 / len(prompt.samples) == pytest.approx(440, abs=2)


def test_missing_prompt_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.wav' does not exist.*builtin:en"):
        load_prompt("en", str(tmp_path / "nope.wav"), rate=16000, max_seconds=15)


def test_unknown_builtin_language_lists_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"no built-in prompt for language 'xx'.*en"):
        load_prompt("xx", "builtin:xx", rate=16000, max_seconds=15)


def test_silent_prompt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros(16000, dtype=np.int16), 16000)
    with pytest.raises(ConfigError, match="is silent"):
        load_prompt("en", str(path), rate=16000, max_seconds=15)


def test_overlong_prompt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    soundfile.write(path, (np.random.default_rng(1).normal(0, 3000, 16000 * 4)).astype(np.int16), 16000)
    with pytest.raises(ConfigError, match=r"lasts 4\.0 s, longer than consent\.max_prompt_s = 3"):
        load_prompt("en", str(path), rate=16000, max_seconds=3)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.ogg"
    path.write_bytes(b"OggS" + bytes(range(200)))
    with pytest.raises(ConfigError, match="not a readable WAV or Ogg file"):
        load_prompt("en", str(path), rate=16000, max_seconds=15)


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dir.wav"
    path.mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a regular file"):
        load_prompt("en", str(path), rate=16000, max_seconds=15)


def test_a_device_or_pipe_is_refused_without_reading_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'/dev/zero' is a character device, not a regular file"):
        load_prompt("en", "/dev/zero", rate=16000, max_seconds=15)
    fifo = tmp_path / "prompt.wav"
    os.mkfifo(fifo)  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(ConfigError, match=r"is a pipe \(FIFO\), not a regular file"):
        load_prompt("en", str(fifo), rate=16000, max_seconds=15)
