"""The upload protocol of the box, sans-IO: backlog and acks in, messages and catalogue updates out.

No paho, no threads, no files. The caller (:class:`~linetap.sync.uploader.Uploader`)
feeds it:

- the backlog: :meth:`Upload.set_backlog` with every closed, unsynced recording
  (:class:`Pending`, per-segment synced flags from the catalogue);
- the link state: :meth:`Upload.connected`, :meth:`Upload.disconnected`;
- the centre's answers: :meth:`Upload.acked` with a validated :class:`wire.Ack`;
- time: :meth:`Upload.poll` whenever :meth:`Upload.wake_at` has passed or any
  input arrived.

:meth:`Upload.poll` returns what to do: :class:`Publish` a message,
:class:`SegmentSynced` / :class:`RecordingSynced` (catalogue updates),
:class:`SegmentsLost` (the centre lacks segments the catalogue says it has) and
:class:`Alarm`. Object bytes come from a reader callable, called only when an
object is about to be sent, so at most a window of objects is held in memory.

Rules, all in this file:

- Order: flagged recordings first, then by seq; within a recording its
  segments by index, its manifest only once every segment has an
  object-level ``stored`` ack. Recordings are pipelined: while one waits for
  acks the window carries the next.
- Window: at most ``window`` messages (parts) unacknowledged. A part-level
  ack, an object-level ack, a ``retry`` or a reconnect frees a slot.
- Resend: a part not acknowledged within ``ack_timeout_s``; an object whose
  parts are all staged but whose object-level ack has not come within
  ``ack_timeout_s``; after a reconnect, everything not acknowledged at object
  level (the link may have lost it, and the centre treats repeats as no-ops).
- ``retry``: the object goes again after a back-off doubling from
  ``retry_base_s`` up to ``ack_timeout_s``.
- Receipt: with store keys (``trusted``), the manifest's object-level
  ``stored`` ack must carry a receipt (:mod:`linetap.firmware.receipt`) signed by
  one of them, naming this device, recording and manifest hash. Only then
  :class:`RecordingSynced` (with the receipt's bytes, for the spool to keep).
  A missing, forged or mismatched receipt raises an :class:`Alarm` with code
  ``receipt-invalid`` and the manifest goes again after the retry back-off
  (the centre answers a repeat with the same receipt). Without store keys the
  ack alone marks the recording synced, with no receipt.
- ``rejected``: an :class:`Alarm`, and nothing more of that recording until
  the box restarts, except ``missing-segments`` on the manifest: the listed
  segments lose their synced mark and go again, then the manifest (at most
  ``MAX_MISSING_ROUNDS`` times, then an alarm).
- Bandwidth: virtual-time token bucket. A message may go when the bucket's
  clock has caught up with now, and pushes it on by its size / rate, so over
  any interval T at most ``rate * T`` plus one message leaves.
- Acks whose sha256 is not the object's, for unknown recordings, or repeated,
  change nothing.
- Overdue: a message sent on this connection and still unanswered (no
  part-level or object-level ack, no ``retry``, no ``rejected``) after
  ``ack_timeout_s`` is overdue, however often it was resent meanwhile.
  :meth:`Upload.overdue` gives their count and the age of the oldest; the box
  reports both in telemetry, so acks lost anywhere (a broker handing uploads
  to a client that drops them, a stalled centre) show at the centre by name.
  A reconnect starts the count again: while the link is down nothing is owed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware import receipt
from linetap.firmware.clock import Clock
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import ConfigError, SpoolError
from linetap.sync import wire
# Inputs and outputs live beside this module; the protocol's users may name them through it.
from linetap.sync.uploadevents import (Alarm, Output, Overdue, Pending, Publish, RecordingSynced, SegmentInfo,
                                       SegmentsLost, SegmentSynced)
from linetap.sync.wire import ObjectRef

logger = logging.getLogger(__name__)

MANIFEST = ObjectRef.manifest()
MAX_MISSING_ROUNDS = 3
_SYNC = SyncSection()  # the config's [sync] defaults: window, ack timeout and bandwidth cap are set there

Reader = Callable[[str, ObjectRef], bytes]
"""Returns an object's bytes; raises :class:`SpoolError` when it cannot."""


