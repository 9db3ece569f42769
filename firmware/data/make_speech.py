"""Regenerate the bundled two-sided test conversation (run by ``make prompts``).

Usage: python firmware/data/make_speech.py OUT_DIR

Writes speech-near.ogg (the agent, en-us) and speech-far.ogg (the caller,
en-gb, female voice) at 16 kHz: one conversation whose turns alternate with
short gaps, a little over-talk and one long two-sided silence (a hold), so
the demo, ``linetap replay`` and the image test have realistic audio with
known structure and need no speech synthesiser on the box.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

RATE = 16000
# (side, text, gap before it in seconds; negative = starts before the previous turn ends)
TURNS = [
    ("near", "Good morning, thank you for calling Northwind support, this is Sam.", 0.6),
    ("far", "Hi Sam, I am calling about the invoice I received last week.", 0.5),
    ("near", "Of course. Could you give me the account number on the invoice?", 0.4),
    ("far", "Yes, it is four two seven, nine nine one.", 0.6),
    ("near", "Thank you. One moment while I look that up.", 0.3),
    ("near", "I found it. The invoice shows two items and a delivery charge.", 12.0),
    ("far", "The delivery charge is what I wanted to ask about.", 0.4),
    ("far", "I was told delivery would be free.", -0.8),
    ("near", "You are right, I can see the offer on your account. I will remove the charge.", 0.5),
    ("far", "That is great, thank you very much.", 0.5),
    ("near", "You are welcome. Is there anything else I can help you with today?", 0.4),
    ("far", "No, that is all. Goodbye.", 0.5),
]
VOICES = {"near": ["-v", "en-us", "-p", "40", "-s", "160"], "far": ["-v", "en-gb+f3", "-p", "60", "-s", "150"]}


def speak(side: str, text: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
        subprocess.run(["espeak-ng", *VOICES[side], "-w", wav.name, text], check=True)
        audio, rate = soundfile.read(wav.name, dtype="float32")
    return soxr.resample(audio, rate, RATE) * 0.5


def main(out: str) -> None:
    pieces, t = [], 0.0
    for side, text, gap in TURNS:
        audio = speak(side, text)
        t = max(0.0, t + gap)
        pieces.append((side, round(t * RATE), audio))
        t += len(audio) / RATE
    total = max(start + len(a) for _, start, a in pieces) + RATE // 2
    tracks = {"near": np.zeros(total, np.float32), "far": np.zeros(total, np.float32)}
    for side, start, audio in pieces:
        tracks[side][start:start + len(audio)] += audio
    for side, track in tracks.items():
        path = Path(out) / f"speech-{side}.ogg"
        soundfile.write(path, track, RATE, format="OGG", subtype="OPUS", compression_level=0.9)
        print(f"{path}: {total / RATE:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1])
