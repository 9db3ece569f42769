"""``linetap replay`` streams its input: memory does not grow with the call's length."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
import soundfile

from linetap.firmware.scripted import bundled_speech

RATE = 16000
# Eight more minutes of stereo 16 kHz input are 30.7 MB as int16 (and twice that as float32);
# a replay that streams its input may grow by a few MB for the call's record, QA figures and catalogue.
MARGIN_BYTES = 8 * 2**20


def long_call(folder: Path, minutes: float) -> tuple[Path, Path]:
    """Near and far WAV files of ``minutes`` of the bundled conversation, written a minute at a time."""
    near, far = bundled_speech(RATE)
    frames = int(minutes * 60 * RATE)
    paths = folder / f"near-{minutes:g}.wav", folder / f"far-{minutes:g}.wav"
    for samples, path in zip((near, far), paths):
        with soundfile.SoundFile(path, "w", RATE, 1, "PCM_16") as out:
            done = 0
            while done < frames:
                chunk = samples[: frames - done]
                out.write(chunk)
                done += len(chunk)
    return paths


def replay_peak_rss(data: Path, near: Path, far: Path) -> tuple[int, str]:
    """Peak resident set of one ``linetap replay`` process, in bytes, and its stdout."""
    out = data.parent / f"{near.stem}.out"
    with out.open("w") as stdout:
        child = subprocess.Popen([sys.executable, "-m", "linetap.firmware.cli", "--data-dir", str(data),
                                  "replay", str(near), str(far)], stdout=stdout, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, out.read_text()
    return usage.ru_maxrss * 1024, out.read_text()


@pytest.mark.timeout(300)
def test_replay_memory_stays_flat_in_the_length_of_the_call(tmp_path: Path) -> None:
    data = tmp_path / "data"
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    keys = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "--data-dir", str(data), "keys",
                           "init", "--central-recipient", recipient], capture_output=True, text=True,
                          timeout=60)
    assert keys.returncode == 0, keys.stderr
    short, _ = replay_peak_rss(data, *long_call(tmp_path, 2))
    long, report = replay_peak_rss(data, *long_call(tmp_path, 10))
    assert "600.0 s, recorded (600.0 s kept)" in report
    assert long - short < MARGIN_BYTES, (f"peak RSS {short / 2**20:.1f} MB for 2 min, {long / 2**20:.1f} MB for "
                                         f"10 min")