# ----------------------------------------------------------------- state --

@dataclass(eq=False)
class _Object:
    ref: ObjectRef
    sha256: str
    done: bool = False
    parts: list[wire.Part] | None = None  # loaded while some part still has to go
    count: int | None = None  # parts, known once loaded
    staged: set[int] = field(default_factory=set)  # part-level acks
    not_before: float = 0.0  # retry back-off
    attempts: int = 0
    staged_at: float | None = None  # when the last part was staged: object-level ack timeout from here

    def reset(self) -> None:
        self.done = False
        self.staged.clear()
        self.staged_at = None


@dataclass(eq=False)
class _Recording:
    pending: Pending
    objects: dict[ObjectRef, _Object]
    todo: list[ObjectRef]  # segments without an object-level ack, in index order
    blocked: bool = False
    missing_rounds: int = 0

    @property
    def key(self) -> tuple[bool, int]:
        return (not self.pending.flagged, self.pending.seq)


class Upload:
    """The box side of the upload protocol for one device. Not thread-safe: one owner thread."""

    def __init__(self, device_id: str, reader: Reader, clock: Clock, *, window: int = _SYNC.window,
                 ack_timeout_s: float = _SYNC.ack_timeout_s, bandwidth_bytes_s: int = _SYNC.bandwidth_bytes_s,
                 retry_base_s: float = 1.0, trusted: dict[str, Ed25519PublicKey] | None = None) -> None:
        if window < 1:
            raise ConfigError(f"sync window = {window}; it must be at least 1 message")
        if ack_timeout_s <= 0:
            raise ConfigError(f"sync ack_timeout_s = {ack_timeout_s}; it must be positive")
        if bandwidth_bytes_s < 0:
            raise ConfigError(f"sync bandwidth_bytes_s = {bandwidth_bytes_s}; use 0 for no cap")
        self.device_id = wire.check_device_id(device_id)
        self._reader = reader
        self._clock = clock
        self.window = window
        self._ack_timeout = ack_timeout_s
        self._rate = bandwidth_bytes_s
        self._retry_base = retry_base_s
        self._trusted = dict(trusted or {})  # store keys by receipt.key_id; empty: receipts are not asked for
        self._recordings: dict[str, _Recording] = {}
        self._order: list[_Recording] = []
        self._inflight: dict[tuple[str, ObjectRef, int], float] = {}  # -> when sent
        # -> when first sent on this connection; unlike _inflight, a resend does not restart it
        self._waiting: dict[tuple[str, ObjectRef, int], float] = {}
        # Objects with an object-level ack deadline or a retry back-off: what poll and wake_at look at,
        # so each costs O(window) rather than O(backlog) (a week's backlog is tens of thousands of objects).
        self._timed: dict[tuple[str, ObjectRef], _Object] = {}
        self._polled_at = float("-inf")
        self._out: list[Output] = []
        self._connected = False
        self._bucket_at = 0.0  # the token bucket's virtual clock
        self._bandwidth_wait: float | None = None

    # -- inputs --

    def set_backlog(self, recordings: Iterable[Pending]) -> None:
        """The catalogue's current unsynced recordings. New ones join; ones no longer listed leave."""
        listed = {p.recording_id: p for p in recordings}
        for rid in [r for r in self._recordings if r not in listed]:
            self._forget(rid)
        for rid, pending in listed.items():
            if rid not in self._recordings:
                self._add(pending)
        self._order.sort(key=lambda r: r.key)

    def connected(self) -> None:
        """The link is up: everything not acknowledged at object level goes again."""
        self._connected = True
        self._inflight.clear()
        self._waiting.clear()
        for rec in self._recordings.values():
            for obj in rec.objects.values():
                if not obj.done:
                    obj.reset()
        self._timed = {key: obj for key, obj in self._timed.items() if obj.not_before > 0}

    def disconnected(self) -> None:
        self._connected = False
        self._inflight.clear()
        self._waiting.clear()

    def acked(self, ack: wire.Ack) -> None:
        """An acknowledgement from the centre, already validated by :func:`wire.parse_ack`."""
        rec = self._recordings.get(ack.recording_id)
        if rec is None or rec.blocked:
            return
        obj = rec.objects.get(ack.object)
        if obj is None or obj.sha256 != ack.sha256:
            logger.info("ack ignored recording=%s object=%s reason=not-this-object", ack.recording_id, ack.object)
            return
        if obj.done:
            return
        now = self._clock.monotonic()
        if ack.status == "stored":
            self._stored(rec, obj, ack, now)
        elif ack.status == "retry":
            self._retry(rec, obj, ack, now)
        elif ack.code == "missing-segments" and obj.ref == MANIFEST:
            self._missing(rec, ack)
        else:
            self._block(rec, obj.ref, ack.code or "rejected", ack.reason or "the centre gave no reason")

    # -- time and outputs --

    def poll(self) -> list[Output]:
        """Resend what timed out, fill the window; returns everything to do, in order."""
        now = self._clock.monotonic()
        self._polled_at = now
        self._expire(now)
        self._fill(now)
        out, self._out = self._out, []
        return out

    def wake_at(self) -> float | None:
        """Monotonic time at which :meth:`poll` has something to do without new input."""
        times: list[float] = []
        if self._connected:
            times += [sent + self._ack_timeout for sent in self._inflight.values()]
            if self._bandwidth_wait is not None:
                times.append(self._bandwidth_wait)
            for obj in self._timed.values():
                if obj.staged_at is not None:
                    times.append(obj.staged_at + self._ack_timeout)
                # A back-off that had passed at the last poll waits for a window slot, which an input frees.
                if obj.not_before > self._polled_at:
                    times.append(obj.not_before)
        return min(times) if times else None

    # -- figures --

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def recordings(self) -> int:
        return len(self._recordings)

    def overdue(self) -> Overdue:
        """What has gone unanswered for ``ack_timeout_s`` or longer on this connection (see the module doc)."""
        now = self._clock.monotonic()
        ages = [now - sent for sent in self._waiting.values() if now - sent >= self._ack_timeout]
        return Overdue(len(ages), max(ages) if ages else None)

    @property
    def checks_receipts(self) -> bool:
        """True when a recording is synced only with a valid receipt (store keys were given)."""
        return bool(self._trusted)

    def is_blocked(self, recording_id: str) -> bool:
        rec = self._recordings.get(recording_id)
        return rec is not None and rec.blocked

    # -- internals --

    def _add(self, pending: Pending) -> None:
        wire.check_recording_id(pending.recording_id)
        objects = {MANIFEST: _Object(MANIFEST, pending.manifest_sha256)}
        todo = []
        for seg in sorted(pending.segments, key=lambda s: s.index):
            ref = ObjectRef.segment(seg.index)
            objects[ref] = _Object(ref, seg.sha256, done=seg.synced)
            if not seg.synced:
                todo.append(ref)
        rec = _Recording(pending, objects, todo)
        self._recordings[pending.recording_id] = rec
        self._order.append(rec)
        logger.debug("backlog added recording=%s seq=%d segments=%d unsynced=%d", pending.recording_id,
                     pending.seq, len(pending.segments), len(todo))

    def _forget(self, recording_id: str) -> None:
        rec = self._recordings.pop(recording_id)
        self._order.remove(rec)
        self._drop_inflight(recording_id)
        self._untrack(recording_id)

    def _track(self, recording_id: str, obj: _Object) -> None:
        key = (recording_id, obj.ref)
        if not obj.done and (obj.staged_at is not None or obj.not_before > 0):
            self._timed[key] = obj
        else:
            self._timed.pop(key, None)

    def _untrack(self, recording_id: str) -> None:
        for key in [k for k in self._timed if k[0] == recording_id]:
            del self._timed[key]

    def _drop_inflight(self, recording_id: str, ref: ObjectRef | None = None) -> None:
        """The centre answered (or the recording left): nothing of it is in flight or owed an ack."""
        for sent in (self._inflight, self._waiting):
            for key in [k for k in sent if k[0] == recording_id and (ref is None or k[1] == ref)]:
                del sent[key]

    def _answered(self, recording_id: str, ref: ObjectRef, part: int) -> None:
        self._inflight.pop((recording_id, ref, part), None)
        self._waiting.pop((recording_id, ref, part), None)

    def _stored(self, rec: _Recording, obj: _Object, ack: wire.Ack, now: float) -> None:
        rid, part = rec.pending.recording_id, ack.part
        if part is not None:
            self._answered(rid, obj.ref, part)
            obj.staged.add(part)
            if obj.count is not None and len(obj.staged) >= obj.count:
                obj.parts = None  # all staged: free the bytes; re-read if the object must go again
                obj.staged_at = now
                self._track(rid, obj)
            return
        kept = None
        if obj.ref == MANIFEST and self._trusted:
            kept = self._receipt(rec, obj, ack, now)
            if kept is None:
                return
        obj.done = True
        obj.parts = None
        self._drop_inflight(rid, obj.ref)
        self._track(rid, obj)
        if obj.ref == MANIFEST:
            self._out.append(RecordingSynced(rid, kept))
            self._forget(rid)
            logger.info("recording uploaded recording=%s seq=%d", rid, rec.pending.seq)
            return
        rec.todo.remove(obj.ref)
        self._out.append(SegmentSynced(rid, obj.ref.index))

    def _receipt(self, rec: _Recording, obj: _Object, ack: wire.Ack, now: float) -> bytes | None:
        """The checked receipt's bytes; None after an alarm and a back-off when it is missing or wrong."""
        rid = rec.pending.recording_id
        try:
            if ack.receipt is None:
                raise receipt.ReceiptError("the centre's stored ack carries no receipt")
            return receipt.verify(receipt.decode(ack.receipt), self._trusted, device_id=self.device_id,
                                  recording_id=rid, manifest_sha256=rec.pending.manifest_sha256).data
        except receipt.ReceiptError as e:
            self._out.append(Alarm(rid, MANIFEST, "receipt-invalid", str(e)))
            logger.error("receipt refused recording=%s seq=%d reason=%s; the manifest goes again later", rid,
                         rec.pending.seq, e)
            self._backoff(rec, obj, now)
            return None

    def _retry(self, rec: _Recording, obj: _Object, ack: wire.Ack, now: float) -> None:
        delay = self._backoff(rec, obj, now, ack.part)
        logger.info("centre asks to retry recording=%s object=%s code=%s delay_s=%.1f", rec.pending.recording_id,
                    obj.ref, ack.code, delay)

    def _backoff(self, rec: _Recording, obj: _Object, now: float, part: int | None = None) -> float:
        """The object (or one part) goes again after a back-off doubling up to the ack timeout."""
        rid = rec.pending.recording_id
        obj.attempts += 1
        delay = min(self._ack_timeout, self._retry_base * 2 ** (obj.attempts - 1))
        obj.not_before = now + delay
        if part is None:
            self._drop_inflight(rid, obj.ref)
            obj.reset()
        else:
            self._answered(rid, obj.ref, part)
            obj.staged.discard(part)
        self._track(rid, obj)
        return delay

    def _missing(self, rec: _Recording, ack: wire.Ack) -> None:
        rid = rec.pending.recording_id
        refs = [ObjectRef.segment(i) for i in ack.missing]
        unknown = [r for r in refs if r not in rec.objects]
        rec.missing_rounds += 1
        if not refs or unknown or rec.missing_rounds > MAX_MISSING_ROUNDS:
            why = (f"segments {[r.index for r in unknown]} are not in this recording" if unknown else
                   "no segments listed" if not refs else
                   f"still missing after {MAX_MISSING_ROUNDS} resends")
            self._block(rec, MANIFEST, "missing-segments", f"{ack.reason or 'centre lacks segments'}; {why}")
            return
        lost = []
        for ref in refs:
            obj = rec.objects[ref]
            if obj.done:
                obj.reset()
                self._track(rid, obj)
                rec.todo.append(ref)
                lost.append(ref.index)
        rec.todo.sort()
        manifest = rec.objects[MANIFEST]
        manifest.reset()
        manifest.parts = None
        self._track(rid, manifest)
        self._drop_inflight(rid, MANIFEST)
        if lost:
            self._out.append(SegmentsLost(rid, tuple(lost)))
        logger.warning("centre lacks segments recording=%s segments=%s round=%d", rid,
                       [r.index for r in refs], rec.missing_rounds)

    def _block(self, rec: _Recording, ref: ObjectRef | None, code: str, reason: str) -> None:
        rid = rec.pending.recording_id
        rec.blocked = True
        self._drop_inflight(rid)
        self._untrack(rid)
        for obj in rec.objects.values():
            obj.parts = None
        self._out.append(Alarm(rid, ref, code, reason))
        logger.error("upload stopped recording=%s seq=%d object=%s code=%s reason=%s", rid,
                     rec.pending.seq, ref, code, reason)

    def _expire(self, now: float) -> None:
        for key, sent in list(self._inflight.items()):
            if now >= sent + self._ack_timeout:
                del self._inflight[key]
                logger.info("ack overdue recording=%s object=%s part=%d", key[0], key[1], key[2])
        for (rid, ref), obj in list(self._timed.items()):
            if obj.staged_at is not None and now >= obj.staged_at + self._ack_timeout:
                logger.info("object ack overdue recording=%s object=%s", rid, ref)
                obj.reset()
                self._track(rid, obj)

    def _fill(self, now: float) -> None:
        self._bandwidth_wait = None
        if not self._connected:
            return
        for rec in list(self._order):
            if len(self._inflight) >= self.window:
                return
            if rec.blocked:
                continue
            refs = rec.todo if rec.todo else [MANIFEST]
            for ref in list(refs):
                if not self._send_object(rec, rec.objects[ref], now):
                    return

    def _send_object(self, rec: _Recording, obj: _Object, now: float) -> bool:
        """Send the parts of ``obj`` that are due; False when the window or the bucket is full."""
        if obj.done or obj.not_before > now or rec.blocked:
            return True
        rid = rec.pending.recording_id
        if obj.count is None:
            if not self._may_send(now):
                return False
            if not self._load(rec, obj):
                return True
        assert obj.count is not None
        if len(obj.staged) >= obj.count:
            return True  # waiting for the object-level ack
        for part_no in range(obj.count):
            if part_no in obj.staged or (rid, obj.ref, part_no) in self._inflight:
                continue
            if not self._may_send(now):
                return False
            if obj.parts is None and not self._load(rec, obj):
                return True
            assert obj.parts is not None
            part = obj.parts[part_no]
            self._inflight[(rid, obj.ref, part_no)] = now
            self._waiting.setdefault((rid, obj.ref, part_no), now)
            if self._rate:
                self._bucket_at = max(self._bucket_at, now) + message_bytes(part) / self._rate
            self._out.append(Publish(part))
        return True

    def _may_send(self, now: float) -> bool:
        if len(self._inflight) >= self.window:
            return False
        if self._rate and self._bucket_at > now:
            self._bandwidth_wait = self._bucket_at
            return False
        return True

    def _load(self, rec: _Recording, obj: _Object) -> bool:
        rid = rec.pending.recording_id
        try:
            data = self._reader(rid, obj.ref)
        except SpoolError as e:
            self._block(rec, obj.ref, "unreadable", str(e))
            return False
        parts = wire.split(self.device_id, rid, obj.ref, data)  # hashes the object, once
        if parts[0].sha256 != obj.sha256:
            self._block(rec, obj.ref, "altered", f"{obj.ref} no longer has the sha256 the catalogue "
                        "recorded; check the spool with 'linetap spool verify'")
            return False
        obj.parts = parts
        obj.count = len(parts)
        return True


def message_bytes(part: wire.Part) -> int:
    """What one upload message costs on the uplink, as the bandwidth cap counts it."""
    return len(part.payload) + len(part.topic) + sum(len(k) + len(v) for k, v in part.user_properties())
