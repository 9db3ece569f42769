"""Stereo call audio to one continuous Ogg Opus stream, handed out in segments.

A call is stored as stereo Ogg Opus (near end = left, far end = right). The
spool encrypts and writes each segment separately, yet the segments of a call
are consecutive byte ranges of ONE Ogg Opus stream (one encoder, one logical
stream), cut only at Ogg page boundaries. Concatenated in order they are a
file that ``opusdec`` or FFmpeg decodes as one continuous call; the encoder is
never restarted, so there is no quality loss or chained stream at a cut.
Everything happens in memory: plaintext never reaches a file.

Library: FFmpeg's libopus encoder and Ogg muxer through PyAV
=============================================================
PyAV gives packet-level access, the libopus options (bitrate, application,
complexity, frame duration) and a muxer that writes into a Python object, so
each Ogg page arrives here as bytes. libsndfile (``soundfile``) writes Ogg
Opus too but exposes neither pages nor bitrate (its ``compression_level``
maps to a bitrate only indirectly, and its default made 21 MB per call-hour
with wide-band PESQ 3.5 on test speech), so it cannot cut at pages.

This module reads the container (the 27-byte page header and segment table,
to see where pages end and their granule positions); FFmpeg writes it.

Settings, measured on a one-minute two-sided espeak-ng conversation (16 kHz,
alternating turns with some overlap), decoded (``opusdec``, or in memory in
the bench), wide-band PESQ per channel averaged over each talker's turns
(see ``bench/storage.py``):

- 24 kbit/s VBR, application ``voip``, 40 ms frames, complexity 8: 8.9 MB
  per stereo call-hour stored, PESQ 4.01 / 4.09 (``opusenc --bitrate 24``,
  the bench's peer: 9.2 MB/h, 3.99 / 3.93). libopus codes it as stereo
  wide-band SILK, as it does the peer's. 20 ms frames: 9.0 MB/h, 4.00 /
  3.98, no less CPU; 60 ms frames: 8.8 MB/h, 4.03 / 4.12, no less CPU, and
  they do not divide common segment lengths (10 s = 250 x 40 ms).
- Below about 23 kbit/s libopus may code the call as mono (its stereo
  threshold): at 22 kbit/s with 20 ms frames the far channel carried the near
  talker only 47 dB down instead of 70 dB, and at 20 kbit/s only 14 dB down.
  For a recorder whose two channels are two people that is a defect, so
  lower bitrates are refused.
- Complexity 8 is the least that keeps PESQ >= 4.0: 8, 9 and 10 give the
  same bytes (SILK's settings top out at 8) and, at 16 kHz, the same CPU;
  6 and 7 give 3.89 / 3.98 (7 adds libopus's signal analysis, about 10 %
  more CPU, and changes no byte here), 4-5 3.64 / 3.64, 0-3 below 2.95.
  Application ``audio`` scores the same at 8 (4.02 / 4.00) for no less CPU
  and at 6 lets CELT code speech (1.6); ``lowdelay`` forces CELT (1.9 /
  1.8). Constrained VBR gave the same bytes; CBR 11 MB/h and 3.87 / 3.92
  for more CPU; DTX changed no byte of this call.
- CPU per stereo call-hour, the whole call in one write (libopus alone),
  as a fraction of the peer's in the same run: complexity 8 0.65-0.74, 6
  0.45-0.50, 4 0.45-0.49, 0 0.21-0.24. libopus at the quality floor thus
  costs about 0.7 of the peer by itself: with the DTMF masker (about 0.2 of
  the peer) our pipeline cannot reach the 0.75 target without scoring below
  4.0 (see ``bench/storage.py``).
- Input reaches the encoder a page at a time (below). Handed over in the
  recorder's 20 ms blocks, each one a PyAV frame and a pass through PyAV's
  frame-size filter, the encode stage cost 8-11 s per call-hour more than
  the whole call in one write; a page at a time, within measurement noise of
  it, with the same bytes and segments out at the same moments.
- Coupled stereo (mapping family 0) is kept: two uncoupled mono streams
  (family 255) avoid the coder's stereo trade-offs but opusdec refuses
  family 255, and at equal quality they cost more (each silent side still
  pays for its own stream). The cost of coupling: where both sides talk at
  once for long, the two share 24 kbit/s and quality drops (PESQ about 1.3 on
  a test with both talking without pause); the overlaps at turn changes of a
  real conversation scored as above.

Pages and segments
==================
Every Opus packet ends in a page whose granule position counts 48 kHz
samples decoded so far (RFC 7845, pre-skip included). FFmpeg's muxer closes a
page once it holds ``page_duration`` of packets and writes it out when the
next page is complete. A segment is ``segment_s`` rounded up to whole 40 ms
frames, split into the fewest pages of at most 1 s, all of one length. A
segment ends with the first page whose granule reaches the previous cut plus
``segment_s``: each segment is a whole number of pages and spans at least
``segment_s`` of stream time, exactly that for whole seconds (10 s is ten
1 s pages), a few frames more otherwise (7.3 s gives eight 920 ms pages,
7.36 s). The first segment's audio is 6.5 ms shorter: the encoder's
pre-skip. A page never holds more than 1 s of audio, and a finished segment
comes out of :meth:`OpusSegmenter.write` about one page (at most 1 s) after
its last sample went in, because the muxer holds the newest page back. A power cut
therefore loses the segment in progress plus at most a second.

:meth:`OpusSegmenter.finish` flushes encoder and muxer and returns the rest,
ending with the end-of-stream page; it may be a little longer than
``segment_s`` (everything not yet handed out) or the only segment of a short
call. Memory stays bounded by one segment, two pages of Ogg data and one
page of input.

Input is gathered into whole pages before it goes to the encoder. A page is
written out only once the next page is complete, and the next page can only
be complete at a page boundary of the input, so gathering changes neither
the bytes nor the write that returns a segment; it saves PyAV's per-frame
costs (see "Settings").
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from types import TracebackType

import av
import numpy as np

from linetap.firmware.config import segment_s_problem
from linetap.firmware.errors import ConfigError, SpoolError

logger = logging.getLogger(__name__)

# Ogg Opus granule positions count 48 kHz samples whatever the input rate (RFC 7845 section 4).
GRANULE_RATE = 48000
RATES = (8000, 16000, 48000)
DEFAULT_BITRATE = 24000
# libopus folds stereo to mono below about 23 kbit/s (see the module docstring).
MIN_BITRATE = 24000
MAX_BITRATE = 256000
DEFAULT_SEGMENT_S = 10.0
DEFAULT_COMPLEXITY = 8
FRAME_MS = 40
MAX_PAGE_MS = 1000

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_CAPTURE = b"OggS"
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04


@dataclass(frozen=True)
class OggPage:
    """One Ogg page as found in a byte string (RFC 3533)."""

    offset: int
    length: int
    flags: int
    granule: int
    serial: int
    sequence: int
    body: bytes

    @property
    def bos(self) -> bool:
        return bool(self.flags & FLAG_BOS)

    @property
    def eos(self) -> bool:
        return bool(self.flags & FLAG_EOS)


def _page_at(data: bytes | bytearray, offset: int) -> OggPage | None:
    """The page starting at ``offset``, or None while its bytes are not all there."""
    if len(data) < offset + _PAGE_HEADER.size:
        return None
    capture, version, flags, granule, serial, sequence, _crc, count = _PAGE_HEADER.unpack_from(
        data, offset)
    if capture != _CAPTURE or version != 0:
        raise SpoolError(f"no Ogg page at byte {offset} (found {bytes(capture)!r}, version "
                         f"{version}); the data is not an Ogg stream or is cut mid-page")
    table_end = offset + _PAGE_HEADER.size + count
    if len(data) < table_end:
        return None
    end = table_end + sum(data[offset + _PAGE_HEADER.size:table_end])
    if len(data) < end:
        return None
    return OggPage(offset, end - offset, flags, granule, serial, sequence,
                   bytes(data[table_end:end]))


def ogg_pages(data: bytes) -> list[OggPage]:
    """Every page of ``data``, which must start at a page and hold whole pages only."""
    pages = []
    offset = 0
    while offset < len(data):
        page = _page_at(data, offset)
        if page is None:
            raise SpoolError(f"Ogg data ends inside a page at byte {offset} of {len(data)}; "
                             "a segment is missing its end")
        pages.append(page)
        offset += page.length
    return pages


class _Sink:
    """The file object the muxer writes into: it only appends, so nothing can seek back."""

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def page_frames(segment_s: float) -> int:
    """Opus frames per Ogg page for ``segment_s``: see "Pages and segments" above."""
    segment_frames = math.ceil(round(segment_s * 1000) / FRAME_MS)
    pages = math.ceil(segment_frames / (MAX_PAGE_MS // FRAME_MS))
    return math.ceil(segment_frames / pages)


class OpusSegmenter:
    """Stereo int16 frames in, plaintext Ogg Opus segments out.

    Not thread-safe: the one thread that records a call owns it (the spool's
    call thread). No threads, no I/O. Use as a context manager or call
    :meth:`close`; :meth:`finish` ends the stream and closes too.
    """

    def __init__(self, rate: int, *, bitrate: int = DEFAULT_BITRATE,
                 segment_s: float = DEFAULT_SEGMENT_S,
                 complexity: int = DEFAULT_COMPLEXITY) -> None:
        if rate not in RATES:
            raise ConfigError(f"Opus encoder rate = {rate}; use one of {', '.join(map(str, RATES))} Hz")
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise ConfigError(f"Opus bitrate = {bitrate}; use {MIN_BITRATE} to {MAX_BITRATE} bit/s "
                              "(below that libopus may merge the two talkers into mono)")
        if (problem := segment_s_problem(segment_s)) is not None:
            raise ConfigError(f"segment_s = {segment_s}; {problem}")
        if not 0 <= complexity <= 10:
            raise ConfigError(f"Opus complexity = {complexity}; use 0 to 10")
        self.rate = rate
        self.bitrate = bitrate
        self.segment_s = segment_s
        self._span = round(segment_s * GRANULE_RATE)
        self._pending = bytearray()
        self._scanned = 0
        self._cut_target = self._span
        self._samples_in = 0
        self._page_samples = page_frames(segment_s) * rate * FRAME_MS // 1000
        self._page = np.empty((self._page_samples, 2), dtype=np.int16)  # the next page's input
        self._filled = 0
        self._segments_out = 0
        self._closed = False
        page_us = page_frames(segment_s) * FRAME_MS * 1000
        try:
            self._container = av.open(_Sink(self._pending), "w", format="ogg",
                                      container_options={"page_duration": str(page_us),
                                                         "flush_packets": "1"})
            self._stream = self._container.add_stream("libopus", rate=rate, layout="stereo")
        except (av.FFmpegError, ValueError) as error:
            raise SpoolError(f"cannot set up the Ogg Opus encoder ({error}); install a PyAV "
                             "build with libopus: pip install av") from error
        self._stream.bit_rate = bitrate
        self._stream.codec_context.options = {
            "application": "voip", "compression_level": str(complexity),
            "frame_duration": str(FRAME_MS), "vbr": "on"}

    def write(self, frames: np.ndarray) -> list[bytes]:
        """Encode ``frames`` ((n, 2) int16 at ``rate``, near = column 0); return finished segments."""
        self._check_open("write")
        if not (isinstance(frames, np.ndarray) and frames.ndim == 2 and frames.shape[1] == 2
                and frames.dtype == np.int16):
            shape = getattr(frames, "shape", None)
            dtype = getattr(frames, "dtype", type(frames).__name__)
            raise SpoolError(f"frames of shape {shape} and type {dtype}; the encoder takes "
                             "(n, 2) int16 arrays, near end in column 0")
        # Input goes to the encoder a page at a time: the muxer writes a page only once
        # the next one is complete, so no segment comes out later, and one hand-over
        # (a frame object, PyAV's frame-size filter, a burst of libopus) per page costs
        # less than one per block (see "Settings").
        segments = []
        while len(frames):
            taken = min(len(frames), self._page_samples - self._filled)
            self._page[self._filled:self._filled + taken] = frames[:taken]
            self._filled += taken
            frames = frames[taken:]
            if self._filled == self._page_samples:
                self._encode(self._audio_frame(self._page))
                self._filled = 0
                segments += self._take_segments()
        return segments

    def finish(self) -> bytes:
        """Flush encoder and muxer; the last segment, ending with the end-of-stream page.

        Empty when no frame was ever written (no stream was started).
        """
        self._check_open("finish")
        try:
            if self._filled:
                self._encode(self._audio_frame(self._page[:self._filled]))
                self._filled = 0
            self._encode(None)
            self._container.close()
        finally:
            self._closed = True
        segments = self._take_segments()
        tail = b"".join(segments) + bytes(self._pending)
        self._pending.clear()
        if tail:
            self._segments_out += 1
            logger.debug("last segment index=%d bytes=%d samples=%d", self._segments_out - 1,
                         len(tail), self._samples_in)
        return tail

    def close(self) -> None:
        """Drop the stream without ending it (a discarded recording). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._container.close()
        self._pending.clear()
        self._filled = 0

    def __enter__(self) -> OpusSegmenter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise SpoolError(f"OpusSegmenter.{what}() after finish() or close(); make a new "
                             "segmenter for each recording")

    def _audio_frame(self, frames: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(frames).reshape(1, -1),
                                           format="s16", layout="stereo")
        frame.sample_rate = self.rate
        frame.pts = self._samples_in
        self._samples_in += len(frames)
        return frame

    def _encode(self, frame: av.AudioFrame | None) -> None:
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as error:
            raise SpoolError(f"Opus encoding failed after {self._samples_in} samples at "
                             f"{self.rate} Hz: {error}") from error

    def _take_segments(self) -> list[bytes]:
        """Cut off every segment whose last page the muxer has written."""
        segments = []
        while (page := _page_at(self._pending, self._scanned)) is not None:
            self._scanned += page.length
            if page.granule >= self._cut_target:
                segments.append(bytes(self._pending[:self._scanned]))
                del self._pending[:self._scanned]
                self._scanned = 0
                self._cut_target = page.granule + self._span
                logger.debug("segment index=%d bytes=%d granule=%d", self._segments_out,
                             len(segments[-1]), page.granule)
                self._segments_out += 1
        return segments


