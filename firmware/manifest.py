"""Recording manifests: canonical JSON, Ed25519-signed, chained per device.

A manifest says what a recording is: its segments in order with the sha256
of each ciphertext file, codec parameters, consent and call events, pauses
and masks, QA metrics, clock state, and how the call ended. Each carries the
device's sequence number and the sha256 of the previous recording's manifest,
so a verifier holding every manifest can tell a missing, altered, reordered
or inserted recording (:func:`verify_chain`).

Canonical form. Keys sorted, no insignificant whitespace, UTF-8 (no ASCII
escaping), and **no floats**: float text differs between JSON libraries, and a
signature over bytes that another implementation re-serialises differently
would fail. So times are integers (wall clock in milliseconds since the
epoch, monotonic and call-relative times in milliseconds), and any other
non-integer number (QA metrics) is carried as its decimal string.
:func:`canonical` refuses a float rather than guess.

Signature. ``signature`` = Ed25519 over the canonical bytes of the manifest
without its ``signature`` member. The file on disk is the canonical bytes of
the whole signed manifest, and its sha256 is the manifest hash the next
recording chains to. The first recording of a device has ``seq`` 1 and
``prev`` :data:`GENESIS`.

Personal data. The caller's number and name are encrypted to the central
recipient (age, base64) in ``caller``; everything else is readable so that the
central store can index without decrypting. ``caller_withheld`` says, in
the clear, why no number came (``private``, ``out-of-area``, ``unavailable``,
``failed``; ``null`` when one did or the line sent no caller ID): a reason
identifies nobody.

This module has no box-only assumptions: the central store verifies with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from linetap.firmware import untrusted
from linetap.firmware.errors import AuthError, ConfigError, SpoolError
from linetap.firmware.keys import public_key_b64, public_key_from_b64

# What a recording id and a hash look like, wherever they travel (wire, receipts, the index).
# A device id: in manifests, topics and file names alike (the config's [device] id is checked with it too).
DEVICE_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
RECORDING_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHA256 = re.compile(r"[0-9a-f]{64}")
FORMAT = "linetap-manifest/1"
GENESIS = "0" * 64  # ``prev`` of a device's first recording
# A manifest lists ~120 bytes per segment: 16 MiB is a call of several days at 10 s segments.
# The call events that are consent or custody facts: kept in the catalogue and the central
# index beside the manifest (a fleet push that changes consent adds a "policy" event).
CONSENT_KINDS = ("announcement-start", "announcement-end", "opt-out", "private", "fault", "flag",
                 "pause-start", "pause-end", "policy")
MAX_BYTES = 16 * 1024 * 1024
# The box writes at most five levels (manifest, events, event, details, value); room to grow.
MAX_DEPTH = 16
# Gaps wider than this are reported as one range, not one finding per missing seq.
MAX_LISTED_GAP = 1000


class ManifestError(SpoolError, ValueError):
    """A manifest is not well-formed (not JSON, not canonical, missing members)."""


class BadSignature(AuthError):
    """A manifest's signature does not verify with the device's public key."""


# ------------------------------------------------------------- canonical --

def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value that is signed and hashed."""
    _refuse_floats(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _refuse_floats(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise ManifestError(f"manifest value at {where} is the float {value!r}; encode times as "
                            "integer milliseconds and other fractions as decimal strings")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestError(f"manifest key {key!r} at {where} is not a string")
            _refuse_floats(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_floats(item, f"{where}[{i}]")


def plain(value: Any) -> Any:
    """``value`` with every float turned into its shortest decimal string (for metrics, details)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise ManifestError(f"manifest value {value!r} of type {type(value).__name__} has no JSON form")


def ms(seconds: float | None) -> int | None:
    """Seconds as integer milliseconds (the manifest's time unit)."""
    return None if seconds is None else round(seconds * 1000)


# --------------------------------------------------------------- signing --

def sign(body: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Sign a manifest body; returns the canonical bytes of the signed manifest (the file)."""
    if "signature" in body:
        raise ManifestError("manifest body already has a signature; sign the body without it")
    unsigned = canonical(body)
    signed = dict(body)
    signed["signature"] = {
        "alg": "ed25519",
        "public_key": public_key_b64(key.public_key()),
        "value": base64.b64encode(key.sign(unsigned)).decode("ascii"),
    }
    return canonical(signed)


def manifest_hash(data: bytes) -> str:
    """The sha256 (hex) the next manifest's ``prev`` names: over the file's exact bytes."""
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes) -> dict[str, Any]:
    """Parse manifest bytes and check that they are in canonical form.

    The bytes are untrusted: size, nesting depth and every integer's range
    (I-JSON, so any 64-bit column holds it) are bounded before anything is
    built, and a breach is a :class:`ManifestError` naming it.
    """
    try:
        value = untrusted.loads(data, what="manifest", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    except untrusted.Untrusted as e:
        raise ManifestError(f"manifest is not canonical JSON: {e}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"manifest is a JSON {type(value).__name__}, not an object")
    if canonical(value) != data:
        raise ManifestError("manifest bytes are not in canonical form (re-serialised, edited by hand?)")
    for name, kind in (("format", str), ("recording_id", str), ("device_id", str), ("seq", int),
                       ("prev", str), ("segments", list), ("signature", dict)):
        if not isinstance(value.get(name), kind) or isinstance(value.get(name), bool):
            raise ManifestError(f"manifest member {name!r} is missing or not a {kind.__name__}")
    if value["format"] != FORMAT:
        raise ManifestError(f"manifest format {value['format']!r} is not {FORMAT!r}")
    if value["seq"] < 1:
        raise ManifestError(f"manifest seq {value['seq']} is not a sequence number (they start at 1)")
    return value


def verify(data: bytes, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """Parse and verify a manifest; returns it. ``public_key`` None trusts the embedded key.

    The central store passes the key it enrolled for the device; trusting the
    embedded key only proves the manifest was not altered after signing.
    """
    manifest = parse(data)
    sig = manifest["signature"]
    embedded = sig.get("public_key")
    if not isinstance(embedded, str) or not isinstance(sig.get("value"), str):
        raise ManifestError("manifest signature lacks 'public_key' or 'value'")
    if public_key is not None and public_key_b64(public_key) != embedded:
        raise BadSignature(f"manifest {manifest['recording_id'][:40]} seq={manifest['seq']} is signed "
                           f"by key {embedded[:12]}..., not the device's enrolled key")
    try:
        key = public_key if public_key is not None else public_key_from_b64(embedded)
    except ConfigError as e:
        raise ManifestError(f"manifest signature's public key is unusable: {e}") from None
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        key.verify(base64.b64decode(sig["value"], validate=True), canonical(body))
    except (InvalidSignature, ValueError) as e:
        raise BadSignature(f"manifest {manifest['recording_id'][:40]} seq={manifest['seq']}: "
                           "signature does not verify (the manifest was altered)") from e
    return manifest


# ---------------------------------------------------------- personal data --

def seal_caller(number: str | None, name: str | None,
                recipient: pyrage.x25519.Recipient) -> str | None:
    """Caller number and name, age-encrypted to the central recipient, base64; None if unknown."""
    if number is None and name is None:
        return None
    plaintext = canonical({"name": name, "number": number})
    return base64.b64encode(pyrage.encrypt(plaintext, [recipient])).decode("ascii")


# ----------------------------------------------------------------- chain --

@dataclass(frozen=True)
class ChainPoint:
    """A known link: the manifest with ``seq`` hashes to ``sha256``."""

    seq: int
    sha256: str


GENESIS_POINT = ChainPoint(0, GENESIS)


@dataclass(frozen=True)
class ChainProblem:
    """One finding. ``kind``: missing, altered, malformed, duplicate, reordered, broken-link."""

    kind: str
    seq: int | None
    recording_id: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "recording_id": self.recording_id,
                "detail": self.detail}


@dataclass
class ChainReport:
    checked: int = 0
    first_seq: int | None = None
    last: ChainPoint | None = None
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "first_seq": self.first_seq,
                "last_seq": self.last.seq if self.last else None,
                "problems": [p.as_dict() for p in self.problems]}


def verify_chain(manifests: Iterable[bytes], public_key: Ed25519PublicKey | None = None, *,
                 after: ChainPoint | None = GENESIS_POINT,
                 explained: Mapping[int, str] | None = None) -> ChainReport:
    """Check a device's manifests, given in the order they were stored or received.

    ``after`` is the last link the caller already trusts (default: the
    genesis, so the chain must start at seq 1); None accepts whatever the
    lowest manifest links to (a box whose oldest recordings were purged).
    ``explained`` maps sequence numbers known to be absent for a stated reason
    (purged, quarantined) to that reason; they are not reported as missing,
    but the link across them is still checked when their hash is unknown.

    Reports: ``malformed`` / ``altered`` (bad bytes or signature), ``duplicate``
    (two manifests claim one seq: an insertion), ``missing`` (a seq gap),
    ``reordered`` (given order disagrees with seq, or a manifest links to a
    recording other than its predecessor), ``broken-link`` (``prev`` names no
    manifest we have: the predecessor was altered or a recording inserted).
    """
    report = ChainReport()
    valid = _read_all(manifests, public_key, report)
    by_seq: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for manifest, digest in valid:
        by_seq.setdefault(manifest["seq"], []).append((manifest, digest))
    for seq, entries in by_seq.items():
        if len(entries) > 1:
            ids = ", ".join(m["recording_id"] for m, _ in entries)
            report.problems.append(ChainProblem("duplicate", seq, None,
                                                f"{len(entries)} manifests claim seq {seq}: {ids}"))
    if not by_seq:
        return report
    seqs = sorted(by_seq)
    report.first_seq = seqs[0]
    if after is not None and seqs[0] <= after.seq:
        report.problems.append(ChainProblem("duplicate", seqs[0], by_seq[seqs[0]][0][0]["recording_id"],
                                            f"seq {seqs[0]} is not after the trusted seq {after.seq}"))
    hash_to_seq = {digest: m["seq"] for m, digest in valid}
    previous: ChainPoint | None = after
    for seq in seqs:
        manifest, digest = by_seq[seq][0]
        if previous is not None:
            report.problems += _gaps(previous.seq, seq, explained or {})
            report.problems += _link(previous, manifest, hash_to_seq)
        previous = ChainPoint(seq, digest)
    report.last = previous
    return report


def _read_all(manifests: Iterable[bytes], public_key: Ed25519PublicKey | None,
              report: ChainReport) -> list[tuple[dict[str, Any], str]]:
    """The manifests that verify, each with its hash; the others, and order slips, go to ``report``."""
    valid: list[tuple[dict[str, Any], str]] = []
    last_seen_seq: int | None = None
    for data in manifests:
        report.checked += 1
        try:
            manifest = verify(data, public_key)
        except BadSignature as e:
            report.problems.append(ChainProblem("altered", _peek_seq(data), None, str(e)))
            continue
        except ManifestError as e:
            report.problems.append(ChainProblem("malformed", _peek_seq(data), None, str(e)))
            continue
        seq = manifest["seq"]
        if last_seen_seq is not None and seq < last_seen_seq:
            report.problems.append(ChainProblem(
                "reordered", seq, manifest["recording_id"],
                f"seq {seq} comes after seq {last_seen_seq} in the given order"))
        last_seen_seq = seq if last_seen_seq is None else max(last_seen_seq, seq)
        valid.append((manifest, manifest_hash(data)))
    return valid


def _gaps(previous: int, seq: int, explained: Mapping[int, str]) -> list[ChainProblem]:
    """The sequence numbers missing between ``previous`` and ``seq``, but those ``explained``."""
    if seq - previous - 1 > MAX_LISTED_GAP:
        # A hostile seq (2**53 - 1) must not make us list billions of gaps.
        known = sum(1 for g in explained if previous < g < seq)
        return [ChainProblem("missing", previous + 1, None,
                             f"no manifests for seq {previous + 1} to {seq - 1} "
                             f"({seq - previous - 1 - known} recordings, between {previous} and {seq})")]
    return [ChainProblem("missing", gap, None, f"no manifest for seq {gap} (between {previous} and {seq})")
            for gap in range(previous + 1, seq) if gap not in explained]


def _link(previous: ChainPoint, manifest: dict[str, Any], hash_to_seq: Mapping[str, int]) -> list[ChainProblem]:
    """What is wrong with ``manifest``'s link to ``previous``, the manifest before it that we have."""
    seq, rid, prev = manifest["seq"], manifest["recording_id"], manifest["prev"]
    if prev == previous.sha256 or (previous.seq + 1 != seq and prev not in hash_to_seq):
        return []  # linked, or across a gap whose hashes we do not know
    if prev in hash_to_seq:
        return [ChainProblem("reordered", seq, rid, f"prev links to seq {hash_to_seq[prev]}, "
                             f"not to its predecessor seq {previous.seq}")]
    return [ChainProblem("broken-link", seq, rid, f"prev {prev[:16]}... is not the hash of "
                         f"seq {previous.seq} ({previous.sha256[:16]}...): that manifest was altered "
                         "or a recording was inserted")]


def _peek_seq(data: bytes) -> int | None:
    try:
        value = untrusted.loads(data, what="manifest", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    except untrusted.Untrusted:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if isinstance(seq, int) else None
