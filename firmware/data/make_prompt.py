"""Regenerate a shipped consent prompt with espeak-ng (run by ``make prompts``).

Usage: python firmware/data/make_prompt.py LANG VOICE "TEXT" OUT.ogg

The prompt is checked in so that a box needs no speech synthesiser; this
script is how it was made, so anyone can remake or translate it offline.
"""

import subprocess
import sys
import tempfile

import numpy as np
import soundfile
import soxr


def main(lang: str, voice: str, text: str, out: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", wav.name, text], check=True)
        audio, rate = soundfile.read(wav.name, dtype="float32")
    audio = soxr.resample(audio, rate, 16000)
    audio = audio / np.max(np.abs(audio)) * 0.7  # -3 dBFS peak, headroom for the line
    # compression_level 0.9 is about 29 kbit/s Opus: clear speech in about 12 KB.
    soundfile.write(out, audio, 16000, format="OGG", subtype="OPUS", compression_level=0.9)
    print(f"{out}: {lang}, {len(audio) / 16000:.2f} s")


if __name__ == "__main__":
    main(*sys.argv[1:5])
