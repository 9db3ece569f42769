"""The upload wire format: topics, parts and acknowledgements, shared by box and centre.

Everything a recording is travels as *objects*: its ciphertext segments
(``seg/<index>``) and its signed manifest (``manifest``). An object larger than
:data:`PART_BYTES` is split into parts so that no MQTT message passes
:data:`MAX_MESSAGE` (128 KiB, headers included); most segments (about 30 KB at
24 kbit/s and 10 s) are one part.

Device → centre, QoS 1, MQTT v5::

    linetap/v1/<device>/up/<recording>/seg/<index>/<part>
    linetap/v1/<device>/up/<recording>/manifest/<part>

    payload          bytes [part * PART_BYTES, (part + 1) * PART_BYTES) of the object
    user properties  sha256 = hex sha256 of the whole object
                     size   = bytes in the whole object
                     parts  = how many parts the object has

Centre → device, QoS 1, on ``linetap/v1/<device>/ack/<recording>``: one
canonical-JSON :class:`Ack`. ``part`` set means "this part is durably
staged" (it frees a window slot); ``part`` absent means "the whole object is
durably stored and checked". Only an object-level ``stored`` for the manifest
makes a recording synced on the box, and the centre sends it only after every
segment the manifest lists is stored with the listed hash and the signature
verifies with the enrolled key.

Idempotence: the centre keys everything by (device, recording, object,
sha256); a repeat is acknowledged again and stored once. A different object
under the same name is refused (``conflict``).

Nothing here does I/O; both ends validate every field they read with the
functions below, so a malformed message is a :class:`WireError` naming what
was wrong, never a crash. Every number on the wire (a topic level, a user
property, an ack member) is plain ASCII decimal without leading zeros
(:func:`linetap.firmware.untrusted.ascii_int`): ``str.isdigit()`` would let a
superscript two through to crash ``int()``, and ``int()`` reads an Arabic-Indic
three as 3, giving one object two names. Acks are read with :func:`linetap.firmware.untrusted.loads`
(size, depth and integer range bounded, repeated keys refused), and a user
property named twice is refused, for the same reason: two readers of one
message must never see two different values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from linetap.firmware import untrusted
from linetap.firmware.manifest import DEVICE_ID, RECORDING_ID, SHA256
from linetap.firmware.errors import SyncError

ROOT = "linetap/v1"
MAX_MESSAGE = 128 * 1024
# Leaves 8 KiB of a message for the fixed header, topic and user properties.
PART_BYTES = MAX_MESSAGE - 8 * 1024
MAX_ACK = 4096
MAX_REASON = 1000  # characters of an ack's reason
MAX_MISSING = 200  # segment indexes listed in one missing-segments ack

MAX_SEGMENTS = 1_000_000  # a ten-year call at 1 s segments; anything above is garbage
MAX_PARTS = 1024  # 120 MiB per object; a segment of 120 s at 128 kbit/s is 2 MB
MAX_OBJECT = MAX_PARTS * PART_BYTES

Status = Literal["stored", "rejected", "retry"]
STATUSES = ("stored", "rejected", "retry")
# Why the centre refused something; the box raises an alarm naming the code.
# internal-error: the centre failed on this message (its log says why) and refused it rather
# than stop; the box stops that recording like any refusal and raises its alarm.
CODES = ("malformed", "not-enrolled", "wrong-device", "hash-mismatch", "bad-signature",
         "conflict", "missing-segments", "too-large", "store-unavailable", "internal-error")


class WireError(SyncError, ValueError):
    """A topic or payload is not what the upload protocol allows."""


# ------------------------------------------------------------- objects --

@dataclass(frozen=True, order=True)
class ObjectRef:
    """``seg/<index>`` or ``manifest`` of one recording."""

    kind: Literal["seg", "manifest"]
    index: int = -1  # segments only

    @classmethod
    def segment(cls, index: int) -> ObjectRef:
        if not 0 <= index < MAX_SEGMENTS:
            raise WireError(f"segment index {index} is outside 0..{MAX_SEGMENTS - 1}")
        return cls("seg", index)

    @classmethod
    def manifest(cls) -> ObjectRef:
        return cls("manifest")

    @classmethod
    def parse(cls, text: str) -> ObjectRef:
        if text == "manifest":
            return cls.manifest()
        kind, _, digits = text.partition("/")
        index = untrusted.ascii_int(digits, hi=MAX_SEGMENTS - 1) if kind == "seg" else None
        if index is None:
            raise WireError(f"object {text[:80]!r} is neither 'manifest' nor 'seg/<index>' with an index "
                            f"of ASCII digits in 0..{MAX_SEGMENTS - 1}")
        return cls.segment(index)

    def __str__(self) -> str:
        return "manifest" if self.kind == "manifest" else f"seg/{self.index}"


def check_device_id(value: str) -> str:
    if not isinstance(value, str) or not DEVICE_ID.fullmatch(value):
        raise WireError(f"device id {_clip(value)!r} is not 1-64 characters of a-z, 0-9 and '-'")
    return value


def check_recording_id(value: str) -> str:
    if not isinstance(value, str) or not RECORDING_ID.fullmatch(value):
        raise WireError(f"recording id {_clip(value)!r} is not a lowercase UUID")
    return value


def check_sha256(value: str) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise WireError(f"sha256 {_clip(value)!r} is not 64 lowercase hex digits")
    return value


# --------------------------------------------------------------- parts --

@dataclass(frozen=True)
class Part:
    """One upload message."""

    device_id: str
    recording_id: str
    object: ObjectRef
    part: int
    parts: int
    sha256: str  # of the whole object
    size: int  # of the whole object
    payload: bytes = field(repr=False)

    @property
    def topic(self) -> str:
        return up_topic(self.device_id, self.recording_id, self.object, self.part)

    def user_properties(self) -> list[tuple[str, str]]:
        return [("sha256", self.sha256), ("size", str(self.size)), ("parts", str(self.parts))]


def split(device_id: str, recording_id: str, obj: ObjectRef, data: bytes) -> list[Part]:
    """The messages that carry ``data`` (at least one, even for an empty object)."""
    digest = hashlib.sha256(data).hexdigest()
    count = part_count(len(data))
    if count > MAX_PARTS:
        raise WireError(f"{obj} of recording {recording_id} is {len(data)} bytes, more than "
                        f"{MAX_PARTS} parts; shorten spool.segment_s or lower spool.bitrate")
    return [Part(device_id, recording_id, obj, k, count, digest, len(data),
                 data[k * PART_BYTES:(k + 1) * PART_BYTES]) for k in range(count)]


def part_count(size: int) -> int:
    """How many parts carry an object of ``size`` bytes (one, even for an empty object)."""
    return max(1, -(-size // PART_BYTES))


def join(parts: Sequence[bytes], sha256: str, size: int) -> bytes:
    """Concatenate an object's parts in order and check its size and hash."""
    data = b"".join(parts)
    if len(data) != size:
        raise WireError(f"object is {len(data)} bytes, its parts announced {size}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise WireError("object's sha256 does not match the announced sha256")
    return data


def up_topic(device_id: str, recording_id: str, obj: ObjectRef, part: int) -> str:
    return f"{ROOT}/{device_id}/up/{recording_id}/{obj}/{part}"


def up_filter(device_id: str = "+") -> str:
    """Subscription filter for upload messages (the centre uses ``$share/<group>/`` before it)."""
    return f"{ROOT}/{device_id}/up/#"


def parse_part(topic: str, payload: bytes, user_properties: Iterable[tuple[str, str]]) -> Part:
    """Validate an upload message; raises :class:`WireError` naming the first thing wrong."""
    shown = shown_topic(topic)
    levels = topic.split("/")
    # linetap / v1 / dev / up / rec / (seg / idx | manifest) / part
    if levels[:2] != ROOT.split("/") or len(levels) not in (7, 8) or levels[3] != "up":
        raise WireError(f"topic {shown} is not {ROOT}/<device>/up/<recording>/<object>/<part>")
    device_id = check_device_id(levels[2])
    recording_id = check_recording_id(levels[4])
    obj = ObjectRef.parse("/".join(levels[5:-1]))
    part = _small_int(levels[-1], "part", MAX_PARTS - 1)
    props: dict[str, str] = {}
    for name, value in user_properties or ():
        if name in props:
            raise WireError(f"upload message on {shown} repeats the user property {name[:40]!r}; "
                            "each may appear once")
        props[name] = value
    for name in ("sha256", "size", "parts"):
        if name not in props:
            raise WireError(f"upload message on {shown} lacks the user property {name!r}")
    sha256 = check_sha256(props["sha256"])
    parts = _small_int(props["parts"], "parts", MAX_PARTS)
    size = _small_int(props["size"], "size", MAX_OBJECT)
    if parts < 1 or part >= parts:
        raise WireError(f"part {part} of {parts} on {shown} is out of range")
    if parts != part_count(size):
        raise WireError(f"{parts} parts cannot carry {size} bytes at {PART_BYTES} bytes per part")
    expected = min(PART_BYTES, size - part * PART_BYTES)
    if len(payload) != expected:
        raise WireError(f"part {part} of {obj} is {len(payload)} bytes; expected {expected}")
    return Part(device_id, recording_id, obj, part, parts, sha256, size, bytes(payload))


def shown_topic(topic: str, limit: int = 160) -> str:
    """A topic fit for one log line or error message (a hostile one can be 64 KiB long)."""
    return repr(topic if len(topic) <= limit else topic[:limit] + "...")


def _small_int(text: str, what: str, limit: int) -> int:
    """An ASCII decimal number in 0..limit (no sign, no leading zero, no other script's digits)."""
    value = untrusted.ascii_int(text, hi=untrusted.MAX_SAFE_INT)
    if value is None:
        shown = text[:40] if isinstance(text, str) else text
        raise WireError(f"{what} {shown!r} is not a decimal number of ASCII digits 0-9 without a leading zero")
    if value > limit:
        raise WireError(f"{what} {value} is larger than {limit}")
    return value


# ---------------------------------------------------------------- acks --

@dataclass(frozen=True)
class Ack:
    """The centre's answer about one part or one whole object."""

    recording_id: str
    object: ObjectRef
    sha256: str
    status: Status
    part: int | None = None  # None: about the whole object
    code: str | None = None  # why, for rejected / retry
    reason: str | None = None  # for people: logged on the box
    missing: tuple[int, ...] = ()  # segments the centre lacks (code missing-segments)
    receipt: str | None = None  # with a manifest's "stored": the store's signed receipt, base64 (firmware/receipt.py)

    def encode(self) -> bytes:
        """Canonical JSON of at most :data:`MAX_ACK` bytes, so the device can always read it.

        The reason is cut to fit: it may quote hostile text, and one character
        can take 12 bytes once escaped.
        """
        body: dict[str, object] = {"recording_id": self.recording_id, "object": str(self.object),
                                   "sha256": self.sha256, "status": self.status}
        if self.part is not None:
            body["part"] = self.part
        if self.code is not None:
            body["code"] = self.code
        if self.missing:
            body["missing"] = list(self.missing[:MAX_MISSING])
        if self.receipt is not None:
            body["receipt"] = self.receipt
        if self.reason is not None:
            budget = MAX_ACK - len(_canonical({**body, "reason": ""}))
            kept = 0
            for char in self.reason[:MAX_REASON]:
                budget -= len(json.dumps(char)) - 2
                if budget < 0:
                    break
                kept += 1
            body["reason"] = self.reason[:kept]
        return _canonical(body)


def _canonical(body: dict[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def ack_topic(device_id: str, recording_id: str) -> str:
    return f"{ROOT}/{device_id}/ack/{recording_id}"


def ack_filter(device_id: str) -> str:
    return f"{ROOT}/{device_id}/ack/#"


def parse_ack(topic: str, payload: bytes, device_id: str) -> Ack:
    """Validate an acknowledgement addressed to ``device_id``."""
    shown = shown_topic(topic)
    levels = topic.split("/")
    if levels[:2] != ROOT.split("/") or len(levels) != 5 or levels[3] != "ack":
        raise WireError(f"topic {shown} is not {ROOT}/<device>/ack/<recording>")
    if levels[2] != device_id:
        raise WireError(f"ack on {shown} is for device {levels[2]!r}, not {device_id!r}")
    try:
        body = untrusted.loads(payload, what=f"ack on {shown}", max_bytes=MAX_ACK, max_depth=2)
    except untrusted.Untrusted as e:
        raise WireError(str(e)) from e
    if not isinstance(body, dict):
        raise WireError(f"ack on {shown} is not a JSON object")
    recording_id = check_recording_id(body.get("recording_id"))  # type: ignore[arg-type]
    if recording_id != levels[4]:
        raise WireError(f"ack on {shown} names recording {recording_id}")
    obj = ObjectRef.parse(_text(body, "object"))
    sha256 = check_sha256(body.get("sha256"))  # type: ignore[arg-type]
    status = body.get("status")
    if status not in STATUSES:
        raise WireError(f"ack status {status!r} is not one of {', '.join(STATUSES)}")
    part = body.get("part")
    if part is not None and (not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < MAX_PARTS):
        raise WireError(f"ack part {part!r} is not a part number")
    code = body.get("code")
    if code is not None and code not in CODES:
        raise WireError(f"ack code {code!r} is not one of {', '.join(CODES)}")
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise WireError("ack reason is not text")
    missing = body.get("missing", [])
    if not isinstance(missing, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_SEGMENTS for i in missing):
        raise WireError("ack 'missing' is not a list of segment indexes")
    receipt = body.get("receipt")
    if receipt is not None and (not isinstance(receipt, str) or len(receipt) > MAX_ACK):
        raise WireError("ack 'receipt' is not text")  # judged by firmware/receipt.py where it is used
    return Ack(recording_id, obj, sha256, status, part, code, reason, tuple(missing), receipt)


def _clip(value: object, limit: int = 80) -> object:
    """A value to quote in an error message, cut to ``limit`` characters when it is text."""
    return value[:limit] + "..." if isinstance(value, str) and len(value) > limit else value


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise WireError(f"ack member {name!r} is missing or not text")
    return value
