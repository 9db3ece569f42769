"""ITU-T V.253 voice-modem protocol, sans-IO: bytes in, events out.

The h11 way: feed whatever the serial port produced with
:meth:`V253Parser.receive_data`, then take events with
:meth:`V253Parser.next_event` (``None`` means "needs more data") or iterate
:meth:`V253Parser.events`. No I/O, no threads, no clock. Chunk boundaries do
not matter: a stream fed in one piece or split at any byte yields the same
events (voice data aside, which comes in pieces as it arrives).

What comes out:

- lines: final result codes as :class:`Result`, information text (ATI
  answers, command echo) as :class:`Response`, ``RING`` as
  :class:`~linetap.drivers.events.Ring`, and so are the distinctive-ring
  forms ``RING 2`` (Rockwell) and ``RING B`` (USR/3Com, Hayes ``S101``), with
  the pattern in ``Ring.cadence``;
- caller ID in the formatted form modems print after ``AT+VCID=1``,
  ``AT#CID=1`` or ``AT%CCID=1`` (``DATE = 1129``, ``NMBR = 5551234``...), one
  :class:`~linetap.drivers.events.CallerId` per block, also when V.253 frames
  it as a complex event (``DLE X`` ... ``DLE .``). A name in 8-bit text is
  UTF-8 if it decodes as such, else Latin-1. What a modem prints in place of
  a withheld number or name (``P``, ``O``, ``Restricted``, ``NO NAME``,
  ``0000000000``...) is no number or name but a plain ``reason_withheld``
  (:func:`withheld_reason`); a block that says only that caller ID failed
  (``MESG = CALID_202``) gives ``reason_withheld="failed"`` and nothing else,
  and a block with no data at all gives no event. The parser finds where a
  block starts and ends; what its lines mean is :mod:`linetap.drivers.callerid`'s;
- DLE-shielded events of voice mode (V.253, after IS-101): hook,
  DTMF, call-progress tones, end of a voice data stream;
- :class:`Garbage` for anything that is not the protocol.

Garbage is reported, never raised: line noise, a modem reset mid-line or a
USB glitch must not stop the box from hearing the next RING, so the parser
drops what it cannot read, says so in a :class:`Garbage` event and carries
on. The parser raises nothing on any input. :class:`V253ProtocolError` is for
the command/response dialogue above it: the session raises it when a modem
answers a command with something the protocol does not allow.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from linetap.drivers.callerid import caller_id, caller_id_field, withheld_reason
from linetap.drivers.events import CallerId, DtmfDigit, HookChanged, LineTone, Ring
from linetap.firmware.errors import ProtocolError

__all__ = [
    "MAX_LINE",
    "Event",
    "Garbage",
    "Response",
    "Result",
    "ShieldedCode",
    "V253Parser",
    "V253ProtocolError",
    "VoiceData",
    "VoiceDataEnd",
    "withheld_reason",
]

MAX_LINE = 512
"""Longest line kept, in bytes. A V.253 line is under 100 bytes; longer is noise."""

DLE = 0x10
ETX = 0x03
SUB = 0x1A
CR = 0x0D
LF = 0x0A
_GARBAGE_SAMPLE = 64  # bytes of a dropped line kept in its Garbage event, for debugging


class V253ProtocolError(ProtocolError):
    """A voice modem answered in a way V.253 does not allow."""


@dataclass(frozen=True)
class Result:
    """A final result code ending a command: ``OK``, ``ERROR``, ``CONNECT``...

    ``detail`` is what follows the code on its line (the rate after
    ``CONNECT``). ``NO DIAL TONE`` is reported as ``NO DIALTONE``.
    """

    code: str
    detail: str = ""


@dataclass(frozen=True)
class Response:
    """An information text line: an ``ATI`` answer, a command echo, anything not a result."""

    line: str


@dataclass(frozen=True)
class VoiceData:
    """Voice samples from a voice data stream, unshielded (``DLE DLE`` already made one 0x10)."""

    data: bytes


@dataclass(frozen=True)
class VoiceDataEnd:
    """``DLE ETX``: the modem ended a voice data stream and is back in command state."""


@dataclass(frozen=True)
class ShieldedCode:
    """A DLE event V.253 defines but linetap has no event type for (buffer overrun, loop break...)."""

    code: str
    meaning: str


@dataclass(frozen=True)
class Garbage:
    """Bytes that were dropped: ``reason`` says why, ``data`` holds at most their first 64 bytes.

    ``data`` may hold pieces of caller ID: never log it at INFO.
    """

    data: bytes
    reason: str


Event = (Result | Response | VoiceData | VoiceDataEnd | ShieldedCode | Garbage
         | Ring | CallerId | HookChanged | DtmfDigit | LineTone)

_RESULT_CODES = {
    "OK": "OK",
    "ERROR": "ERROR",
    "NO CARRIER": "NO CARRIER",
    "CONNECT": "CONNECT",
    "VCON": "VCON",
    "BUSY": "BUSY",
    "NO DIALTONE": "NO DIALTONE",
    "NO DIAL TONE": "NO DIALTONE",
    "NO ANSWER": "NO ANSWER",
}

# DLE-shielded codes a modem sends to the host: V.253's simple event reports,
# taken over from IS-101 (the US Robotics, Rockwell/Conexant and ZyXEL voice
# command references list the same letters). Event numbers are V.253's.
_DTMF_CODES = frozenset(b"0123456789*#ABCD")
_DTMF_SHIELD_START = ord("/")  # IS-101: a digit's report repeats every ~70 ms between / and ~
_DTMF_SHIELD_END = ord("~")
_SHIELDED_EVENTS: dict[int, Ring | HookChanged | LineTone] = {
    ord("R"): Ring(),                                       # 3: ring
    ord("H"): HookChanged(off_hook=True, source="modem"),   # 8: local phone off hook (line current)
    ord("h"): HookChanged(off_hook=False, source="modem"),  # 8: local phone on hook (current break)
    # Extension phone on the same line (V.253 event 24). A box wired in
    # parallel with the desk phone sees the handset as an extension.
    ord("P"): HookChanged(off_hook=True, source="modem"),
    ord("p"): HookChanged(off_hook=False, source="modem"),
    ord("b"): LineTone("busy"),       # 19
    ord("d"): LineTone("dial-tone"),  # 20
    ord("s"): LineTone("silence"),    # 9: "presumed hangup", no voice energy at all (+VSD)
    ord("q"): LineTone("quiet"),      # 10: "presumed end of message", voice then quiet (+VSD)
    ord("r"): LineTone("ringback"),   # 18: ringing tone
    ord("c"): LineTone("fax"),        # 6: T.30 calling tone, 1100 Hz
    ord("e"): LineTone("data"),       # 7: V.25 data calling tone, 1300 Hz
    # 25: 2100 Hz answer tone, shared by fax and data; either way a machine,
    # not a person, is on the line.
    ord("a"): LineTone("data"),
    ord("f"): LineTone("data"),       # 26: data answer tone, 2225 Hz
}
_SHIELDED_MEANINGS: dict[int, str] = {
    ord("o"): "receive buffer overrun",
    ord("u"): "transmit buffer underrun",
    ord("l"): "loop current interruption",
    ord("L"): "loop current polarity reversal",
    ord("$"): "bong tone",
    ord("J"): "SIT tone",
    ord("w"): "call waiting",
    ord("v"): "voice detected",
    ord("V"): "voice detected",
    ord("T"): "timing mark",
    ord("E"): "invalid voice data format",
    ord("Y"): "lost data",
}

# Distinctive ring: Rockwell prints the cadence number, USR/3Com and Hayes (S101) a letter A-D or U.
_RING = re.compile(r"RING(?: (?P<cadence>[A-Z0-9]{1,2}))?")
_COMPLEX_START = ord("X")  # V.253 complex event report: DLE X <text> DLE .
_COMPLEX_END = ord(".")
_COMPLEX_MAX_SKIPPED = 16  # lines of a complex event that is not caller ID, before it counts as lost


def _text(raw: bytes) -> str | None:
    """A line's text: ASCII, else UTF-8 if valid, else Latin-1; ``None`` if it holds control bytes."""
    if any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in raw):
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class V253Parser:
    """Turns the byte stream from a V.253 voice modem into events. No I/O.

    ``voice``: the modem is in voice mode (``AT+FCLASS=8``), where ``CONNECT``
    starts a voice data stream that runs until ``DLE ETX``. Set the attribute
    of the same name when the mode changes.

    A caller-ID block ends at the next line or event that is not caller ID, at
    :meth:`flush`, or at end of stream; the reader calls :meth:`flush` after an
    idle gap so that a block the modem sends last is not held back.
    """

    def __init__(self, *, voice: bool = False) -> None:
        self.voice = voice
        self._events: deque[Event] = deque()
        self._reset()

    def _reset(self) -> None:
        self._line = bytearray()
        self._discarding = False  # inside an overlong line, until its end
        self._dle = False  # the last byte was a DLE still waiting for its code
        self._in_voice_data = False
        self._voice_data = bytearray()
        # The LF of the CRLF after CONNECT belongs to the line, not to the voice data.
        self._skip_terminator: int | None = None
        self._dtmf_shielded = False
        self._dtmf_reported: int | None = None
        self._caller_id: dict[str, str] = {}
        self._framed = False  # inside a complex event report, DLE X ... DLE .
        self._framed_caller_id = False  # the report held caller-ID lines
        self._framed_skipped = 0  # lines of the report that were not caller ID

    # -- input ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as they came from the modem; ``b""`` means the stream ended.

        At end of stream a pending caller-ID block is completed, an unfinished
        line is reported as :class:`Garbage`, and the parser is ready for a new
        stream (a reopened port) from its initial state.
        """
        if not data:
            self._end_of_stream()
            return
        for byte in data:
            if self._dle:
                self._dle = False
                self._shielded(byte)
            elif byte == DLE:
                self._dle = True
            elif self._in_voice_data and not self._framed:
                if byte != self._skip_terminator:
                    self._voice_data.append(byte)
                self._skip_terminator = None
            elif byte == CR or byte == LF:
                self._end_line(byte)
            else:
                self._add_to_line(byte)
        self._flush_voice_data()

    def flush(self) -> None:
        """Complete a pending caller-ID block now (the stream went quiet)."""
        self._complete_caller_id()

    # -- output -----------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when the parser needs more data."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        """Every event available now, oldest first."""
        while self._events:
            yield self._events.popleft()

    # -- internals --------------------------------------------------------

    def _emit(self, event: Event) -> None:
        # Anything that is not caller ID ends a caller-ID block, and voice
        # data received before an event is delivered before it.
        self._complete_caller_id()
        self._flush_voice_data()
        self._events.append(event)

    def _flush_voice_data(self) -> None:
        if self._voice_data:
            self._events.append(VoiceData(bytes(self._voice_data)))
            self._voice_data.clear()

    def _end_of_stream(self) -> None:
        if self._dle:
            self._emit(Garbage(bytes([DLE]), "stream ended after a DLE"))
        if self._line and not self._discarding:
            self._emit(Garbage(bytes(self._line[:_GARBAGE_SAMPLE]), "stream ended inside a line"))
        if self._in_voice_data:
            self._emit(Garbage(b"", "stream ended inside voice data, without DLE ETX"))
        if self._framed:
            self._emit(Garbage(b"", "stream ended inside a complex event report, without DLE ."))
        self._complete_caller_id()
        self._flush_voice_data()
        self._reset()

    def _shielded(self, code: int) -> None:
        if code == DLE:
            self._data_byte(DLE)
        elif code == SUB:
            # V.253: DLE SUB stands for two consecutive DLE data bytes.
            self._data_byte(DLE)
            self._data_byte(DLE)
        elif code == ETX:
            self._in_voice_data = False
            self._emit(VoiceDataEnd())
        elif code == _COMPLEX_START:
            self._start_complex_event()
        elif code == _COMPLEX_END and self._framed:
            self._end_complex_event()
        elif code == _DTMF_SHIELD_START:
            self._dtmf_shielded = True
            self._dtmf_reported = None
        elif code == _DTMF_SHIELD_END:
            self._dtmf_shielded = False
        elif code in _DTMF_CODES:
            # Inside / ... ~ only the repeats of the digit already reported are
            # dropped, so a stray DLE / from line noise cannot swallow other digits.
            if not (self._dtmf_shielded and code == self._dtmf_reported):
                self._emit(DtmfDigit(chr(code)))
            self._dtmf_reported = code if self._dtmf_shielded else None
        elif code in _SHIELDED_EVENTS:
            self._emit(_SHIELDED_EVENTS[code])
        elif code in _SHIELDED_MEANINGS:
            self._emit(ShieldedCode(chr(code), _SHIELDED_MEANINGS[code]))
        else:
            self._emit(Garbage(bytes([DLE, code]), f"unknown DLE code 0x{code:02x}"))

    def _data_byte(self, byte: int) -> None:
        if self._in_voice_data:
            self._voice_data.append(byte)
        else:
            self._add_to_line(byte)

    def _add_to_line(self, byte: int) -> None:
        if self._discarding:
            return
        if len(self._line) >= MAX_LINE:
            self._emit(Garbage(bytes(self._line[:_GARBAGE_SAMPLE]),
                               f"line longer than {MAX_LINE} bytes dropped"))
            self._line.clear()
            self._discarding = True
            return
        self._line.append(byte)

    def _end_line(self, terminator: int) -> None:
        # CR and LF each end a line and empty lines are skipped, so CRLF, LFCR,
        # a lone CR or a lone LF all frame lines alike.
        if self._discarding:
            self._discarding = False
            self._line.clear()
            return
        if not self._line:
            return
        raw = bytes(self._line)
        self._line.clear()
        self._line_received(raw, terminator)

    def _start_complex_event(self) -> None:
        if self._framed:
            self._lose_complex_event()
        # The report is a block of its own: whatever caller ID came before it is complete.
        self._complete_caller_id()
        self._framed, self._framed_caller_id, self._framed_skipped = True, False, 0

    def _end_complex_event(self) -> None:
        self._end_line(LF)  # DLE . ends the report's last line too
        self._framed = False
        if self._framed_caller_id:
            self._complete_caller_id()
        else:
            self._emit(ShieldedCode("X", "complex event report without caller ID, skipped"))

    def _lose_complex_event(self) -> None:
        self._framed = False
        self._emit(Garbage(b"", "complex event report not closed by DLE ."))

    def _line_received(self, raw: bytes, terminator: int) -> None:
        decoded = _text(raw)
        if decoded is None:
            self._emit(Garbage(raw[:_GARBAGE_SAMPLE], "line with non-text bytes"))
            return
        text = decoded.strip()
        if not text:
            return
        if not text.isascii():
            # 8-bit text is taken only as a caller-ID value (a name such as
            # "Mäkinen"); anywhere else it is line noise.
            field = caller_id_field(text)
            if field:
                self._caller_id_line(*field)
            elif self._framed:
                self._skip_framed_line()
            else:
                self._emit(Garbage(raw[:_GARBAGE_SAMPLE], "line with non-text bytes"))
            return
        upper = " ".join(text.upper().split())
        ring = _RING.fullmatch(upper)
        if ring:
            if self._framed:
                self._lose_complex_event()
            self._emit(Ring(ring["cadence"]))
            return
        code, detail = ("CONNECT", upper[len("CONNECT "):]) if upper.startswith("CONNECT ") else (upper, "")
        if code in _RESULT_CODES:
            if self._framed:
                self._lose_complex_event()
            self._emit(Result(_RESULT_CODES[code], detail))
            if code == "CONNECT" and self.voice:
                self._in_voice_data = True
                # V.250 frames result codes with S3 S4 (CR LF by default); a
                # byte after any other ending is voice data.
                self._skip_terminator = LF if terminator == CR else None
            return
        field = caller_id_field(text)
        if field:
            self._caller_id_line(*field)
            return
        if self._framed:
            self._skip_framed_line()
            return
        self._emit(Response(text))

    def _skip_framed_line(self) -> None:
        # A complex event linetap does not read (V.253 DID, call-waiting ID...).
        self._framed_skipped += 1
        if self._framed_skipped > _COMPLEX_MAX_SKIPPED:
            self._lose_complex_event()

    def _caller_id_line(self, field: str, value: str) -> None:
        if field in self._caller_id:
            # The same tag again: a second block followed the first with nothing between.
            self._complete_caller_id()
        self._caller_id[field] = value
        if self._framed:
            self._framed_caller_id = True

    def _complete_caller_id(self) -> None:
        if not self._caller_id:
            return
        fields, self._caller_id = self._caller_id, {}
        event = caller_id(fields)
        if event is not None:
            self._events.append(event)
