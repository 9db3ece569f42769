"""Reading bytes we do not trust: bounded JSON and ASCII decimal integers.

Every byte from a box, a file, the wire or a browser comes through here before
anything else looks at it. Size, nesting depth and every integer's range are
bounded *before* the parser builds anything, so a hostile document costs at
most ``max_bytes`` of work and fails with one :class:`Untrusted` error that
says what was wrong, never with ``RecursionError``, ``OverflowError`` or
Python's own integer-digit limit somewhere deeper.

Integers are kept to the I-JSON range (RFC 7493, section 2.2): what any JSON
peer and any 64-bit database column can hold exactly. Floats, ``NaN`` and
``Infinity`` are refused unless asked for; duplicate object keys are refused
(two readers of the same bytes must never see different values).

Like :mod:`linetap.firmware.errors` and :mod:`linetap.firmware.clock`, this is
a foundation module: it imports nothing from the project but the error tree,
so every layer may use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from linetap.firmware.errors import LinetapError

# RFC 7493 I-JSON: integers a double (and so every JSON peer) represents exactly.
MAX_SAFE_INT = 2**53 - 1
MIN_SAFE_INT = -MAX_SAFE_INT
DEFAULT_MAX_DEPTH = 32

# Strings (with their escapes) first, so brackets inside them are not counted.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_ASCII_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_ASCII_SIGNED = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")


class Untrusted(LinetapError, ValueError):
    """Input from outside failed a bound or did not parse."""


def loads(data: bytes | str, *, what: str, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
          allow_floats: bool = False) -> Any:
    """Parse JSON from an untrusted source within bounds.

    ``what`` names the document in the error ("manifest of rec ...", "ack on
    topic ..."). Raises :class:`Untrusted` when the size, depth or an integer
    is out of bounds, a key repeats, a float appears (unless
    ``allow_floats``), or the text is not UTF-8 JSON.
    """
    size = len(data)
    if size > max_bytes:
        raise Untrusted(f"{what} is {size} bytes; at most {max_bytes} are accepted")
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Untrusted(f"{what} is not UTF-8 (byte {e.start})") from None
    else:
        text = data
    _check_depth(text, what, max_depth)
    try:
        return json.loads(text, parse_int=lambda s: _integer(s, what),
                          parse_float=(float if allow_floats else lambda s: _refuse_float(s, what)),
                          parse_constant=lambda s: _refuse_float(s, what),
                          object_pairs_hook=lambda pairs: _object(pairs, what))
    except Untrusted:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise Untrusted(f"{what} is not JSON: {str(e)[:160]}") from None


def ascii_int(text: Any, *, lo: int = 0, hi: int = MAX_SAFE_INT, signed: bool = False) -> int | None:
    """``text`` as an int if it is plain ASCII decimal in [lo, hi], else None.

    ``str.isdigit()`` accepts '²' and '٣', and ``int()`` maps '٣' to 3 and
    accepts '+1', ' 1', '1_0' and '01': none of those is a number on our wire.
    Leading zeros are refused so that one value has one spelling.
    """
    if not isinstance(text, str) or len(text) > len(str(max(abs(lo), abs(hi)))) + 1:
        return None
    if not (_ASCII_SIGNED if signed else _ASCII_DECIMAL).match(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def _check_depth(text: str, what: str, max_depth: int) -> None:
    depth = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise Untrusted(f"{what} nests deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def _integer(text: str, what: str) -> int:
    # The parser hands us the digits as text: judge the length before int() does any work.
    if len(text) > 17:
        raise Untrusted(f"{what} holds the integer {text[:24]}... outside "
                        f"[{MIN_SAFE_INT}, {MAX_SAFE_INT}]")
    value = int(text)
    if not MIN_SAFE_INT <= value <= MAX_SAFE_INT:
        raise Untrusted(f"{what} holds the integer {value} outside [{MIN_SAFE_INT}, {MAX_SAFE_INT}]")
    return value


def _refuse_float(text: str, what: str) -> Any:
    raise Untrusted(f"{what} holds the number {text[:40]}, which is not an integer; "
                    "only integers are accepted")


def _object(pairs: list[tuple[str, Any]], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Untrusted(f"{what} repeats the key {key[:60]!r}")
        out[key] = value
    return out
