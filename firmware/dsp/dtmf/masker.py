"""Digits silenced in what is stored: the masking part of the package docstring."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from linetap.firmware.dsp.dtmf.detector import DetectorBank
from linetap.firmware.dsp.dtmf.figures import check_rate
from linetap.firmware.dsp.dtmf.tracker import DtmfEvent, DtmfToneOn
from linetap.firmware.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_LOOKAHEAD_S = 0.05
MASK_GUARD_S = 0.01


@dataclass(frozen=True, slots=True)
class MaskSpan:
    """Stored audio silenced from ``start_s`` to ``end_s`` for a tone seen on ``channel``.

    Times are on the input stream's time axis (sample index / rate), the
    same axis as the detector's; the masker's output lags it by
    :attr:`DtmfMasker.lookahead_s`. The digit is deliberately not recorded.
    """

    start_s: float
    end_s: float
    channel: int


@dataclass(frozen=True, slots=True)
class MaskedBlock:
    """What one :meth:`DtmfMasker.feed` gives back.

    ``audio`` is the input delayed by the lookahead, digits silenced on every
    channel; ``spans`` are the mask spans completed during this feed;
    ``events`` are the detectors' events (with digits) for the call logic,
    which must not store them.
    """

    audio: np.ndarray
    spans: list[MaskSpan]
    events: list[DtmfToneOn | DtmfEvent]


class DtmfMasker:
    """Silence DTMF digits in a multichannel stream, delaying it by a fixed lookahead.

    ``feed(block)`` takes blocks of shape (n, channels) (or (n,) for one
    channel) and returns a block of the same shape holding the input from
    ``lookahead_frames`` samples earlier (the first call's output starts with
    that much silence); ``flush()`` returns the held tail at the end of the
    stream. Output sample ``p`` is input sample ``p - lookahead_frames``.
    Each tone is silenced on all channels from :data:`MASK_GUARD_S` before
    its start to ``MASK_GUARD_S`` after its end. Not thread-safe.
    """

    def __init__(self, rate: int, channels: int = 2, *,
                 lookahead_s: float = DEFAULT_LOOKAHEAD_S, guard_s: float = MASK_GUARD_S) -> None:
        check_rate(rate)
        if channels < 1:
            raise ConfigError(f"DtmfMasker needs at least one channel, got {channels}")
        self.rate = rate
        self.channels = channels
        self._detectors = DetectorBank(rate, tuple(range(channels)))
        self._guard = int(round(guard_s * rate))
        self.lookahead_frames = int(round(lookahead_s * rate))
        needed = max(self._detectors.start_latency + self._guard, self._detectors.end_latency)
        if self.lookahead_frames < needed:
            raise ConfigError(f"DTMF mask lookahead {lookahead_s} s is shorter than the detector's "
                              f"decision latency plus guard ({needed / rate:.3f} s); digit onsets "
                              f"would leak into the recording: raise it to at least that")
        self._held = np.zeros((self.lookahead_frames, channels), dtype=np.int16)
        self._fed = 0
        self._closed: list[tuple[int, int]] = []
        self._open: dict[int, int] = {}  # channel -> masked-from sample of a sounding tone

    @property
    def lookahead_s(self) -> float:
        return self.lookahead_frames / self.rate

    def feed(self, block: np.ndarray) -> MaskedBlock:
        """Take the next block; return the block from ``lookahead_s`` ago, masked."""
        samples = np.asarray(block)
        mono = samples.ndim == 1
        frames = samples.reshape(-1, 1) if mono else samples
        if frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"DtmfMasker for {self.channels} channel(s) got a block of shape "
                             f"{samples.shape}; expected (n, {self.channels})")
        events: list[DtmfToneOn | DtmfEvent] = []
        spans: list[MaskSpan] = []
        self._detectors.feed(frames, events)
        for event in events:
            self._apply(event, spans)
        joined = np.concatenate([self._held, frames.astype(np.int16, copy=False)])
        n = len(frames)
        out, self._held = joined[:n], joined[n:]  # disjoint views: masking out spares held
        self._mask(out, self._fed - self.lookahead_frames)
        self._fed += n
        return MaskedBlock(out.reshape(-1) if mono else out, spans, events)

    def flush(self) -> MaskedBlock:
        """End of stream: close sounding tones and return the held audio, masked."""
        events: list[DtmfToneOn | DtmfEvent] = list(self._detectors.flush())
        spans: list[MaskSpan] = []
        for event in events:
            self._apply(event, spans)
        out, self._held = self._held.copy(), self._held[:0]
        self._mask(out, self._fed - self.lookahead_frames)
        self._fed += len(out)  # a second flush finds nothing held and masks nothing
        return MaskedBlock(out.reshape(-1) if self.channels == 1 else out, spans, events)

    def _apply(self, event: DtmfToneOn | DtmfEvent, spans: list[MaskSpan]) -> None:
        start = max(0, event.start - self._guard)
        if isinstance(event, DtmfToneOn):
            self._open[event.channel] = start
            return
        self._open.pop(event.channel, None)
        end = event.end + self._guard
        self._closed.append((start, end))
        spans.append(MaskSpan(start / self.rate, end / self.rate, event.channel))
        logger.debug("dtmf masked channel=%d start_s=%.3f end_s=%.3f", event.channel,
                     start / self.rate, end / self.rate)

    def _mask(self, out: np.ndarray, first: int) -> None:
        """Silence the parts of ``out`` (input samples ``first`` onwards) inside any span."""
        if not (self._closed or self._open):
            return
        last = first + len(out)
        # Spans wholly behind the output are done with; dropping them keeps a
        # box that runs for months from growing this list without bound.
        self._closed = [(start, end) for start, end in self._closed if end > first]
        for start, end in self._closed:
            if start < last and end > first:
                out[max(start - first, 0):min(end - first, len(out))] = 0
        for start in self._open.values():
            if start < last:
                out[max(start - first, 0):] = 0
        self._closed = [(s, e) for s, e in self._closed if e > last]
