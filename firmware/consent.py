"""Consent: the announcement prompts and the recorder warning tone.

Prompts are loaded and checked once, at start-up, so that a missing, silent
or overlong prompt stops the box with a clear error before the first call,
not during it. Each prompt is converted to the pipeline rate at load time
(any rate, WAV or Ogg), and its file's SHA-256 goes into every call's events
as proof of what was played.

The timing of the announcement, the tone and the opt-out window lives in the
call state machine (:mod:`linetap.firmware.callflow`); this module only
supplies the audio.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from linetap.firmware.errors import ConfigError
from linetap.firmware.schema import FileRefused, read_bounded

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
SILENCE_DBFS = -50.0  # a prompt whose RMS is below this is taken for a silent (broken) file
# 60 s (the longest consent.max_prompt_s) of 96 kHz 24-bit stereo WAV is 35 MB.
PROMPT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Prompt:
    language: str
    samples: np.ndarray  # mono int16 at the pipeline rate
    rate: int
    sha256: str  # of the prompt file as shipped or configured
    source: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def builtin_prompts() -> list[str]:
    """Languages for which a prompt ships with linetap."""
    data = resources.files("linetap.firmware") / "data"
    return sorted(p.name[len("prompt-"):-len(".ogg")] for p in data.iterdir()
                  if p.name.startswith("prompt-") and p.name.endswith(".ogg"))


def _read_bytes(location: str) -> bytes:
    if location.startswith(BUILTIN_PREFIX):
        language = location[len(BUILTIN_PREFIX):]
        resource = resources.files("linetap.firmware") / "data" / f"prompt-{language}.ogg"
        if not resource.is_file():
            raise ConfigError(f"consent prompt {location!r}: no built-in prompt for language "
                              f"{language!r}; built-in languages: {', '.join(builtin_prompts())}. "
                              f"Record one and set its path in [consent.prompts].")
        return resource.read_bytes()
    try:
        return read_bounded(Path(location), max_bytes=PROMPT_MAX_BYTES)
    except FileRefused as exc:
        raise ConfigError(f"consent prompt {location!r} {exc}; give the path of a WAV or Ogg file "
                          f"in [consent.prompts]") from None
    except FileNotFoundError:
        raise ConfigError(f"consent prompt {location!r} does not exist; fix the path in "
                          f"[consent.prompts] or use \"builtin:en\"") from None
    except OSError as exc:
        raise ConfigError(f"consent prompt {location!r} cannot be read ({exc.strerror}); "
                          f"check its permissions for the linetap user") from None


def decode_mono(data: bytes, rate: int, *, label: str) -> np.ndarray:
    """WAV or Ogg bytes as mono float32 at ``rate`` (channels mixed down, resampled with soxr).

    ``label`` names the file in the ConfigError an unreadable one raises.
    """
    import io

    import soundfile
    import soxr

    try:
        audio, file_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"{label} is not a readable WAV or Ogg file "
                          f"({str(exc).rsplit(': ', 1)[-1]}); "
                          f"convert it, e.g. with: sox IN.mp3 -r 16000 -c 1 OUT.wav") from None
    mono = audio.mean(axis=1)
    return soxr.resample(mono, file_rate, rate) if file_rate != rate else mono


def load_prompt(language: str, location: str, *, rate: int, max_seconds: float,
                level_dbfs: float | None = None) -> Prompt:
    """Load, convert and check one prompt. Raises ConfigError naming the file and the fix."""
    raw = _read_bytes(location)
    mono = decode_mono(raw, rate, label=f"consent prompt {location!r}")
    seconds = len(mono) / rate
    if seconds > max_seconds:
        raise ConfigError(f"consent prompt {location!r} lasts {seconds:.1f} s, longer than "
                          f"consent.max_prompt_s = {max_seconds:g}; shorten it or raise the limit")
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2))) if len(mono) else 0.0
    rms_dbfs = 20 * np.log10(rms) if rms > 0 else -np.inf
    if rms_dbfs < SILENCE_DBFS:
        raise ConfigError(f"consent prompt {location!r} is silent (RMS {rms_dbfs:.0f} dBFS); "
                          f"record the announcement again")
    if level_dbfs is not None:
        mono = mono * (10 ** ((level_dbfs - rms_dbfs) / 20))
    samples = (np.clip(mono, -1.0, 1.0) * 32767).astype(np.int16)
    prompt = Prompt(language, samples, rate, hashlib.sha256(raw).hexdigest(), location)
    logger.info("consent prompt loaded language=%s seconds=%.2f sha256=%s", language,
                prompt.seconds, prompt.sha256[:16])
    return prompt
