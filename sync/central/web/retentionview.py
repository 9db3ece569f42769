"""The retention page's values, sans-IO: holds, tombstones, the next run's preview, and the forms read.

The preview is :func:`linetap.sync.central.retention.retention_due`'s answer
(what ``linetap-central retention run`` would erase now, and what a legal hold
keeps), turned into rows with the day each became due. Form readers bound and
check every field a browser sends; each error names the field and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from linetap.firmware.errors import LinetapError
from linetap.sync import wire
from linetap.sync.central.config import DAY_MS, RetentionSection
from linetap.sync.central.web.fleetview import FormError, device_field, field

MAX_REASON = 500  # kept in the index and, for an erase, in the signed tombstone
MAX_ROWS = 200  # per table on the page; the count says how many there are in all


@dataclass(frozen=True)
class Target:
    """One recording a hold or erase form names."""

    device_id: str
    recording_id: str
    reason: str


def target(form: Mapping[str, str], *, reason_required: bool) -> Target:
    device = device_field(form)
    recording = field(form, "recording", limit=64)
    try:
        wire.check_recording_id(recording)
    except (wire.WireError, LinetapError):
        raise FormError(f"recording {recording[:64]!r} is not a recording id (as the calls list shows "
                        "them)") from None
    return Target(device, recording, field(form, "reason", required=reason_required, limit=MAX_REASON))


def confirmed(form: Mapping[str, str], target: Target) -> bool:
    """An erase runs only when the form repeats the recording id typed into the confirmation field."""
    return form.get("confirm", "").strip() == target.recording_id


@dataclass(frozen=True)
class DueRow:
    device_id: str
    recording_id: str
    seq: int
    started_ms: int | None
    category: str  # default or flagged
    days: int
    due_ms: int  # when its days ran out
    held: bool
    hold_reason: str | None


def due_rows(due: Sequence[Mapping[str, Any]], held: Sequence[Mapping[str, Any]],
             retention: RetentionSection) -> list[DueRow]:
    """``retention_due``'s two lists as one, oldest due first; held rows say so and are not erased."""
    rows = []
    for row, is_held in [(r, False) for r in due] + [(r, True) for r in held]:
        days = retention.days_for(bool(row["flagged"]))
        rows.append(DueRow(row["device_id"], row["recording_id"], row["seq"], row["started_ms"],
                           "flagged" if row["flagged"] else "default", days,
                           (row["started_ms"] or 0) + days * DAY_MS, is_held, row.get("hold_reason")))
    return sorted(rows, key=lambda r: (r.due_ms, r.device_id, r.seq))


def policy_text(retention: RetentionSection) -> str:
    def days(n: int) -> str:
        return "kept for ever" if n == 0 else f"{n} day{'s' if n != 1 else ''}"
    return (f"calls {days(retention.default_days)}, flagged calls {days(retention.flagged_days)} after they "
            "started; a legal hold keeps a call past its days")
