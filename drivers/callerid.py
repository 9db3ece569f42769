"""Caller ID as voice modems print it, sans-IO: text lines in, one event per block.

After ``AT+VCID=1``, ``AT#CID=1`` or ``AT%CCID=1`` a modem prints each
caller-ID parameter on a line of its own (``DATE = 1129``, ``NMBR = 5551234``).
:func:`caller_id_field` reads one such line; :func:`caller_id` turns one
complete block of fields into a :class:`~linetap.drivers.events.CallerId`.
What a modem prints in place of a withheld number or name (``P``, ``O``,
``Restricted``, ``NO NAME``, ``0000000000``...) is no number or name but a
plain ``reason_withheld`` (:func:`withheld_reason`); a block that says only
that caller ID failed (``MESG = CALID_202``) gives ``reason_withheld="failed"``
and nothing else, and a block with no data at all gives no event.

Where a block starts and ends is the parser's business (:mod:`linetap.drivers.v253`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from linetap.drivers.events import CallerId

__all__ = ["caller_id", "caller_id_field", "withheld_reason"]

_CID_LINE = re.compile(r"(?P<tag>[A-Za-z][A-Za-z_ ]*?)\s*[=:]\s*(?P<value>.*)")
# Tags the common chipsets print (Conexant, Agere, Rockwell, US Robotics, Zoom).
# DDN_NMBR is the caller's number in dialable form (MDMF parameter 3); MESG
# carries a parameter the modem could not decode, in hex.
_CID_TAGS = {
    "DATE": "date",
    "TIME": "time",
    "NMBR": "number",
    "NUMBER": "number",
    "CALLER NUMBER": "number",
    "DDN_NMBR": "dialable",
    "DDN": "dialable",
    "NAME": "name",
    "CALLER NAME": "name",
    "MESG": "message",
}
# What modems and networks print in place of a number or name that was not
# delivered, upper case with everything but letters and digits taken out
# (so "Out-of-area", "OUT OF AREA" and "Private Number" each have one key):
# Bellcore GR-30's "P" (private) and "O" (out of area) as the Rockwell,
# Conexant and USR/3Com manuals give them, and the words caller-ID loggers
# record from exchanges and VoIP gateways.
_WITHHELD = {
    "P": "private",
    "PRIVATE": "private",
    "PRIVATENUMBER": "private",
    "PRIVATECALLER": "private",
    "PRIVATENAME": "private",
    "PRIVDIROFF": "private",
    "ANONYMOUS": "private",
    "RESTRICTED": "private",
    "WITHHELD": "private",
    "BLOCKED": "private",
    "O": "out-of-area",
    "OUTOFAREA": "out-of-area",
    "UNAVAILABLE": "unavailable",
    "NOTAVAILABLE": "unavailable",
    "UNKNOWN": "unavailable",
    "UNKNOWNCALLER": "unavailable",
    "UNKNOWNNAME": "unavailable",
    "UNKNOWNNUMBER": "unavailable",
    "NONAME": "unavailable",
    "NONUMBER": "unavailable",
    "NOCALLERID": "unavailable",
}
# MDMF parameters 04 and 08: reason for absence of the number, of the name ("P" or "O").
_MDMF_ABSENCE = (0x04, 0x08)
_MDMF_REASONS = {ord("P"): "private", ord("O"): "out-of-area"}


def withheld_reason(value: str) -> str | None:
    """The reason a caller-ID number or name is a placeholder, or ``None`` for real data.

    ``"private"``, ``"out-of-area"`` or ``"unavailable"``; a number of zeros
    only (``0000000000``) is ``"unavailable"``.
    """
    key = "".join(char for char in value.upper() if char.isalnum())
    if key and key.strip("0") == "":
        return "unavailable"
    return _WITHHELD.get(key)


def _message_reason(value: str) -> str | None:
    """What a ``MESG`` line says about a missing caller ID, or ``None``.

    ``CALID_202``: the modem heard the caller-ID signal but no packet it
    could read (Intel/Ambient MD566x). Otherwise the value is one MDMF
    parameter the modem did not decode, in hex (tag, length, data, maybe a
    checksum); parameters 04 and 08 carry the reason a number or name is
    absent.
    """
    upper = value.upper().replace(" ", "")
    if upper.startswith("CALID"):
        return "failed"
    try:
        packet = bytes.fromhex(upper)
    except ValueError:
        return None
    if len(packet) >= 3 and packet[0] in _MDMF_ABSENCE and packet[1] == 1:
        return _MDMF_REASONS.get(packet[2])
    return None


def caller_id_field(text: str) -> tuple[str, str] | None:
    """The (field, value) a formatted caller-ID line holds, or ``None`` for any other line."""
    match = _CID_LINE.fullmatch(text)
    field = _CID_TAGS.get(" ".join(match["tag"].upper().split())) if match else None
    return (field, match["value"].strip()) if field else None


def caller_id(fields: Mapping[str, str]) -> CallerId | None:
    """The event for one complete block of fields; ``None`` when the block holds nothing.

    "Nothing" is an undecoded ``MESG`` or empty values: no caller ID to report.
    """
    number = fields.get("number") or fields.get("dialable") or None
    name = fields.get("name") or None
    withheld_number = withheld_reason(number) if number else None
    withheld_name = withheld_reason(name) if name else None
    message = fields.get("message")
    event = CallerId(
        number=None if withheld_number else number,
        name=None if withheld_name else name,
        date=fields.get("date") or None,
        time=fields.get("time") or None,
        reason_withheld=withheld_number or withheld_name or (_message_reason(message) if message else None),
    )
    return None if event == CallerId() else event
