"""What the upload protocol (:mod:`linetap.sync.upload`) takes and gives.

Inputs: the catalogue's backlog (:class:`Pending`, :class:`SegmentInfo`).
Outputs: :class:`Publish` a message, catalogue updates (:class:`SegmentSynced`,
:class:`RecordingSynced`, :class:`SegmentsLost`), :class:`Alarm`; and the
:class:`Overdue` figures for telemetry. Frozen dataclasses, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

from linetap.sync import wire
from linetap.sync.wire import ObjectRef


# ---------------------------------------------------------------- inputs --

@dataclass(frozen=True)
class SegmentInfo:
    """A segment as the catalogue lists it."""

    index: int
    size: int
    sha256: str
    synced: bool = False


@dataclass(frozen=True)
class Pending:
    """A closed recording the centre does not have yet."""

    recording_id: str
    seq: int
    flagged: bool
    manifest_sha256: str
    segments: tuple[SegmentInfo, ...]


# --------------------------------------------------------------- outputs --

@dataclass(frozen=True)
class Publish:
    """Send this message (QoS 1)."""

    part: wire.Part


@dataclass(frozen=True)
class SegmentSynced:
    """The centre has stored and checked this segment: mark it synced in the catalogue."""

    recording_id: str
    index: int


@dataclass(frozen=True)
class RecordingSynced:
    """The centre has the whole recording: keep its receipt (if any), then mark it synced.

    ``receipt``: the store's signed receipt, checked (:func:`linetap.firmware.receipt.verify`), to be kept
    beside the manifest before the synced mark; None when the box has no store key to check one with.
    Retention deletes only recordings that hold a receipt.
    """

    recording_id: str
    receipt: bytes | None = None


@dataclass(frozen=True)
class SegmentsLost:
    """The centre lacks segments marked synced: clear their synced marks; they are sent again."""

    recording_id: str
    indexes: tuple[int, ...]


@dataclass(frozen=True)
class Alarm:
    """A recording the box cannot deliver; nothing more of it is sent until restart.

    Except ``receipt-invalid``: the centre stored the recording but its receipt did not verify, and the
    manifest goes again after a back-off to ask for it again.
    """

    recording_id: str
    object: ObjectRef | None
    code: str  # a wire.CODES code from the centre, or "unreadable" / "altered" / "receipt-invalid" found on the box
    reason: str


Output = Publish | SegmentSynced | RecordingSynced | SegmentsLost | Alarm


@dataclass(frozen=True)
class Overdue:
    """Messages sent on this connection and unanswered for ``ack_timeout_s`` or longer."""

    count: int
    oldest_age_s: float | None  # None when nothing is overdue
