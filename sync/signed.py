"""Signed envelopes: fleet commands, config documents and the box's answers.

An envelope is one canonical-JSON object (the manifest's canonical form:
sorted keys, compact, UTF-8, no floats)::

    {"body": {...},                      what is commanded, configured or answered
     "device": "lt-desk-1",              the addressee ("*" for a config pushed to all)
     "expires_ms": 1767225660000,        wall clock, integer milliseconds
     "format": "linetap-envelope/1",
     "issued_ms": 1767225600000,
     "kind": "cmd",                      "cmd" | "config" | "resp" | "update"
     "nonce": "...",                     optional: 16-64 of [A-Za-z0-9_-]
     "seq": 42,                          optional: the sender's per-device counter
     "signature": {"alg": "ed25519", "key_id": "<fingerprint>", "value": "<base64>"}}

The signature is Ed25519 over the canonical bytes of every member but
``signature``; ``key_id`` is :func:`linetap.firmware.keys.fingerprint` of the
signer's public key. Commands and configs are signed by an operator key the
box trusts; responses and reports by the box's own device key. A command
carries ``seq``, ``nonce`` or both; a config always carries ``seq``, which is
its version; a response echoes the ``seq`` / ``nonce`` of what it answers.

Reading is strict. The bytes must be exactly the canonical form (a
re-serialised document is refused even if its content is unchanged, so there
is one byte form per meaning), and each refusal is its own
:class:`EnvelopeRefused` subclass with a ``code`` the box puts in its error
response. Checks run in this order, so a message with several faults is
named by the first: size, syntax, signature present, key known, signature
valid, members, kind, device, time. Syntax is judged by
:func:`linetap.firmware.untrusted.loads` before anything is built: at most
:data:`MAX_DEPTH` levels of nesting, integers within I-JSON's range, no
floats and no repeated keys.

Time. With ``now_ms`` given (the box's clock is synchronised), an envelope
is refused once ``now_ms >= expires_ms`` and while ``issued_ms`` is more than
:data:`MAX_SKEW_MS` ahead. A Pi has no battery-backed clock, so until NTP has
synchronised it the caller passes ``now_ms=None``: expiry is then not judged
(the envelope comes back with ``time_checked`` False and the box says so in
its answer), and only sequenced commands are accepted, because a sequence
number alone refuses every replay (:class:`ReplayGuard`) while a nonce is
only remembered until its expiry, which cannot be told. The cost is that a
command withheld and delivered late is accepted if no newer one has been;
the operator sees ``time_checked: false`` in the answer. The centre verifies
responses with ``now_ms=None`` too: their freshness is its own unique
correlation data, not the box's clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware.errors import AuthError, ConfigError, SyncError
from linetap.firmware.keys import fingerprint
from linetap.firmware.manifest import ManifestError, canonical
from linetap.firmware.untrusted import Untrusted, loads
from linetap.sync.wire import DEVICE_ID

FORMAT = "linetap-envelope/1"
KINDS = ("cmd", "config", "resp", "update")
ALL_DEVICES = "*"
ALG = "ed25519"
MAX_SKEW_MS = 5 * 60 * 1000  # how far ahead of the box's clock an operator's clock may run
# Integers a JavaScript or Go consumer reads exactly; anything larger is a mistake.
MAX_INT = 2**53 - 1
# Envelope (1), signature or body (2), then what a body holds: a command's args, a report's lists.
MAX_DEPTH = 8
NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
KEY_ID = re.compile(r"[0-9a-f]{16}")
_REQUIRED = ("body", "device", "expires_ms", "format", "issued_ms", "kind")
_OPTIONAL = ("nonce", "seq", "signature")


# ---------------------------------------------------------------- errors --

class EnvelopeRefused(AuthError):
    """An envelope is not acted on; ``code`` names why in the box's error response."""

    code = "refused"


class Oversized(EnvelopeRefused):
    code = "oversized"


class Malformed(EnvelopeRefused, ValueError):
    code = "malformed"


class Unsigned(EnvelopeRefused):
    code = "unsigned"


class UnknownKey(EnvelopeRefused, LookupError):
    code = "unknown-key"


class SignatureMismatch(EnvelopeRefused):
    code = "bad-signature"


class WrongKind(EnvelopeRefused):
    code = "wrong-kind"


class WrongDevice(EnvelopeRefused):
    code = "wrong-device"


class Expired(EnvelopeRefused):
    code = "expired"


class NotYetValid(EnvelopeRefused):
    code = "not-yet-valid"


class ClockUnsynced(EnvelopeRefused):
    code = "clock-unsynced"


class Replayed(EnvelopeRefused):
    code = "replayed"


class StaleVersion(Replayed):
    """A config version that is not newer than one already applied or judged."""

    code = "older-version"