def segments_to_pcm(segments: list[bytes], rate: int) -> np.ndarray:
    """Decode a recording's plaintext segments, in order, to (n, 2) int16 at ``rate``.

    In memory, with FFmpeg's Opus decoder (pre-skip and end trimming applied).
    The whole call is decoded at once: for tests and the central export, not
    for the box.
    """
    if rate not in RATES:
        raise ConfigError(f"decode rate = {rate}; use one of {', '.join(map(str, RATES))} Hz")
    data = b"".join(segments)
    if not data:
        return np.zeros((0, 2), dtype=np.int16)
    pieces = []
    try:
        with av.open(io.BytesIO(data), "r", format="ogg") as container:
            streams = container.streams.audio
            if len(streams) != 1 or streams[0].codec_context.name != "opus" \
                    or streams[0].codec_context.channels != 2:
                found = [(s.codec_context.name, s.codec_context.channels) for s in streams]
                raise SpoolError(f"segments hold audio streams {found}; expected one stereo "
                                 "Opus stream")
            resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
            for frame in container.decode(streams[0]):
                pieces += [out.to_ndarray().reshape(-1, 2) for out in resampler.resample(frame)]
            pieces += [out.to_ndarray().reshape(-1, 2) for out in resampler.resample(None)]
    except av.FFmpegError as error:
        raise SpoolError(f"cannot decode {len(segments)} segments ({len(data)} bytes) as Ogg "
                         f"Opus: {error}") from error
    if not pieces:
        return np.zeros((0, 2), dtype=np.int16)
    return np.concatenate(pieces)
