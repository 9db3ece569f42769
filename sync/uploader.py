"""The uploader thread: spool → upload protocol → link, and acks back into the catalogue.

:class:`Uploader` owns one named thread, ``uploader``, and the
:class:`~linetap.sync.upload.Upload` state machine, which only that thread
touches. It reads the backlog from the spool as typed records
(:meth:`Spool.unsynced` and :meth:`Spool.segments`), reads segment and
manifest bytes through :meth:`Spool.read_object` when the protocol asks for
them (it names no file: the spool's layout is the spool's), publishes through a
:class:`~linetap.sync.link.Link` it is given (the app owns the link and may
share it with the fleet side), and applies the protocol's catalogue updates
with :meth:`Spool.mark_segments_synced`, :meth:`Spool.mark_synced` and
:meth:`Spool.mark_unsynced`. A recording's receipt, checked by the protocol
against the store keys it is given (``trusted``), is kept with
:meth:`Spool.keep_receipt` before the recording is marked synced; if it
cannot be kept, the recording stays unsynced and goes again.

Wiring. The app passes the uploader's :meth:`on_connected`,
:meth:`on_disconnected` and :meth:`on_message` to the link (or calls them
from its own dispatcher); they only queue an event and return, so they are
safe on the link thread. :meth:`notify` (a recording closed) and
:meth:`sync_now` may be called from any thread.

Rescans. The backlog is read again on :meth:`notify`, on :meth:`sync_now`,
and every ``rescan_s`` in case a notification was missed; recordings that
left the catalogue's unsynced set (retention) leave the protocol too.

Restart. Nothing but the catalogue is kept: after a restart only segments not
marked synced are sent again, then the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from linetap.firmware.clock import Clock
from linetap.firmware.config import SyncSection
from linetap.firmware.errors import SpoolError
from linetap.firmware.spool import RecordingGone, Spool
from linetap.sync import wire
from linetap.sync.eventthread import EventThread
from linetap.sync.link import Link
from linetap.sync.mqtt import Inbound
from linetap.sync.upload import (
    Alarm,
    Pending,
    Publish,
    RecordingSynced,
    SegmentInfo,
    SegmentsLost,
    SegmentSynced,
    Upload,
)
from linetap.sync.wire import ObjectRef

logger = logging.getLogger(__name__)

RESCAN_S = 60.0
_MAX_WAIT_S = 0.25  # the protocol's deadlines are on the injected clock: look at it this often


class Uploader(EventThread):
    """Drains the spool's backlog to the centre over ``link``.

    ``on_alarm(kind, detail)`` is called on the uploader thread with kind
    ``upload-rejected`` when the centre refuses a recording or the box cannot
    read one; nothing more of that recording is sent until restart.
    """

    thread_name = "uploader"

    def __init__(self, spool: Spool, link: Link, settings: SyncSection, *, clock: Clock,
                 on_alarm: Callable[[str, str], None] | None = None, rescan_s: float = RESCAN_S,
                 trusted: dict[str, Ed25519PublicKey] | None = None) -> None:
        self._spool = spool
        self._link = link
        self._clock = clock
        self._on_alarm = on_alarm
        self._rescan_s = rescan_s
        self.device_id = spool.device_id
        self._protocol = Upload(spool.device_id, self._read, clock, window=settings.window,
                                ack_timeout_s=settings.ack_timeout_s,
                                bandwidth_bytes_s=settings.bandwidth_bytes_s, trusted=trusted)
        if not trusted:
            logger.warning("delivery receipts cannot be checked device_id=%s reason=no store key; synced "
                           "recordings are deleted on the stored ack alone until one is provisioned "
                           "(linetap keys init --store-key)",
                           self.device_id)
        super().__init__()
        self._status_lock = threading.Lock()
        self._status: dict[str, Any] = {"backlog_recordings": 0, "backlog_bytes": 0, "oldest_age_s": None,
                                        "last_sync_wall": None, "connected": False, "in_flight": 0,
                                        "stopped_recordings": 0, "overdue_acks": 0, "oldest_overdue_s": None}
        # QoS 0 is enough for acks and saves a PUBACK per message: on one TCP connection nothing is
        # lost, and after any reconnect the protocol resends everything not acknowledged, which the
        # centre acknowledges again (idempotent). Acks sent while the box is away were never needed.
        link.subscribe(wire.ack_filter(self.device_id), qos=0)

    # -- inputs, from any thread --

    def on_disconnected(self, reason: str) -> None:
        self._events.put(("disconnected", reason))

    def on_message(self, message: Inbound) -> None:
        """Link callback: acks for this box are queued; other topics are left to their owners."""
        if message.topic.startswith(f"{wire.ROOT}/{self.device_id}/ack/"):
            self._events.put(("ack", message))

    def notify(self) -> None:
        """A recording was closed: look at the backlog now."""
        self._events.put(("rescan", None))

    def sync_now(self) -> None:
        """Rescan the backlog and send what may be sent, without waiting for the next rescan."""
        self._events.put(("rescan", None))

    def status(self) -> dict[str, Any]:
        """Figures for telemetry: backlog count, bytes and oldest age, last sync, link state, overdue acks."""
        with self._status_lock:
            return dict(self._status)

    # -- the uploader thread --

    def _run(self) -> None:
        if self._protocol.checks_receipts:
            self._spool.ask_receipts_again()  # synced before the store key: fetch their receipts now
        if self._link.connected:
            self._protocol.connected()
        self._rescan()
        next_rescan = self._clock.monotonic() + self._rescan_s
        while not self._stop.is_set():
            self._apply(self._protocol.poll())
            now = self._clock.monotonic()
            wake = self._protocol.wake_at()
            deadline = next_rescan if wake is None else min(wake, next_rescan)
            try:
                event = self._events.get(timeout=min(_MAX_WAIT_S, max(0.0, deadline - now)))
            except queue.Empty:
                event = None
            rescan = False
            while event is not None:  # take everything queued before polling again
                rescan |= self._handle(event)
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    event = None
            if rescan or self._clock.monotonic() >= next_rescan:
                self._rescan()
                next_rescan = self._clock.monotonic() + self._rescan_s

    def _handle(self, event: tuple[str, Any]) -> bool:
        kind, value = event
        if kind == "ack":
            try:
                ack = wire.parse_ack(value.topic, value.payload, self.device_id)
            except wire.WireError as e:
                logger.warning("ack refused topic=%s reason=%s", value.topic, e)
                return False
            self._protocol.acked(ack)
        elif kind == "connected":
            self._protocol.connected()
            self._set_status(connected=True)
        elif kind == "disconnected":
            self._protocol.disconnected()
            self._set_status(connected=False)
        return kind == "rescan"

    def _apply(self, outputs: list) -> None:
        segment_marks: dict[str, list[int]] = {}  # one catalogue commit per recording and poll
        for out in outputs:
            if isinstance(out, SegmentSynced):
                segment_marks.setdefault(out.recording_id, []).append(out.index)
                continue
            if isinstance(out, Publish):
                part = out.part
                self._link.publish(part.topic, part.payload, qos=1, user_properties=part.user_properties())
                continue
            self._mark_segments(segment_marks)  # catalogue updates keep the protocol's order
            if isinstance(out, RecordingSynced):
                if self._mark(out.recording_id, out.receipt):
                    self._set_status(last_sync_wall=self._clock.wall())
            elif isinstance(out, SegmentsLost):
                self._unmark(out.recording_id, out.indexes)
            elif isinstance(out, Alarm):
                detail = f"recording={out.recording_id} object={out.object} code={out.code} reason={out.reason}"
                if self._on_alarm is not None:
                    self._on_alarm("upload-rejected", detail)
        self._mark_segments(segment_marks)
        overdue = self._protocol.overdue()
        self._set_status(in_flight=self._protocol.in_flight, overdue_acks=overdue.count,
                         oldest_overdue_s=overdue.oldest_age_s)

    def _mark_segments(self, marks: dict[str, list[int]]) -> None:
        while marks:
            recording_id, indexes = marks.popitem()
            try:
                self._spool.mark_segments_synced(recording_id, indexes)
            except RecordingGone:
                logger.warning("synced segments of a recording no longer in the catalogue recording=%s",
                               recording_id)

    def _mark(self, recording_id: str, receipt: bytes | None) -> bool:
        """Keep the receipt (durably), then mark the recording synced; False when either failed."""
        try:
            if receipt is not None:
                self._spool.keep_receipt(recording_id, receipt)
            self._spool.mark_synced(recording_id)
        except RecordingGone:
            logger.warning("synced recording no longer in the catalogue recording=%s", recording_id)
            return False
        except SpoolError as e:  # stays unsynced: the next rescan sends the manifest again
            logger.error("receipt not kept recording=%s reason=%s; the manifest goes again", recording_id, e)
            return False
        return True

    def _unmark(self, recording_id: str, indexes: tuple[int, ...]) -> None:
        try:
            self._spool.mark_unsynced(recording_id, indexes)
        except RecordingGone:
            logger.warning("recording with lost segments no longer in the catalogue recording=%s", recording_id)

    def _rescan(self) -> None:
        recordings = self._spool.unsynced()
        backlog = []
        for rec in recordings:
            segments = tuple(SegmentInfo(s.index, s.size, s.sha256, s.synced)
                             for s in self._spool.segments(rec.recording_id))
            backlog.append(Pending(rec.recording_id, rec.seq, rec.flagged, rec.manifest_sha256, segments))
        self._protocol.set_backlog(backlog)
        oldest = min((r.started_wall_ms for r in recordings if r.started_wall_ms is not None), default=None)
        self._set_status(
            backlog_recordings=len(recordings),
            backlog_bytes=sum(r.bytes for r in recordings),
            oldest_age_s=None if oldest is None else max(0.0, self._clock.wall() - oldest / 1000),
            stopped_recordings=sum(self._protocol.is_blocked(r.recording_id) for r in recordings))

    def _read(self, recording_id: str, ref: ObjectRef) -> bytes:
        """The object's bytes (bounded by the spool); a SpoolError stops that recording with an alarm."""
        return self._spool.read_object(recording_id, None if ref.kind == "manifest" else ref.index)

    def _set_status(self, **figures: Any) -> None:
        with self._status_lock:
            self._status.update(figures)


def with_overdue_acks(telemetry: Any, status: dict[str, Any]) -> Any:
    """The box's telemetry message with ``upload``: the overdue acks of :meth:`Uploader.status`.

    ``{"overdue_acks": <messages>, "oldest_overdue_s": <whole seconds or null>}``;
    the centre raises its alarm on a count above zero
    (:mod:`linetap.sync.central.tracker`).
    """
    body = json.loads(telemetry.payload)
    oldest = status.get("oldest_overdue_s")
    body["upload"] = {"overdue_acks": int(status.get("overdue_acks") or 0),
                      "oldest_overdue_s": None if oldest is None else int(oldest)}
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return dataclasses.replace(telemetry, payload=payload)