class EnvelopeError(SyncError, ValueError):
    """An envelope cannot be sealed from the values given (a bug in the sender)."""


# --------------------------------------------------------------- envelope --

@dataclass(frozen=True)
class Envelope:
    """An opened, verified envelope."""

    kind: str
    device: str
    issued_ms: int
    expires_ms: int
    seq: int | None
    nonce: str | None
    body: dict[str, Any] = field(repr=False, hash=False)
    key_id: str  # who signed it
    time_checked: bool  # False: the box's clock was not synchronised, expiry was not judged


def key_table(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """The ``trusted_keys`` mapping :func:`open_envelope` takes: fingerprint → key."""
    return {fingerprint(key): key for key in keys}


def seal(kind: str, device: str, body: Mapping[str, Any], key: Ed25519PrivateKey, *,
         seq: int | None, now_ms: int, ttl_ms: int, nonce: str | None = None) -> bytes:
    """Sign ``body`` for ``device``; returns the envelope's canonical bytes."""
    if not isinstance(key, Ed25519PrivateKey):
        raise EnvelopeError(f"cannot seal with a {type(key).__name__}; "
                            "envelopes are signed with Ed25519 keys")
    if not _is_int(now_ms) or not _is_int(ttl_ms) or ttl_ms <= 0:
        raise EnvelopeError(f"now_ms {now_ms!r} and ttl_ms {ttl_ms!r} must be whole numbers of "
                            "milliseconds, ttl_ms above 0")
    if device == ALL_DEVICES and kind != "config":
        raise EnvelopeError(f"a {kind!r} envelope cannot be addressed to every device ('*'); name one device")
    members: dict[str, Any] = {"body": dict(body) if isinstance(body, Mapping) else body,
                               "device": device, "expires_ms": now_ms + ttl_ms, "format": FORMAT,
                               "issued_ms": now_ms, "kind": kind}
    if seq is not None:
        members["seq"] = seq
    if nonce is not None:
        members["nonce"] = nonce
    problem = _problem(members)
    if problem is not None:
        raise EnvelopeError(f"cannot seal: {problem}")
    try:
        unsigned = canonical(members)
    except (ManifestError, UnicodeEncodeError) as e:
        raise EnvelopeError(f"cannot seal: {e}") from None
    members["signature"] = {"alg": ALG, "key_id": fingerprint(key.public_key()),
                            "value": base64.b64encode(key.sign(unsigned)).decode("ascii")}
    return canonical(members)


def open_envelope(data: bytes, *, trusted_keys: Mapping[str, Ed25519PublicKey], device_id: str,
                  kind: str, now_ms: int | None, max_bytes: int) -> Envelope:
    """Verify ``data`` as a ``kind`` envelope for ``device_id``; raises an :class:`EnvelopeRefused`.

    ``now_ms`` None means the caller's clock is not synchronised (see the
    module's notes on time).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise Malformed(f"{kind} envelope is a {type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise Oversized(f"{kind} envelope is {len(data)} bytes, more than {max_bytes}; "
                        "send a smaller body (fewer log lines, a shorter config)")
    members = _parse(bytes(data), kind)
    if "signature" not in members:
        raise Unsigned(f"{kind} envelope has no signature; sign it with an operator key the box trusts")
    key_id, value = _signature(members["signature"], kind)
    key = trusted_keys.get(key_id)
    if key is None:
        raise UnknownKey(f"{kind} envelope is signed by key {key_id}, which this box does not trust; "
                         "sign with an enrolled operator key or add this key to the box's trusted keys")
    unsigned = {name: item for name, item in members.items() if name != "signature"}
    try:
        key.verify(value, canonical(unsigned))
    except InvalidSignature:
        raise SignatureMismatch(f"{kind} envelope signature by key {key_id} does not verify "
                                "(altered after signing, or signed over other bytes)") from None
    problem = _problem(unsigned)
    if problem is not None:
        raise Malformed(f"{kind} envelope signed by key {key_id}: {problem}")
    envelope = Envelope(kind=unsigned["kind"], device=unsigned["device"],
                        issued_ms=unsigned["issued_ms"], expires_ms=unsigned["expires_ms"],
                        seq=unsigned.get("seq"), nonce=unsigned.get("nonce"), body=unsigned["body"],
                        key_id=key_id, time_checked=now_ms is not None)
    if envelope.kind != kind:
        raise WrongKind(f"envelope is a {envelope.kind!r}, expected a {kind!r}; "
                        "publish it on the topic for its kind")
    if envelope.device != device_id and not (envelope.device == ALL_DEVICES and kind == "config"):
        raise WrongDevice(f"{kind} envelope is addressed to {envelope.device!r}, not to {device_id!r}"
                          + ("; only a config may be addressed to '*'" if envelope.device == ALL_DEVICES
                             else "; seal it for this device"))
    _check_time(envelope, now_ms)
    return envelope


def _check_time(envelope: Envelope, now_ms: int | None) -> None:
    what = f"{envelope.kind} envelope seq={envelope.seq}"
    if now_ms is None:
        if envelope.kind == "cmd" and envelope.seq is None:
            raise ClockUnsynced(f"{what} carries only a nonce and this box's clock is not synchronised, "
                                "so its expiry cannot be judged; send it with a seq")
        return
    if now_ms >= envelope.expires_ms:
        raise Expired(f"{what} expired {now_ms - envelope.expires_ms} ms ago (expires_ms="
                      f"{envelope.expires_ms}, box time {now_ms}); send it again, or check the clocks")
    if envelope.issued_ms > now_ms + MAX_SKEW_MS:
        raise NotYetValid(f"{what} is issued {envelope.issued_ms - now_ms} ms ahead of this box's clock, "
                          f"more than the {MAX_SKEW_MS} ms allowed; check the sender's and the box's NTP")


def _parse(data: bytes, kind: str) -> dict[str, Any]:
    """The envelope's members, read within bounds (:func:`linetap.firmware.untrusted.loads`)."""
    try:
        value = loads(data, what=f"{kind} envelope", max_bytes=len(data), max_depth=MAX_DEPTH)
    except Untrusted as e:  # too deep, an integer out of range, a float, a repeated key, not JSON
        raise Malformed(f"{e}; send the signer's canonical bytes") from None
    if not isinstance(value, dict):
        raise Malformed(f"{kind} envelope is a JSON {type(value).__name__}, not an object")
    try:
        if canonical(value) != data:
            raise Malformed(f"{kind} envelope is not in canonical form (sorted keys, no spaces, UTF-8); "
                            "send the signer's bytes unchanged")
    except (ManifestError, UnicodeError) as e:
        raise Malformed(f"{kind} envelope is not canonical JSON ({type(e).__name__}: {str(e)[:120]})") from None
    return value


def _signature(sig: Any, kind: str) -> tuple[str, bytes]:
    if not isinstance(sig, dict) or set(sig) != {"alg", "key_id", "value"}:
        raise Malformed(f"{kind} envelope signature must be an object with exactly alg, key_id and value")
    if sig["alg"] != ALG:
        raise Malformed(f"{kind} envelope signature alg {sig['alg']!r} is not {ALG!r}")
    key_id, value = sig["key_id"], sig["value"]
    if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
        raise Malformed(f"{kind} envelope signature key_id {_show(key_id)} is not 16 hex digits")
    raw = b""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b""
    # Re-encoding refuses the spare bits base64 leaves in its last character:
    # otherwise one signature would have several accepted spellings.
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != value:
        raise Malformed(f"{kind} envelope signature value is not 64 bytes of canonical base64")
    return key_id, raw


def _show(value: Any) -> str:
    """A value from an untrusted document, quoted and cut short for a message."""
    text = repr(value)
    return text if len(text) <= 72 else text[:69] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(members: Mapping[str, Any]) -> str | None:
    """What is wrong with an envelope's unsigned members, or None."""
    missing = [name for name in _REQUIRED if name not in members]
    if missing:
        return f"members {', '.join(missing)} are missing"
    unknown = sorted(set(members) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        return f"unknown members {', '.join(_show(name) for name in unknown[:5])}"
    if members["format"] != FORMAT:
        return f"format {_show(members['format'])} is not {FORMAT!r}"
    kind = members["kind"]
    if kind not in KINDS:
        return f"kind {_show(kind)} is not one of {', '.join(KINDS)}"
    device = members["device"]
    if not isinstance(device, str) or not (device == ALL_DEVICES or DEVICE_ID.fullmatch(device)):
        return f"device {_show(device)} is not a device id (1-64 of a-z, 0-9, '-') or '*'"
    for name in ("issued_ms", "expires_ms"):
        if not _is_int(members[name]) or not 0 <= members[name] <= MAX_INT:
            return f"{name} {_show(members[name])} is not a whole number of milliseconds since the epoch"
    if members["expires_ms"] <= members["issued_ms"]:
        return f"expires_ms {members['expires_ms']} is not after issued_ms {members['issued_ms']}"
    seq, nonce = members.get("seq"), members.get("nonce")
    if "seq" in members and (not _is_int(seq) or not 1 <= seq <= MAX_INT):
        return f"seq {_show(seq)} is not a whole number from 1 to {MAX_INT}"
    if "nonce" in members and (not isinstance(nonce, str) or not NONCE.fullmatch(nonce)):
        return f"nonce {_show(nonce)} is not 16-64 characters of A-Z, a-z, 0-9, '_' and '-'"
    if kind in ("config", "update") and seq is None:
        return (f"a {kind} needs a seq: it is the config's version" if kind == "config"
                else "an update offer needs a seq: it orders the offers sent to a box")
    if kind == "cmd" and seq is None and nonce is None:
        return "a command needs a seq or a nonce, so that a replay can be refused"
    if not isinstance(members["body"], dict):
        return f"body is a {type(members['body']).__name__}, not an object"
    return None


# ---------------------------------------------------------------- replays --

class ReplayGuard:
    """Refuses an envelope it has already admitted, or one older than the newest admitted.

    Per sender (envelope kind and signing key), the highest ``seq`` admitted:
    a sequenced envelope must carry a higher one (its nonce, if any, is then
    not needed and not kept). Nonce-only envelopes are
    remembered with their expiry, at most ``max_nonces`` of them; when one
    is forgotten to make room, every envelope that expires no later than it
    is refused from then on (``nonce_floor_ms``), since it might be that one
    again. Expired nonces are forgotten, as an expired envelope is refused
    anyway.

    A guard is a value: :meth:`admit` returns the guard with the envelope
    admitted and leaves this one as it was. Its state is a JSON-able dict
    (:meth:`state`); the caller saves the admitting guard's state durably
    before acting on the envelope, and acts on nothing if saving fails.
    """

    def __init__(self, state: Mapping[str, Any] | None = None, *, max_nonces: int = 256) -> None:
        self._max_nonces = max_nonces
        self._highest: dict[str, int] = {}
        self._nonces: dict[str, int] = {}  # "<sender>/<nonce>" → expires_ms
        self._floor_ms = 0
        if state is not None:
            self._load(state)

    def admit(self, envelope: Envelope, *, now_ms: int | None) -> ReplayGuard:
        """This guard with ``envelope`` recorded as seen, or raise :class:`Replayed`."""
        sender = f"{envelope.kind}/{envelope.key_id}"
        highest, nonces, floor = dict(self._highest), dict(self._nonces), self._floor_ms
        if envelope.seq is not None:
            last = highest.get(sender, 0)
            if envelope.seq <= last:
                raise Replayed(f"{envelope.kind} seq={envelope.seq} signed by {envelope.key_id} is not above "
                               f"{last}, the highest already accepted; a replay, or the sender's counter "
                               "went back (it must only increase)")
            highest[sender] = envelope.seq
        else:
            name = f"{sender}/{envelope.nonce}"
            if name in nonces:
                raise Replayed(f"{envelope.kind} nonce {envelope.nonce} signed by {envelope.key_id} "
                               "was already accepted; send a new nonce")
            if envelope.expires_ms <= floor:
                raise Replayed(f"{envelope.kind} nonce {envelope.nonce} expires at {envelope.expires_ms}, "
                               f"no later than {floor}, before which this box no longer remembers "
                               "every nonce; send it with a later expiry or a seq")
            if now_ms is not None:
                nonces = {n: expiry for n, expiry in nonces.items() if expiry > now_ms}
            nonces[name] = envelope.expires_ms
            while len(nonces) > self._max_nonces:
                oldest = min(nonces, key=nonces.__getitem__)
                floor = max(floor, nonces.pop(oldest))
        admitted = ReplayGuard(max_nonces=self._max_nonces)
        admitted._highest, admitted._nonces, admitted._floor_ms = highest, nonces, floor
        return admitted

    def state(self) -> dict[str, Any]:
        return self._as_state(self._highest, self._nonces, self._floor_ms)

    @staticmethod
    def _as_state(highest: Mapping[str, int], nonces: Mapping[str, int], floor: int) -> dict[str, Any]:
        return {"highest_seq": dict(highest), "nonces": dict(nonces), "nonce_floor_ms": floor}

    def _load(self, state: Mapping[str, Any]) -> None:
        valid = isinstance(state, Mapping) and set(state) == {"highest_seq", "nonces", "nonce_floor_ms"}
        highest, nonces, floor = (state["highest_seq"], state["nonces"], state["nonce_floor_ms"]) if valid \
            else (None, None, None)
        if not (valid and _int_map(highest) and _int_map(nonces) and _is_int(floor)):
            raise ConfigError("saved replay state is not {highest_seq: {sender: int}, nonces: {nonce: int}, "
                              "nonce_floor_ms: int}; restore it from a backup, or delete it to start "
                              "afresh (commands seen before are then accepted again until they expire)")
        self._highest, self._nonces, self._floor_ms = dict(highest), dict(nonces), floor


def _int_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and _is_int(v) for k, v in value.items())
