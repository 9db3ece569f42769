"""Sample sources: one side of the simulated line, read a block at a time.

A file is read as the simulated codec asks for it, so a long call costs no
more memory than a short one.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from linetap.firmware.errors import ConfigError


def tone(freq: float, seconds: float, rate: int, level_db: float = -12.0) -> np.ndarray:
    """A sine as mono int16; ``level_db`` in dBFS, 0 dBFS being a full-scale sine (AES17)."""
    n = round(seconds * rate)
    amplitude = 32767 * 10 ** (level_db / 20)
    return np.rint(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


class SampleSource(Protocol):
    """One side of the simulated line: mono int16 at the codec's rate, read in order.

    ``read(frames)`` returns up to ``frames`` samples, fewer only at the end,
    then empty arrays. A file is read as the codec asks for it, so a long call
    costs no more memory than a short one.
    """

    def read(self, frames: int) -> np.ndarray: ...

    def close(self) -> None: ...


class _ArraySource:
    """Samples already in memory, handed out as views."""

    def __init__(self, samples: np.ndarray, side: str) -> None:
        samples = np.asarray(samples)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise ConfigError(f"simulated codec {side}: expected mono int16 samples, got {samples.dtype} "
                              f"of shape {samples.shape}")
        self._samples, self._pos = samples, 0

    def read(self, frames: int) -> np.ndarray:
        chunk = self._samples[self._pos:self._pos + frames]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class Silence:
    """Silence that never ends: the simulated board's line when ``linetap run`` is given no audio, so the
    service stays up, idle, for as long as it runs."""

    def read(self, frames: int) -> np.ndarray:
        return np.zeros(frames, np.int16)

    def close(self) -> None:
        pass


class WavSource:
    """A mono 16-bit WAV file at ``rate``, streamed; any other format is refused with the sox command."""

    def __init__(self, path: str | os.PathLike, side: str, rate: int) -> None:
        path = Path(path)
        try:
            self._wav = wave.open(str(path), "rb")
        except FileNotFoundError as error:
            raise ConfigError(f"simulated codec {side} file {path} does not exist") from error
        except (wave.Error, EOFError) as error:
            raise ConfigError(f"simulated codec {side} file {path} is not a readable WAV file: {error}") from error
        channels, width, file_rate = (self._wav.getnchannels(), self._wav.getsampwidth(),
                                      self._wav.getframerate())
        if (channels, width, file_rate) != (1, 2, rate):
            self._wav.close()
            raise ConfigError(
                f"simulated codec {side} file {path}: {file_rate} Hz, {channels} channel(s), "
                f"{8 * width}-bit; it needs mono 16-bit at {rate} Hz: convert it with "
                f"`sox {path} -r {rate} -c 1 -b 16 out.wav`")

    def read(self, frames: int) -> np.ndarray:
        return np.frombuffer(self._wav.readframes(frames), dtype="<i2").astype(np.int16)

    def close(self) -> None:
        self._wav.close()


class AudioFileSource:
    """A WAV or Ogg file at any rate, streamed as mono int16 at ``rate``.

    The file is decoded :attr:`CHUNK` frames at a time as the codec asks for
    samples: channels are mixed down and another rate is converted with
    soxr's streaming resampler, so memory stays flat in the file's length. A
    mono 16-bit PCM file at ``rate`` is passed through sample for sample.
    ``label`` names the file in the ConfigError an unreadable one raises.
    """

    CHUNK = 8192  # file frames per decode: half a second at 16 kHz

    def __init__(self, path: str | os.PathLike, rate: int, *, label: str = "audio file") -> None:
        import soundfile

        self.path = Path(path)
        self._what = f"{label} {self.path}"
        if not self.path.is_file():
            raise ConfigError(f"{self._what} does not exist (or is not a file)")
        self._errors = (soundfile.LibsndfileError, RuntimeError, TypeError)
        try:
            self._file = soundfile.SoundFile(self.path)
        except self._errors as exc:
            raise self._unreadable(exc) from None
        self.file_rate, self.channels = self._file.samplerate, self._file.channels
        self._exact = self.channels == 1 and self.file_rate == rate and self._file.subtype == "PCM_16"
        self._resampler = None
        if self.file_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.file_rate, rate, 1, dtype="float32")
        self._pending = np.zeros(0, np.int16)
        self._eof = False

    def _unreadable(self, exc: BaseException) -> ConfigError:
        return ConfigError(f"{self._what} is not a readable WAV or Ogg file "
                           f"({str(exc).rsplit(': ', 1)[-1]}); "
                           f"convert it, e.g. with: sox IN.mp3 -r 16000 -c 1 OUT.wav")

    def read(self, frames: int) -> np.ndarray:
        while len(self._pending) < frames and not self._eof:
            self._pending = np.concatenate([self._pending, self._decode()])
        chunk, self._pending = self._pending[:frames], self._pending[frames:]
        return chunk

    def _decode(self) -> np.ndarray:
        try:
            if self._exact:
                samples = self._file.read(self.CHUNK, dtype="int16")
                self._eof = len(samples) < self.CHUNK
                return samples
            audio = self._file.read(self.CHUNK, dtype="float32", always_2d=True)
        except self._errors as exc:
            raise self._unreadable(exc) from None
        self._eof = len(audio) < self.CHUNK
        mono = audio.mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=self._eof)
        return (np.clip(mono, -1, 1) * 32767).astype(np.int16)

    def close(self) -> None:
        self._file.close()


def as_source(source: np.ndarray | str | os.PathLike | SampleSource, side: str, rate: int) -> SampleSource:
    if isinstance(source, (str, os.PathLike)):
        return WavSource(source, side, rate)
    if isinstance(source, np.ndarray):
        return _ArraySource(source, side)
    if callable(getattr(source, "read", None)):
        return source
    return _ArraySource(np.asarray(source), side)
