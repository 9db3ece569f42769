"""Remote updates on the fleet channel: topics and payloads, shared by the box and the centre.

Topics, under ``linetap/v1/<device>/`` (the release format is :mod:`linetap.sync.release`):

=============  =========  ==========  ==================================================
topic          direction  QoS/retain  payload
=============  =========  ==========  ==================================================
update/offer   → box      1, retain   envelope kind "update" (operator key), body :func:`offer_body`
update/get     box →      1           compact JSON ``{"chunk": n, "file": sha256, "release": id}``
update/chunk   → box      1           binary frame, :func:`linetap.sync.release.pack_chunk`
update/state   box →      1, retain   compact JSON :func:`state_payload`
=============  =========  ==========  ==================================================

An offer's envelope carries a per-device ``seq`` (only forward, like a config's
version), so a replayed older offer is refused; an empty retained message on
``update/offer`` withdraws the offer (a halted rollout).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from linetap.firmware.untrusted import MAX_SAFE_INT, Untrusted, loads
from linetap.sync import release
from linetap.sync.wire import ROOT, check_device_id

MAX_OFFER_BYTES = 320 * 1024
MAX_GET_BYTES = 512
MAX_STATE_BYTES = 4096
MAX_REASON = 500
MAX_ROLLOUT = 64

STATES = ("idle", "offered", "fetching", "staged", "preparing", "prepared", "waiting-idle", "switching", "trial",
          "installed", "rolled-back", "refused", "failed")
OUTCOMES = ("installed", "rolled-back", "refused", "failed")
CODES = ("bad-signature", "unknown-key", "malformed", "too-large", "downgrade", "already-installed",
         "too-old-to-update", "wrong-board", "wrong-platform", "no-room", "hash-mismatch", "prepare-failed",
         "selftest-failed", "not-ready", "crash-loop", "superseded", "withdrawn")


# Built here rather than taken from fleetwire: root's update gate imports this module before every start of
# the recorder, and fleetwire pulls in the push policy (pydantic, numpy), about 0.3 s of that downtime.
def device_topic(device_id: str, *levels: str) -> str:
    """``linetap/v1/<device>/<levels...>``, as :func:`linetap.sync.fleetwire.device_topic`."""
    return "/".join((ROOT, check_device_id(device_id), *levels))


def fleet_filter(*levels: str) -> str:
    return "/".join((ROOT, "+", *levels))


def offer_topic(device_id: str) -> str:
    return device_topic(device_id, "update", "offer")


def get_topic(device_id: str) -> str:
    return device_topic(device_id, "update", "get")


def chunk_topic(device_id: str) -> str:
    return device_topic(device_id, "update", "chunk")


def state_topic(device_id: str) -> str:
    return device_topic(device_id, "update", "state")


def get_filter() -> str:
    return fleet_filter("update", "get")


def state_filter() -> str:
    return fleet_filter("update", "state")


def _compact(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


# ----------------------------------------------------------------- offer --

@dataclass(frozen=True)
class Offer:
    """An offer's body, read; the release still has to be :func:`release.verify`-ed."""

    manifest: bytes
    signature: bytes
    rollout: str
    allow_downgrade: bool


def offer_body(manifest: bytes, signature: bytes, *, rollout: str, allow_downgrade: bool = False) -> dict:
    return {"allow_downgrade": allow_downgrade, "release": manifest.decode("utf-8"),
            "rollout": rollout, "sig": base64.b64encode(signature).decode("ascii")}


def read_offer(body: Any) -> Offer:
    """The body of an opened ``update`` envelope, bounded; :class:`release.ReleaseError` when malformed."""
    if not isinstance(body, dict) or set(body) != {"allow_downgrade", "release", "rollout", "sig"}:
        raise release.ReleaseError("update offer body must have exactly allow_downgrade, release, rollout, sig")
    text, sig, rollout = body["release"], body["sig"], body["rollout"]
    if not isinstance(body["allow_downgrade"], bool):
        raise release.ReleaseError("update offer allow_downgrade is not true or false")
    if not isinstance(rollout, str) or not 0 < len(rollout) <= MAX_ROLLOUT or not rollout.isascii() \
            or not all(c.isalnum() or c in "-_." for c in rollout):
        raise release.ReleaseError(f"update offer rollout {str(rollout)[:40]!r} is not 1-{MAX_ROLLOUT} "
                                   "characters of letters, digits, '-', '_' and '.'")
    if not isinstance(text, str) or len(text) > release.MAX_MANIFEST:
        raise release.TooLarge(f"update offer release is not a text of at most {release.MAX_MANIFEST} bytes")
    try:
        raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != release.SIGNATURE_BYTES:
        raise release.BadSignature("update offer sig is not 64 bytes of base64")
    return Offer(manifest=text.encode("utf-8"), signature=raw, rollout=rollout,
                 allow_downgrade=body["allow_downgrade"])


