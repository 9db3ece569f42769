"""Retention: legal holds, erasure and what the retention rules make due; stale staging aged out.

A recording is erased by asking the store whether any of its objects is
still locked or held (an S3 object lock; refused, naming until when, before
anything is written), then writing its *tombstone*
(:mod:`~linetap.sync.central.tombstone`), then clearing the personal data from
its index row, then overwriting and deleting its objects. The manifest goes
too (it holds the sealed caller id and the call's events); the tombstone
carries exactly what the chain needs. A crash half way is finished by running
``erase`` again. A recording on legal hold is refused, and retention passes
it by. With ``[store] object_lock`` on, a legal hold is set on (and cleared
from) every object in the store too, before the index records it.
"""

from __future__ import annotations

import logging
from typing import Any

from linetap.firmware.errors import ConfigError, SyncError
from linetap.sync.central.config import DAY_MS, IngestSection, RetentionSection
from linetap.sync.central.keys import load_operator_key
from linetap.sync.central.staging import AgedOut, Staging
from linetap.sync.central.store import DurableFiles, ObjectLocked, tombstone_key
from linetap.sync.central.stored import Stored
from linetap.sync.central.tombstone import sign_tombstone
from linetap.sync.central.writeonce import hold_recording, refuse_retained

logger = logging.getLogger(__name__)


class OnHold(SyncError, PermissionError):
    """The recording is on legal hold: it may not be erased."""


def set_hold(stored: Stored, recording_id: str, hold: bool, reason: str | None = None, *,
             device_id: str | None = None) -> None:
    device = stored.recording(recording_id, device_id)["device_id"]
    keys = [obj["object_key"] for obj in stored.index.objects(device, recording_id)]
    hold_recording(stored.store, stored.config.store, keys, hold)  # failing here, the index is unchanged
    stored.index.set_hold(recording_id, hold, reason, device_id=device)
    logger.info("legal hold %s device=%s recording=%s", "set" if hold else "cleared", device, recording_id)


def erase(stored: Stored, recording_id: str, reason: str, *, device_id: str | None = None) -> str:
    """Erase a recording securely, leaving a signed tombstone; returns the tombstone's key.

    ``device_id`` names the device when several have a recording of that id.
    """
    if not reason.strip():
        raise ConfigError("erase needs a --reason (it is kept in the signed tombstone)")
    row = stored.recording(recording_id, device_id)
    device = row["device_id"]
    if row["hold"]:
        raise OnHold(f"recording {recording_id} of device {device} is on legal hold "
                     f"({row['hold_reason'] or 'no reason given'}); clear it first with "
                     f"`linetap-central hold clear {recording_id} --device {device}`")
    key = tombstone_key(device, recording_id)
    objects = stored.index.objects(device, recording_id)
    refuse_retained(stored.store, [obj["object_key"] for obj in objects],
                    f"recording {recording_id} of device {device}")
    if row["erased_ms"] is None:
        operator = load_operator_key(stored.data_dir)
        now = stored.now_ms()
        stored.store.put(key, sign_tombstone(row, reason, now, operator))
        stored.index.mark_erased(recording_id, now, reason, key, device_id=device)
    for obj in objects:
        stored.store.erase(obj["object_key"])
    stored.index.forget_objects(device, recording_id)
    logger.info("recording erased device=%s recording=%s seq=%d", device, recording_id, row["seq"])
    return key


def retention_due(stored: Stored, retention: RetentionSection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(due, held): recordings past their category's days, and those of them kept by a legal hold."""
    now = stored.now_ms()
    due, held = [], []
    for row in stored.index.recordings(erased=False):
        days = retention.days_for(row["flagged"])
        started = row["started_ms"]
        if days == 0 or started is None or started + days * DAY_MS > now:
            continue
        (held if row["hold"] else due).append(row)
    return due, held


def retention_run(stored: Stored, retention: RetentionSection, *,
                  dry_run: bool = False) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Erase what retention makes due; returns (erased or due, held) as (device, recording) pairs."""
    due, held = retention_due(stored, retention)
    if not dry_run:
        for row in list(due):
            category = "flagged" if row["flagged"] else "default"
            try:
                erase(stored, row["recording_id"], f"retention: {category} "
                      f"{retention.days_for(row['flagged'])} days", device_id=row["device_id"])
            except ObjectLocked as e:  # a hold or longer lock set in the bucket itself: kept, the rest go on
                logger.warning("retention keeps device=%s recording=%s: %s", row["device_id"],
                               row["recording_id"], e)
                due.remove(row)
                held.append(row)
    return ([(r["device_id"], r["recording_id"]) for r in due],
            [(r["device_id"], r["recording_id"]) for r in held])


def age_out(stored: Stored, limits: IngestSection, *, dry_run: bool = False) -> list[AgedOut]:
    """Remove staging untouched for ``limits.stale_staging_days`` (with ``dry_run``, only list it)."""
    cutoff = stored.now_ms() - round(limits.stale_staging_days * DAY_MS)
    if not dry_run:  # staging only: no store key needed
        return Staging(stored.data_dir, stored.index, DurableFiles()).age_out(cutoff)
    return [AgedOut(r["device_id"], r["recording_id"], r["name"], int(r["bytes"]), int(r["last_ms"]))
            for r in stored.index.staged(older_than_ms=cutoff)]
