"""`linetap demo` is the main job a newcomer runs: it must tell the truth about each call."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import soundfile


def test_demo_records_three_calls_into_a_verified_spool(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "linetap.firmware.cli", "demo", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    calls = re.findall(r"^call (\S+): [\d.]+ s, (recorded|NOT recorded)", out, re.M)
    assert [state for _, state in calls] == ["recorded", "recorded", "NOT recorded"]
    assert out.count("DTMF masked until") >= 4  # the card digits of call 1, the opt-out key of call 3
    assert "pause-start" in out and "opt-out  by=caller" in out
    assert re.search(r"linetap spool verify: 3 recordings, 3 signed manifests, chain intact", out)
    export = tmp_path / "exports" / f"{calls[0][0]}.ogg"
    assert export.exists()
    decoded = tmp_path / "call.wav"
    subprocess.run(["opusdec", "--quiet", str(export), str(decoded)], check=True, timeout=60)
    audio, rate = soundfile.read(decoded)
    assert audio.shape[1] == 2 and 59 < len(audio) / rate < 63
    # Nothing under the box's folder is plaintext audio.
    for path in (tmp_path / "box").rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:64]
            assert not head.startswith((b"OggS", b"RIFF")), path