# ------------------------------------------------------------------- get --

@dataclass(frozen=True)
class Get:
    release_id: str
    file_sha256: str
    chunk: int


def get_payload(release_id: str, file_sha256: str, chunk: int) -> bytes:
    return _compact({"chunk": chunk, "file": file_sha256, "release": release_id})


def read_get(payload: bytes) -> Get:
    """A box's chunk request, bounded; :class:`release.ReleaseError` when malformed."""
    try:
        value = loads(payload, what="update/get", max_bytes=MAX_GET_BYTES, max_depth=1)
    except Untrusted as e:
        raise release.ReleaseError(str(e)) from None
    if not isinstance(value, dict) or set(value) != {"chunk", "file", "release"}:
        raise release.ReleaseError("update/get must be an object with exactly chunk, file, release")
    rid, sha, chunk = value["release"], value["file"], value["chunk"]
    if not all(isinstance(v, str) and release.HEX64.fullmatch(v) for v in (rid, sha)):
        raise release.ReleaseError("update/get release and file must be 64 lower-case hex digits")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 0 <= chunk < 2**31:
        raise release.ReleaseError(f"update/get chunk {chunk!r} is not a whole number from 0")
    return Get(release_id=rid, file_sha256=sha, chunk=chunk)


# ----------------------------------------------------------------- state --

@dataclass(frozen=True)
class UpdateState:
    """What a box says of its update: where it is, and how the last one ended."""

    state: str
    current: str  # the version running
    version: str | None = None  # the version offered or being installed
    release: str | None = None  # its release id
    rollout: str | None = None
    have: int = 0  # bytes fetched of ``total``
    total: int = 0
    outcome: str | None = None  # of the last attempt
    code: str | None = None
    reason: str | None = None
    at_ms: int = 0


def state_payload(state: UpdateState) -> bytes:
    value = {name: getattr(state, name) for name in UpdateState.__dataclass_fields__}
    if value["reason"] is not None:
        value["reason"] = value["reason"][:MAX_REASON]
    return _compact({k: v for k, v in value.items() if v is not None})


def read_state(payload: bytes) -> UpdateState:
    """A box's ``update/state``, bounded and checked member by member."""
    try:
        value = loads(payload, what="update/state", max_bytes=MAX_STATE_BYTES, max_depth=1)
    except Untrusted as e:
        raise release.ReleaseError(str(e)) from None
    fields = UpdateState.__dataclass_fields__
    if not isinstance(value, dict) or not set(value) <= set(fields) or not {"state", "current"} <= set(value):
        raise release.ReleaseError(f"update/state must be an object with state, current and only "
                                   f"{', '.join(fields)}")
    _member(value, "state", lambda v: v in STATES, f"one of {', '.join(STATES)}")
    _member(value, "outcome", lambda v: v in OUTCOMES, f"one of {', '.join(OUTCOMES)}")
    _member(value, "code", lambda v: v in CODES, "a known code")
    for name in ("current", "version"):
        _member(value, name, lambda v: isinstance(v, str) and release.VERSION.fullmatch(v), "a version")
    _member(value, "release", lambda v: isinstance(v, str) and release.HEX64.fullmatch(v), "a release id")
    _member(value, "rollout", lambda v: isinstance(v, str) and 0 < len(v) <= MAX_ROLLOUT, "a rollout id")
    _member(value, "reason", lambda v: isinstance(v, str) and len(v) <= MAX_REASON, "a short text")
    for name in ("have", "total", "at_ms"):
        _member(value, name, lambda v: isinstance(v, int) and not isinstance(v, bool)
                and 0 <= v <= MAX_SAFE_INT, "a whole number")
    return UpdateState(**value)


def _member(value: dict, name: str, ok, what: str) -> None:
    if name in value and not ok(value[name]):
        raise release.ReleaseError(f"update/state {name} {str(value[name])[:40]!r} is not {what}")
